"""The hybrid engine: a single driver (the controller) over Ray worker groups of FSDP2 trainer
ranks and rollout engines, placed together or apart, with the layout swap (gathered weights
streamed to the engines) and the GPU offload schedule.

    from hybrid_engine import GRPODriver, RunLog
    driver = GRPODriver(cfg)              # cfg: align.configs.GRPORecipeConfig
    driver.start()
    driver.run_stage(cfg.stages[0], RunLog(cfg.output_dir))

Importing this package loads neither torch nor Ray nor vLLM.
"""

from __future__ import annotations

from typing import Any

__all__ = ["GRPOBatch", "GRPODriver", "RunLog", "TrainerGroup", "TrainerWorker"]

_LAZY = {
    "GRPOBatch": "hybrid_engine.batch",
    "GRPODriver": "hybrid_engine.driver",
    "RunLog": "hybrid_engine.metrics",
    "TrainerGroup": "hybrid_engine.trainer",
    "TrainerWorker": "hybrid_engine.trainer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hybrid_engine' has no attribute {name!r}")
