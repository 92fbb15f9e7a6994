#!/usr/bin/env bash
# The GPU figures in a few minutes on one NVIDIA GPU: tokens/s and MFU of the full model (bf16, compiled)
# at the seed recipe's 32 x 128 and at 16 x 2048, the seed recipe's first 200 steps through the trainer,
# projected to its 5,000 steps, then the side-by-side figures against transformers' Llama (training step
# and greedy generation). Without a CUDA GPU it says so and exits 0.
#
#     bash bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "bench/gpu.sh: no CUDA GPU visible to torch; nothing measured"
    exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -m bench.throughput --device cuda --batch-size 32 --seq-len 128 --dtype bfloat16 --compile --repeats 20
python -m bench.throughput --device cuda --batch-size 16 --seq-len 2048 --dtype bfloat16 --compile --repeats 10
python -m bench.recipe_projection --device cuda --steps 200 --compile
python -m bench.train_step --device cuda --repeats 10
python -m bench.generation --device cuda --dtype bfloat16 --repeats 5
