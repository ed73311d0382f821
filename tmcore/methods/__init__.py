"""Methods built on the core and the forms: transient and nonlinear solves, shape
derivatives, batches, neural-network couplings and gradient checks."""
