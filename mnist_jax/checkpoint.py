"""Orbax checkpoints of a sweep's state and history, written atomically and checksummed.

Orbax writes each step into a temporary directory and renames it when complete, so a run
killed at any moment leaves either the previous checkpoint or the new one, never half of one.
Beside each step `N/` lies `N.checksums.json`: the shape, dtype and sha256 of every array of
the tree, written before the step is finalised and checked on every restore, so a damaged
checkpoint is refused (and an older one tried) instead of becoming a result. The checksums are
computed from the arrays, never applied to them.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import json
import logging
import os
import pathlib
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from mnist_jax import distributed, rehearsal
from mnist_jax.workdir import write_text_atomic

CHECKSUMS = "{epoch}.checksums.json"


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be restored (corrupt, or from another config)."""


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Silence what a failing restore prints besides its error: orbax's and asyncio's logged
    tracebacks and the 'Event loop is closed' tracebacks tensorstore's threads print straight to
    file descriptor 2 (the CheckpointError says it all in one line)."""
    loggers = [logging.getLogger(n) for n in ("absl", "asyncio", "orbax", "jax")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    failed = True
    try:
        yield
        failed = False
    finally:
        if failed:  # the failed reads' callbacks and unretrieved tasks report a moment later
            time.sleep(0.2)
            gc.collect()
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
        for lg, level in zip(loggers, levels, strict=True):
            if not (failed and lg.name == "asyncio"):  # its 'Task exception was never retrieved' may come at exit
                lg.setLevel(level)


def checksums(tree: Any) -> dict[str, dict]:
    """{leaf path: {"shape", "dtype", "sha256"}} of the host arrays of `tree`."""
    out = {}
    for path, a in jax.tree_util.tree_flatten_with_path(tree)[0]:
        a = np.ascontiguousarray(np.asarray(a))
        out[jax.tree_util.keystr(path)] = {"shape": list(a.shape), "dtype": str(a.dtype),
                                           "sha256": hashlib.sha256(a.tobytes()).hexdigest()}
    return out


def is_disk_full(err: BaseException) -> bool:
    """Whether `err` reports a full disk or quota (an OSError, or tensorstore's error text)."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return "No space left on device" in text or "Disk quota exceeded" in text or "os_error_code='28'" in text


def space_text(path: str | os.PathLike, needed: int | None = None) -> str:
    """'about 1.2 MB needed, 0.3 MB free' for the file system of `path` (what is known of it)."""
    folder = os.path.abspath(os.fspath(path))
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        free = f"{shutil.disk_usage(folder).free / 1e6:.1f} MB free"
    except OSError:
        free = "free space unknown"
    return f"about {needed / 1e6:.1f} MB needed, {free}" if needed else free


def _join_new_threads(before: set[threading.Thread], timeout: float = 10.0) -> None:
    """Wait (up to `timeout` seconds) until every thread not in `before` has ended, those that
    the ones running start included."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [t for t in set(threading.enumerate()) - before if t is not threading.current_thread()]
        if not running:
            return
        for thread in running:
            try:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
            except RuntimeError:  # listed while still starting: joined on the next pass
                time.sleep(0.01)


class Checkpointer:
    """Saves and restores `{"state": ..., "history": ...}` pytrees keyed by epoch."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2):
        self.directory = os.path.abspath(os.fspath(directory))
        self.max_to_keep = max_to_keep
        self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=self.max_to_keep, create=True, enable_async_checkpointing=False,
                cleanup_tmp_directories=True),  # what a kill left mid-save is removed, never read
        )

    def _reopen(self) -> None:
        try:
            self._manager.close()
        except Exception:  # closing after a failed read may report that failure again
            pass
        self._manager = self._open()

    def unverifiable(self) -> bool:
        """Whether there are checkpoints and none has checksums (all written by older code)."""
        steps = self._manager.all_steps()
        return bool(steps) and not any(self._checksums_path(e).exists() for e in steps)

    def clear(self) -> None:
        """Delete every checkpoint (with its checksums)."""
        for epoch in self._manager.all_steps():
            self._manager.delete(epoch)
            if distributed.is_writer():
                self._checksums_path(epoch).unlink(missing_ok=True)

    def latest_epoch(self) -> int | None:
        """The newest complete checkpoint's epoch, or None."""
        return self._manager.latest_step()

    def save(self, epoch: int, tree: Any) -> None:
        """Write `tree` as the checkpoint of `epoch` (blocking, atomic), replacing an older one,
        with the checksums of its arrays beside it. A full disk is a CheckpointError naming the
        folder and the space needed; a failed or interrupted write prints nothing of orbax's (its
        logs and threads' tracebacks). A rehearsal's stand-in state is not written
        (`mnist_jax.rehearsal`)."""
        if rehearsal.active():
            return
        sums = checksums(distributed.gather(tree))  # every process takes part in a gather of global arrays
        if epoch in self._manager.all_steps():
            self._manager.delete(epoch)
        before = set(threading.enumerate())
        try:
            if distributed.is_writer():  # before the step exists: a finalised step always has its checksums
                pathlib.Path(self.directory).mkdir(parents=True, exist_ok=True)
                write_text_atomic(self._checksums_path(epoch), json.dumps({"epoch": epoch, "arrays": sums}, indent=1))
            with _quiet_logs():
                try:
                    self._manager.save(epoch, args=ocp.args.StandardSave(tree), force=True)
                    self._manager.wait_until_finished()
                except KeyboardInterrupt:  # the write's threads end, silenced, before the interrupt goes on
                    _join_new_threads(before)
                    raise
        except Exception as err:  # orbax/tensorstore raise many types; a full disk is a user's fault
            if not is_disk_full(err):
                raise
            needed = sum(int(getattr(a, "nbytes", 0)) for a in jax.tree_util.tree_leaves(tree))
            raise CheckpointError(f"no space left on the device to write checkpoint {epoch} in {self.directory} "
                                  f"({space_text(self.directory, needed)}); free some and run again") from None
        if distributed.is_writer():  # the checksums of the steps orbax let go (max_to_keep)
            kept = {self._checksums_path(e).name for e in self._manager.all_steps()}
            directory = pathlib.Path(self.directory)
            for stale in [*directory.glob(CHECKSUMS.format(epoch="*")), *directory.glob(f".{CHECKSUMS.format(epoch='*')}.tmp")]:
                if stale.name not in kept:  # and what a kill left mid-write
                    stale.unlink(missing_ok=True)

    def _checksums_path(self, epoch: int) -> pathlib.Path:
        return pathlib.Path(self.directory) / CHECKSUMS.format(epoch=epoch)

    def _recorded(self, epoch: int) -> dict[str, dict]:
        """The checksums written with checkpoint `epoch`; CheckpointError when missing or damaged."""
        path = self._checksums_path(epoch)
        try:
            arrays = json.loads(path.read_text())["arrays"]
            if not isinstance(arrays, dict) or not all(
                    isinstance(v, dict) and isinstance(v.get("shape"), list) and isinstance(v.get("sha256"), str)
                    and all(isinstance(n, int) and n >= 0 for n in v["shape"]) for v in arrays.values()):
                raise ValueError("malformed")
            return arrays
        except FileNotFoundError:
            why = f"has no {path.name} (written by older code, or removed)"
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
            why = f"has a damaged {path.name}"
        raise CheckpointError(f"checkpoint {epoch} in {self.directory} {why}: its contents cannot be verified; "
                              "delete it or run with a fresh --workdir")

    def restore(self, like: Any, epoch: int | None = None, *, runs_axis: bool = False) -> Any:
        """The checkpoint of `epoch` (the newest by default), with the structure of `like`, as
        host numpy arrays whose checksums match those written with it (else CheckpointError).

        `runs_axis`: the leading axis of every array is taken from the checkpoint, not from
        `like` (a grid restored onto another device count, whose run padding differs)."""
        epoch = self.latest_epoch() if epoch is None else epoch
        if epoch is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        recorded = self._recorded(epoch)
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(like)[0]]
        if sorted(paths) != sorted(recorded):
            raise CheckpointError(f"checkpoint {epoch} in {self.directory} holds other arrays than this training's: "
                                  "it belongs to another config; delete it or run with a fresh --workdir")

        def abstract(path, a):
            a = a if isinstance(a, jax.ShapeDtypeStruct) else jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype)
            shape = a.shape
            if runs_axis and shape:
                shape = (recorded[jax.tree_util.keystr(path)]["shape"][0], *shape[1:])
            return jax.ShapeDtypeStruct(shape, a.dtype, sharding=a.sharding)

        target = jax.tree_util.tree_map_with_path(abstract, like)
        for path, a in jax.tree_util.tree_flatten_with_path(target)[0]:
            if list(a.shape) != recorded[jax.tree_util.keystr(path)]["shape"]:
                raise CheckpointError(f"checkpoint {epoch} in {self.directory} holds {jax.tree_util.keystr(path)} of shape "
                                      f"{tuple(recorded[jax.tree_util.keystr(path)]['shape'])}, not {a.shape}: it belongs to "
                                      "another config; delete it or run with a fresh --workdir")
        try:
            with _quiet_logs():
                try:
                    restored = self._manager.restore(epoch, args=ocp.args.StandardRestore(target))
                except Exception:
                    self._reopen()  # the failed read's pending work ends here, while stderr is silenced
                    raise
        except Exception as err:  # orbax/tensorstore raise many types
            first = str(err).splitlines()[0][:160] if str(err) else ""
            raise CheckpointError(
                f"checkpoint {epoch} in {self.directory} cannot be restored ({type(err).__name__}: {first}); "
                "delete it or run with a fresh --workdir") from None
        host = distributed.gather(restored)
        found = checksums(host)
        bad = [p for p in paths if found[p] != {k: recorded[p].get(k) for k in found[p]}]
        if bad:
            raise CheckpointError(f"checkpoint {epoch} in {self.directory} is damaged (the checksum of {bad[0]} "
                                  "does not match); delete it or run with a fresh --workdir")
        return host

    def restore_newest(self, like_of: Callable[[int], Any], check: Callable[[Any], None] | None = None, *,
                       runs_axis: bool = False) -> tuple[int, Any]:
        """(epoch, tree) of the newest checkpoint that restores, trying older ones (with one line
        each) when the newest is damaged; `like_of(epoch)` gives the structure of that epoch's
        tree, `check(tree)` may refuse a restored tree with a CheckpointError."""
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        for i, epoch in enumerate(steps):
            try:
                tree = self.restore(like_of(epoch), epoch, runs_axis=runs_axis)
                if check is not None:
                    try:
                        check(tree)
                    except CheckpointError as err:
                        raise CheckpointError(f"checkpoint {epoch} in {self.directory}: {err}") from None
                return epoch, tree
            except CheckpointError as err:
                if i + 1 == len(steps):
                    raise CheckpointError(f"no checkpoint in {self.directory} can be restored (tried epochs "
                                          f"{', '.join(map(str, steps))}); delete it or run with a fresh --workdir") from None
                if distributed.is_writer():  # one line, the same in every process: process 0 says it
                    print(f"warning: {err.args[0].split('; delete it')[0]}; trying an older checkpoint", file=sys.stderr)

    def close(self) -> None:
        self._manager.close()
