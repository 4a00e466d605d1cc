"""Start-up time of a process: the wall time of importing a module in a fresh Python, median of N.

    python -m benchmarks.startup [--repeats 7] [--modules ml_dtypes jax experiments.mlp] [--json FILE]

Every experiment command, every stage process of `reproduce`, every process of a launch and every
worker of the test suite pays it before it does anything. Each module is imported in its own new
process (`python -c "import M"`), `--repeats` times, one after the other; the median and the range
are printed beside the installed versions of numpy, ml_dtypes and jax, the packages whose import
dominates it.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import statistics
import subprocess
import sys
import time

from benchmarks.common import machine, write_json

MODULES = ["numpy", "ml_dtypes", "jax", "mnist_jax", "experiments.mlp"]
PACKAGES = ["numpy", "ml_dtypes", "jax", "flax", "optax", "orbax-checkpoint", "matplotlib"]


def import_seconds(module: str) -> float:
    """Wall seconds of `python -c "import <module>"` in a new process."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--modules", nargs="+", default=MODULES)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)

    versions = {p: importlib.metadata.version(p) for p in PACKAGES}
    print(machine())
    print("versions:", ", ".join(f"{p} {v}" for p, v in versions.items()))
    print(f"| module | median (s) | min (s) | max (s) |  ({args.repeats} new processes each)")
    print("| --- | ---: | ---: | ---: |")
    results = {}
    for module in args.modules:
        import_seconds(module)  # the first import reads the files from disk; it is not timed
        times = [import_seconds(module) for _ in range(args.repeats)]
        results[module] = {"median": statistics.median(times), "min": min(times), "max": max(times)}
        print(f"| `import {module}` | {statistics.median(times):.2f} | {min(times):.2f} | {max(times):.2f} |")
    write_json(args.json, versions=versions, repeats=args.repeats, seconds=results)


if __name__ == "__main__":
    main()
