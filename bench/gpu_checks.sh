#!/usr/bin/env bash
# The checks that need a GPU, in one call: the gpu-marked tests that run without vLLM/Ray, and the
# trainer/offload benchmark (GPU against the CPU of the same machine). Results go to $OUT (or
# bench/results). Usage: bash bench/gpu_checks.sh
set -u
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY=${PY:-python3}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
  $PY -c "import vllm" 2>&1 | tail -1
  $PY -c "import ray" 2>&1 | tail -1
  echo "== gpu-marked tests"
  timeout 240 $PY -m pytest -q -p no:cacheprovider -m gpu tests/hybrid_engine/test_hybrid_engine_gpu.py -rA 2>&1 | tail -30
  timeout 60 $PY -m pytest -q -p no:cacheprovider -m gpu tests/rollout/test_rollout_cuda.py -rA 2>&1 | tail -15
  echo "== trainer unit tests with CUDA visible"
  timeout 150 $PY -m pytest -q -p no:cacheprovider -m "not slow" tests/hybrid_engine/test_grpo_trainer_unit.py tests/align/test_grpo.py tests/rollout/test_rollout_hf.py 2>&1 | tail -15
  echo "== bench fp32 (GPU and CPU peer)"
  timeout 300 $PY bench/trainer_offload.py --out "$OUT/trainer_offload.json" --work /tmp/trainer_offload
  echo "== bench bf16 (GPU)"
  timeout 150 $PY bench/trainer_offload.py --devices cuda --dtype bfloat16 --out "$OUT/trainer_offload_bf16.json" --work /tmp/trainer_offload
} 2>&1 | tee "$OUT/gpu_checks.log"
