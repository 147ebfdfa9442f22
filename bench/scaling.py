"""Scaling: GRPO step time against the number of completions a step.

One ``GRPODriver`` (local Ray, colocated vLLM engine, FSDP2 trainer ranks; the settings of
``recipes/configs/tiny/grpo_single.yaml``) runs, for each setting, one warm-up step and then
``--steps`` timed steps with group sizes 4, 8, 16, 32 (at 16 prompts a step) and with 8, 16, 32, 64
prompts a step (at group size 8). The learning rate is tiny (``--lr``, default 1e-9) so that the
policy, and with it the completion lengths, stay put while the settings change; the updates are
still computed in full. Completion lengths are reported beside the times so that a change in length
is not read as a change in cost.

The exponent is the least-squares slope of log(median step time) on log(completions a step) over
all settings (1.0 = linear); it is also given for the generation and update phases alone, and for
the time per generated token.

    python bench/scaling.py --json bench/results/scaling.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import machine, tiny_grpo_config  # noqa: E402


def settings(group_sizes: list[int], prompts: list[int], base_g: int, base_p: int) -> list[tuple[int, int]]:
    """(group_size, prompts_per_step) pairs: each group size at base_p, each prompt count at base_g."""
    out = [(g, base_p) for g in group_sizes] + [(base_g, p) for p in prompts]
    return sorted(set(out), key=lambda gp: (gp[0] * gp[1], gp))


def loglog_slope(xs: list[float], ys: list[float]) -> float | None:
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default="bench/results/scaling.json")
    p.add_argument("--work", default="out/bench")
    p.add_argument("--preset", default="tiny", choices=["tiny", "small"])
    p.add_argument("--group-sizes", default="4,8,16,32")
    p.add_argument("--prompts", default="8,16,32,64")
    p.add_argument("--steps", type=int, default=3, help="timed steps per setting (after one warm-up)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-9)
    args = p.parse_args()

    import ray

    from hybrid_engine.driver import GRPODriver

    grid = settings(
        [int(x) for x in args.group_sizes.split(",")], [int(x) for x in args.prompts.split(",")], 8, 16
    )
    results = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = tiny_grpo_config(
            f"{tmp}/run",
            Path(args.work),
            args.preset,
            [f"trainer.lr={args.lr}", "trainer.warmup_steps=0", f"rollout.max_tokens={args.max_tokens}"],
        )
        driver = GRPODriver(cfg)
        try:
            driver.start()
            state = driver.prepare_stage(cfg.stages[0])
            for group_size, prompts in grid:
                state.grpo = dataclasses.replace(state.grpo, group_size=group_size, prompts_per_step=prompts)
                driver.trainer.set_grpo(state.grpo)
                steps = []
                for i in range(args.steps + 1):
                    m = driver.train_step(state)
                    driver.step += 1
                    if i > 0:  # the first step at a new shape is a warm-up
                        steps.append(m)

                def med(key: str, ms: list[dict] = steps) -> float | None:
                    vals = [m[key] for m in ms if m.get(key) is not None]
                    return statistics.median(vals) if vals else None

                r = {
                    "group_size": group_size,
                    "prompts_per_step": prompts,
                    "completions": group_size * prompts,
                    "step_s": med("timing/step"),
                    "gen_s": med("timing/gen"),
                    "update_s": med("timing/update"),
                    "completion_len_mean": med("completion/length_mean"),
                    "gen_tokens_per_s": med("perf/gen_tokens_per_s"),
                    "step_s_all": [m["timing/step"] for m in steps],
                }
                r["step_s_per_completion_token"] = r["step_s"] / (r["completions"] * r["completion_len_mean"])
                results.append(r)
                print(
                    f"group {group_size:3d} x prompts {prompts:3d} = {r['completions']:5d} completions: "
                    f"step {r['step_s']:.2f}s (gen {r['gen_s']:.2f}, update {r['update_s']:.2f}), "
                    f"length {r['completion_len_mean']:.1f}",
                    flush=True,
                )
        finally:
            driver.shutdown()
            ray.shutdown()
    xs = [r["completions"] for r in results]
    report = {
        "bench": "scaling",
        "machine": machine(),
        "preset": args.preset,
        "max_tokens": args.max_tokens,
        "timed_steps_per_setting": args.steps,
        "wall_s": time.perf_counter() - start,
        "exponent": loglog_slope(xs, [r["step_s"] for r in results]),
        "exponent_gen": loglog_slope(xs, [r["gen_s"] for r in results]),
        "exponent_update": loglog_slope(xs, [r["update_s"] for r in results]),
        "exponent_per_token": loglog_slope(
            [r["completions"] * r["completion_len_mean"] for r in results], [r["step_s"] for r in results]
        ),
        "results": results,
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f}"

    print(
        f"exponent {fmt(report['exponent'])} (gen {fmt(report['exponent_gen'])}, update "
        f"{fmt(report['exponent_update'])}; against generated tokens {fmt(report['exponent_per_token'])}); "
        f"wrote {out}"
    )


if __name__ == "__main__":
    main()
