"""Started with MNIST_JAX_TEST_DATA=synthetic:N and this folder on PYTHONPATH (`tests/synthetic.py`
`subprocess_env`), a Python process trains on the tests' synthetic digits (N training images)
instead of MNIST."""

import os
import sys

_kind, _, _n = os.environ.get("MNIST_JAX_TEST_DATA", "").partition(":")
if _kind == "synthetic":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import synthetic

    synthetic.install(n_train=int(_n or synthetic.SYNTHETIC_TRAIN))
    sys.path.pop(0)
