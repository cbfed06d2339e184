#!/usr/bin/env bash
# The GPU checks in one command (docs/gpu.md), for a CUDA machine with no network: the device
# tool's H200 (torch, triton, transformers and pytest in its image; the rest carried as wheels
# made here by benchmarks/gpu_wheels.sh), or any CUDA machine with the project installed.
#   1. the GPU-marked tests and the attention kernels on CUDA: triton (float32, float16, bfloat16)
#      and flash-attn against the torch backend, tiny Llama/Qwen2/Qwen3 logits against
#      transformers, CUDA graphs on and off giving the same tokens, the start-up checks;
#   2. benchmarks/gpu_throughput.py: nano-vllm's workload on Qwen3-0.6B's architecture with random
#      weights against HF transformers, and batch-1 decode beside the bandwidth floor.
# Everything goes under $OUT (default benchmarks/results/gpu). --check: install and collect only,
# which runs on a machine without a GPU (what this can check before a GPU is lent).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
if [ -d .whl ] && $PY -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then  # the image's Python
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/nanovllm-site .whl/*.whl
  export PYTHONPATH=/tmp/nanovllm-site${PYTHONPATH:+:$PYTHONPATH}
fi
# the project and the two plugins the tests need (models, the default sampler), from this checkout
$PY -m pip install -q --no-index --no-deps --no-build-isolation -e . -e plugins/qwen3 -e plugins/sampling
TESTS=(tests/test_gpu_startup.py tests/test_attention_backends.py tests/test_parity.py)
if [ "${1:-}" = "--check" ]; then
  $PY -m pytest -q --collect-only "${TESTS[@]}" | tail -n 1
  $PY benchmarks/gpu_throughput.py --help > /dev/null
  echo "gpu_suite --check: installed, tests collected, benchmark importable"
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.__version__, torch.cuda.get_device_name())"
# the GPU-marked tests and every attention kernel test (which run on CUDA when there is one)
$PY -m pytest -q -rs -p no:cacheprovider "${TESTS[@]}" 2>&1 | tee "$OUT/tests.log"
$PY benchmarks/gpu_throughput.py "$@" --output "$OUT/throughput.json" 2>&1 | tee "$OUT/throughput.log"
