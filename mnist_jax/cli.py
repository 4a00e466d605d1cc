"""The command line of every experiment and the lifecycle of its workdir: parse, validate,
open and lock the workdir, run, and commit config.json / metrics.json with their provenance.

An experiment module defines `run(config, workdir) -> metrics` and `reads(config)`, and ends with
`main = cli.entry_point(run, "configs/<name>.py", __doc__, __name__)`; this module does the rest
of the contract in docs/extending.md (config.json, metrics.json, exit codes, clear errors).
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import shutil
import sys
import sysconfig
import tempfile
import time
import traceback
from collections.abc import Callable

import ml_collections

from mnist_jax import compilation, distributed, preflight, provenance, registry, rehearsal, sweep, tensorboard, trained
from mnist_jax import data as data_lib
from mnist_jax import precision as precision_lib
from mnist_jax import workdir as workdir_lib
from mnist_jax.checkpoint import CheckpointError, is_disk_full, space_text
from mnist_jax.config import REPO_ROOT, ConfigError, load_config_module, parse_args


def entry_point(run: Callable[[ml_collections.ConfigDict, pathlib.Path], dict], default_config: str,
                description: str = "", module_name: str = "") -> Callable[[list[str] | None], int]:
    """The `main(argv)` of an experiment module: `main(run, argv, default_config, description)`.

    The module's last line is `main = cli.entry_point(run, "configs/x.py", __doc__, __name__)`:
    run as a script (`python -m experiments.x`, so `module_name == "__main__"`), it also runs
    `main` and exits with its code.
    """

    def entry(argv: list[str] | None = None) -> int:
        return main(run, argv, default_config, description)

    if module_name == "__main__":
        sys.exit(entry())
    return entry


def main(run: Callable[[ml_collections.ConfigDict, pathlib.Path], dict], argv: list[str] | None,
         default_config: str, description: str = "") -> int:
    """Parse, validate, open and lock the workdir, run, and commit config.json / metrics.json.

    The command runs every config whose ENTRY names it (`registry`). User errors print one line
    and return 2; missing data or a bad checkpoint return 1; Ctrl-C returns 130 with the epoch a
    rerun resumes from.

    Started as several processes (`mnist_jax.distributed`), every process trains and process 0
    alone opens, locks and commits the workdir and prints; a process that fails ends at once
    with its exit code, which stops the others (`distributed.exit_now`).
    """
    if distributed.initialize():
        try:
            code = _main(run, argv, default_config, description)
        except SystemExit as err:  # --help, or a usage error of the argument parser: the same everywhere
            code = err.code if isinstance(err.code, int) else 1
            if code == 0:
                raise
        except BaseException as err:  # noqa: BLE001 - anything unexpected must stop every process
            distributed.exit_now(1, err)
        if code != 0:
            distributed.exit_now(code)
        return code
    return _main(run, argv, default_config, description)


def _main(run: Callable[[ml_collections.ConfigDict, pathlib.Path], dict], argv: list[str] | None,
          default_config: str, description: str) -> int:
    workdir = None
    try:
        path, config = parse_args(argv, default_config, description)
        check_experiment(config, default_config)
        preflight.preflight(config, run)
        if not distributed.is_multiprocess():
            rehearse(run, config, pathlib.Path(path))
        workdir = distributed.on_writer(lambda: workdir_lib.Workdir.open(path, experiment_name(config, default_config)))
        run_in_workdir(workdir, run, config, provenance.command_line(argv, run.__module__), path)
    except distributed.WriterFailed as err:  # process 0 has said why
        return err.code
    except KeyboardInterrupt:
        if distributed.is_writer():
            print(f"interrupted; run again to resume from epoch {_resume_epoch(workdir)}", file=sys.stderr)
        return 130
    except Interrupted:
        return 130
    except ConfigError as err:
        if distributed.is_writer():  # every process checks the same config: process 0 says it
            print(f"error: {err}", file=sys.stderr)
        return 2
    except (data_lib.DataUnavailableError, CheckpointError) as err:
        print(f"error: {_who()}{err}", file=sys.stderr)
        return 1
    except OSError as err:
        if not is_disk_full(err):
            raise
        where = err.filename or (workdir.run_dir if workdir is not None else path)
        what = where if err.filename else f"into {where}"  # a figure's writer does not say which file
        print(f"error: {_who()}no space left on the device writing {what} ({space_text(where)}); free some and run "
              f"again to resume from epoch {_resume_epoch(workdir)}", file=sys.stderr)
        return 1
    finally:
        if workdir is not None:
            workdir.close()
            workdir.remove_if_unused()
    if workdir is not None:
        print(f"wrote {workdir.root / 'metrics.json'}")
    return 0


def experiment_name(config: ml_collections.ConfigDict, default_config: str) -> str:
    """The experiment a config runs: its `experiment` field, else the default config's name."""
    return config.get("experiment", None) or pathlib.Path(default_config).stem


def check_experiment(config: ml_collections.ConfigDict, default_config: str) -> str:
    """The config's experiment name; ConfigError when the registry (`configs/`) says another
    command runs that experiment."""
    name = experiment_name(config, default_config)
    this = load_config_module(REPO_ROOT / default_config).ENTRY
    entries = registry.entries_of(name)
    if this not in entries:
        runs = f"is run by {' or '.join(sorted(entries))}" if entries else "is not registered in configs/"
        raise ConfigError(f"--config is a config of experiment {name!r}, which {runs}; this command is {this}")
    return name


def run_in_workdir(workdir: workdir_lib.Workdir | None, run: Callable[[ml_collections.ConfigDict, pathlib.Path], dict],
                   config: ml_collections.ConfigDict, command: str, path: str | os.PathLike | None = None) -> dict:
    """Run `config` in the workdir's run directory and commit its outputs with its metrics, whose
    provenance names `command` and the code (and the code that wrote any checkpoints it resumed).

    The run resumes the unfinished run of the same config, if any; the committed config.json,
    metrics.json and everything else change only at the commit, all together. Any failure of a
    new run before its first checkpoint (a ConfigError, a crash, Ctrl-C) leaves the workdir as it
    was, an unfinished run of another config included (`Workdir.abandon`).

    In a multi-process run only process 0 has the open `workdir` and begins and commits the run;
    the others (`workdir` None) train in the run directory under `path` once process 0 made it.
    """
    def begin() -> tuple[pathlib.Path, str | None]:
        run_dir = workdir.begin(trained.to_jsonable(config.to_dict()))
        other_code = trained.foreign_checkpoints(run_dir)
        if other_code and trained.outside_part(other_code) != trained.outside_part(provenance.code_id()):
            # another version of a model file from outside the repository: its checkpoints are another model's
            print(f"{workdir.root}: its checkpoints were trained with other code from outside the repository "
                  f"({other_code}); training from the start")
            shutil.rmtree(run_dir / "checkpoints")
            other_code = None
        elif other_code:
            print(f"{workdir.root}: its checkpoints were written by other code ({other_code}); a resumed run says so "
                  "in its provenance")
        return run_dir, other_code

    began = distributed.on_writer(begin)
    shared = (pathlib.Path(path or ".").resolve() / workdir_lib.META / workdir_lib.RUN, None)
    run_dir, other_code = began if workdir is not None else shared
    try:
        metrics = measured_run(run, config, run_dir, command, other_code)
    except BaseException:
        if workdir is not None:
            workdir.abandon()
        raise
    section = getattr(sys.modules.get(run.__module__), "section", None)
    distributed.on_writer(lambda: workdir.commit(lambda d: write_outputs(d, metrics, config, section)))
    return metrics


def measured_run(run: Callable[[ml_collections.ConfigDict, pathlib.Path], dict], config: ml_collections.ConfigDict,
                 run_dir: pathlib.Path, command: str, other_code: str | None = None) -> dict:
    """`run(config, run_dir)`'s metrics with their wall time, the programs the run compiled and
    their provenance (`other_code`: the code that wrote the checkpoints it resumed, if other)."""
    started, start, compiled = provenance.now(), time.perf_counter(), compilation.counts()
    cache_at_start = compilation.cache_entries()
    compute_dtype, matmul = precision_lib.of_config(config)
    try:
        with precision_lib.matmul_precision(matmul):  # training and evaluation alike
            metrics = run(config, run_dir)
    finally:
        sweep.cancel_ahead()  # nothing this run queued compiles into the next one
    metrics.setdefault("timing", {})["wall_seconds"] = time.perf_counter() - start
    metrics["timing"]["compilation"] = {**compilation.since(compiled),  # every program of the run, not only training's
                                        "cache_entries_at_start": cache_at_start}
    prov = provenance.collect(command, started, precision=precision_lib.describe(compute_dtype, matmul))
    if other_code:
        prov["checkpoints_from"] = other_code
    return with_provenance(metrics, prov)


def rehearse(run: Callable[[ml_collections.ConfigDict, pathlib.Path], dict], config: ml_collections.ConfigDict,
             workdir: pathlib.Path | None = None, into: pathlib.Path | None = None) -> None:
    """Rehearse the experiment of `run` on `config` before it trains: its whole `run` with every
    program a stand-in (`mnist_jax.rehearsal`: traced, not compiled) in a temporary folder (or in
    `into`, which the caller keeps), then what the commit writes from its metrics (metrics.json,
    the REPORT section, TensorBoard events) and its README row. Whatever fails there for this
    config is a ConfigError (`rehearsed`), before anything compiles; the rehearsal's own output
    is not shown. A module that defines `rehearse(config, workdir)` rehearses that way instead
    (the job rehearses its stages). An (experiment, config) rehearses once per process, and not
    at all with MNIST_JAX_REHEARSAL=0."""
    if os.environ.get(REHEARSAL_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return
    module = sys.modules.get(run.__module__)
    own = getattr(module, "rehearse", None)
    if callable(own) and into is None:
        return rehearsed(lambda: own(config, workdir))
    key = (run.__module__, repr(trained.to_jsonable(config.to_dict())))
    if key in _rehearsed and into is None:
        return

    def outputs(run_dir: pathlib.Path) -> None:
        metrics = measured_run(run, config, run_dir, f"rehearsal of {run.__module__}")
        trained.write_json(run_dir / "config.json", trained.to_jsonable(config.to_dict()))
        write_outputs(run_dir, metrics, config, getattr(module, "section", None), strict=True)
        row = getattr(module, "row", None)
        if callable(row):
            row(trained.read_json(run_dir / "metrics.json"), trained.read_json(run_dir / "config.json"))

    if into is not None:
        into.mkdir(parents=True, exist_ok=True)
        rehearsed(lambda: outputs(into))
    else:
        with tempfile.TemporaryDirectory(prefix="mnist_jax-rehearsal-") as tmp:
            rehearsed(lambda: outputs(pathlib.Path(tmp)))
    _rehearsed.add(key)


def rehearsed(step: Callable[[], object]) -> None:
    """`step()` as a rehearsal: its programs stand-ins, its output not shown, and whatever it
    raises (but a user error, missing data, a damaged checkpoint or Ctrl-C, which stay what they
    are) a ConfigError that names the exception and where it was raised."""
    shown = io.StringIO()
    try:
        with rehearsal.rehearsing(), contextlib.redirect_stdout(shown), contextlib.redirect_stderr(shown):
            step()
    except (ConfigError, data_lib.DataUnavailableError, CheckpointError, KeyboardInterrupt, Interrupted):
        raise
    except Exception as err:  # noqa: BLE001 - what fails here would fail after training: this config's error
        frames = traceback.extract_tb(err.__traceback__)
        ours = [f for f in frames if not f.filename.startswith(_LIBRARIES)]  # the experiment's or a researcher's code
        frame = (ours or frames)[-1]
        where = f"{pathlib.Path(frame.filename).name}:{frame.lineno} in {frame.name}"
        caller = [f for f in ours if f.filename != frame.filename]
        if caller:  # the experiment's line that called it
            where += f", from {pathlib.Path(caller[-1].filename).name}:{caller[-1].lineno} in {caller[-1].name}"
        what = next((line.strip()[:300] for line in str(err).splitlines() if line.strip()), "")
        raise ConfigError(f"this config fails in its rehearsal, before anything trains ({type(err).__name__}: "
                          f"{what}, at {where}); after training it would fail the same way "
                          f"({REHEARSAL_ENV}=0 skips the rehearsal)") from err


REHEARSAL_ENV = "MNIST_JAX_REHEARSAL"
_LIBRARIES = tuple(sysconfig.get_paths()[k] for k in ("stdlib", "purelib", "platlib"))
_rehearsed: set = set()  # (experiment module, config) rehearsed in this process


def write_outputs(run_dir: pathlib.Path, metrics: dict, config: ml_collections.ConfigDict,
                  section: Callable[[dict], str] | None = None, strict: bool = False) -> None:
    """What the commit adds to the run: metrics.json, its REPORT.md (the experiment's `section`
    of these metrics, with their provenance: any workdir gets one, a stage of the study's job or
    not) and, unless `config.tensorboard` is False, the TensorBoard event files of its runs
    (`mnist_jax.tensorboard`), so all appear together or not at all. A section that cannot be
    rendered costs the report, never the results: one line says so (`strict`: the rehearsal's error)."""
    trained.write_json(run_dir / "metrics.json", metrics)
    plain = trained.read_json(run_dir / "metrics.json")  # the metrics as a reader of the file sees them
    if section is not None:
        try:
            text = f"{section(plain)}\n\n{provenance.describe(plain.get('provenance'))}\n"
        except Exception as err:  # noqa: BLE001 - the report is derived; the results it comes from stand
            if strict:
                raise
            print(f"warning: REPORT.md not written ({type(err).__name__}: {err}); metrics.json has every number",
                  file=sys.stderr)
        else:
            workdir_lib.write_text_atomic(run_dir / "REPORT.md", text)
    if config.get("tensorboard", True):
        tensorboard.write(run_dir, plain)


def with_provenance(metrics: dict, prov: dict) -> dict:
    """metrics with `schema_version` and `provenance` first, as every metrics.json has them."""
    return {"schema_version": provenance.SCHEMA_VERSION, "provenance": prov,
            **{k: v for k, v in metrics.items() if k not in ("schema_version", "provenance")}}


def config_matches(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> bool:
    """Whether the workdir's committed run (config.json, written only together with its results)
    had exactly `config`."""
    path = pathlib.Path(workdir) / "config.json"
    return path.exists() and trained.read_json(path) == trained.to_jsonable(config.to_dict())


class Interrupted(Exception):
    """A nested experiment was interrupted and has said so: exit 130 without another message."""


def _resume_epoch(workdir: workdir_lib.Workdir | None) -> int:
    """The epoch a rerun of the same config resumes from (0 when this run was undone or never began)."""
    return workdir_lib.checkpoint_epoch(workdir.run_dir) if workdir is not None and not workdir.abandoned else 0


def _who() -> str:
    """'process K: ' in a multi-process run, where an error may be one process's own."""
    return f"process {distributed.process_index()}: " if distributed.is_multiprocess() else ""
