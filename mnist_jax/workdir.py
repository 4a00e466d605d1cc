"""A workdir as a small database: a marker, a lock, and runs committed as one transaction.

Layout of a workdir made by mnist-jax:

    .mnist_jax/workdir.json   the marker: made by mnist-jax, for which experiment, and the list
                              of entries the last committed run put in the workdir (its manifest)
    .mnist_jax/lock           held with fcntl.flock by the one process working in the workdir
    .mnist_jax/run/           the run in progress: its config.json, checkpoints, figures, params
    config.json, metrics.json, figures, params/, checkpoints/ ...   the last committed run

A run trains into `.mnist_jax/run/`; only when it has its metrics does `commit` swap the old
committed entries for the new ones (a journal in the marker lets the next process finish a
commit that a kill interrupted). So the committed config.json always made the committed results,
an interrupted or rejected run leaves them untouched, and mnist-jax deletes only entries that
its manifest lists or that live under `.mnist_jax/`. A folder that holds other files and no
marker, or the marker of another experiment, is refused.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pathlib
import re
import shutil
from typing import Any

from mnist_jax import rehearsal
from mnist_jax.config import ConfigError

META = ".mnist_jax"
MARKER = "workdir.json"
LOCK = "lock"
RUN = "run"
RUN_NEW = "run.new"  # a run directory being prepared (renamed to RUN when complete)
RUN_PREVIOUS = "run.previous"  # the interrupted run of another config, kept until the new one is accepted
OLD = "old"  # committed entries being replaced
MADE_BY = "mnist-jax"
PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")


class WorkdirError(ConfigError):
    """A workdir that cannot be used as asked (another experiment's, foreign files, in use)."""


def is_plain_name(name: Any) -> bool:
    """Whether `name` can be a file name inside a workdir: no separator, not '.' or '..', not hidden."""
    return isinstance(name, str) and PLAIN_NAME.fullmatch(name) is not None and name not in (".", "..")


def temp_path(path: pathlib.Path) -> pathlib.Path:
    """The fixed temporary name used while writing `path` (overwritten by the next writer)."""
    return path.with_name(f".{path.name}.tmp")


def write_text_atomic(path: pathlib.Path, text: str) -> None:
    """Write `text` to `path` through a fixed temporary name, fsync and rename."""
    tmp = temp_path(path)
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:  # a full disk names the file it could not write
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror, str(path)) from None
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def read_json_file(path: pathlib.Path, what: str) -> Any:
    """JSON of `path`, or WorkdirError naming the file when it is unreadable or truncated."""
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise WorkdirError(f"{str(path)!r} is not valid JSON ({err.msg}, line {err.lineno}): {what} "
                           "is damaged; move it away or use another --workdir") from None
    except UnicodeDecodeError:
        raise WorkdirError(f"{str(path)!r} is not valid JSON (not UTF-8 text): {what} is damaged; move it away or "
                           "use another --workdir") from None
    except OSError as err:
        raise WorkdirError(f"{str(path)!r} cannot be read ({err.strerror or err})") from None


def _exists(path: pathlib.Path) -> bool:
    return path.exists() or path.is_symlink()


def _remove(path: pathlib.Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif _exists(path):
        path.unlink()


def has_checkpoint(run_dir: pathlib.Path) -> bool:
    """Whether the run in `run_dir` has written a checkpoint of any of its trainings."""
    try:
        return any(p.name.isdigit() and p.is_dir() for p in (run_dir / "checkpoints").glob("*/*/*"))
    except OSError:
        return False


def checkpoint_epoch(run_dir: pathlib.Path) -> int:
    """The epoch a rerun resumes from: the newest checkpoint of the training touched last (0: none)."""
    ckpts = run_dir / "checkpoints"
    if not ckpts.is_dir():
        return 0
    trainings = sorted((d for d in ckpts.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime)
    if not trainings:
        return 0
    epochs = []
    for runs in trainings[-1].iterdir():
        steps = [int(p.name) for p in runs.iterdir() if p.is_dir() and p.name.isdigit()] if runs.is_dir() else []
        epochs.append(max(steps, default=0))
    return min(epochs, default=0)


MARKER_STATES = ("committed", "committing")


def load_marker(path: pathlib.Path) -> dict:
    """The marker at `path`, checked before any of it is used: an mnist-jax marker whose entry
    lists (`files`, and `replacing` while committing) hold plain names only, so that nothing
    outside the workdir is ever read or deleted on its word. WorkdirError naming the file otherwise."""
    marker = read_json_file(path, "the workdir's marker")

    def damaged(why: str) -> WorkdirError:
        return WorkdirError(f"{str(path)!r} is damaged ({why}): mnist-jax changes nothing on its word; copy out what "
                            "you want to keep and use another --workdir")

    if not isinstance(marker, dict):
        raise damaged(f"it holds {json.dumps(marker)[:40]}, not a JSON object")
    if marker.get("made_by") != MADE_BY:
        raise damaged("it is not an mnist-jax marker")
    if not is_plain_name(marker.get("experiment")):
        raise damaged(f"experiment {marker.get('experiment')!r} is not a plain name")
    state = marker.get("state", "committed")
    if state not in MARKER_STATES:
        raise damaged(f"state {state!r} is not one of {', '.join(MARKER_STATES)}")
    for key in ("files", "replacing") if state == "committing" else ("files",):
        entries = marker.get(key)
        if not isinstance(entries, list):
            raise damaged(f"{key!r} is {json.dumps(entries)[:40]}, not a list of names")
        bad = [e for e in entries if not is_plain_name(e)]
        if bad:
            raise damaged(f"{key!r} entry {json.dumps(bad[0])[:60]} is not a plain file name inside the workdir")
    return marker


class Workdir:
    """An open workdir: its marker read, its lock held (until `close`)."""

    def __init__(self, root: pathlib.Path, experiment: str, lock_fd: int, created: bool):
        self.root, self.experiment, self._lock_fd, self.created = root, experiment, lock_fd, created
        self.meta = root / META
        self._new_run = False
        self.abandoned = False  # whether this process's run was undone (`abandon`): nothing of it is left to resume
        self.fresh = False  # whether this process marked the folder (nothing was committed before)

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike, experiment: str) -> Workdir:
        """Open (creating it if needed) the workdir `path` for `experiment` and lock it.

        Raises WorkdirError, before changing anything, for an empty path, a path that is not a
        folder, a folder with files mnist-jax did not make, another experiment's workdir, or a
        workdir another process works in. A rehearsal (`mnist_jax.rehearsal`) opens none: its
        stand-in numbers must never become a result.
        """
        if rehearsal.active():
            raise RuntimeError(f"a rehearsal tried to open the workdir {os.fspath(path)!r}: a rehearsal writes only into "
                               "its own temporary folder")
        text = os.fspath(path)
        if not text.strip():
            raise WorkdirError("--workdir is empty: name a folder for the run")
        if not is_plain_name(experiment):
            raise WorkdirError(f"config.experiment={experiment!r} is not a plain name (letters, digits, '_', '-', '.')")
        root = pathlib.Path(text)
        if root.exists() and not root.is_dir():
            raise WorkdirError(f"--workdir {text!r} is not a folder")
        created = not root.exists()
        if not created:
            check_adoptable(root, experiment)
        try:
            root.mkdir(parents=True, exist_ok=True)
            (root / META).mkdir(exist_ok=True)
            fd = os.open(root / META / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise WorkdirError(f"--workdir {text!r} is not a writable folder ({err.strerror or err})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise WorkdirError(f"--workdir {text!r} is in use by another mnist-jax process (pid {holder}); "
                                   "wait for it to finish or use another folder") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self = cls(root.resolve(), experiment, fd, created)
        try:
            marker = self.read_marker()
            if marker is None:
                self.write_marker({"files": []})
                self.fresh = True
            elif marker.get("experiment") != experiment:
                raise WorkdirError(f"--workdir {text!r} is a workdir of experiment {marker.get('experiment')!r}; "
                                   f"use another folder for {experiment!r}")
            self.recover()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Release the lock."""
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Workdir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the marker ------------------------------------------------------------------------

    def read_marker(self) -> dict | None:
        path = self.meta / MARKER
        return load_marker(path) if path.exists() else None

    def write_marker(self, fields: dict) -> None:
        marker = {"made_by": MADE_BY, "experiment": self.experiment, "state": "committed", **fields}
        write_text_atomic(self.meta / MARKER, json.dumps(marker, indent=1, sort_keys=True))

    def committed_files(self) -> list[str]:
        marker = self.read_marker() or {}
        return list(marker.get("files", []))

    def committed_config(self) -> dict | None:
        """The config of the committed run, or None when nothing is committed."""
        if "config.json" not in self.committed_files():
            return None
        return read_json_file(self.root / "config.json", "the committed config")

    # -- the run in progress ---------------------------------------------------------------

    @property
    def run_dir(self) -> pathlib.Path:
        return self.meta / RUN

    def begin(self, config: dict) -> pathlib.Path:
        """The run directory for `config`: the interrupted run of the same config (resumed), or a new one.

        A new run starts from the committed checkpoints when the committed run had the same config;
        an interrupted run of another config is set aside until the new run has a checkpoint of its
        own: restored by `abandon` or by the next `recover` when the new run fails or is killed
        before that, dropped by `commit` or by a `recover` after it.
        """
        run, new = self.run_dir, self.meta / RUN_NEW
        _remove(new)
        if run.is_dir():
            staged = run / "config.json"
            same = staged.exists() and _read_or_none(staged) == config
            if same:
                return run
            epoch = checkpoint_epoch(run)
            _remove(self.meta / RUN_PREVIOUS)
            os.replace(run, self.meta / RUN_PREVIOUS)
            if has_checkpoint(self.meta / RUN_PREVIOUS):
                print(f"{self.root}: the config differs from the one its unfinished run (epoch {epoch}) was trained "
                      "with; training this config from the start (the unfinished run is kept, resumable, until this "
                      "one writes its first checkpoint)")
        new.mkdir()
        committed = self.committed_config()
        if committed == config and (self.root / "checkpoints").is_dir():
            shutil.copytree(self.root / "checkpoints", new / "checkpoints", symlinks=True)
        elif committed is not None and (self.root / "checkpoints").is_dir():
            print(f"{self.root}: the config differs from the one its checkpoints were trained with; "
                  "discarding them and training from the start (the committed results stay until this run ends)")
        write_text_atomic(new / "config.json", json.dumps(config, indent=1))
        os.replace(new, run)
        self._new_run = True
        return run

    def abandon(self) -> None:
        """Undo `begin` for a new run that failed before its first checkpoint: the workdir is as
        it was before (an unfinished run of another config it set aside is resumable again)."""
        if not self._new_run or has_checkpoint(self.run_dir):
            return
        _remove(self.run_dir)
        previous = self.meta / RUN_PREVIOUS
        if previous.exists():
            os.replace(previous, self.run_dir)
        self._new_run, self.abandoned = False, True
        if self.fresh and not self.committed_files():
            _remove(self.meta / MARKER)

    def remove_if_unused(self) -> None:
        """After `close`: unmark a folder this process marked and left with nothing in it (and
        remove it when this process created it)."""
        if self.fresh and not (self.meta / MARKER).exists() and not (self.meta / RUN).exists():
            _remove(self.meta)
            if self.created:
                try:
                    self.root.rmdir()
                except OSError:
                    pass

    # -- committing ------------------------------------------------------------------------

    def commit(self, write_metrics) -> list[str]:
        """`write_metrics(run_dir)` writes metrics.json into the run; then the run replaces the
        committed entries as one step. Returns the committed entries."""
        run = self.run_dir
        write_metrics(run)
        for stray in run.glob(".*.tmp"):
            stray.unlink()
        new = sorted(p.name for p in run.iterdir() if is_plain_name(p.name))  # what a marker may list (others go with the run)
        old = self.committed_files()
        foreign = [n for n in new if n not in old and _exists(self.root / n)]
        if foreign:
            raise WorkdirError(f"{self.root}: {', '.join(foreign)} would be replaced but mnist-jax did not make "
                               "it; move it away and run again (the finished run is kept and committed then)")
        self.write_marker({"state": "committing", "files": new, "replacing": old})
        self._finish_commit(new, old)
        return new

    def _finish_commit(self, new: list[str], old: list[str]) -> None:
        run, trash = self.run_dir, self.meta / OLD
        trash.mkdir(exist_ok=True)
        for name in old:
            target = self.root / name
            if _exists(target) and (name not in new or _exists(run / name)):
                _remove(trash / name)
                os.replace(target, trash / name)
        for name in new:
            if _exists(run / name):
                os.replace(run / name, self.root / name)
        self.write_marker({"files": new})
        _remove(trash)
        _remove(run)
        _remove(self.meta / RUN_PREVIOUS)
        self._new_run = False

    def recover(self) -> None:
        """Finish a commit a kill interrupted; drop what a killed `begin` left half made."""
        marker = self.read_marker() or {}
        if marker.get("state") == "committing":
            self._finish_commit(list(marker.get("files", [])), list(marker.get("replacing", [])))
        _remove(self.meta / RUN_NEW)
        _remove(self.meta / OLD)
        previous = self.meta / RUN_PREVIOUS
        if self.run_dir.exists() and previous.exists() and not has_checkpoint(self.run_dir):
            _remove(self.run_dir)  # a run killed before its first checkpoint: the one it set aside is resumable again
        if self.run_dir.exists():
            _remove(previous)
        elif previous.exists():
            os.replace(self.meta / RUN_PREVIOUS, self.run_dir)
        for stray in self.meta.glob(".*.tmp"):
            stray.unlink()

    def discard(self) -> None:
        """Remove the committed run and any unfinished one (only what mnist-jax made)."""
        old = self.committed_files()
        self.write_marker({"state": "committing", "files": [], "replacing": old})
        self._finish_commit([], old)


def _read_or_none(path: pathlib.Path) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def check_adoptable(root: pathlib.Path, experiment: str) -> None:
    """WorkdirError unless `root` is empty or a workdir mnist-jax made for `experiment`."""
    marker_path = root / META / MARKER
    if marker_path.exists():
        marker = load_marker(marker_path)
        if marker.get("experiment") != experiment:
            raise WorkdirError(f"--workdir {str(root)!r} is a workdir of experiment {marker.get('experiment')!r}; "
                               f"use another folder for {experiment!r}")
        return
    try:
        entries = sorted(p.name for p in root.iterdir() if p.name != META)
    except OSError as err:
        raise WorkdirError(f"--workdir {str(root)!r} cannot be read ({err.strerror or err})") from None
    if entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        if "config.json" in entries:
            raise WorkdirError(f"--workdir {str(root)!r} has no {META}/ marker (made by an older mnist-jax, or not by "
                               f"mnist-jax: {shown}); it is left as it is: use a new or empty folder")
        raise WorkdirError(f"--workdir {str(root)!r} holds files mnist-jax did not make ({shown}); "
                           "use a new or empty folder")


def committed_state(path: str | os.PathLike) -> dict | None:
    """For readers: the marker of a workdir whose last commit is complete (finishing an
    interrupted one when no process holds the workdir); None for a folder without a marker."""
    root = pathlib.Path(path)
    marker_path = root / META / MARKER
    if not marker_path.exists():
        return None
    marker = load_marker(marker_path)
    if marker.get("state") == "committing":
        try:
            wd = Workdir.open(root, marker["experiment"])
        except WorkdirError:
            raise WorkdirError(f"--workdir {str(root)!r} is being updated by another process; "
                               "try again when it has finished") from None
        wd.close()
        marker = load_marker(marker_path)
    marker["unfinished_run"] = (root / META / RUN).is_dir()
    return marker


def discard(path: str | os.PathLike, experiment: str) -> None:
    """Remove the runs mnist-jax made in the workdir `path` (committed and unfinished), nothing else.
    In a multi-process run process 0 does it and the others wait for it."""
    from mnist_jax import distributed

    def remove() -> None:
        if not (pathlib.Path(path) / META / MARKER).exists():
            return
        with Workdir.open(path, experiment) as wd:
            wd.discard()

    distributed.on_writer(remove)


def root_of(run_dir: pathlib.Path) -> pathlib.Path:
    """The workdir whose run directory is `run_dir` (for jobs, like reproduce, that make sub-workdirs)."""
    run_dir = pathlib.Path(run_dir)
    return run_dir.parent.parent if run_dir.parent.name == META else run_dir
