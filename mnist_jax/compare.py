"""Do two workdirs hold the same numbers? A refactor must not move them.

    python -m mnist_jax.compare runs/before runs/after
    python -m mnist_jax.compare runs/before runs/after --allow-added   # new keys are not a difference

Compares every metrics.json under the first folder with the one at the same relative path under
the second, leaving out what legitimately differs between two identical runs (timings, start and
end times: `provenance.comparable`), what names the code (the provenance block, code ids), which
is what changes, and the run's history (`resumed_from_epoch`: whether it was interrupted and
resumed), so a resumed run compares equal to an uninterrupted one when it kept every number.
Prints each difference (path and JSON location) and exits 1 if there is any, 0 if every number is
identical, 2 for a usage error or a metrics.json that cannot be read (one line naming it).
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

from mnist_jax.config import ConfigError
from mnist_jax.provenance import comparable
from mnist_jax.workdir import read_json_file

IGNORED = frozenset({"provenance", "schema_version", "code_id", "mixed_code",  # which code, not what it computed
                     "resumed_from_epoch"})  # how the run went (interrupted or not), not what it computed


def _without(tree: Any, keys: frozenset) -> Any:
    if isinstance(tree, dict):
        return {k: _without(v, keys) for k, v in tree.items() if k not in keys}
    if isinstance(tree, list):
        return [_without(v, keys) for v in tree]
    return tree


def numbers(path: pathlib.Path) -> Any:
    """The comparable part of one metrics.json."""
    return comparable(_without(read_json_file(path, "the file"), IGNORED))


def differences(a: Any, b: Any, where: str = "", allow_added: bool = False) -> list[str]:
    """JSON locations where trees a and b differ. `allow_added`: keys only in b (new outputs of
    the second code) are not differences; a key it lost, or a value it changed, is."""
    if isinstance(a, dict) and isinstance(b, dict):
        extra = set(a) - set(b) if allow_added else set(a) ^ set(b)
        out = [f"{where}.{k}: only in the {'first' if k in a else 'second'}" for k in sorted(extra)]
        for k in sorted(set(a) & set(b)):
            out += differences(a[k], b[k], f"{where}.{k}", allow_added)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            out += differences(x, y, f"{where}[{i}]", allow_added)
        return out
    return [] if a == b else [f"{where}: {json.dumps(a)[:80]} != {json.dumps(b)[:80]}"]


def compare_workdirs(first: pathlib.Path, second: pathlib.Path, allow_added: bool = False) -> list[str]:
    """Every difference between the metrics.json files of two workdirs ([] when the numbers agree)."""
    first, second = pathlib.Path(first), pathlib.Path(second)
    found = sorted(p.relative_to(first) for p in first.rglob("metrics.json"))
    if not found:
        return [f"{first}: no metrics.json"]
    out = []
    for rel in found:
        if not (second / rel).exists():
            out.append(f"{rel}: missing in {second}")
            continue
        out += [f"{rel}{d}" for d in differences(numbers(first / rel), numbers(second / rel), allow_added=allow_added)]
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    allow_added = "--allow-added" in args
    args = [a for a in args if a != "--allow-added"]
    if len(args) != 2:
        print("usage: python -m mnist_jax.compare WORKDIR_A WORKDIR_B [--allow-added]", file=sys.stderr)
        return 2
    try:
        diffs = compare_workdirs(*map(pathlib.Path, args), allow_added=allow_added)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for line in diffs[:50]:
        print(line)
    n = len(list(pathlib.Path(args[0]).rglob("metrics.json")))
    print(f"{len(diffs)} differences in {n} metrics.json files" if diffs else f"identical numbers in {n} metrics.json files")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
