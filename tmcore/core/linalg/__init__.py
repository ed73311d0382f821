"""Sparse linear algebra: a fixed sparsity pattern with differentiable values, its solver
backends and the one factored-solve autograd primitive."""
