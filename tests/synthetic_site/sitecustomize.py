"""Started with this folder on PYTHONPATH (`tests/synthetic.py`) and MNIST_JAX_TEST_DATA=synthetic:N
(`subprocess_env`), a Python process trains on the tests' synthetic digits (N training images)
instead of MNIST; with MNIST_JAX_TEST_INTERRUPT=E also, it is interrupted at its checkpoint of
epoch E (`synthetic.interrupt_at`).
"""

import os
import sys

_kind, _, _n = os.environ.get("MNIST_JAX_TEST_DATA", "").partition(":")
if _kind == "synthetic":
    # tests/ and the checkout above it, first: the processes of a test import the code under test,
    # whichever checkout the installed package points to (site runs before `python -m` adds the
    # working folder)
    _tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path[:0] = [_tests, os.path.dirname(_tests)]
    import synthetic

    synthetic.install(n_train=int(_n or synthetic.SYNTHETIC_TRAIN))
    if os.environ.get(synthetic.INTERRUPT_ENV):
        synthetic.interrupt_at(os.environ[synthetic.INTERRUPT_ENV])
    del sys.path[:2]
