"""Run the GRPO stages of a config on a Ray cluster (a local one by default) with the hybrid engine.

    python -m hybrid_engine.run --config recipes/configs/tiny/grpo_single.yaml [key=value ...]

Runs every stage of ``stages`` in order, then writes ``<output_dir>/final/`` (an HF model dir).
Writes ``<output_dir>/config.yaml``, ``metrics.jsonl`` and ``tb/`` as it goes. No checkpoints or
resume here: ``recipes/grpo_two_stage.py`` adds them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from align import config
from align.configs import GRPORecipeConfig


def main(argv: list[str] | None = None) -> int:
    cfg = config.parse_args(GRPORecipeConfig, argv, description=__doc__)

    # Heavy imports after parsing, so --help and config errors answer at once.
    from hybrid_engine.driver import GRPODriver
    from hybrid_engine.metrics import RunLog

    out = Path(cfg.output_dir)
    config.save(cfg, out / "config.yaml")
    driver = GRPODriver(cfg)
    runlog = RunLog(out)
    try:
        setup = driver.start()
        print("grpo: workers up " + " ".join(f"{k} {v:.1f}" for k, v in setup.items()), flush=True)
        for stage in cfg.stages:
            driver.run_stage(stage, runlog)
        final = driver.save_pretrained(out / "final")
        print(f"grpo: done; model in {final}, metrics in {runlog.path}", flush=True)
    finally:
        runlog.close()
        driver.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
