#!/usr/bin/env bash
# The full profile on one GPU machine under a deadline, with a determinism check of the GPU runs.
#
#   here (project root, a clean commit):   bash benchmarks/gpu_profile.sh prepare
#     writes .gpu/ (git-ignored): a compressed MNIST cache, the ml-collections wheel (GPU images
#     often lack it), the manifest of the commit (so provenance names it on a copy without .git).
#   there (project root, .gpu/ copied along):   OUT=folder BUDGET=560 bash benchmarks/gpu_profile.sh
#     1. the full profile, stage by stage (`reproduce --config.only=STAGE`) into runs/gpu, skipping a
#        stage when less time is left than it needs (NEED below, seconds measured on an H100);
#     2. right after dropout_sweep: the same experiment in a second process (deterministic GPU ops,
#        the default) and in a third with MNIST_JAX_DETERMINISTIC=0; `mnist_jax.compare` says
#        whether the numbers are identical, and the timings give the cost of determinism;
#     OUT/log.txt and OUT/runs.tgz (metrics, configs, REPORT.md, figures; no checkpoints) come back.
#   A second call on the same (warm) machine with WARM=1 runs STAGES again into runs/gpu_warm with the
#   persistent compilation cache the first call filled (.cache/gpu_profile/xla, git-ignored, kept
#   between calls), no determinism runs: compile seconds per stage, cold against warm.
#   With ONE_PROCESS=1, the stages run as one `reproduce` process (how users run the job: the process
#   start, imports and backend initialisation are paid once), stage times from its "done in" lines;
#   JOBS=N (with ONE_PROCESS=1) runs it with --config.jobs=N: up to N stages at once, each in its own process.
#   With BENCH=1, after the stages: benchmarks/train_speed.py (dense net, 1 and 64 vmapped runs, no compile cache)
#   with the default GPU settings and with variants (deterministic ops off, Triton GEMMs off, while loops in
#   CUDA command buffers), as long as time is left.
#   With VARIANTS=ahead|autotune|jobs, after that: benchmarks/reproduce_variants.py, VARIANT_STAGES (default
#   cnn_search,noise_accuracy,vae) cold, one repeat per variant, as long as time is left (about 180 s a variant
#   for the three at the full profile on an H100; STAGES=" " leaves the time to it): ahead = compiling ahead off
#   (MNIST_JAX_COMPILE_AHEAD=0) and on (the default: 4 threads on 16 cores); autotune = the default against
#   XLA_FLAGS=--xla_gpu_autotune_level=0 (GPU compile time; its last line says whether the numbers stay);
#   jobs = --config.jobs=1 against 3.
#   With PRECISION=1, after the stages: variance_sources' one_bit, all and their bfloat16 arms (PRECISION_SEEDS runs
#   each, default 20, the full profile's epochs) at --config.matmul_precision=float32 against default (TF32 on compute
#   capability >= 8.0), into runs/precision_float32 and runs/precision_default: whether TF32 products round a one-ulp
#   change away (one_bit's std and disagreement at each precision); about 10 s each on an H100.
# Environment: OUT, BUDGET (seconds for everything, default 560), STAGES, PROFILE (default full), WARM, BENCH,
# ONE_PROCESS, JOBS, VARIANTS, VARIANT_STAGES, PRECISION, PRECISION_SEEDS.
set -u
if [ "${1:-}" = prepare ]; then
  PY=${PY:-python}
  [ -z "$(git status --porcelain)" ] || echo "warning: the tree has uncommitted changes; the run names no clean commit"
  mkdir -p .gpu && { grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude; }
  $PY -c "
import numpy as np
from mnist_jax import data, provenance
np.savez_compressed('.gpu/mnist_uint8_v1.npz', **data.load_mnist())
m = provenance.write_manifest('.gpu/manifest.json')
print('commit', m['commit'][:7], 'dirty' if m['dirty'] else 'clean', len(m['files']), 'files')" || exit 1
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 -d .gpu/whl ml-collections || exit 1
  du -sh .gpu && exit 0
fi
T0=$(date +%s); BUDGET=${BUDGET:-560}; PY=${PY:-python3}; PROFILE=${PROFILE:-full}
STAGES=${STAGES:-"mlp dropout_sweep l2_sweep label_smoothing cnn denoise cnn_best variance_sources noise_accuracy vae cnn_search"}
declare -A NEED=([mlp]=20 [dropout_sweep]=35 [l2_sweep]=40 [label_smoothing]=30 [cnn]=30 [denoise]=40 [cnn_best]=45
                 [variance_sources]=40 [noise_accuracy]=90 [vae]=100 [cnn_search]=120)
WARM=${WARM:-0}
SCRATCH=$(mktemp -d); OUT=${OUT:-$SCRATCH/out}; mkdir -p "$OUT"; LOG=$OUT/log.txt
if [ "$WARM" = 1 ]; then RUNS=runs/gpu_warm; else RUNS=runs/gpu; rm -rf .cache/gpu_profile; fi
rm -rf "$RUNS" runs/det_*
export PYTHONUNBUFFERED=1 MNIST_JAX_CACHE=$PWD/.cache/gpu_profile MNIST_JAX_CODE_MANIFEST=$PWD/.gpu/manifest.json
mkdir -p $MNIST_JAX_CACHE && cp .gpu/mnist_uint8_v1.npz $MNIST_JAX_CACHE/
$PY -c "import ml_collections" 2>/dev/null || { $PY -m pip install -q --no-index --no-deps --no-compile \
  --target "$SCRATCH/site" .gpu/whl/*.whl && export PYTHONPATH=$SCRATCH/site; }
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tail -1
  $PY -c "import jax, flax, optax, numpy; from mnist_jax import provenance as p; print('jax', jax.__version__, 'flax', \
flax.__version__, 'optax', optax.__version__, 'numpy', numpy.__version__, jax.devices(), p.code_id())"; } >>"$LOG" 2>&1
stage() {  # name, workdir, extra environment assignments...
  local s=$1 w=$2; shift 2; local t=$(date +%s)
  env "$@" timeout "$(left)" $PY -m experiments.reproduce --workdir "$w" --config.profile=$PROFILE --config.only=$s \
    >"$SCRATCH/stage.log" 2>&1
  local rc=$?; echo "== $s into $w $* rc=$rc wall=$(( $(date +%s) - t )) s" >>"$LOG"
  tr '\r' '\n' <"$SCRATCH/stage.log" | grep -v '%|' | tail -n 14 >>"$LOG"; return $rc
}
done_list=""
if [ "${ONE_PROCESS:-0}" = 1 ]; then  # the job as users run it: every stage in one reproduce process
  t=$(date +%s)
  timeout "$(left)" $PY -m experiments.reproduce --workdir "$RUNS" --config.profile=$PROFILE \
    --config.only="$(echo $STAGES | tr ' ' ',')" --config.jobs=${JOBS:-1} >"$SCRATCH/stage.log" 2>&1
  echo "== one process (jobs ${JOBS:-1}), stages $STAGES: rc=$? wall=$(( $(date +%s) - t )) s" >>"$LOG"
  tr '\r' '\n' <"$SCRATCH/stage.log" | grep -E '^\[[0-9]|done in|^wrote .*REPORT|rror' | tail -n 60 >>"$LOG"
  STAGES=""  # no stage-by-stage pass (and no determinism runs) after it
fi
for s in $STAGES; do
  [ "$(left)" -gt "${NEED[$s]:-30}" ] || { echo "== $s skipped: $(left) s left, it needs about ${NEED[$s]:-30}" >>"$LOG"; continue; }
  stage "$s" "$RUNS" && done_list="$done_list,$s"
  if [ "$s" = dropout_sweep ] && [ "$WARM" != 1 ]; then
    stage dropout_sweep runs/det_b
    stage dropout_sweep runs/det_off MNIST_JAX_DETERMINISTIC=0
    { echo "== determinism: the profile's dropout_sweep against a second process, deterministic ops on (default)"
      $PY -m mnist_jax.compare "$RUNS/dropout_sweep" runs/det_b/dropout_sweep
      echo "== the same against a process with MNIST_JAX_DETERMINISTIC=0"
      $PY -m mnist_jax.compare "$RUNS/dropout_sweep" runs/det_off/dropout_sweep | tail -n 3
      $PY -c "
import json
for w in ('$RUNS', 'runs/det_b', 'runs/det_off'):
    m = json.load(open(w + '/dropout_sweep/metrics.json')); t = m['timing']; p = m['provenance']
    errs = [r['test_errors'] for r in m['runs']]
    print(w, 'deterministic_gpu_ops', p['deterministic_gpu_ops'], 'train %.2f s steady epoch %.4f s' % (t['train_seconds'],
          t['steady_epoch_seconds']), 'test errors', errs)"; } >>"$LOG" 2>&1
  fi
done
[ -n "$done_list" ] && timeout 60 $PY -m experiments.reproduce --workdir "$RUNS" --config.profile=$PROFILE \
  --config.only=${done_list#,} >>"$LOG" 2>&1
echo "== total $(( $(date +%s) - T0 )) s" >>"$LOG"
if [ "${BENCH:-0}" = 1 ]; then  # the dense net, 1 run and 64 vmapped, with variants of the GPU settings
  for v in "default" "MNIST_JAX_DETERMINISTIC=0" "XLA_FLAGS=--xla_gpu_enable_triton_gemm=false" \
           "XLA_FLAGS=--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,WHILE,CONDITIONAL"; do
    [ "$(left)" -gt 40 ] || { echo "== train_speed $v skipped: $(left) s left" >>"$LOG"; continue; }
    echo "== train_speed $v" >>"$LOG"
    env MNIST_JAX_COMPILE_CACHE=0 $([ "$v" = default ] || echo "$v") timeout 60 $PY benchmarks/train_speed.py \
      --runs 1 64 --epochs 3 2>&1 | grep -v -i warning | tail -n 4 >>"$LOG"
  done
fi
if [ "${PRECISION:-0}" = 1 ]; then  # one_bit with float32 products against the GPU's default (TF32)
  for p in float32 default; do
    [ "$(left)" -gt 40 ] || { echo "== variance_sources matmul_precision=$p skipped: $(left) s left" >>"$LOG"; continue; }
    rm -rf runs/precision_$p; t=$(date +%s)
    timeout "$(left)" $PY -m experiments.variance_sources --workdir runs/precision_$p --config.matmul_precision=$p \
      --config.seeds=${PRECISION_SEEDS:-20} --config.precision_seeds=${PRECISION_SEEDS:-20} \
      "--config.sources=['one_bit', 'all', 'precision', 'one_bit_bf16']" >"$SCRATCH/stage.log" 2>&1
    echo "== variance_sources one_bit, all (float32 and bfloat16 compute) at matmul_precision=$p rc=$? wall=$(( $(date +%s) - t )) s" >>"$LOG"
    $PY -c "
import json
m = json.load(open('runs/precision_$p/metrics.json')); print(m['provenance']['precision'])
for s, r in m['per_source'].items():
    print(s, 'std %.4f [%.4f, %.4f] %% points' % tuple(r['std_pct'][k] for k in ('std', 'ci_low', 'ci_high')),
          'disagreement %.4f' % r['disagreement']['mean'], 'identical' if r['identical_runs'] else '')
print(m['verdict']['text']); print(m['precision_arm']['text'])" >>"$LOG" 2>&1
  done
fi
if [ -n "${VARIANTS:-}" ]; then  # a setting of the job against another, cold (benchmarks/reproduce_variants.py)
  case "$VARIANTS" in
    ahead) V=(--variant "ahead_off: MNIST_JAX_COMPILE_AHEAD=0" --variant "default:") ;;
    autotune) V=(--variant "default:" --variant "autotune0: XLA_FLAGS=--xla_gpu_autotune_level=0") ;;
    jobs) V=(--variant "jobs1:" --variant "jobs3: --config.jobs=3") ;;
    *) echo "VARIANTS=$VARIANTS: expected ahead, autotune or jobs" >>"$LOG"; V=() ;;
  esac
  if [ ${#V[@]} -gt 0 ] && [ "$(left)" -gt 120 ]; then
    rm -rf runs/variants; echo "== reproduce_variants $VARIANTS, $(left) s left" >>"$LOG"
    timeout "$(left)" $PY -m benchmarks.reproduce_variants --out runs/variants --profile $PROFILE --repeats 1 \
      --stages "${VARIANT_STAGES:-cnn_search,noise_accuracy,vae}" "${V[@]}" 2>&1 | grep -v -i warning | tail -n 16 >>"$LOG"
  elif [ ${#V[@]} -gt 0 ]; then echo "== reproduce_variants skipped: $(left) s left" >>"$LOG"; fi
fi
$PY -c "
import json, pathlib
for m in sorted(pathlib.Path('$RUNS').glob('*/metrics.json')):
    c = json.loads(m.read_text()).get('timing', {}).get('compilation') or {}
    print('== compile', m.parent.name, 'programs', c.get('programs'), 'cache hits', c.get('cache_hits'),
          'compile s %.1f' % c.get('compile_seconds', 0), 'trace+lower s %.1f' % c.get('trace_lower_seconds', 0))
" >>"$LOG" 2>&1
find "$RUNS" runs/det_b runs/det_off runs/precision_float32 runs/precision_default \( -name '*.json' -o -name '*.md' -o -name '*.png' \) -not -path '*checkpoint*' -not -path '*params*' \
  | tar -czf "$OUT/runs.tgz" -T - 2>>"$LOG"
sed -i "s|$PWD/||g" "$LOG"  # paths relative to the project root: the log is committed, the GPU machine's root is not ours
tail -c 11000 "$LOG"
