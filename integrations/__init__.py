"""Adapters from tmcore to other tools (outside ``tmcore``: they import only its public names)."""
