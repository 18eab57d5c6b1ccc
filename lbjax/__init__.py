"""lbjax: large-batch training of image classifiers in JAX."""

__version__ = "0.1.0"
