#!/usr/bin/env bash
# Issue 7's and 19's GPU figures: the train-step benchmark against PyTorch at batch 128 and 256,
# bf16, PyTorch at its best (torch.compile max-autotune of the forward pass and loss, CUDA graphs,
# channels-last, fused SGD). On a GPU machine with this project's
# requirements installed it needs nothing else. It also runs where TensorFlow and ml-collections
# are missing and cannot be installed, as on the lent GPU machines here (JAX, Flax, optax, orbax
# and PyTorch, no network), as one call of the device tool:
#
#   pip download --no-deps ml-collections==1.1.0 -d .whl      # here; .whl/ is git-ignored
#   run(command='bash experiments/benchmarks/gpu.sh', carry=['.whl'])
#
# The step's data is synthetic (numpy), so TensorFlow is never called; where it is missing,
# empty stand-ins for tensorflow and tensorflow_datasets let the package import, and any call
# into them raises. A short smoke run comes first, so that a broken setup fails in seconds, not
# after compiling. Logs and JSON go to $OUT. BATCHES and BATCH_TIMEOUT override the batch sizes
# and each one's time limit.
set -uo pipefail
out=${OUT:-/tmp/gpu-bench}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

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

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv |
  tee "$out/gpu.txt"
python3 -c 'import jax, flax, optax, torch, orbax.checkpoint as o; print("jax", jax.__version__,
  "flax", flax.__version__, "optax", optax.__version__, "torch", torch.__version__, jax.devices())' |
  tee "$out/versions.txt" || exit 1
# SETUP_ONLY=1: stop here (then PYTHONPATH=/tmp/site:/tmp/standin for one's own checks).
[ -z "${SETUP_ONLY:-}" ] || exit 0

bench=experiments/benchmarks/train_step.py
# PyTorch at its best on a GPU (max-autotune: CUDA graphs, channels-last, fused SGD, bf16), with
# the default torch.compile mode as a second row.
common=(--half --torch best-gpu,cl+compile+fused --overlap-compile --peak-size 8192)
timeout 120 python3 "$bench" --variants owt --batch 8 --repeats 1 --torch '' --peak-size 1024 \
  --half 2>&1 | tee "$out/smoke.log"
[ "${PIPESTATUS[0]}" = 0 ] || exit 1

for batch in ${BATCHES:-128 256}; do
  timeout "${BATCH_TIMEOUT:-260}" python3 "$bench" --batch "$batch" "${common[@]}" --warmup 5 \
    --steps 20 --repeats 5 --json "$out/b$batch.json" 2>&1 | tee "$out/b$batch.log"
done

# Issue 16's end-to-end row: alexnet_jax.main at batch 256 (bf16) for 200 steps from a raw
# prepared set generated here, against synthetic data, with the host cores each run used.
timeout "${E2E_TIMEOUT:-300}" python3 experiments/benchmarks/end_to_end.py --cases generated \
  --rounds "${E2E_ROUNDS:-2}" --json "$out/e2e.json" 2>&1 | tee "$out/e2e.log"
