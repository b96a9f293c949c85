"""Root and fixed-point solvers for one solution (or a batch of independent ones)."""
