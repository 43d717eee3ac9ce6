#!/usr/bin/env bash
# One prepared benchmark for a lent GPU machine: CIFAR-shaped data, ResNet-18,
# a few minutes. For each backend it measures the training step time of
# ContrastiveModel.fit against a hand-written loop (benchmarks/throughput.py)
# and runs a short pretraining with a kNN curve (examples/train_cifar.py,
# views drawn on the GPU), then writes everything under one folder.
#
#   bash benchmarks/gpu.sh --prepare   # here, once: Keras wheels for the GPU
#                                      # image (Python 3.12, no Keras) into .whl/
#   bash benchmarks/gpu.sh             # on the GPU machine (carry .whl)
#   SIZE=tiny PYTHON=.venv/bin/python bash benchmarks/gpu.sh   # CPU smoke test
#
# Data: CIFAR-10 needs tensorflow-datasets and a download, which the lent
# machines have neither of; `synthetic_cifar` (CIFAR-shaped, generated,
# learnable classes) stands in. Backends: JAX and PyTorch (the GPU image has
# no TensorFlow); BACKENDS="jax" narrows it.
#
# Outputs (at most 8 files, as the device tool returns): $OUT (or
# benchmarks/results/gpu)/summary.json, log.txt, knn_<backend>.json and
# knn_<backend>.png per backend.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SIZE=${SIZE:-full}
BACKENDS=${BACKENDS:-"jax torch"}
OUT_DIR=${OUT:-benchmarks/results/gpu}

if [ "${1:-}" = "--prepare" ]; then
  keras_version=$("$PYTHON" -c "import keras; print(keras.__version__)")
  rm -rf .whl && mkdir -p .whl
  for package in "keras==$keras_version" namex optree; do
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$package"
  done
  ls -l .whl
  exit 0
fi

if [ -d .whl ] && ! "$PYTHON" -c "import keras" 2>/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/keras_site .whl/*.whl
  export PYTHONPATH=/tmp/keras_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1

if [ "$SIZE" = "tiny" ]; then
  THROUGHPUT=(--steps 3 --warmup 1 --repeats 1 --batch_size 32 --width 4)
  PRETRAIN=(--width 4 --epochs 1 --warmup_epochs 0 --batch_size 64 --max_train_samples 512
            --max_test_samples 256 --knn_every 1 --linear_epochs 2)
else
  THROUGHPUT=(--steps 50 --warmup 5 --repeats 2 --batch_size 512 --width 64)
  PRETRAIN=(--width 64 --epochs 6 --warmup_epochs 1 --batch_size 512 --knn_every 1 --linear_epochs 20)
fi

mkdir -p "$OUT_DIR"
work=$(mktemp -d)
log="$OUT_DIR/log.txt"
: > "$log"
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')  size: $SIZE  backends: $BACKENDS"
  (nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi")
  "$PYTHON" -c "import keras, sys; print('python', sys.version.split()[0], 'keras', keras.__version__)"
} | tee -a "$log"

for backend in $BACKENDS; do
  echo "== $backend: step time (ResNet-18, 32x32x3)" | tee -a "$log"
  KERAS_BACKEND=$backend "$PYTHON" benchmarks/throughput.py --backends "$backend" --encoder resnet18 \
    --image_shape 32 32 3 "${THROUGHPUT[@]}" --output "$work/throughput_$backend.json" 2>&1 | tee -a "$log"
  echo "== $backend: short pretraining and kNN curve (synthetic_cifar)" | tee -a "$log"
  start=$(date +%s)
  KERAS_BACKEND=$backend "$PYTHON" examples/train_cifar.py --backend "$backend" --dataset synthetic_cifar \
    --pipeline model --encoder resnet18 "${PRETRAIN[@]}" --verbose 2 --output_dir "$work/knn_$backend" \
    2>&1 | grep -v -E "^(WARNING: All log|[IWE][0-9]{4} )" | tee -a "$log"
  echo "   ($(( $(date +%s) - start )) s)" | tee -a "$log"
  cp "$work/knn_$backend/results.json" "$OUT_DIR/knn_$backend.json"
  cp "$work/knn_$backend/curves.png" "$OUT_DIR/knn_$backend.png"
done

"$PYTHON" - "$work" "$OUT_DIR" "$SIZE" $BACKENDS <<'PY'
import glob, json, os, sys
work, out, size, backends = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
summary = {"size": size, "throughput": {}, "knn": {}}
for backend in backends:
    path = os.path.join(work, f"throughput_{backend}.json")
    if os.path.exists(path):
        summary["throughput"][backend] = json.load(open(path))["results"]
    results = json.load(open(os.path.join(out, f"knn_{backend}.json")))
    summary["knn"][backend] = {
        "curve": results["knn_curve"], "knn_top1": results["knn_top1"],
        "linear_top1": results["linear_top1"], "pretrain_seconds": results["pretrain_seconds"],
    }
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
print(json.dumps(summary, indent=1)[:3000])
PY
rm -rf "$work"
echo "gpu.sh: results in $OUT_DIR"
