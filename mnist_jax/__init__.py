"""mnist-jax: a functional JAX/Flax research codebase for MNIST."""

__version__ = "0.1.0"
