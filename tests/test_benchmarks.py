"""The speed benchmarks still run against the library (they are not timed here: benchmarks/ holds
every speed claim, and a claim needs a benchmark that works). Each runs its smallest case."""

from __future__ import annotations

import pytest

from benchmarks import cnn_speed, denoise_speed, sweep_speed, train_speed


@pytest.mark.integration
def test_the_dense_and_sweep_benchmarks_run(capsys):
    train_speed.main(["--runs", "1", "2", "--epochs", "1", "--hidden", "8"])
    sweep_speed.main(["--factors", "2", "--seeds", "1", "--epochs", "1", "--runs", "1", "--hidden", "8"])
    out = capsys.readouterr().out
    assert out.count("| 1 |") == 2 and "| 2 |" in out and "ratio (b) / (a)" in out


@pytest.mark.integration
def test_the_cnn_and_denoising_benchmarks_run(capsys):
    assert cnn_speed.main(["--impls", "fused", "--epochs", "1", "--train-images", "256", "--no-mlp"]) in (0, None)
    assert denoise_speed.main(["--runs", "1", "--noise", "threefry16", "--train-noise", "threefry16", "--epochs", "1",
                               "--train-images", "256"]) in (0, None)
    out = capsys.readouterr().out
    assert "fused" in out and "threefry16" in out


@pytest.mark.parametrize("module", ["benchmarks.compile_cache", "benchmarks.reproduce_variants"])
def test_the_compile_benchmarks_load(module):
    """They run whole reproduce jobs (minutes), so here only their command line: an import that
    broke (a name moved in the library) fails here, not in front of the next person timing it."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=True)
    assert "usage:" in out.stdout
