"""Shared helpers of the benchmarks: the machine's description and a steady-state timer."""

from __future__ import annotations

import os
import platform
import statistics
import time

import jax


def machine() -> str:
    """CPU model, core count, JAX version and devices, for the header of a benchmark table."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    devs = jax.devices()
    kind = getattr(devs[0], "device_kind", devs[0].platform)
    return (f"{cpu}, {os.cpu_count()} cores; jax {jax.__version__}; "
            f"{len(devs)} x {devs[0].platform} ({kind})")


def time_calls(fn, repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of `repeats` calls of fn() after `warmup` calls, each blocked until ready."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)
