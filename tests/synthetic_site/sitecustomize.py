"""Started with MNIST_JAX_TEST_DATA=synthetic and this folder on PYTHONPATH (`tests/synthetic.py`
`subprocess_env`), a Python process trains on the tests' synthetic digits instead of MNIST."""

import os
import sys

if os.environ.get("MNIST_JAX_TEST_DATA") == "synthetic":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import synthetic

    synthetic.install()
    sys.path.pop(0)
