"""Orbax checkpoints of a sweep's state and history, written atomically.

Orbax writes each step into a temporary directory and renames it when complete, so a run
killed at any moment leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


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

    def latest_epoch(self) -> int | None:
        """The newest complete checkpoint's epoch, or None."""
        return self._manager.latest_step()

    def save(self, epoch: int, tree: Any) -> None:
        """Write `tree` as the checkpoint of `epoch` (blocking, atomic), replacing an older one.
        A full disk is a CheckpointError naming the folder and the space needed; a failed or
        interrupted write prints nothing of orbax's (its logs and threads' tracebacks)."""
        if epoch in self._manager.all_steps():
            self._manager.delete(epoch)
        before = set(threading.enumerate())
        try:
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

    def restore(self, like: Any, epoch: int | None = None) -> Any:
        """The checkpoint of `epoch` (the newest by default), with the structure of `like`."""
        epoch = self.latest_epoch() if epoch is None else epoch
        if epoch is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        abstract = jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype)
            if not isinstance(a, jax.ShapeDtypeStruct) else a, like)
        try:
            with _quiet_logs():
                try:
                    return self._manager.restore(epoch, args=ocp.args.StandardRestore(abstract))
                except Exception:
                    self._reopen()  # the failed read's pending work ends here, while stderr is silenced
                    raise
        except Exception as err:  # orbax/tensorstore raise many types
            first = str(err).splitlines()[0][:160] if str(err) else ""
            raise CheckpointError(
                f"checkpoint {epoch} in {self.directory} cannot be restored ({type(err).__name__}: {first}); "
                "delete it or run with a fresh --workdir") from None

    def restore_newest(self, like_of: Callable[[int], Any]) -> tuple[int, Any]:
        """(epoch, tree) of the newest checkpoint that restores, trying older ones when the newest
        is damaged; `like_of(epoch)` gives the structure of that epoch's tree."""
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        for i, epoch in enumerate(steps):
            try:
                return epoch, self.restore(like_of(epoch), epoch)
            except CheckpointError as err:
                if i + 1 == len(steps):
                    raise CheckpointError(f"no checkpoint in {self.directory} can be restored (tried epochs "
                                          f"{', '.join(map(str, steps))}); delete it or run with a fresh --workdir") from None
                warnings.warn(f"{err}; trying an older checkpoint", RuntimeWarning, stacklevel=2)

    def close(self) -> None:
        self._manager.close()
