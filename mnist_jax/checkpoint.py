"""Orbax checkpoints of a sweep's state and history, written atomically.

Orbax writes each step into a temporary directory and renames it when complete, so a run
killed at any moment leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be restored (corrupt, or from another config)."""


class Checkpointer:
    """Saves and restores `{"state": ..., "history": ...}` pytrees keyed by epoch."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2):
        self.directory = os.path.abspath(os.fspath(directory))
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False),
        )

    def latest_epoch(self) -> int | None:
        """The newest complete checkpoint's epoch, or None."""
        return self._manager.latest_step()

    def save(self, epoch: int, tree: Any) -> None:
        """Write `tree` as the checkpoint of `epoch` (blocking, atomic), replacing an older one."""
        if epoch in self._manager.all_steps():
            self._manager.delete(epoch)
        self._manager.save(epoch, args=ocp.args.StandardSave(tree), force=True)
        self._manager.wait_until_finished()

    def restore(self, like: Any, epoch: int | None = None) -> Any:
        """The checkpoint of `epoch` (the newest by default), with the structure of `like`."""
        epoch = self.latest_epoch() if epoch is None else epoch
        if epoch is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        abstract = jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype)
            if not isinstance(a, jax.ShapeDtypeStruct) else a, like)
        try:
            return self._manager.restore(epoch, args=ocp.args.StandardRestore(abstract))
        except Exception as err:  # orbax/tensorstore raise many types
            raise CheckpointError(
                f"checkpoint {epoch} in {self.directory} cannot be restored "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                "delete it or run with a fresh --workdir") from err

    def close(self) -> None:
        self._manager.close()
