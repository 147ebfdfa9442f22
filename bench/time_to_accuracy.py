"""Held-out math accuracy against wall-clock training time: this toolkit vs TRL's ``GRPOTrainer``.

Both start from the same SFT'd model (``--model``, or the benchmarks' cached SFT of ``--preset``),
train on the same level-1 math prompts in the same order with the same reward and settings as
``bench/grpo_vs_trl.py`` (group 8, 16 prompts a step, the same learning rate, beta, clipping and
loss aggregation), each for ``--budget-s`` seconds of training, one after the other in child
processes. Every
``--eval-every`` steps each side scores greedy completions of ``--eval-prompts`` held-out level-1
problems (``align.evaluate``: through the vLLM engine that holds the policy for this toolkit,
through HF ``generate`` on the model being trained for TRL); evaluation time is taken off the
clock, so the curves are accuracy against training time.

    python bench/time_to_accuracy.py --json bench/results/time_to_accuracy.json

Keys: ``trl_final_acc`` (TRL's accuracy at the end of its budget), ``trl_time_s`` (its training
time then), ``ours_time_to_trl_final_acc_s`` (the training time at which this toolkit's first
evaluation at or above ``trl_final_acc`` was taken; null if never within its budget), both curves.
Target: at most two thirds of ``trl_time_s``. The figure only means something when TRL's accuracy
rises above where both start (``initial_acc``); otherwise this toolkit "reaches" it at 0 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import machine, sft_model, write_math_rl  # noqa: E402
from bench.grpo_vs_trl import BASE_CONFIG, add_ours_args, ours_overrides, run_trl  # noqa: E402


def write_heldout(path: Path, size: int, seed: int = 0) -> Path:
    """Level-1 problems of the math task's held-out split (never among the training prompts)."""
    from align.configs import MathTaskConfig
    from align.tasks import make_math

    _, held = make_math(MathTaskConfig(train_size=1000, eval_size=size, levels=[1]), seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(json.dumps({k: r[k] for k in ("prompt", "answer", "level")}) + "\n" for r in held)
    )
    return path


_MATH = None


def heldout_acc(engine, tokenizer, args: argparse.Namespace) -> float:
    """Greedy accuracy on the held-out problems (one ``math`` reward pool per process)."""
    global _MATH
    import rewards
    from align.evaluate import evaluate

    _MATH = _MATH or rewards.load("math")
    out = evaluate(
        engine,
        tokenizer,
        tasks="math",
        data={"math": args.heldout},
        max_tokens=args.max_tokens,
        progress=False,
        math_reward=_MATH,
    )
    return out["math_acc"]


def run_ours(args: argparse.Namespace) -> dict:
    import ray

    from align import config
    from align.configs import GRPORecipeConfig
    from hybrid_engine.driver import GRPODriver

    curve = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config.load(GRPORecipeConfig, BASE_CONFIG, ours_overrides(args, tmp))
        driver = GRPODriver(cfg)
        try:
            driver.start()
            state = driver.prepare_stage(cfg.stages[0])
            driver.trainer.set_grpo(state.grpo)
            clock, steps = 0.0, 0
            curve.append(
                {"step": 0, "time_s": 0.0, "acc": heldout_acc(driver.rollout, driver.tokenizer, args)}
            )
            while clock < args.budget_s and steps < args.steps:
                start = time.perf_counter()
                driver.train_step(state)
                clock += time.perf_counter() - start
                driver.step += 1
                steps += 1
                if steps % args.eval_every == 0 or clock >= args.budget_s:
                    acc = heldout_acc(driver.rollout, driver.tokenizer, args)
                    curve.append({"step": steps, "time_s": clock, "acc": acc})
                    print(f"ours: step {steps} {clock:.0f}s acc {acc:.3f}", flush=True)
        finally:
            driver.shutdown()
            ray.shutdown()
    return {"curve": curve}


def run_trl_timed(args: argparse.Namespace) -> dict:
    from transformers import AutoTokenizer, TrainerCallback

    from rollout.hf_backend import HFBackend

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    curve: list[dict] = []

    def make(trainer):
        class Clock(TrainerCallback):
            """Training time without the evaluations; stops at the budget."""

            def __init__(self):
                self.clock, self.prev = 0.0, None

            def _eval(self, step: int) -> None:
                model = trainer.model
                acc = heldout_acc(HFBackend(model=model, batch_size=64), tokenizer, args)
                model.train()
                curve.append({"step": step, "time_s": self.clock, "acc": acc})
                print(f"trl: step {step} {self.clock:.0f}s acc {acc:.3f}", flush=True)

            def on_train_begin(self, *_, **__):
                self._eval(0)
                self.prev = time.perf_counter()

            def on_step_end(self, _args, state, control, **__):
                self.clock += time.perf_counter() - self.prev
                if state.global_step % args.eval_every == 0 or self.clock >= args.budget_s:
                    self._eval(state.global_step)
                if self.clock >= args.budget_s:
                    control.should_training_stop = True
                self.prev = time.perf_counter()

        return Clock()

    rec = run_trl(args, callbacks=[make])
    return {"curve": curve, "mode": rec["mode"]}


def child(part: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--part", part] + [a for a in sys.argv[1:] if a != "--part"]
    cmd += ["--model", str(args.model), "--data", str(args.data), "--heldout", str(args.heldout)]
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RAY_worker_niceness": "0",
        "TOKENIZERS_PARALLELISM": "false",
    }
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{part} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    for ln in proc.stdout.splitlines():
        if ln.startswith(("ours:", "trl:")):
            print(ln, flush=True)
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, default=Path("bench/results/time_to_accuracy.json"))
    p.add_argument("--preset", default="tiny", choices=["tiny", "small"])
    p.add_argument("--budget-s", type=float, default=300.0, help="training seconds per side")
    p.add_argument(
        "--sft-steps",
        type=int,
        default=300,
        help="SFT steps of the start model (fewer: a weaker start, with room for GRPO to gain)",
    )
    p.add_argument("--steps", type=int, default=1000, help="a cap on steps (the budget normally ends a run)")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--eval-prompts", type=int, default=64)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--prompts-per-step", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--micro-batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    add_ours_args(p)
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    p.add_argument("--ours-trainers", type=int, default=1)
    p.add_argument("--trl-mode", default="transformers", choices=["transformers", "vllm"])
    p.add_argument("--part", choices=["ours", "trl"], help=argparse.SUPPRESS)
    p.add_argument(
        "--model",
        type=Path,
        help="start both sides from this HF model dir; default: build --preset and SFT it",
    )
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--heldout", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.part:
        result = run_ours(args) if args.part == "ours" else run_trl_timed(args)
        print("RESULT " + json.dumps(result), flush=True)
        return

    work = ROOT / "out/bench"
    steps = args.sft_steps
    if args.model is None:
        args.model = sft_model(
            work / f"sft-deepseek_v2-{args.preset}-{steps}", args.preset, steps, seed=args.seed
        )
    else:  # a given model: --preset and --sft-steps play no part (and are not recorded)
        args.preset = args.sft_steps = None
    args.model = args.model.resolve()
    args.data = write_math_rl(work / "data/math_l1.jsonl")
    args.heldout = write_heldout(work / f"data/math_l1_heldout_{args.eval_prompts}.jsonl", args.eval_prompts)
    start = time.perf_counter()
    ours = child("ours", args)
    trl = child("trl", args)
    trl_final = trl["curve"][-1]
    reached = next((c for c in ours["curve"] if c["acc"] >= trl_final["acc"]), None)
    # The target means something only when TRL's training raised accuracy: from a TRL final at or
    # below the common start, "ours reached it" at 0 s says nothing.
    trl_gain = trl_final["acc"] - trl["curve"][0]["acc"]
    report = {
        "bench": "time_to_accuracy",
        "trl_gain": trl_gain,
        "target_meaningful": trl_gain > 0,
        "trl_final_acc": trl_final["acc"],
        "trl_time_s": trl_final["time_s"],
        "ours_final_acc": ours["curve"][-1]["acc"],
        "ours_time_s": ours["curve"][-1]["time_s"],
        "ours_time_to_trl_final_acc_s": reached["time_s"] if reached else None,
        "initial_acc": {"ours": ours["curve"][0]["acc"], "trl": trl["curve"][0]["acc"]},
        "steps_in_budget": {"ours": ours["curve"][-1]["step"], "trl": trl_final["step"]},
        "target_ratio": 2 / 3,
        "ratio": (reached["time_s"] / trl_final["time_s"]) if reached and trl_final["time_s"] else None,
        "ours_curve": ours["curve"],
        "trl_curve": trl["curve"],
        "trl_mode": trl["mode"],
        "settings": {k: str(v) for k, v in vars(args).items() if k != "part"},
        "machine": machine(),
        "wall_s": time.perf_counter() - start,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"TRL: {trl_final['acc']:.3f} after {trl_final['time_s']:.0f}s; ours: {report['ours_final_acc']:.3f} after "
        f"{report['ours_time_s']:.0f}s, reached TRL's final accuracy at {report['ours_time_to_trl_final_acc_s']}s; "
        f"wrote {args.json}"
    )
    if trl_gain <= 0:
        print(
            f"TRL's training did not raise accuracy ({trl['curve'][0]['acc']:.3f} -> {trl_final['acc']:.3f}): "
            "the time-to-accuracy target is not meaningful for this run"
        )


if __name__ == "__main__":
    main()
