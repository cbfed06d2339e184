#!/usr/bin/env bash
# Every GPU step of the GPU-path issue in one command, on a CUDA machine with the
# project installed (make install TORCH=torch, plus optionally flash-attn); no network needed.
#   1. the whole test suite, GPU-marked tests included (triton kernels compiled for real,
#      flash-attn against torch, SmolLM2 greedy parity on CUDA with each backend);
#   2. the throughput benchmark (nano-vllm's workload, HF transformers and the ceilings).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.__version__, torch.cuda.get_device_name())"
$PY -m pytest -q -rs
$PY benchmarks/gpu_throughput.py "$@"
