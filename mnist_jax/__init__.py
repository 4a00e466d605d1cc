"""mnist-jax: a functional JAX/Flax research codebase for MNIST.

Importing it turns on deterministic GPU ops for the JAX backend this process starts (unless
MNIST_JAX_DETERMINISTIC=0): see `mnist_jax.provenance`; and JAX's persistent compilation cache in
mnist-jax's cache folder (unless MNIST_JAX_COMPILE_CACHE=0), with a count of compilations: see
`mnist_jax.compilation`.
"""

from mnist_jax import compilation as _compilation
from mnist_jax.provenance import enable_deterministic_ops as _enable_deterministic_ops

__version__ = "0.1.0"

_enable_deterministic_ops()
_compilation.enable_cache()
_compilation.listen()
