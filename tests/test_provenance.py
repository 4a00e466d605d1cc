"""Provenance in every result, deterministic GPU ops by default, and numbers that can be traced."""

import json
import pathlib
import shlex
import shutil
import subprocess
import sys

import pytest

from experiments import reproduce
from mnist_jax import compare, provenance, registry, results_table, trained
from mnist_jax.config import parse_args

ROOT = pathlib.Path(__file__).resolve().parent.parent
SMALL = ["--config.seeds=2", "--config.epochs=2", "--config.model.hidden=[16]"]
FIELDS = {"code", "code_id", "python", "packages", "backend", "device_kind", "device_count", "process_count", "devices",
          "host_cpu", "xla_flags", "deterministic_gpu_ops", "deterministic", "command", "started", "ended", "outside_code",
          "precision"}


def test_deterministic_gpu_ops_are_on_by_default_and_can_be_switched_off():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert provenance.enable_deterministic_ops(env)
    assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2 --xla_gpu_deterministic_ops=true"
    assert provenance.enable_deterministic_ops(env)  # idempotent: named once
    assert env["XLA_FLAGS"].count("deterministic") == 1
    off = {"MNIST_JAX_DETERMINISTIC": "0"}
    assert not provenance.enable_deterministic_ops(off) and "XLA_FLAGS" not in off
    mine = {"XLA_FLAGS": "--xla_gpu_deterministic_ops=false"}  # the user's own choice wins
    assert not provenance.enable_deterministic_ops(mine) and mine["XLA_FLAGS"] == "--xla_gpu_deterministic_ops=false"
    assert provenance.flag_value("--a=1 --xla_gpu_deterministic_ops=true --xla_gpu_deterministic_ops=0") is False


@pytest.mark.slow
def test_importing_mnist_jax_sets_the_flag_before_jax_starts():
    code = "import os, mnist_jax, jax; jax.numpy.ones(1).block_until_ready(); print(os.environ['XLA_FLAGS'])"
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("XLA_FLAGS", "MNIST_JAX_DETERMINISTIC")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "--xla_gpu_deterministic_ops=true"
    env["MNIST_JAX_DETERMINISTIC"] = "0"
    out = subprocess.run([sys.executable, "-c", code.replace("['XLA_FLAGS']", ".get('XLA_FLAGS', '')")], env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t", *args], check=True,
                   capture_output=True)


def test_code_version_names_the_commit_and_tells_dirty_trees_apart(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / ".gitignore").write_text("runs/\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "one")
    clean = provenance.code_version.__wrapped__(tmp_path)
    assert clean["source"] == "git" and len(clean["commit"]) == 40 and clean["dirty"] is False
    assert provenance.code_id(clean) == f"git:{clean['commit']}"
    (tmp_path / "notes.txt").write_text("not code")  # an untracked non-Python file is not code
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "metrics.json").write_text("{}")  # nor is an ignored workdir
    assert provenance.code_version.__wrapped__(tmp_path)["dirty"] is True  # but the tree is not clean
    ids = set()
    for change in ("x = 2\n", "x = 3\n"):
        (tmp_path / "a.py").write_text(change)
        ids.add(provenance.code_id(provenance.code_version.__wrapped__(tmp_path)))
    (tmp_path / "new.py").write_text("y = 1\n")
    ids.add(provenance.code_id(provenance.code_version.__wrapped__(tmp_path)))
    assert len(ids) == 3 and all(i.startswith(f"git:{clean['commit']}+dirty:") for i in ids)
    outside = provenance.code_version.__wrapped__(tmp_path / "runs")  # no .git there: the package version
    assert outside["source"] == "package" and provenance.code_id(outside).startswith("package:")


def test_a_copy_without_git_names_its_commit_through_a_manifest(tmp_path, monkeypatch):
    repo, copy = tmp_path / "repo", tmp_path / "copy"
    (repo / "mnist_jax").mkdir(parents=True)
    (repo / "mnist_jax" / "a.py").write_text("x = 1\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "one")
    manifest = provenance.write_manifest(tmp_path / "manifest.json", repo)
    shutil.copytree(repo, copy, ignore=shutil.ignore_patterns(".git"))
    monkeypatch.setenv(provenance.MANIFEST_ENV, str(tmp_path / "manifest.json"))
    same = provenance.code_version.__wrapped__(copy)
    assert same == {"source": "git-manifest", "commit": manifest["commit"], "dirty": False}
    assert provenance.code_id(same) == f"git:{manifest['commit']}"
    (copy / "mnist_jax" / "b.py").write_text("y = 2\n")  # code the commit does not have
    assert provenance.code_version.__wrapped__(copy)["dirty"] is True


def test_comparable_and_compare_leave_out_timings_times_and_provenance_only(tmp_path):
    a = {"schema_version": 2, "provenance": {"started": "t0", "command": "x"}, "acc": [0.5, 0.6],
         "timing": {"wall_seconds": 3.0}, "rounds": {"r1": {"timing": {"x": 1}, "val": 0.9}}}
    b = json.loads(json.dumps(a))
    b["timing"]["wall_seconds"] = 9.0
    b["rounds"]["r1"]["timing"]["x"] = 2
    b["provenance"] = {"started": "t1", "command": "y"}
    for name, tree in (("a", a), ("b", b)):
        (tmp_path / name / "mlp").mkdir(parents=True)
        (tmp_path / name / "mlp" / "metrics.json").write_text(json.dumps(tree))
    assert compare.compare_workdirs(tmp_path / "a", tmp_path / "b") == []
    assert provenance.comparable(a)["provenance"] == {"command": "x"}
    b["rounds"]["r1"]["val"] = 0.91
    (tmp_path / "b" / "mlp" / "metrics.json").write_text(json.dumps(b))
    diffs = compare.compare_workdirs(tmp_path / "a", tmp_path / "b")
    assert diffs == ["mlp/metrics.json.rounds.r1.val: 0.9 != 0.91"]
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1


def fake_stage(workdir: pathlib.Path, code_id: str, **extra) -> list[str]:
    """A 'complete' mlp stage (config.json of these args, a metrics.json made by `code_id`), no training."""
    args = ["--workdir", str(workdir), "--config", str(ROOT / "configs/mlp.py"), "--config.seeds=3"]
    _, config = parse_args(args, "")
    workdir.mkdir(parents=True)
    trained.write_json(workdir / "config.json", config.to_dict())
    trained.write_json(workdir / "metrics.json", {"provenance": {"code_id": code_id, **extra}})
    return args


@pytest.mark.slow
def test_a_stage_from_other_code_is_never_silently_reused(tmp_path):
    here = fake_stage(tmp_path / "here", provenance.code_id())
    assert reproduce.is_complete(here, tmp_path / "here")
    other = fake_stage(tmp_path / "other", "git:0123456789abcdef")
    assert not reproduce.is_complete(other, tmp_path / "other")
    assert reproduce.is_complete(other, tmp_path / "other", reuse="any")
    old = fake_stage(tmp_path / "old", None)  # written before provenance existed
    assert not reproduce.is_complete(old, tmp_path / "old")
    resumed = fake_stage(tmp_path / "resumed", provenance.code_id(), checkpoints_from="git:0123456789abcdef")
    assert not reproduce.is_complete(resumed, tmp_path / "resumed")  # partly trained by other code


@pytest.mark.slow
def test_two_processes_write_byte_identical_metrics_apart_from_timings_and_another_seed_does_not(tmp_path,
                                                                                                 synthetic_processes):
    """The same config and seed in two processes: the same metrics.json, every number bit for bit,
    timings and times aside; a third process with another seed: other numbers."""
    workdir = tmp_path / "w"
    cmd = [sys.executable, "-m", "experiments.mlp", "--workdir", str(workdir), *SMALL]
    texts = []
    for seed in (3, 3, 4):
        subprocess.run([*cmd, f"--config.seed={seed}"], capture_output=True, check=True, cwd=ROOT)
        texts.append((workdir / "metrics.json").read_text())
        shutil.rmtree(workdir)  # the next process starts from nothing, in the same folder
    a, b, other = (json.loads(t) for t in texts)
    assert other["history"] != a["history"]
    assert a["schema_version"] == provenance.SCHEMA_VERSION and set(a["provenance"]) == FIELDS
    prov = a["provenance"]
    assert prov["command"] == shlex.join(["python", "-m", "experiments.mlp", "--workdir", str(workdir), *SMALL,
                                          "--config.seed=3"])
    assert prov["code_id"] == provenance.code_id() and prov["backend"] == "cpu" and prov["device_count"] >= 1
    assert prov["packages"]["jax"] and prov["started"] <= prov["ended"]
    assert json.dumps(provenance.comparable(a)) == json.dumps(provenance.comparable(b))
    assert compare.compare_workdirs(tmp_path, tmp_path) == [f"{tmp_path}: no metrics.json"]
def test_results_table_refuses_mixed_code_and_names_the_commit(tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(ROOT / "docs" / "results" / "h100", folder)
    block = results_table.render(folder, "docs/results/x")
    assert block.count("\n| ") == 2 + len(results_table.stages(folder))  # header, rule, a row per experiment
    prov = json.loads((folder / "mlp" / "metrics.json").read_text())["provenance"]
    assert f"**{provenance.short_code(prov['code'])}** on **{prov['devices']}**" in block
    assert "identical numbers" in block  # the determinism runs beside it
    n = len(results_table.stages(folder))
    assert "loaded from the cache" in block and f"All {n} stages again" in block  # the warm-cache run beside it
    shutil.rmtree(folder / "warm" / "cnn_search")  # a warm run that skipped a stage names it
    assert f"The same {n - 1} stages again" in results_table.render(folder) and "not run: cnn_search" in \
        results_table.render(folder)
    for path in folder.glob("*/metrics.json"):  # as if the run had seen uncommitted changes
        m = json.loads(path.read_text())
        m["provenance"]["code"]["dirty"] = True
        path.write_text(json.dumps(m))
    assert "belong to no commit" in results_table.render(folder)
    (folder / "code.json").write_text(json.dumps({"recorded_code_id": prov["code_id"], "commit": "9953d09"}))
    with pytest.raises(ValueError, match="does not match"):  # code.json must prove which commit's files it was
        results_table.render(folder)
    (folder / "code.json").unlink()
    shutil.rmtree(folder / "cnn_search")  # a run that did not finish every experiment says which are missing
    missing = [s.name for s in registry.stages() if not (folder / s.name / "metrics.json").exists()]
    assert "cnn_search" in missing and f"Not in this run: {', '.join(missing)} (not run" in results_table.render(folder)
    m = json.loads((folder / "mlp" / "metrics.json").read_text())
    m["provenance"]["code_id"] = "git:other"
    (folder / "mlp" / "metrics.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="different code"):
        results_table.render(folder)


def test_readme_results_are_generated_from_committed_metrics():
    readme = ROOT / "README.md"
    blocks = results_table.BLOCK.findall(readme.read_text())
    assert blocks, "README.md has no generated results block"
    assert results_table.check(readme, ROOT) == []
