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
#
# --paper: every experiment of the paper (Lu et al., f-MICL, TMLR 2023, arXiv
# 2402.10150) as one command each, from examples/paper_presets.py (settings
# and deviations: docs/paper-experiments.md): CIFAR-10 and CIFAR-100 (CIFAR
# ResNet-18, SimCLR, 800 epochs), STL-10 (ResNet-50 on train + unlabelled),
# Tiny ImageNet (ResNet-50), ImageNet-1k (ViT-S/16, MoCo v3's recipe), STS
# (BERT-base, unsupervised SimCSE), each with InfoNCE (SimCLR, MoCo v3 or
# SimCSE's loss) and the paper's f-MICL divergences. Each experiment's block
# starts with a comment line saying what to download and where (under
# DATA_DIR). Days of GPU time in all: pick with EXPERIMENTS. One run per
# experiment, loss, seed and backend, each in its own folder, then a table
# beside the paper's numbers.
#
#   bash benchmarks/gpu.sh --paper --dry-run             # print the commands only
#   DATA_DIR=/data EXPERIMENTS="cifar10 stl10" bash benchmarks/gpu.sh --paper
#   BACKENDS="tensorflow jax torch" LOSSES="infonce kl" bash benchmarks/gpu.sh --paper
#
#   EXPERIMENTS (all: cifar10 cifar100 stl10 tiny_imagenet imagenet sts),
#   BACKENDS (jax; any of tensorflow jax torch), LOSSES (each experiment's:
#   infonce and the paper's divergences), SEEDS (0), EPOCHS (the presets':
#   800, ImageNet 300), PIPELINE (CIFAR: model, views drawn on the GPU;
#   tf_data: on the CPU), DATA_DIR (data), OUT (benchmarks/results/gpu_paper).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SIZE=${SIZE:-full}

mode=throughput
dry_run=0
for argument in "$@"; do
  case "$argument" in
    --prepare) mode=prepare ;;
    --paper) mode=paper ;;
    --dry-run) dry_run=1 ;;
    *) echo "gpu.sh: unknown argument '$argument' (--prepare, --paper, --dry-run)" >&2; exit 2 ;;
  esac
done
if [ "$dry_run" = 1 ] && [ "$mode" != paper ]; then
  echo "gpu.sh: --dry-run goes with --paper" >&2
  exit 2
fi

if [ "$mode" = paper ]; then
  BACKENDS=${BACKENDS:-jax}
  OUT_DIR=${OUT:-benchmarks/results/gpu_paper}
  for backend in $BACKENDS; do
    case "$backend" in
      tensorflow|jax|torch) ;;
      *) echo "gpu.sh: BACKENDS takes tensorflow, jax, torch; got '$backend'" >&2; exit 2 ;;
    esac
  done
  presets=(examples/paper_presets.py --backends "$BACKENDS" --seeds "${SEEDS:-0}" --losses "${LOSSES:-}"
           --python "$PYTHON" --out "$OUT_DIR" --data_dir "${DATA_DIR:-data}" --pipeline "${PIPELINE:-model}"
           ${EXPERIMENTS:+--experiments "$EXPERIMENTS"} ${EPOCHS:+--epochs "$EPOCHS"})
  if ! listing=$("$PYTHON" "${presets[@]}"); then
    echo "gpu.sh: examples/paper_presets.py refused the settings (above)" >&2
    exit 2
  fi
  while IFS= read -r line; do  # a comment (what to download), or a shell-quoted command
    echo "$line"
    if [ "$dry_run" = 0 ] && [ "${line#\#}" = "$line" ]; then eval "$line"; fi
  done <<< "$listing"
  if [ "$dry_run" = 0 ]; then
    "$PYTHON" examples/paper_presets.py --table "$OUT_DIR"
  fi
  exit 0
fi

BACKENDS=${BACKENDS:-"jax torch"}
OUT_DIR=${OUT:-benchmarks/results/gpu}

if [ "$mode" = prepare ]; then
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
