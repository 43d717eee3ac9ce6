#!/usr/bin/env bash
# The device benchmark (benchmarks/device_benchmark.py) on a lent GPU
# machine, in under 8 minutes: images/s of ContrastiveModel.fit (ResNet-18
# at 32 px, ResNet-50 at 96 px, ViT-S/16 at 224 px; float32 and
# mixed_bfloat16), the loss alone at N = 4096 and 16384, and with the time
# left a Fashion-MNIST quality run (InfoNCE vs f-MICL KL, kNN).
#
#   PYTHON=.venv/bin/python bash benchmarks/device.sh --prepare
#       here, once: Keras wheels for the GPU image (Python 3.12, no Keras)
#       into .whl/ (benchmarks/gpu.sh --prepare) and the Fashion-MNIST
#       subset into .device_data/fashion_mnist.npz (about 13 MiB)
#   bash benchmarks/device.sh
#       there, with .whl and .device_data carried; writes
#       device_benchmark.{json,md,log} to $OUT (else benchmarks/results/device)
#   PYTHON=.venv/bin/python bash benchmarks/device.sh --smoke
#       any machine: every part at tiny sizes
#
# Other arguments go to device_benchmark.py (--budget-seconds, --backends,
# --models, --dtypes, --loss-sizes, --quality-epochs; see its --help).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ "${1:-}" = "--prepare" ]; then
  shift
  PYTHON="$PYTHON" bash benchmarks/gpu.sh --prepare
  PYTHONPATH=$PWD "$PYTHON" benchmarks/device_benchmark.py --prepare "$@"
  du -sh .whl .device_data
  exit 0
fi

if ! "$PYTHON" -c "import keras" 2>/dev/null; then
  if [ -d .whl ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/keras_site .whl/*.whl
    export PYTHONPATH=/tmp/keras_site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "device.sh: no Keras and no .whl/ (run --prepare here and carry .whl)" >&2
  fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
exec "$PYTHON" benchmarks/device_benchmark.py "$@"
