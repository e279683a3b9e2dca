"""The learning simulator: scenarios, the learning model (Numba kernels), the run loop."""
