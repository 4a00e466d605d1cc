"""Several processes as one run (JAX's multi-controller runtime over gloo, on localhost).

The quick L2 sweep (configs/l2_sweep_quick.py: 9 runs, 784-100-10, 3 epochs) trained by 2
processes of 2 CPU devices each, against the same sweep in one process with 4 devices (which
test_sweep compares with one device); a process killed after a checkpoint; what lands in the
workdir; errors and the launcher. The processes train on the tests' synthetic digits
(`synthetic.for_processes`): what is tested is how processes share one run, which MNIST's numbers
do not enter. Every subprocess has a timeout, and the launcher stops the processes it started.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest
import synthetic

from mnist_jax import distributed, launch
from mnist_jax.compare import differences, numbers

# its module fixture is built once: every test of this file runs on one pytest-xdist worker
pytestmark = pytest.mark.xdist_group("test_multiprocess")

ROOT = pathlib.Path(__file__).resolve().parents[1]
SWEEP = [sys.executable, "-m", "experiments.sweep", "--config", "configs/l2_sweep_quick.py"]
TIMEOUT = 400  # seconds for one training command; a quick sweep takes well under a minute alone


def env(devices: int | None = None) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items()
           if not k.startswith("JAX_") or k in ("JAX_PLATFORMS", "JAX_DISABLE_MOST_OPTIMIZATIONS")}
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


# Float32 reductions of losses: the mean training loss of each epoch, and the ensemble's NLL and ECE
# with what is computed from them. A 2-process program and a 1-process one may sum these in another
# order (seen on 12-02, on a 2-core AMD EPYC: differences in the last float32 bits); every weight,
# accuracy, error count and prediction is the same bit for bit.
REDUCED_LOSSES = re.compile(r"^\.history\.loss\[|^\.ensemble\.")


def assert_same_numbers(first: pathlib.Path, second: pathlib.Path) -> None:
    """Every number of two metrics.json files equal, the REDUCED_LOSSES within 1e-6."""
    for line in differences(numbers(first / "metrics.json"), numbers(second / "metrics.json")):
        key, values = line.split(": ", 1)
        a, b = (float(v) for v in values.split(" != "))
        assert REDUCED_LOSSES.match(key) and abs(a - b) <= 1e-6, line


def files(workdir: pathlib.Path) -> set[str]:
    """Every file under the workdir, orbax's content-addressed data file names (`.../d/<hash>`,
    random per write) replaced by `d/*` and TensorBoard's event file names (time and host) by
    `events.out.tfevents.*`."""
    out = set()
    for p in workdir.rglob("*"):
        if p.is_file():
            rel = p.relative_to(workdir).as_posix()
            rel = rel.rsplit("/d/", 1)[0] + "/d/*" if "/d/" in rel else rel
            out.add(rel.split(".tfevents.")[0] + ".tfevents.*" if ".tfevents." in rel else rel)
    return out


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> dict[str, pathlib.Path]:
    """The quick sweep trained two ways: 2 processes x 2 devices, and 1 process x 4 devices. One
    process of 4 devices against one device is test_sweep's sharding test: with the one here, 2
    processes match one device up to float32 reassociation."""
    root = tmp_path_factory.mktemp("sweeps")
    out = {name: root / name for name in ("2x2", "1x4")}
    with pytest.MonkeyPatch.context() as mp, synthetic.light_compiles(mp):  # as the tests that compare with them
        synthetic.for_processes(mp)
        result = launched(out["2x2"])
        assert result.returncode == 0, result.stderr[-3000:]
        single(out["1x4"], 4)
    return out


@pytest.mark.slow
def test_two_processes_give_the_numbers_of_one_process_with_four_devices(sweeps):
    m = metrics(sweeps["2x2"])
    assert m["provenance"]["process_count"] == 2 and m["provenance"]["device_count"] == 4
    assert len(m["runs"]) == 9
    # the same 4 devices: the same numbers, timings and provenance aside (REDUCED_LOSSES to 1e-6)
    assert_same_numbers(sweeps["2x2"], sweeps["1x4"])


@pytest.mark.slow
def test_only_process_0_writes_the_workdir(sweeps):
    multi, one = files(sweeps["2x2"]), files(sweeps["1x4"])
    # orbax's multi-process checkpoints: process 1 writes its own shards of the training state
    # (`ocdbt.process_1/`, `array_metadatas/process_1`) into the checkpoint process 0 finalizes
    shards = {f for f in multi - one if "process_1" in f and f.startswith("checkpoints/")}
    assert shards, "process 1 wrote no shard of the checkpoints"
    assert multi - shards == one
    for name in sorted(f for f in one if not f.startswith(("checkpoints/", "params/", ".mnist_jax/", "tensorboard/"))):
        if name not in ("metrics.json", "REPORT.md"):  # config.json and the figures, byte for byte (the others hold times)
            assert (sweeps["2x2"] / name).read_bytes() == (sweeps["1x4"] / name).read_bytes(), name
    marker = json.loads((sweeps["2x2"] / ".mnist_jax" / "workdir.json").read_text())
    assert marker["state"] == "committed" and sorted(marker["files"]) == sorted(
        p.name for p in sweeps["2x2"].iterdir() if p.name != ".mnist_jax")


@pytest.mark.slow
@pytest.mark.parametrize("victim", [0, 1])  # the writer, which holds the workdir's lock, or the other
def test_a_killed_process_stops_the_run_and_the_rerun_resumes_to_the_same_numbers(sweeps, tmp_path, victim, synthetic_processes):
    workdir = tmp_path / "killed"
    port = launch.free_port()
    cmd = [*SWEEP, "--workdir", str(workdir)]
    # the survivor learns of the loss within seconds, not after JAX's default 100 s without a heartbeat
    lost_after = {**env(), "MNIST_JAX_HEARTBEAT_TIMEOUT": "5"}
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=launch.process_env(lost_after, i, 2, port, 2),
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
        # it says "another process of this run has stopped" unless JAX's runtime ends it first, which
        # happens to either process (the coordinator too, on a loaded machine); never a traceback
        assert "Traceback" not in err
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
    # every number equal (REDUCED_LOSSES to 1e-6 where the rerun is one process); resumed_from_epoch
    # is how the run went, not a number it computed (compare)
    assert_same_numbers(workdir, sweeps["2x2"])


@pytest.mark.slow
def test_a_config_error_stops_every_process_with_one_message(tmp_path, synthetic_processes):
    result = launched(tmp_path / "bad", "--config.learning_rate=-1")
    assert result.returncode == 2
    assert result.stderr.count("error:") == 1 and "learning_rate" in result.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_a_workdir_error_of_process_0_stops_the_others_with_its_exit_code(tmp_path, synthetic_processes):
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


# --- failing fast and clearly: the environment, a process alone, processes that differ, the launcher

MLP = [sys.executable, "-m", "experiments.mlp"]


def one_process(tmp_path: pathlib.Path, extra_env: dict[str, str], *args: str, timeout: float = 120):
    return subprocess.run([*MLP, "--workdir", str(tmp_path / "w"), *args], cwd=ROOT, env={**env(), **extra_env},
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("environ, message", [
    ({"JAX_NUM_PROCESSES": "abc"}, "JAX_NUM_PROCESSES='abc' is not allowed: expected the number of processes"),
    ({"JAX_NUM_PROCESSES": "0"}, "JAX_NUM_PROCESSES='0' is not allowed"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2", "JAX_COORDINATOR_ADDRESS": "localhost:1"},
     "JAX_PROCESS_ID='2' is not allowed: expected the index of this process, an integer in 0..1"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "-1", "JAX_COORDINATOR_ADDRESS": "localhost:1"},
     "JAX_PROCESS_ID='-1' is not allowed"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "JAX_COORDINATOR_ADDRESS (HOST:PORT of process 0) is not set"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_COORDINATOR_ADDRESS": "localhost:1"}, "JAX_PROCESS_ID is not set"),
    ({"JAX_COORDINATOR_ADDRESS": "localhost:1"}, "JAX_COORDINATOR_ADDRESS is set but JAX_NUM_PROCESSES is not"),
    ({"JAX_COORDINATOR_ADDRESS": "localhost", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"},
     "JAX_COORDINATOR_ADDRESS='localhost' is not allowed: expected HOST:PORT"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0", "JAX_COORDINATOR_ADDRESS": "localhost:1",
      "MNIST_JAX_INIT_TIMEOUT": "soon"}, "MNIST_JAX_INIT_TIMEOUT='soon' is not allowed"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0", "JAX_COORDINATOR_ADDRESS": "localhost:1",
      "MNIST_JAX_HEARTBEAT_TIMEOUT": "0"}, "MNIST_JAX_HEARTBEAT_TIMEOUT='0' is not allowed"),
])
def test_a_bad_environment_names_the_variable_and_what_it_must_be(environ, message):
    with pytest.raises(distributed.SetupError, match=re.escape(message)):
        distributed.settings(environ)


def test_joining_waits_at_most_five_minutes_by_default_and_says_so_within_ten_seconds():
    s = distributed.settings({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1", "JAX_COORDINATOR_ADDRESS": "h:1"})
    assert s == {"num_processes": 2, "process_id": 1, "coordinator_address": "h:1", "timeout": 300.0, "heartbeat": 100.0}
    assert distributed.NOTICE_AFTER <= 10
    assert distributed.settings({"JAX_NUM_PROCESSES": "1", "MNIST_JAX_INIT_TIMEOUT": "2.5"})["timeout"] == 2.5
    assert distributed.settings({"JAX_NUM_PROCESSES": "1", "MNIST_JAX_HEARTBEAT_TIMEOUT": "7"})["heartbeat"] == 7.0


@pytest.mark.slow
def test_an_experiment_started_with_a_bad_environment_is_one_line_exit_2(tmp_path):
    result = one_process(tmp_path, {"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "x", "JAX_COORDINATOR_ADDRESS": "h:1"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: JAX_")
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_a_process_whose_peers_never_come_says_what_it_waits_for_and_gives_up_with_one_line(tmp_path):
    environ = {"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0", "JAX_COORDINATOR_ADDRESS": f"localhost:{launch.free_port()}",
               "MNIST_JAX_INIT_TIMEOUT": "4"}
    result = one_process(tmp_path, environ, timeout=90)
    assert result.returncode == 1, result.stderr[-2000:]
    ours = [line for line in result.stderr.splitlines() if line.startswith(("process 0", "error"))]
    assert len(ours) == 2, result.stderr[-2000:]
    assert ours[0].startswith("process 0 of 2: waiting for the other processes of this run to join at localhost:")
    assert ours[1].startswith("error: process 0 of 2: the other processes did not join") and "within 4 s" in ours[1]
    assert not any(word in result.stderr for word in ("Traceback", "Check failure", "DEADLINE_EXCEEDED"))
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_processes_given_different_configs_stop_with_one_line_before_training(tmp_path):
    port = launch.free_port()
    extra = (["--config.seeds=2"], ["--config.seeds=3"])
    procs = [subprocess.Popen([*MLP, "--workdir", str(tmp_path / "w"), "--config.epochs=1", *extra[i]], cwd=ROOT,
                              env={**launch.process_env(env(), i, 2, port, None), "MNIST_JAX_INIT_TIMEOUT": "60"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        errs = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    assert [p.returncode for p in procs] == [2, 2], errs
    assert [line for line in errs[0].splitlines() if line.startswith("error")] == [
        "error: process 1 of this run has another command line or config file than process 0 (their hashes differ): "
        "start every process with the same command line, config files and code"]
    assert "error" not in errs[1] and not any("Traceback" in e or "mismatch" in e for e in errs)
    assert not (tmp_path / "w").exists()


def test_a_launcher_command_that_does_not_exist_is_one_line(capsys):
    assert launch.main(["--processes", "2", "--", "mnist_jax_no_such_command"]) == 2
    err = capsys.readouterr().err
    assert err == "error: launch: cannot start 'mnist_jax_no_such_command': No such file or directory\n"


def test_a_process_that_cannot_start_stops_those_already_started(monkeypatch, tmp_path, capsys):
    started = []
    real = subprocess.Popen

    def popen(command, **kwargs):
        if started:
            raise OSError(24, "Too many open files")
        started.append(real([sys.executable, "-c", "import time; time.sleep(600)"], **kwargs))
        return started[-1]

    monkeypatch.setattr(launch.subprocess, "Popen", popen)
    assert launch.main(["--processes", "2", "--", "cmd"]) == 2
    assert started[0].poll() is not None  # stopped, not left running
    assert "cannot start 'cmd': Too many open files" in capsys.readouterr().err


SLEEPER = """
import os, pathlib, sys, time

pathlib.Path(sys.argv[1], os.environ["JAX_PROCESS_ID"] + ".pid").write_text(str(os.getpid()))
time.sleep(600)
"""


def test_the_launched_processes_end_with_a_launcher_killed_by_sigkill(tmp_path):
    launcher = subprocess.Popen([sys.executable, "-m", "mnist_jax.launch", "--processes", "2", "--", sys.executable, "-c",
                                 SLEEPER, str(tmp_path)], cwd=ROOT, env=env())
    try:
        deadline = time.time() + 60
        while len(list(tmp_path.glob("*.pid"))) < 2 and time.time() < deadline:
            time.sleep(0.05)
        pids = [int(p.read_text()) for p in tmp_path.glob("*.pid")]
        assert len(pids) == 2
        launcher.kill()
        launcher.wait()
        deadline = time.time() + 10
        while time.time() < deadline and any(alive(pid) for pid in pids):
            time.sleep(0.05)
        assert not any(alive(pid) for pid in pids), "a launched process outlived its launcher"
    finally:
        for pid_file in tmp_path.glob("*.pid"):
            if alive(int(pid_file.read_text())):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)


def alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie, dead but not yet reaped, counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
