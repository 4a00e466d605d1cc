"""The speed benchmarks still run against the library (they are not timed here: benchmarks/ holds
every speed claim, and a claim needs a benchmark that works). Each runs its smallest case, on the
tests' synthetic digits: what is checked is that it runs and reports, not its speed on MNIST."""

from __future__ import annotations

import json

import pytest
import synthetic

from benchmarks import cnn_speed, denoise_speed, startup, sweep_speed, train_speed, vae_speed


@pytest.fixture
def bench_data(monkeypatch):
    """Synthetic digits in place of MNIST, as many training images as the largest case takes."""
    synthetic.install(monkeypatch.setattr, n_train=1024)


@pytest.mark.slow
def test_the_dense_and_sweep_benchmarks_run(capsys, bench_data):
    train_speed.main(["--runs", "1", "2", "--epochs", "1", "--hidden", "8"])
    sweep_speed.main(["--factors", "2", "--seeds", "1", "--epochs", "1", "--runs", "1", "--hidden", "8"])
    out = capsys.readouterr().out
    assert out.count("| 1 |") == 2 and "| 2 |" in out and "ratio (b) / (a)" in out


@pytest.mark.slow
def test_the_cnn_and_denoising_benchmarks_run(capsys, bench_data):
    assert cnn_speed.main(["--impls", "fused", "--epochs", "1", "--train-images", "256", "--no-mlp"]) in (0, None)
    assert denoise_speed.main(["--runs", "1", "--noise", "threefry16", "--train-noise", "threefry16", "--epochs", "1",
                               "--train-images", "256"]) in (0, None)
    out = capsys.readouterr().out
    assert "fused" in out and "threefry16" in out


@pytest.mark.slow
def test_the_vae_benchmark_runs(capsys, bench_data):
    assert vae_speed.main(["--impls", "fused", "--runs", "1", "--steps", "1", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "| fused | 1 |" in out and "s per run-epoch" in out


def test_the_startup_benchmark_times_imports_in_new_processes(capsys, tmp_path):
    startup.main(["--repeats", "1", "--modules", "json", "--json", str(tmp_path / "s.json")])
    out = capsys.readouterr().out
    assert "| `import json` |" in out and "ml_dtypes" in out
    assert json.loads((tmp_path / "s.json").read_text())["seconds"]["json"]["median"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("module", ["benchmarks.compile_cache", "benchmarks.reproduce_variants"])
def test_the_compile_benchmarks_load(module):
    """They run whole reproduce jobs (minutes), so here only their command line: an import that
    broke (a name moved in the library) fails here, not in front of the next person timing it."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=True)
    assert "usage:" in out.stdout


@pytest.mark.slow
def test_the_matmul_floor_times_the_training_steps_products(capsys, bench_data):
    """Its three ways of computing an epoch's products agree (so each times the same arithmetic),
    and it runs end to end on a subset."""
    import numpy as np

    from benchmarks import matmul_floor

    rng = np.random.default_rng(1)
    ws = [rng.normal(0, 1, (a, b)).astype(np.float32) for a, b in ((12, 6), (6, 5), (5, 3))]
    x, t = rng.random((4, 12)).astype(np.float32), rng.normal(0, 1, (4, 3)).astype(np.float32)
    for a, b in zip(matmul_floor.chain_grads(ws, x, t), matmul_floor.numpy_grads(ws, x, t), strict=True):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)
    shape = ((12, 6, 5, 3), 4, 7, 9)  # widths, batch, steps, evaluated images; a step size that moves the weights
    epochs = [matmul_floor.xla_epoch(*shape, None, lr=0.01), matmul_floor.xla_epoch(*shape, matmul_floor.NO_YNN, lr=0.01),
              matmul_floor.numpy_epoch(*shape, lr=0.01)]
    (ws_a, total_a), (ws_b, total_b), (ws_c, total_c) = (epoch() for epoch in epochs)
    assert not np.allclose(ws_c[0], matmul_floor.numpy_epoch(*shape, lr=0.0)()[0][0], rtol=1e-3)  # they moved
    for a, b, c in zip(ws_a, ws_b, ws_c, strict=True):
        np.testing.assert_allclose(np.asarray(a), c, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(np.asarray(b), c, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose([float(total_a), float(total_b)], [total_c] * 2, rtol=1e-4)
    # 4 x (12*6 + 6*5 + 5*3) multiply-adds forward, as many for the weight gradients, 4 x (6*5 + 5*3)
    # for the input gradients, 7 steps; then 9 images forward
    assert matmul_floor.epoch_flops(*shape) == 2 * (7 * 4 * (117 * 2 + 45) + 9 * 117)
    matmul_floor.main(["--nets", "dense", "--repeats", "1", "--train-images", "512"])
    out = capsys.readouterr().out
    assert "products alone, numpy" in out and "training epoch (4 steps)" in out and "GFLOP/s" in out


@pytest.mark.slow
def test_the_step_profile_reads_xlas_trace_of_the_epoch(capsys, bench_data):
    """One small epoch profiled: the trace holds the step's products and loops, the thread time
    is positive, and every operation gets a kind."""
    import os

    from benchmarks import step_profile

    assert step_profile.kind_of("ynn_fusion.14") == "matrix products (library fusions)"
    assert step_profile.kind_of("dot.52") == "matrix products (Eigen)"
    assert step_profile.kind_of("multiply_add_fusion.2") == "elementwise and reduction loops"
    step_profile.main(["--net", "dense", "--train-images", "512", "--top", "5"])
    out = capsys.readouterr().out
    assert "matrix products" in out and "elementwise and reduction loops" in out
    busy = float(out.split("cores busy on average")[0].rsplit("(", 1)[1])
    assert 0.05 < busy <= (os.cpu_count() or 1) + 0.5, out


def test_the_step_profile_counts_nested_events_once():
    from types import SimpleNamespace

    from benchmarks import step_profile

    def ev(name, start, end):
        return SimpleNamespace(name=name, start_ns=start, end_ns=end, duration_ns=end - start)

    # an executor (0-100) runs a loop (10-60) whose body holds an operation (20-50), then a product (70-90)
    events = [ev("ThunkExecutor::Execute", 0, 100), ev("while.3", 10, 60), ev("fusion.1", 20, 50),
              ev("dot.2", 70, 90)]
    own = dict(step_profile.self_times(events))
    assert own == pytest.approx({"ThunkExecutor::Execute": 30e-9, "while.3": 20e-9, "fusion.1": 30e-9, "dot.2": 20e-9})
    assert sum(own.values()) == pytest.approx(100e-9)
