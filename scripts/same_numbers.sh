#!/usr/bin/env bash
# Does the working tree compute the same numbers as REV? A refactor must not move them.
#
#   bash scripts/same_numbers.sh [REV] [FOLDER]      # REV defaults to HEAD, FOLDER to a new temp folder
#
# Runs the quick profile (python -m experiments.reproduce) of REV (in a git worktree) and of the
# working tree, then compares every metrics.json with `python -m mnist_jax.compare --allow-added`:
# timings, times and provenance aside, and keys only the new code writes allowed, every number must
# be identical. Exit 0 when they are. Takes two quick profiles (about 12 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:-HEAD}
out=${2:-$(mktemp -d -t mnist_jax_same_numbers.XXXXXX)}
git worktree add --detach "$out/src_$rev" "$rev" >/dev/null
trap 'git worktree remove --force "$out/src_$rev"' EXIT
(cd "$out/src_$rev" && python -m experiments.reproduce --workdir "$out/base")
python -m experiments.reproduce --workdir "$out/new"
python -m mnist_jax.compare "$out/base" "$out/new" --allow-added
