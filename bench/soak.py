"""Soak: many GRPO steps on the tiny preset with resident memory sampled as they go; does it grow?

The run is the real thing (``GRPODriver`` on a fresh local Ray: a vLLM engine, FSDP2 trainer ranks,
the ``math`` reward's worker pool, metrics to ``metrics.jsonl`` and TensorBoard through ``RunLog``).
Every ``--sample-every`` steps the RSS of every process of the run (this driver and all its
descendants: Ray's GCS and raylet, the actor processes, the math workers) is read and summed, and
also kept per process role so that a growth can be traced to its process.

The growth is the least-squares slope of the summed RSS against the step, over the samples after
``--warmup`` steps (allocators, caches and compiled kernels settle in the first steps), reported as
``rss_growth_mb_per_100_steps``; the issue's target is under 1 MB per 100 steps.

    python bench/soak.py --json bench/results/soak.json            # 300 steps, about 10 min on 2 cores
    python bench/soak.py --steps 40 --sample-every 5 --warmup 10   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import machine, tiny_grpo_config  # noqa: E402


def role(proc) -> str:
    """A stable name for a process of the run: Ray's workers by the actor class they host."""
    try:
        cmd = " ".join(proc.cmdline())
        name = proc.name()
    except Exception:
        return "gone"
    if proc.pid == os.getpid():
        return "driver"
    for key in ("gcs_server", "raylet", "dashboard", "log_monitor", "monitor.py", "runtime_env"):
        if key in cmd or key in name:
            return key
    if name.startswith("ray::"):
        return name  # e.g. ray::TrainerWorker, ray::RolloutWorker, ray::IDLE
    if "_math_worker" in cmd or "multiprocessing" in cmd:
        return "math_worker"
    return name


def sample_memory() -> dict:
    """This process and its descendants, summed and per role, in MB: RSS, and USS (the pages of a
    process alone, without shared memory such as Ray's object store that RSS counts once per
    process that touched it); and the process count."""
    import psutil

    me = psutil.Process()
    rss: dict[str, float] = defaultdict(float)
    uss: dict[str, float] = defaultdict(float)
    procs = [me, *me.children(recursive=True)]
    for p in procs:
        try:
            full = p.memory_full_info()
            rss[role(p)] += full.rss / (1 << 20)
            uss[role(p)] += full.uss / (1 << 20)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return {
        "rss_mb": sum(rss.values()),
        "uss_mb": sum(uss.values()),
        "per_role_rss_mb": dict(rss),
        "per_role_uss_mb": dict(uss),
        "processes": len(procs),
    }


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys on xs (0 with fewer than two points)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default="bench/results/soak.json")
    p.add_argument("--work", default="out/bench")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--sample-every", type=int, default=10)
    p.add_argument("--warmup", type=int, default=50, help="steps left out of the fit")
    p.add_argument("--target-mb-per-100", type=float, default=1.0)
    args = p.parse_args()

    import ray

    from hybrid_engine.driver import GRPODriver
    from hybrid_engine.metrics import RunLog

    samples: list[dict] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = tiny_grpo_config(f"{tmp}/run", Path(args.work), "tiny", [f"stages.0.steps={args.steps}"])
        driver = GRPODriver(cfg)
        runlog = RunLog(cfg.output_dir)
        try:
            driver.start()
            state = driver.prepare_stage(cfg.stages[0])
            driver.trainer.set_grpo(state.grpo)
            for step in range(1, args.steps + 1):
                metrics = driver.train_step(state)
                driver.step += 1
                runlog.write(driver.step, state.name, metrics)
                if step == 1 or step % args.sample_every == 0:
                    mem = sample_memory()
                    samples.append(
                        {
                            "step": step,
                            **mem,
                            "reward_mean": metrics.get("reward/mean"),
                            "step_s": metrics.get("timing/step"),
                        }
                    )
                    print(
                        f"step {step:4d}  rss {mem['rss_mb']:8.1f} MB  uss {mem['uss_mb']:8.1f} MB over "
                        f"{mem['processes']} processes  "
                        f"reward {metrics.get('reward/mean', float('nan')):.3f}",
                        flush=True,
                    )
        finally:
            runlog.close()
            driver.shutdown()
            ray.shutdown()
    fit = [s for s in samples if s["step"] > args.warmup]
    xs = [s["step"] for s in fit]

    def growth_of(kind: str) -> tuple[float, dict[str, float]]:
        total = 100 * slope(xs, [s[f"{kind}_mb"] for s in fit])
        roles = sorted({r for s in fit for r in s[f"per_role_{kind}_mb"]})
        per_role = {
            r: 100 * slope(xs, [s[f"per_role_{kind}_mb"][r] for s in fit])
            for r in roles
            if all(r in s[f"per_role_{kind}_mb"] for s in fit)
        }
        return total, per_role

    growth, per_role = growth_of("rss")
    uss_growth, uss_per_role = growth_of("uss")
    report = {
        "bench": "soak",
        "machine": machine(),
        "steps": args.steps,
        "sample_every": args.sample_every,
        "warmup_steps_excluded": args.warmup,
        "wall_s": time.perf_counter() - start,
        "rss_growth_mb_per_100_steps": growth,
        "rss_growth_mb_per_100_steps_per_role": per_role,
        "uss_growth_mb_per_100_steps": uss_growth,
        "uss_growth_mb_per_100_steps_per_role": uss_per_role,
        "target_mb_per_100_steps": args.target_mb_per_100,
        "passed": growth < args.target_mb_per_100,
        "samples": samples,
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"growth per 100 steps: RSS {growth:+.2f} MB, USS {uss_growth:+.2f} MB "
        f"(target < {args.target_mb_per_100}); per role (RSS, USS):"
    )
    for r, g in sorted(per_role.items(), key=lambda kv: -abs(kv[1])):
        print(f"  {r:30s} {g:+8.2f} {uss_per_role.get(r, float('nan')):+8.2f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
