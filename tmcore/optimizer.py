"""``tmcore.optimizer``: the import path of the user-guide chapter's worked example
(``from tmcore.optimizer import OCOptimizer``); the optimiser lives in :mod:`tmcore.topology.optimizers`."""

from tmcore.topology.optimizers import OCOptimizer

__all__ = ["OCOptimizer"]
