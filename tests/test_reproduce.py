"""The main job end to end (quick profile, on synthetic digits): REPORT.md, its figures and numbers, resume,
reuse, evaluate on every stage, the vae stage's samples and a conditional run that reuses its
classifier, stages in parallel processes."""

import json
import re
import shutil

import numpy as np
import pytest
import synthetic

from experiments import reproduce
from experiments import sweep as sweep_experiment
from mnist_jax import cli, registry, training
from mnist_jax.sweep import num_runs

# its module fixture is built once: every test of this file runs on one pytest-xdist worker
pytestmark = pytest.mark.xdist_group("test_reproduce")

NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")


def numeric_leaves(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from numeric_leaves(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from numeric_leaves(v)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield obj


def renderings(v) -> set[str]:
    """Every way the report may print a metric: as is, as a percentage, rounded, with commas."""
    out = {f"{v:g}", f"{v:,}" if isinstance(v, int) else f"{v:g}"}
    for scale in (1, 100):
        for digits in range(5):
            out.add(f"{abs(scale * v):.{digits}f}")
    return out


RAN = {}  # experiment: (its config, the runs of every grid it trained), filled by `quick_job`


@pytest.fixture(scope="module", autouse=True)
def shrunk_stages():
    """Every job of this module runs its stages as `test_experiments` shrinks them, candidates aside
    (`shrink_stages(job=True)`): the job compiles the programs those tests compile (one of them loads
    them from the persistent compilation cache), the search has its profile's rounds, and the mlp
    stage (`RESUMED_IN_JOB`) keeps its profile's epochs, so that it checkpoints more than once and
    resumes from an earlier epoch. A rerun finds the stages the fixture made complete."""
    from test_experiments import shrink_stages

    with pytest.MonkeyPatch.context() as mp:
        shrink_stages(mp, job=True)
        yield


@pytest.fixture(scope="module")
def quick_job(tmp_path_factory, shrunk_stages):
    """The quick profile, every stage shrunk (`shrunk_stages`), on synthetic digits
    (`tests/synthetic.py`) here and in the processes it starts, compiled with light optimization:
    these tests check the job's report, resume, reuse and processes, which MNIST's accuracy does not
    enter (each experiment's own integration test trains on the real MNIST). Each stage's config
    and grids go into `RAN`."""
    real_run, real_train_grid = cli.run_in_workdir, training.train_grid

    def run_in_workdir(workdir, run, config, *a, **k):
        RAN[config.experiment] = (config, [])
        return real_run(workdir, run, config, *a, **k)

    def train_grid(task, spec, hp, seeds, *a, **k):
        list(RAN.values())[-1][1].append(num_runs(seeds))
        return real_train_grid(task, spec, hp, seeds, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        synthetic.install(mp.setattr)
        synthetic.for_processes(mp, synthetic.SYNTHETIC_TRAIN)
        with synthetic.light_compiles(mp):
            workdir = tmp_path_factory.mktemp("reproduce")
            with pytest.MonkeyPatch.context() as recording:  # this job only, not the tests' later runs
                recording.setattr(cli, "run_in_workdir", run_in_workdir)
                recording.setattr(training, "train_grid", train_grid)
                assert reproduce.main(["--workdir", str(workdir)]) == 0
            yield workdir


@pytest.mark.integration
def test_every_stage_writes_what_its_experiment_promises(quick_job, tmp_path):
    """Each stage's outputs, as `test_experiments` checks a config of every experiment module
    (the grid its preflight counted, finite numbers, figures, section, seeds, choice, every model
    it declares applied): a session that runs this test leaves out that test of each stage."""
    from test_experiments import check_outputs

    assert [name for name in RAN if name != "reproduce"] == [s.name for s in registry.stages()]
    for stage in registry.stages():
        config, grids = RAN[stage.name]
        folder = tmp_path / stage.name
        folder.mkdir()
        check_outputs(stage, quick_job / stage.name, config, grids, folder)


@pytest.mark.integration
def test_quick_profile_writes_a_report_whose_figures_and_numbers_are_real(quick_job):
    report = (quick_job / "REPORT.md").read_text()
    assert "Quick profile" in report
    for stage in registry.stages():
        assert (quick_job / stage.name / "metrics.json").exists(), stage.name
        assert "Not run" not in report
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(figures) >= len(registry.stages())
    for fig in figures:
        assert (quick_job / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", fig

    allowed = set()
    for path in quick_job.rglob("metrics.json"):
        for v in numeric_leaves(json.loads(path.read_text())):
            allowed |= renderings(v)
    lines = report.splitlines()
    headers = {i - 1 for i, line in enumerate(lines) if line.startswith("| ---")}  # the line above a rule
    rows = [line for i, line in enumerate(lines) if line.startswith("|") and not line.startswith("| ---")
            and i not in headers]
    checked = 0
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        for i, cell in enumerate(cells):
            if i == 0 and re.search(r"[a-df-z]", cell):
                continue  # a row label such as "test accuracy (%), mean ± std over 3 seeds"
            for token in NUMBER.findall(cell):
                checked += 1
                assert token in allowed, f"{token!r} in {line!r} is in no metrics.json"
    assert checked > 20


@pytest.mark.integration
def test_cnn_search_reuses_runs_it_already_has_instead_of_training_them_twice(quick_job):
    m = json.loads((quick_job / "cnn_search" / "metrics.json").read_text())
    r1, r2, r3 = (m["rounds"][k] for k in ("round1_filters", "round2_dense", "round3_dropout"))
    # quick profile: filters [8, 16], dense [0, 16], dropout [0.5, 0.8]; 0 units and rate 0.5
    # are the previous round's winner, so only 2 + 1 + 1 programs train.
    assert [t["program"] for t in m["timing"]["programs"]] == [
        "round1_filters8", "round1_filters16", "round2_dense16", "round3_dropout"]
    assert r2["candidates"][0]["val_accuracy"] == r1["candidates"][r1["chosen_index"]]["val_accuracy"]
    assert [c["value"] for c in r3["candidates"]] == [0.5, 0.8]
    assert r3["candidates"][0]["val_accuracy"] == r2["candidates"][r2["chosen_index"]]["val_accuracy"]
    assert m["rounds"]["round3_dropout"]["candidates"][1]["timing"]["runs"] == 2


@pytest.mark.integration
def test_the_vae_stage_writes_samples_bounds_and_figures(quick_job):
    """What the vae experiment writes (shrunk: 2 seeds, 1 epoch, a small IWAE, an MLP judge), not
    how well it generates (test_vae trains on MNIST)."""
    workdir = quick_job / "vae"
    config = json.loads((workdir / "config.json").read_text())
    n = config["n_samples"]
    samples = np.load(workdir / "samples.npy")
    assert samples.shape == (n, 28, 28) and samples.dtype == np.float32
    assert samples.min() >= 0.0 and samples.max() <= 1.0
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert len(metrics["test_neg_elbo"]["per_seed"]) == config["seeds"] == 2
    assert metrics["iwae"]["images"] == config["iwae_images"] and metrics["iwae"]["k"] == config["iwae_k"] > 1
    assert metrics["iwae"]["nll"]["mean"] <= metrics["iwae"]["neg_elbo_same_images"]["mean"]
    quality = metrics["sample_quality"]
    assert quality["classifier"]["kind"] == "mlp" and sum(quality["label_histogram_run0"]) == n
    assert 0.0 <= quality["confident_share"]["mean"] <= 1.0
    assert quality["frechet_distance"]["mean"] > quality["real_digits"]["frechet_distance"]
    for name in ("vae_samples", "vae_reconstructions", "vae_latent", "vae_interpolation", "vae_elbo"):
        assert (workdir / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.integration
def test_a_conditional_vae_run_draws_requested_digits_judged_by_the_stages_classifier(quick_job, tmp_path):
    from experiments import vae

    argv = ["--workdir", str(tmp_path), "--config.seeds=1", "--config.epochs=1", "--config.iwae_images=10",
            "--config.iwae_k=20", "--config.map_epochs=0", "--config.n_samples=200", "--config.model.conditional=True",
            "--config.digits=[7, 2]", f"--config.classifier.workdir={quick_job / 'vae'}"]
    assert vae.main(argv) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    quality = metrics["sample_quality"]
    assert quality["classifier"]["source"].startswith("the classifier trained by the vae run")
    assert quality["classifier"]["kind"] == "mlp"
    assert 0.0 <= quality["label_agreement"]["mean"] <= 1.0
    assert np.load(tmp_path / "samples.npy").shape == (200, 28, 28)
    assert (tmp_path / "vae_conditional.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "vae_latent.png").exists()  # map_epochs=0 and a 32-D latent: no map


@pytest.mark.integration
def test_interrupted_experiment_resumes_to_identical_metrics_and_complete_ones_are_kept(quick_job, tmp_path, capsys):
    job = tmp_path / "job"
    shutil.copytree(quick_job, job)
    mlp = job / "mlp"
    before = json.loads((mlp / "metrics.json").read_text())
    (mlp / "metrics.json").unlink()  # interrupted after an early checkpoint ...
    ckpts = mlp / "checkpoints" / "train"
    run_dir = next(ckpts.iterdir())
    steps = sorted(int(p.name) for p in run_dir.iterdir() if p.name.isdigit())
    for step in steps[1:]:
        shutil.rmtree(run_dir / str(step))  # ... keep only the oldest checkpoint
    assert reproduce.main(["--workdir", str(job), "--config.only=mlp,l2_sweep"]) == 0
    out = capsys.readouterr().out
    assert "l2_sweep (quick" in out and "not redone" in out
    after = json.loads((mlp / "metrics.json").read_text())
    assert after["resumed_from_epoch"] == steps[0]
    assert after["history"] == before["history"]
    assert after["test_accuracy"] == before["test_accuracy"]


def test_unknown_experiment_and_profile_are_clear_errors(tmp_path, capsys):
    assert reproduce.main(["--workdir", str(tmp_path), "--config.only=mlp,nope"]) == 2
    assert "unknown experiments ['nope']" in capsys.readouterr().err
    assert reproduce.main(["--workdir", str(tmp_path), "--config.profile=huge"]) == 2
    assert "profile='huge' is not allowed" in capsys.readouterr().err


def test_report_says_which_sweep_values_differ_beyond_seed_noise():

    def row(v, mean, p):
        return {"l2": v, "test_error_pct": {"mean": mean}, "vs_first_value_welch": {"p_value": p}}

    rows = [row(0.0, 1.9, 1.0), row(1e-5, 1.85, 0.4), row(1e-3, 2.1, 0.001)]
    text = sweep_experiment.beyond_noise(rows, "l2")
    assert "l2 = 0.001 is worse (p = 0.001) beyond seed noise" in text and "Welch p >= 0.40" in text
    assert "no value differs beyond seed noise" in sweep_experiment.beyond_noise(rows[:2], "l2")
    assert "is better" in sweep_experiment.beyond_noise([rows[0], row(1e-4, 1.7, 0.01)], "l2")
    assert sweep_experiment.beyond_noise([rows[0], row(1e-4, 1.7, None)], "l2") == ""


@pytest.mark.integration
def test_every_report_section_names_the_code_that_made_it(quick_job):
    from mnist_jax import provenance

    report = (quick_job / "REPORT.md").read_text()
    code = provenance.short_code(provenance.code_version())
    assert report.count(f"Made by {code} on ") == len(registry.stages())
    assert f"Every result below was made by {code}." in report and "Mixed code" not in report
    for stage in registry.stages():
        m = json.loads((quick_job / stage.name / "metrics.json").read_text())
        assert m["schema_version"] == provenance.SCHEMA_VERSION
        assert m["provenance"]["code_id"] == provenance.code_id(), stage.name


@pytest.mark.integration
def test_a_stage_made_by_other_code_is_trained_again_unless_reuse_any(quick_job, tmp_path, capsys):
    job = tmp_path / "job"
    shutil.copytree(quick_job, job)
    path = job / "mlp" / "metrics.json"

    def made_by_other_code():
        m = json.loads(path.read_text())
        m["provenance"]["code_id"] = "git:0000000000000000000000000000000000000000"
        m["provenance"]["code"] = {"source": "git", "commit": "0" * 40, "dirty": False}
        path.write_text(json.dumps(m))
        return m

    old = made_by_other_code()
    assert reproduce.main(["--workdir", str(job), "--config.only=mlp"]) == 0
    assert "made by other code (git:0000000" in capsys.readouterr().out
    new = json.loads(path.read_text())
    assert new["resumed_from_epoch"] is None  # from the start, not from the other code's checkpoints
    assert new["history"] == old["history"]  # same numbers: the code that changed moved none
    made_by_other_code()
    assert reproduce.main(["--workdir", str(job), "--config.only=mlp,cnn", "--config.reuse=any"]) == 0
    assert "not redone" in capsys.readouterr().out
    report = (job / "REPORT.md").read_text()
    assert "> **Mixed code**" in report and "commit 0000000: mlp" in report


@pytest.mark.integration
def test_evaluate_applies_every_stage_that_trains_a_model(quick_job, tmp_path, capsys):
    from experiments import evaluate

    images = tmp_path / "x.npy"
    np.save(images, np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8))
    for stage in registry.stages():
        workdir = quick_job / stage.name
        m = json.loads((workdir / "metrics.json").read_text())
        c = json.loads((workdir / "config.json").read_text())
        args = ["--workdir", str(workdir), "--images", str(images), "--out", str(tmp_path / f"{stage.name}.npy")]
        if stage.name == "cnn_search":
            assert evaluate.main(args) == 2 and "saves no trained model" in capsys.readouterr().err
            continue
        if stage.name == "denoise":
            args += ["--level", f"{c['noise_levels'][-1]:g}"]
            n = c["seeds"]  # seeds at that level
        elif stage.name == "noise_accuracy":
            args += ["--curve", "denoised", "--level", f"{c['noise_levels'][-1]:g}"]
            n = c["seeds"]
        else:
            n = len(m["runs"])  # every run: for a sweep, values x seeds (not its base seeds)
            assert n == len(m["history"]["loss"])
        assert evaluate.main([*args, "--seed", str(n - 1)]) == 0, stage.name
        out = np.load(tmp_path / f"{stage.name}.npy")
        assert out.shape[0] == 7 and (out.dtype == np.int64 or (0 <= out.min() and out.max() <= 1)), stage.name
        capsys.readouterr()
        assert evaluate.main([*args, "--seed", str(n)]) == 2, stage.name
        assert f"this workdir has runs 0..{n - 1}" in capsys.readouterr().err, stage.name


@pytest.mark.integration
def test_stages_in_parallel_processes_give_the_same_numbers(quick_job, tmp_path, capsys):
    from mnist_jax import compare

    job = tmp_path / "job"
    shutil.copytree(quick_job, job)
    assert reproduce.main(["--workdir", str(job), "--config.only=mlp,label_smoothing", "--config.force=True",
                           "--config.jobs=2"]) == 0
    out = capsys.readouterr().out
    assert "up to 2 at once" in out and "[mlp] " in out and "[label_smoothing] " in out
    for name in ("mlp", "label_smoothing"):
        assert compare.compare_workdirs(quick_job / name, job / name) == [], name
        m = json.loads((job / name / "metrics.json").read_text())
        assert m["provenance"]["command"].startswith("python -m experiments."), m["provenance"]["command"]


def test_stage_processes_report_failures_and_share_the_gpu(tmp_path, capsys):
    from mnist_jax.config import ConfigError

    good = tmp_path / "good.json"
    good.write_text('{"a": 1}')
    ok = registry.Experiment("ok", "json.tool", good)
    bad = registry.Experiment("bad", "json.tool", tmp_path / "missing.json")
    started = []
    with pytest.raises(ConfigError, match=r"bad \(exit code 2\)"):
        reproduce.run_in_processes([ok, bad], lambda s: [str(s.config)], 2, started.append)
    out = capsys.readouterr().out
    assert started == [ok, bad] and "[ok] {" in out and '[ok]     "a": 1' in out and "[bad] usage:" in out
    assert reproduce.stage_env(3, {})["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.30"
    mine = reproduce.stage_env(3, {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"})
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in mine and mine["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
