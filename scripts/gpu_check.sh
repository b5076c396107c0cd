#!/usr/bin/env bash
# The GPU checks, for a machine with a CUDA GPU, in a few minutes: the cuda-marked tests (every device
# test in fp32 and bf16, the pipeline in bf16 against fp32), then the pipeline and speculative benchmarks
# on the GPU. Run from the repository root with the virtual environment active:  bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name())"
python -m pytest -q -o addopts="" -m cuda tests
python -m minimal.bench pipeline --device cuda --json
python -m minimal.bench speculative --device cuda --json
