"""Weak forms shared by the tmcore tests: the library's own (tmcore.forms)."""

from tmcore.forms import Diffusion as Laplace
from tmcore.forms import Source

__all__ = ["Laplace", "Source"]
