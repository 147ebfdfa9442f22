"""Build a rollout backend by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rollout.types import RolloutBackend

BACKENDS = ("vllm", "hf")


def make_backend(name: str, model_path: str | Path, **kwargs: Any) -> RolloutBackend:
    """Build backend ``name`` (``vllm`` or ``hf``) on ``model_path``; ``kwargs`` go to its class
    (:class:`rollout.vllm_backend.VLLMBackend`, :class:`rollout.hf_backend.HFBackend`)."""
    if name == "vllm":
        from rollout.vllm_backend import VLLMBackend

        return VLLMBackend(model_path, **kwargs)
    if name == "hf":
        from rollout.hf_backend import HFBackend

        return HFBackend(model_path, **kwargs)
    raise ValueError(f"unknown rollout backend {name!r}; choose one of {BACKENDS}")
