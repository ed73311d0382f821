"""Density-based topology optimisation: optimisers, filters, problems and the driver loop."""
