"""Rollout: generation backends (vLLM, transformers) and the Ray rollout worker.

    from rollout import SamplingParams, make_backend
    engine = make_backend("vllm", "out/tiny-deepseek_v2")          # or "hf"
    outs = engine.generate(prompt_ids, SamplingParams(n=4, max_tokens=64))
    outs[0][0].token_ids, outs[0][0].logprobs, outs[0][0].finish_reason
    engine.load_weights(trainer_model.state_dict().items())      # validated, then applied

    group = RolloutGroup("out/tiny-deepseek_v2", num_workers=2)    # Ray actors, one engine each
    outs = group.generate(prompt_ids, params)                     # split, reassembled in order
    group.push_weights(trainer_model)                             # bucketed, bounded memory

Importing this package loads neither torch nor vLLM; the backends do when built. It imports
nothing from hybrid_engine or recipes.
"""

from __future__ import annotations

from rollout.backends import BACKENDS, make_backend
from rollout.types import Completion, FinishReason, RolloutBackend, SamplingParams
from rollout.worker import RolloutGroup, RolloutWorker

__all__ = [
    "BACKENDS",
    "Completion",
    "FinishReason",
    "RolloutBackend",
    "RolloutGroup",
    "RolloutWorker",
    "SamplingParams",
    "make_backend",
]
