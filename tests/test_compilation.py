"""The persistent compilation cache (on by default, off with one setting) and the count of compilations."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import pytest
import synthetic

from mnist_jax import cli, compilation
from mnist_jax import workdir as workdir_lib

# A fresh process: imports mnist_jax, compiles one small scan, prints its counts and its result.
PROGRAM = """
import json, sys
import mnist_jax, jax, jax.numpy as jnp
from mnist_jax import compilation

@jax.jit
def f(x, w):
    def body(c, _):
        return jnp.tanh(c @ w) + 0.1 * c, None
    return jax.lax.scan(body, x, None, length=20)[0]

x = jax.random.normal(jax.random.key(0), (32, 48))
out = f(x, jax.random.normal(jax.random.key(1), (48, 48)) / 7)
print(json.dumps({"counts": compilation.counts(), "dir": compilation.cache_dir(), "label": compilation.cache_label(),
                  "out": out.tolist()}))
"""


def run_program(env_changes: dict) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in (compilation.CACHE_ENV, compilation.JAX_DIR_ENV, compilation.JAX_MIN_TIME_ENV)}
    env.update(env_changes, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]) | {"stderr": proc.stderr}


def cache_files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_cache_setting_parses_the_usual_spellings_of_off():
    assert compilation.cache_requested({})
    assert compilation.cache_requested({compilation.CACHE_ENV: "1"})
    for off in ("0", "false", "No", " off "):
        assert not compilation.cache_requested({compilation.CACHE_ENV: off})


@pytest.mark.slow
def test_a_second_process_loads_its_programs_from_the_default_cache_with_identical_results(tmp_path):
    env = {"MNIST_JAX_CACHE": str(tmp_path)}
    first = run_program(env)
    folder = tmp_path / "xla"
    assert first["dir"] == str(folder) and first["label"] == "<cache dir>/xla"
    c = first["counts"]
    assert c["programs"] >= 1 and c["cache_hits"] == 0 and c["cache_misses"] == c["programs"]
    assert any("jit_f" in name for name in cache_files(folder))

    second = run_program(env)
    c2 = second["counts"]
    assert c2["programs"] == c["programs"]
    assert c2["cache_hits"] == c2["programs"] and c2["cache_misses"] == 0  # nothing compiled again
    assert second["out"] == first["out"]  # the loaded executable computes the same bits
    assert second["stderr"] == ""


@pytest.mark.slow
def test_opt_out_leaves_jax_without_a_cache(tmp_path):
    off = run_program({"MNIST_JAX_CACHE": str(tmp_path), compilation.CACHE_ENV: "0"})
    assert off["dir"] is None and off["label"] is None
    assert off["counts"]["cache_hits"] == off["counts"]["cache_misses"] == 0
    assert off["counts"]["programs"] >= 1  # still counted
    assert cache_files(tmp_path / "xla") == []


@pytest.mark.slow
def test_a_users_own_jax_cache_folder_is_kept(tmp_path):
    mine = tmp_path / "mine"
    out = run_program({"MNIST_JAX_CACHE": str(tmp_path / "project"), compilation.JAX_DIR_ENV: str(mine)})
    assert out["dir"] == str(mine) and out["label"] == compilation.JAX_DIR_ENV  # named, not the path
    assert any("jit_f" in name for name in cache_files(mine))
    assert cache_files(tmp_path / "project" / "xla") == []


@pytest.mark.slow
def test_an_unwritable_cache_folder_leaves_the_cache_off_and_the_run_working(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")  # the cache folder would be a_file/xla: cannot be created, even by root
    reference = run_program({"MNIST_JAX_CACHE": str(tmp_path / "ok")})
    out = run_program({"MNIST_JAX_CACHE": str(blocker)})
    assert out["dir"] is None and out["out"] == reference["out"]
    assert "cannot write the compilation cache" in out["stderr"]
    assert len(out["stderr"].strip().splitlines()) == 1


CRASHING_WRITE = """
import json, os, sys
import mnist_jax, jax, jax.numpy as jnp
from mnist_jax import compilation

def crash(src, dst):
    raise OSError("killed between writing an entry and renaming it")

os.replace = crash  # what a kill in the middle of a write leaves behind
out = jax.jit(lambda x: x * 3 + 1)(jnp.arange(7.0))
print(json.dumps({"files": sorted(os.listdir(compilation.cache_dir())), "out": out.tolist()}))
"""


@pytest.mark.slow
def test_a_write_interrupted_before_its_rename_leaves_no_entry_to_damage_later_runs(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in (compilation.CACHE_ENV, compilation.JAX_DIR_ENV)}
    env.update(MNIST_JAX_CACHE=str(tmp_path), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", CRASHING_WRITE], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr  # a failed write is a warning, never an error
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["out"] == [3.0 * i + 1 for i in range(7)]
    # JAX alone would have left complete-looking entries written in place; nothing half-written remains.
    assert out["files"] == [], out["files"]
    assert "Error writing persistent compilation cache entry" in proc.stderr


def test_counts_follow_compilations_in_this_process():
    x, wider = jnp.ones(1237), jnp.ones(1238)  # g is a new function: traced and compiled (or loaded) anew
    before = compilation.counts()

    @jax.jit
    def g(x):
        return jnp.sin(x) * 2

    g(x).block_until_ready()
    g(x).block_until_ready()  # the same program: not compiled again
    delta = compilation.since(before)
    assert delta["programs"] == 1
    assert delta["compile_seconds"] > 0 and delta["trace_lower_seconds"] > 0
    g(wider).block_until_ready()
    assert compilation.since(before)["programs"] == delta["programs"] + 1


def test_run_in_workdir_records_every_compilation_of_the_run(tmp_path):
    def run(config, run_dir):
        x = jnp.arange(float(config.n))
        return {"total": float(jax.jit(lambda v: (v * v).sum())(x)), "timing": {"data_seconds": 0.0}}

    config = ml_collections.ConfigDict({"n": 1239})
    with workdir_lib.Workdir.open(tmp_path / "w", "toy") as wd:
        metrics = cli.run_in_workdir(wd, run, config, "test")
    c = metrics["timing"]["compilation"]
    assert c["programs"] >= 1 and c["compile_seconds"] > 0
    assert c["persistent_cache"] == compilation.cache_label()  # a label, not a path of this machine
    assert not os.path.isabs(c["persistent_cache"] or "")
    written = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert written["timing"]["compilation"]["programs"] == c["programs"]


def test_every_compile_takes_the_suites_xla_flags_here_and_in_the_processes_it_starts():
    """The suite's XLA flags (conftest: synthetic.SUITE_XLA_FLAGS in XLA_FLAGS) reach XLA's options
    in this process, whose backend started after conftest set them, and in a process it starts; a
    light compile sets a lower level over them."""
    from jax._src import compiler

    def levels():
        d = compiler.get_compile_options(1, 1).executable_build_options.debug_options
        return d.xla_backend_optimization_level, d.xla_llvm_disable_expensive_passes

    assert levels() == (0, True)  # a fast test: a light compile
    assert dict(compiler.get_compile_options(1, 1).env_option_overrides) == {}  # JAX's light options, no more
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        assert levels() == (1, True)
    finally:
        jax.config.update("jax_disable_most_optimizations", True)
    show = ("from jax._src import compiler; d = compiler.get_compile_options(1, 1).executable_build_options"
            ".debug_options; print(d.xla_backend_optimization_level, d.xla_llvm_disable_expensive_passes)")
    for env, want in ((os.environ, ["0", "True"]),  # a process started by a light-compiling test
                      ({k: v for k, v in os.environ.items() if k != "JAX_DISABLE_MOST_OPTIMIZATIONS"}, ["1", "True"])):
        out = subprocess.run([sys.executable, "-c", show], env=env, capture_output=True, text=True, check=True).stdout
        assert out.split() == want
    assert synthetic.with_suite_xla_flags("--xla_backend_optimization_level=3 --a=1") == (
        "--xla_backend_optimization_level=3 --a=1 --xla_llvm_disable_expensive_passes=true")
