#!/usr/bin/env bash
# Issue 19's GPU figures in a short lease: where our step's device time goes (a profile), the
# kernel swaps that might shorten it, then the train-step benchmark at batch 256 in bf16 against
# PyTorch at its best (the whole step in one CUDA graph, Inductor's max-autotune kernels,
# channels-last, fused SGD) and its other settings, in separate runs (the stages below). Every
# part has its own time limit inside BUDGET seconds (default 540), and each writes its log and
# JSON as it goes, so that a cut leaves what was measured. On a GPU machine with this
# project's requirements installed (requirements-bench-gpu.txt) it needs nothing else. It also
# runs where TensorFlow and ml-collections are missing and cannot be installed, as on the lent GPU
# machines here (JAX, Flax, optax, orbax and PyTorch, no network), as calls of the device tool:
#
#   pip download --no-deps ml-collections==1.1.0 -d .whl      # here; .whl/ is git-ignored
#   run(command='BUDGET=540 bash experiments/benchmarks/gpu.sh', carry=['.whl'], timeout_s=570)
#
# The step's data is synthetic (numpy), so TensorFlow is never called; where it is missing,
# empty stand-ins for tensorflow and tensorflow_datasets let the package import, and any call
# into them raises. The first stage compiles and runs our step in seconds, so a broken setup
# fails early.
# Logs and JSON go to $LOGS (default /tmp/gpu-logs); after each part they are packed again into
# $OUT/gpu-logs.tar.gz (one file: what the device tool brings back).
set -uo pipefail
out=${LOGS:-/tmp/gpu-logs}
mkdir -p "$out" "${OUT:=/tmp/gpu-bench}"
pack() { tar -czf "$OUT/gpu-logs.tar.gz" -C "$out" .; }
export PYTHONUNBUFFERED=1
budget=${BUDGET:-540}
batch=${BATCH:-256}
steps=${STEPS:-30}  # the kernels stage's; BATCH=4 STEPS=2 STAGES="profile kernels": a CPU dry run
left() { echo $((budget - SECONDS)); }
upto() { local l=$(($(left) - 5)); echo $((l < $1 ? l : $1)); }  # a part's limit, within BUDGET
# Our compiled steps are kept between the runs (the first run's first step is the cold one).
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jax-cache}
if ! python3 -c 'import ml_collections' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! python3 -c 'import tensorflow, tensorflow_datasets' 2>/dev/null; then
  for name in tensorflow tensorflow_datasets; do
    mkdir -p "/tmp/standin/$name"
    cat >"/tmp/standin/$name/__init__.py" <<'EOF'
class _StandIn:
    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        if attr.startswith('__'):
            raise AttributeError(attr)
        return _StandIn(f'{self._name}.{attr}')

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f'{self._name}: TensorFlow is not installed on this machine')

    def __or__(self, other):  # annotations such as `tf.Tensor | None`
        return self

    __ror__ = __or__


def __getattr__(attr):
    if attr.startswith('__'):
        raise AttributeError(attr)
    return _StandIn(f'{__name__}.{attr}')
EOF
  done
  export PYTHONPATH=/tmp/standin${PYTHONPATH:+:$PYTHONPATH}
fi

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.sm,temperature.gpu,power.draw --format=csv
  nvidia-smi
  lscpu | grep -E 'Model name|^CPU\(s\)|Flags' | cut -c1-200
  uptime
} > "$out/machine.txt" 2>&1
python3 -c 'import sys, jax, flax, optax, torch, orbax.checkpoint as o; print("python",
  sys.version.split()[0], "jax", jax.__version__, "flax", flax.__version__, "optax",
  optax.__version__, "torch", torch.__version__, "cuda", torch.version.cuda, jax.devices())' |
  tee "$out/versions.txt" || exit 1
# SETUP_ONLY=1: stop here (then PYTHONPATH=/tmp/site:/tmp/standin for one's own checks).
[ -z "${SETUP_ONLY:-}" ] || exit 0

bench=experiments/benchmarks/train_step.py
log() {
  pack
  echo "== $(date -u +%T) [${SECONDS}s] $*" | tee -a "$out/gpu.log"
}
# STAGES picks the parts, in order. The default fits one lease of 15 minutes as two calls made
# one straight after the other (the machine stays warm for 30 s between calls, and with it
# /tmp's compile caches, ours and Inductor's; LOGS is kept too):
#   BUDGET=540 bash experiments/benchmarks/gpu.sh                       # call 1 (timeout 570)
#   STAGES="b256:2 b256:3" BUDGET=220 bash experiments/benchmarks/gpu.sh  # call 2, right after
# (15 minutes of device time hold the machine's start, about a minute, and these two calls.)
# profile: where our step's device time goes (step_profile.py: JAX's profiler, the trace and the
# HLO kept). kernels: the kernel swaps of step_parts.py against the step as it is. precompile:
# PyTorch's max-autotune compile of the three nets, cold, as three processes at once (one after
# the other they take 150-170 s each, which no call holds), so that the timed runs find
# Inductor's cache warm; their first-step figures are then warm ones, and the cold compile is in
# precompile-*.log. b256:N: the train step against PyTorch, a separate run each; run 1 with all
# of TORCH_SETTINGS, later ones with TORCH_LATER (default: PyTorch at its best only).
# Issue 17's sweeps run as stages too (sweep:dropout sweep:augmentation sweep:towers; not in the
# default), from a prepared Fashion-MNIST made here and carried as .fmprep (53 MB; git-ignored):
#   python -m alexnet_jax.prepare --config configs/fashion_mnist.py --out .fmprep --format raw
#   run(command='STAGES="smoke sweep:dropout sweep:augmentation" bash ...', carry=['.whl', '.fmprep'])
stages=${STAGES:-profile kernels precompile b256:1}
# PyTorch at its best (best-gpu: cl+autotune+graph+fused), the whole step in one CUDA graph
# with cuDNN's kernels (cl+graph+fused), and its defaults (eager).
common=(--variants owt,single_tower,paper --half --overlap-compile --peak-size 8192
  --mfu-peak-tflops 989 --warmup 10 --steps 30 --repeats 7)
for stage in $stages; do
  limit=$(($(left) - 10))
  [ "$limit" -gt 60 ] || { log "no time left for $stage"; break; }
  log "$stage (limit ${limit}s)"
  case $stage in
    smoke)  # ours and PyTorch's whole-step graph at batch 8: a broken setup fails in seconds
      timeout 150 python3 "$bench" --variants owt --batch 8 --repeats 1 --steps 2 --warmup 1 \
        --torch cl+graph+fused --peak-size 1024 --half 2>&1 | tee "$out/smoke.log"
      [ "${PIPESTATUS[0]}" = 0 ] || { log "smoke failed"; exit 1; } ;;
    grouped)  # grouped convolutions against two plain ones, batch 256
      timeout "$limit" python3 experiments/benchmarks/grouped_conv.py --batch "$batch" --half \
        --steps 50 --rounds 7 --json "$out/grouped_conv.json" 2>&1 | tee "$out/grouped_conv.log" ;;
    profile)  # the device time of our step, kernel by kernel (~25 s a net)
      for variant in single_tower owt; do
        [ "$(left)" -gt 40 ] || break
        timeout "$(upto 90)" python3 experiments/benchmarks/step_profile.py --variant "$variant" \
          --batch "$batch" --half --out "$out/profile-$variant" 2>&1 |
          tee "$out/profile-$variant.log"
      done ;;
    kernels)  # kernel swaps against the step as it is, alternated in one process (~45 s a net)
      for variant in single_tower owt; do
        [ "$(left)" -gt 60 ] || break
        timeout "$(upto 120)" python3 experiments/benchmarks/step_parts.py --variant "$variant" \
          --batch "$batch" --half --steps "$steps" --rounds 7 --parts s2d,autodiff-pool,forward \
          --mfu-peak-tflops 989 \
          --json "$out/kernels-$variant.json" 2>&1 | tee "$out/kernels-$variant.log"
      done ;;
    precompile)  # PyTorch's cold max-autotune compile of the three nets at once; each run has
      # a JAX worker too, which must not take 75% of the GPU's memory as JAX does by default.
      # Inductor times its candidate kernels while the other two compile: its picks may be
      # slightly off for that (the timed runs then reuse them).
      for variant in owt single_tower paper; do
        XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "$limit" python3 "$bench" \
          --variants "$variant" --batch "$batch" --half \
          --torch best-gpu --repeats 1 --steps 2 --warmup 1 --peak-size 1024 \
          > "$out/precompile-$variant.log" 2>&1 &
      done
      wait
      grep -h "^| [a-z_]* |" "$out"/precompile-*.log ;;
    b256:*)  # the train step against PyTorch, one separate run each
      run=${stage#b256:}
      settings=${TORCH_SETTINGS:-best-gpu,cl+graph+fused,eager}
      [ "$run" = 1 ] || settings=${TORCH_LATER:-best-gpu}
      timeout "$limit" python3 "$bench" --batch "$batch" "${common[@]}" --torch "$settings" \
        --json "$out/b256-run$run.json" 2>&1 | tee "$out/b256-run$run.log" ;;
    parts)  # where our step's time goes: the step with one part taken out at a time
      for variant in owt single_tower; do
        [ "$(left)" -gt 40 ] || break
        timeout "$(($(left) - 5))" python3 experiments/benchmarks/step_parts.py --variant \
          "$variant" --batch "$batch" --half --json "$out/parts-$variant.json" 2>&1 |
          tee "$out/parts-$variant.log"
      done ;;
    sweep:*)  # issue 17's claim sweeps on the GPU, from a prepared Fashion-MNIST carried in
      name=${stage#sweep:}  # .fmprep (no TensorFlow there); records archived into the logs
      reuse=()
      [ "$name" = augmentation ] && [ -d /tmp/gpu-sweeps/dropout ] &&
        reuse=(--reuse /tmp/gpu-sweeps/dropout)
      timeout "$limit" python3 -m experiments.sweep --sweep "experiments/sweeps/$name.py" \
        --workdir "/tmp/gpu-sweeps/$name" --set dataset=prepared --set "dataset_path=$PWD/.fmprep" \
        ${reuse[@]+"${reuse[@]}"} > "$out/sweep-$name.log" 2>&1
      tail -n 3 "$out/sweep-$name.log"
      python3 -m experiments.sweep --sweep "experiments/sweeps/$name.py" \
        --workdir "/tmp/gpu-sweeps/$name" --archive "$out/sweeps/$name" ;;
    b128)
      timeout "$limit" python3 "$bench" --batch 128 "${common[@]}" \
        --torch "${TORCH_SETTINGS:-best-gpu,cl+graph+fused,eager}" --json "$out/b128.json" \
        2>&1 | tee "$out/b128.log" ;;
    *) log "unknown stage $stage (smoke profile kernels grouped precompile b256:N parts b128"\
      "sweep:NAME)"; exit 2 ;;
  esac
done
log "done"
pack
