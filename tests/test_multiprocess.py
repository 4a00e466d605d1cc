"""Several processes as one run (JAX's multi-controller runtime over gloo, on localhost).

The quick L2 sweep (configs/l2_sweep_quick.py: 9 runs, 784-100-10, 3 epochs) trained by 2
processes of 2 CPU devices each, against the same sweep in one process with 4 devices and with 1
device; a process killed after a checkpoint; what lands in the workdir; errors and the launcher.
Every subprocess has a timeout, and the launcher stops the processes it started.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mnist_jax import launch
from mnist_jax.compare import differences, numbers

ROOT = pathlib.Path(__file__).resolve().parents[1]
SWEEP = [sys.executable, "-m", "experiments.sweep", "--config", "configs/l2_sweep_quick.py"]
TIMEOUT = 400  # seconds for one training command; a quick sweep takes well under a minute alone


def env(devices: int | None = None) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") or k == "JAX_PLATFORMS"}
    if devices is not None:
        out["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return out


def launched(workdir: pathlib.Path, *extra: str, processes: int = 2) -> subprocess.CompletedProcess:
    """The quick sweep as `processes` processes of 2 CPU devices each, through the launcher."""
    cmd = [sys.executable, "-m", "mnist_jax.launch", "--processes", str(processes), "--devices-per-process", "2",
           "--timeout", str(TIMEOUT), "--", *SWEEP, "--workdir", str(workdir), *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=TIMEOUT + 60)


def single(workdir: pathlib.Path, devices: int) -> subprocess.CompletedProcess:
    return subprocess.run([*SWEEP, "--workdir", str(workdir)], cwd=ROOT, env=env(devices), capture_output=True,
                          text=True, timeout=TIMEOUT, check=True)


def metrics(workdir: pathlib.Path) -> dict:
    return json.loads((workdir / "metrics.json").read_text())


def files(workdir: pathlib.Path) -> set[str]:
    """Every file under the workdir, orbax's content-addressed data file names (`.../d/<hash>`,
    random per write) replaced by `d/*`."""
    out = set()
    for p in workdir.rglob("*"):
        if p.is_file():
            rel = p.relative_to(workdir).as_posix()
            out.add(rel.rsplit("/d/", 1)[0] + "/d/*" if "/d/" in rel else rel)
    return out


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> dict[str, pathlib.Path]:
    """The quick sweep trained three ways: 2 processes x 2 devices, 1 process x 4, 1 process x 1."""
    root = tmp_path_factory.mktemp("sweeps")
    out = {name: root / name for name in ("2x2", "1x4", "1x1")}
    result = launched(out["2x2"])
    assert result.returncode == 0, result.stderr[-3000:]
    single(out["1x4"], 4)
    single(out["1x1"], 1)
    return out


@pytest.mark.integration
def test_two_processes_give_the_numbers_of_one_process_with_four_devices(sweeps):
    m = metrics(sweeps["2x2"])
    assert m["provenance"]["process_count"] == 2 and m["provenance"]["device_count"] == 4
    assert len(m["runs"]) == 9
    # the same 4 devices and the same per-device programs: bit for bit, timings and provenance aside
    assert differences(numbers(sweeps["2x2"] / "metrics.json"), numbers(sweeps["1x4"] / "metrics.json")) == []


@pytest.mark.integration
def test_two_processes_match_one_device_up_to_reassociation(sweeps):
    a, b = metrics(sweeps["2x2"]), metrics(sweeps["1x1"])
    for key in ("loss", "train_accuracy", "val_accuracy", "test_accuracy"):
        np.testing.assert_allclose(a["history"][key], b["history"][key], rtol=1e-3, atol=1e-3, err_msg=key)
    np.testing.assert_allclose(a["history"]["loss"], b["history"]["loss"], rtol=1e-4)
    errors = np.array([[r["test_errors"] for r in m["runs"]] for m in (a, b)])
    assert np.abs(errors[0] - errors[1]).max() <= 5  # a few test images of 10,000
    assert [(r["l2"], r["seed"]) for r in a["runs"]] == [(r["l2"], r["seed"]) for r in b["runs"]]


@pytest.mark.integration
def test_only_process_0_writes_the_workdir(sweeps):
    multi, one = files(sweeps["2x2"]), files(sweeps["1x4"])
    # orbax's multi-process checkpoints: process 1 writes its own shards of the training state
    # (`ocdbt.process_1/`, `array_metadatas/process_1`) into the checkpoint process 0 finalizes
    shards = {f for f in multi - one if "process_1" in f and f.startswith("checkpoints/")}
    assert shards, "process 1 wrote no shard of the checkpoints"
    assert multi - shards == one
    for name in sorted(f for f in one if not f.startswith(("checkpoints/", "params/", ".mnist_jax/"))):
        if name != "metrics.json":  # config.json and the figures, byte for byte
            assert (sweeps["2x2"] / name).read_bytes() == (sweeps["1x4"] / name).read_bytes(), name
    marker = json.loads((sweeps["2x2"] / ".mnist_jax" / "workdir.json").read_text())
    assert marker["state"] == "committed" and sorted(marker["files"]) == sorted(
        p.name for p in sweeps["2x2"].iterdir() if p.name != ".mnist_jax")


@pytest.mark.integration
@pytest.mark.parametrize("victim", [0, 1])  # the writer, which holds the workdir's lock, or the other
def test_a_killed_process_stops_the_run_and_the_rerun_resumes_to_the_same_numbers(sweeps, tmp_path, victim):
    workdir = tmp_path / "killed"
    port = launch.free_port()
    cmd = [*SWEEP, "--workdir", str(workdir)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=launch.process_env(env(), i, 2, port, 2),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        ckpts = workdir / ".mnist_jax" / "run" / "checkpoints" / "train" / "runs_0-9"
        deadline = time.time() + TIMEOUT
        while time.time() < deadline and all(p.poll() is None for p in procs):
            if ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir()):
                break
            time.sleep(0.02)
        assert all(p.poll() is None for p in procs), "a process ended before one could be killed"
        os.kill(procs[victim].pid, signal.SIGKILL)
        survivor = procs[1 - victim]
        _, err = survivor.communicate(timeout=120)  # it stops by itself: its next collective fails
        assert survivor.returncode != 0
        if victim == 1:  # without process 0 (the coordinator) JAX's runtime may end process 1 first
            assert "another process of this run has stopped" in err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    assert not (workdir / "metrics.json").exists() and not (workdir / "config.json").exists()

    # rerun as 2 processes again, or (after losing process 1) as one process of 4 devices: the
    # checkpoint is restored onto whatever mesh the rerun has, and the numbers are the same
    resumed = launched(workdir) if victim == 0 else single(workdir, 4)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    m = metrics(workdir)
    assert 1 <= m["resumed_from_epoch"] < 3
    assert f"resumed from the checkpoint of epoch {m['resumed_from_epoch']}" in resumed.stdout
    assert m["history"] == metrics(sweeps["2x2"])["history"]  # bit for bit, every run and epoch
    assert differences(numbers(workdir / "metrics.json"), numbers(sweeps["2x2"] / "metrics.json")) == [
        f".resumed_from_epoch: {m['resumed_from_epoch']} != null"]


@pytest.mark.integration
def test_a_config_error_stops_every_process_with_one_message(tmp_path):
    result = launched(tmp_path / "bad", "--config.learning_rate=-1")
    assert result.returncode == 2
    assert result.stderr.count("error:") == 1 and "learning_rate" in result.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.integration
def test_a_workdir_error_of_process_0_stops_the_others_with_its_exit_code(tmp_path):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("not mnist-jax's")
    result = launched(tmp_path / "foreign")
    assert result.returncode == 2
    assert result.stderr.count("error:") == 1 and "did not make" in result.stderr


FAIL_ONE = """
import os, pathlib, sys, time
index = os.environ["JAX_PROCESS_ID"]
if index == "1":
    while len(list(pathlib.Path(sys.argv[1]).glob("*.pid"))) < 2:  # the others are up
        time.sleep(0.01)
    sys.exit(3)
pathlib.Path(sys.argv[1], index + ".pid").write_text(str(os.getpid()))
time.sleep(600)
"""


def test_launcher_returns_the_first_failure_and_stops_the_others(tmp_path):
    code = launch.main(["--processes", "3", "--timeout", "900", "--", sys.executable, "-c", FAIL_ONE, str(tmp_path)])
    assert code == 3
    for pid_file in tmp_path.glob("*.pid"):  # the sleeping processes were stopped, not waited for
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid_file.read_text()), 0)


def test_launcher_gives_each_process_its_environment():
    env_ = launch.process_env({"XLA_FLAGS": "--xla_foo=1 --xla_force_host_platform_device_count=8"}, 1, 2, 1234, 2)
    assert env_["JAX_COORDINATOR_ADDRESS"] == "localhost:1234"
    assert (env_["JAX_NUM_PROCESSES"], env_["JAX_PROCESS_ID"]) == ("2", "1")
    assert env_["XLA_FLAGS"] == "--xla_foo=1 --xla_force_host_platform_device_count=2"
    assert launch.main(["--processes", "2", "--", sys.executable, "-c", "pass"]) == 0
