"""The numeric precision of an experiment: the dtype its models compute in and the precision of
its float32 matrix products, and what the backend makes of them.

    compute_dtype     "float32" | "bfloat16": the flax modules' `dtype` (params and optimizer
                      state stay float32; a built-in model returns float32 logits)
    matmul_precision  "default" | "float32" | "tensorfloat32" | "bfloat16": JAX's
                      `jax_default_matmul_precision` while the experiment trains and evaluates

JAX computes float32 products on NVIDIA GPUs of compute capability 8.0 or higher in TF32 by
default (inputs rounded to a 10-bit mantissa), on a TPU in one bfloat16 pass, and on a CPU in
full float32; XLA:CPU ignores the setting. `describe` says which applies to a run, and every
metrics.json records it in its provenance.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp

COMPUTE_DTYPES = ("float32", "bfloat16")
MATMUL_PRECISIONS = ("default", "float32", "tensorfloat32", "bfloat16")
DEFAULT_COMPUTE_DTYPE = "float32"
DEFAULT_MATMUL_PRECISION = "default"


def dtype_of(compute_dtype: str) -> Any:
    """The jnp dtype of a `compute_dtype` name."""
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[compute_dtype]


def is_reduced(dtype: Any) -> bool:
    """Whether a module's `dtype` computes in less than float32 (None: the inputs' own, float32)."""
    return dtype is not None and jnp.dtype(dtype) != jnp.float32


def compute_dtype_name(dtype: Any) -> str:
    """The `compute_dtype` name of a module's `dtype` (None: float32)."""
    return "float32" if dtype is None else str(jnp.dtype(dtype))


def compute_dtype_of(config) -> str:
    """The compute dtype a config (a ConfigDict or a config.json dict) gives its models."""
    return str(config.get("compute_dtype", DEFAULT_COMPUTE_DTYPE))


def of_config(config) -> tuple[str, str]:
    """(compute_dtype, matmul_precision) of a config, the defaults where it has no such field."""
    return (str(config.get("compute_dtype", DEFAULT_COMPUTE_DTYPE)),
            str(config.get("matmul_precision", DEFAULT_MATMUL_PRECISION)))


@contextlib.contextmanager
def matmul_precision(name: str) -> Iterator[None]:
    """`jax_default_matmul_precision` = `name` inside the block, restored after; "default" leaves
    JAX's setting untouched. Set for the whole process rather than with the thread-local
    `jax.default_matmul_precision`, so programs compiled ahead in background threads
    (`sweep.GridTrainer.precompile`) get it too."""
    if name == DEFAULT_MATMUL_PRECISION:
        yield
        return
    before = jax.config.jax_default_matmul_precision
    jax.config.update("jax_default_matmul_precision", name)
    try:
        yield
    finally:
        jax.config.update("jax_default_matmul_precision", before)


def float32_products(matmul: str, backend: str, compute_capability: float | None = None) -> str:
    """What a float32 matrix product computes in on `backend` at `matmul` precision: "float32",
    "TF32" or "bfloat16"."""
    if backend == "cpu":
        return "float32"  # XLA:CPU ignores the precision setting
    if matmul == "float32":
        return "float32"
    if matmul == "bfloat16":
        return "bfloat16"
    if backend == "gpu":
        tf32 = compute_capability is not None and compute_capability >= 8.0
        return "TF32" if tf32 and matmul in ("default", "tensorfloat32") else "float32"
    if backend == "tpu":
        return "bfloat16" if matmul == "default" else "TF32 (3 bfloat16 passes)"
    return "unknown"


def _compute_capability() -> float | None:
    """The first device's CUDA compute capability (e.g. 9.0), None where it has none."""
    try:
        return float(jax.devices()[0].compute_capability)
    except (AttributeError, TypeError, ValueError):
        return None


def describe(compute_dtype: str, matmul: str, backend: str | None = None,
             compute_capability: float | None = None) -> dict:
    """The `precision` block of provenance: the two settings and what the backend does with them."""
    backend = backend or jax.default_backend()
    if compute_capability is None and backend == "gpu":
        compute_capability = _compute_capability()
    products = float32_products(matmul, backend, compute_capability)
    if backend == "cpu":
        note = (f"XLA:CPU ignores the matmul precision setting ({matmul!r}): float32 products are computed in full "
                "float32")
    elif backend == "gpu":
        note = (f"GPU of compute capability {compute_capability if compute_capability is not None else 'unknown'}: "
                f"float32 products at {matmul!r} are computed in {products}"
                + (" (JAX's default on compute capability 8.0 or higher)" if matmul == "default" and products == "TF32"
                   else ""))
    else:
        note = f"{backend}: float32 products at {matmul!r} are computed in {products}"
    if compute_dtype != "float32":
        note += (f"; the models compute in {compute_dtype} (their products too), params and optimizer state stay "
                 "float32")
    return {"compute_dtype": compute_dtype, "matmul_precision": matmul, "float32_products": products,
            "backend_note": note}


def text(block: dict | None) -> str:
    """One phrase for a report: 'compute float32, matmul precision default (float32 products in float32: ...)'."""
    if not block:
        return "precision not recorded"
    return (f"compute dtype {block['compute_dtype']}, matmul precision {block['matmul_precision']} "
            f"({block['backend_note']})")
