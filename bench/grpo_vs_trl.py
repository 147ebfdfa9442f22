"""GRPO step time, generation throughput, peak memory and reward curves: this toolkit
(``GRPODriver`` on a local Ray, colocated vLLM engine, FSDP2 trainer ranks) vs TRL's ``GRPOTrainer``,
on the same model after the same SFT, the same prompts in the same order, the same ``math``
reward and the same GRPO settings.

    python bench/grpo_vs_trl.py --json out/bench/grpo_vs_trl.json                     # small preset
    python bench/grpo_vs_trl.py --preset tiny --sft-steps 300 --steps 3 --repeats 1 \\
        --max-tokens 32 --json out/bench/grpo_vs_trl_tiny.json                       # quick check

Runs alternate (ours, TRL, ours, TRL, ...), each in a fresh subprocess; the parent samples the
summed RSS of the child's whole process tree (Ray's GCS, raylet and actor processes included)
every 0.5 s and keeps the peak. Step time is the wall time from the end of one optimizer step to
the end of the next (generation, rewards, reference log-probs, update, weight sync); the first
step of each run (warm-up) is left out of the medians. ``speedup`` = median over repeats of
(TRL's median step time / ours) in the same repeat: > 1 means this toolkit is faster.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median, run_child, sft_model, write_math_rl  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BASE_CONFIG = ROOT / "recipes/configs/tiny/grpo_single.yaml"
PARTS = ("ours", "trl")


# The prompts -------------------------------------------------------------------------------------


def prompt_order(rows: list[dict], steps: int, prompts_per_step: int, seed: int) -> list[list[int]]:
    """The row indices each step of ``GRPODriver`` draws (its seeded sampler); TRL gets them in
    this order with shuffling off, so both train on the same prompts at every step."""
    from hybrid_engine.driver import StageState

    state = StageState(name="bench", rows=rows, prompt_ids=[], reward=None, grpo=None, seed=seed, steps=steps)
    return [state.next_indices(prompts_per_step) for _ in range(steps)]


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# Ours ----------------------------------------------------------------------------------------------


def add_ours_args(parser: argparse.ArgumentParser) -> None:
    """The options of our side that this benchmark and ``time_to_accuracy.py`` share."""
    parser.add_argument(
        "--batching",
        default="shared_prefix",
        choices=["shared_prefix", "padded", "padding_free"],
        help="our trainer's micro-batch layout (shared_prefix: a group's prompt is computed once)",
    )


def ours_overrides(args: argparse.Namespace, out_dir: str) -> list[str]:
    cores = args.cores
    trainers = args.ours_trainers
    return [
        f"output_dir={out_dir}",
        f"seed={args.seed}",
        f"model.path={args.model}",
        f"rollout.max_tokens={args.max_tokens}",
        "rollout.temperature=1.0",
        "rollout.num_workers=1",
        f"rollout.threads={cores}",
        f"rollout.cpus_per_worker={cores / 2}",
        f"trainer.num_workers={trainers}",
        f"trainer.threads={max(1, cores // trainers)}",
        f"trainer.cpus_per_worker={cores / 2 / trainers}",
        f"trainer.lr={args.lr}",
        "trainer.warmup_steps=0",
        "trainer.lr_scheduler=constant",
        "trainer.weight_decay=0.0",
        "trainer.max_grad_norm=1.0",
        f"trainer.micro_batch_size={args.micro_batch_size}",
        f"trainer.batching={args.batching}",
        f"grpo.group_size={args.group_size}",
        f"grpo.prompts_per_step={args.prompts_per_step}",
        f"grpo.beta={args.beta}",
        "grpo.clip_eps=0.2",
        "grpo.ppo_epochs=1",
        "grpo.aggregation=seq-mean-token-mean",
        "grpo.scale_rewards=true",
        f"stages.0.data.train=[{args.data}]",
        f"stages.0.steps={args.steps}",
        f"ray.num_cpus={cores}",
        "report=false",
    ]


def run_ours(args: argparse.Namespace) -> dict:
    """One run of this toolkit, in this process (a fresh local Ray)."""
    import ray

    from align import config
    from align.configs import GRPORecipeConfig
    from hybrid_engine.driver import GRPODriver

    with tempfile.TemporaryDirectory() as tmp:
        cfg = config.load(GRPORecipeConfig, BASE_CONFIG, ours_overrides(args, tmp))
        start = time.perf_counter()
        driver = GRPODriver(cfg)
        try:
            setup = driver.start()
            state = driver.prepare_stage(cfg.stages[0])
            driver.trainer.set_grpo(state.grpo)
            setup_s = time.perf_counter() - start
            steps, prev = [], time.perf_counter()
            for _ in range(args.steps):
                m = driver.train_step(state)
                driver.step += 1
                now = time.perf_counter()
                steps.append({"wall_s": now - prev, **m})
                prev = now
        finally:
            driver.shutdown()
            ray.shutdown()
    return {
        "setup_s": setup_s,
        "setup": setup,
        "step_s": [s["wall_s"] for s in steps],
        "gen_tok_s": [s["perf/gen_tokens_per_s"] for s in steps],
        "rewards": [s.get("reward/mean") for s in steps],
        "completion_len": [s["completion/length_mean"] for s in steps],
        "kl": [s.get("train/kl") for s in steps],
        "timing": {k: [s[k] for s in steps] for k in steps[0] if k.startswith("timing/")},
        "memory": {k: max(s[k] for s in steps) for k in steps[0] if k.startswith("memory/")},
    }


# TRL -----------------------------------------------------------------------------------------------


def run_trl(args: argparse.Namespace, callbacks: Sequence[Callable] = ()) -> dict:
    """One run of TRL's GRPOTrainer, in this process. ``callbacks``: functions of the trainer that
    return more ``TrainerCallback``s (``bench/time_to_accuracy.py`` evaluates and stops through one)."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    import rewards

    torch.set_num_threads(args.cores)
    rows = read_rows(args.data)
    order = [i for step in prompt_order(rows, args.steps, args.prompts_per_step, args.seed) for i in step]
    dataset = Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": rows[i]["prompt"]}], "answer": rows[i]["answer"]}
            for i in order
        ]
    )
    math_reward = rewards.load("math")
    acc = {"gen_s": 0.0, "gen_tok": 0, "reward": [], "len": []}

    def math(prompts, completions, answer, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        scores = math_reward(prompts, texts, answer=answer)
        valid = [float(s) for s in scores if s is not None]
        acc["reward"].append(sum(valid) / max(len(valid), 1))
        return scores

    use_vllm = args.trl_mode == "vllm"
    extra = {}
    if use_vllm:
        from rollout.vllm_patches import patch_vllm_cpu_rope

        patch_vllm_cpu_rope()  # what our engines apply: without it vLLM's DeepSeek-V2 drifts on CPU
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
            os.environ.setdefault(k, v)
        os.environ.setdefault("MASTER_PORT", "29533")
        extra = {"vllm_mode": "colocate", "vllm_max_model_length": 512, "vllm_gpu_memory_utilization": 0.3}

    completions_per_step = args.prompts_per_step * args.group_size
    micro = min(args.micro_batch_size, completions_per_step)
    if completions_per_step % micro:
        raise ValueError(f"micro batch {micro} does not divide {completions_per_step} completions a step")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = GRPOConfig(
            output_dir=tmp,
            seed=args.seed,
            use_cpu=True,
            bf16=False,
            learning_rate=args.lr,
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            max_steps=args.steps,
            per_device_train_batch_size=micro,
            gradient_accumulation_steps=completions_per_step // micro,  # one optimizer step a batch
            num_generations=args.group_size,
            max_completion_length=args.max_tokens,
            temperature=1.0,
            top_p=1.0,
            beta=args.beta,
            epsilon=0.2,
            num_iterations=1,
            loss_type="grpo",  # per-sequence token mean, then mean over sequences
            scale_rewards="group",
            shuffle_dataset=False,  # the dataset is already in our sampler's order
            router_aux_loss_coef=0.0,  # our GRPO adds no MoE balance loss
            disable_dropout=True,
            use_vllm=use_vllm,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            dataloader_num_workers=0,
            log_completions=False,
            **extra,
        )
        start = time.perf_counter()
        trainer = GRPOTrainer(model=str(args.model), reward_funcs=[math], args=cfg, train_dataset=dataset)
        setup_s = time.perf_counter() - start

        generate = trainer._generate_single_turn

        def timed_generate(*a, **kw):
            t0 = time.perf_counter()
            completion_ids, logprobs = generate(*a, **kw)
            acc["gen_s"] += time.perf_counter() - t0
            acc["gen_tok"] += sum(len(c) for c in completion_ids)
            acc["len"].extend(len(c) for c in completion_ids)
            return completion_ids, logprobs

        trainer._generate_single_turn = timed_generate
        rec: dict = {"step_s": [], "gen_tok_s": [], "gen_s": [], "completion_len": [], "logs": []}

        class Timer(TrainerCallback):
            def on_train_begin(self, *_, **__):
                self.prev = time.perf_counter()

            def on_step_end(self, *_, **__):
                now = time.perf_counter()
                rec["step_s"].append(now - self.prev)
                self.prev = now
                rec["gen_s"].append(acc["gen_s"])
                rec["gen_tok_s"].append(acc["gen_tok"] / max(acc["gen_s"], 1e-9))
                rec["completion_len"].append(sum(acc["len"]) / max(len(acc["len"]), 1))
                acc.update(gen_s=0.0, gen_tok=0, len=[])

            def on_log(self, _args, _state, _control, logs=None, **__):
                if logs and "loss" in logs:
                    rec["logs"].append({k: v for k, v in logs.items() if isinstance(v, (int, float))})

        trainer.add_callback(Timer())
        for make in callbacks:
            trainer.add_callback(make(trainer))
        trainer.train()
    rec.update(setup_s=setup_s, rewards=acc["reward"], kl=[x.get("kl") for x in rec["logs"]])
    rec["mode"] = "vllm-colocate" if use_vllm else "transformers-generate"
    rec["config"] = {
        "per_device_train_batch_size": cfg.per_device_train_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "generation_batch_size": cfg.generation_batch_size,
        "steps_per_generation": cfg.steps_per_generation,
        "loss_type": cfg.loss_type,
        "scale_rewards": cfg.scale_rewards,
        "top_k": cfg.top_k,
    }
    return rec


# The parent ------------------------------------------------------------------------------------


def child_cmd(part: str, args: argparse.Namespace, trl_mode: str) -> list[str]:
    cmd = [sys.executable, __file__, "--model", str(args.model), "--data", str(args.data)]
    for flag in (
        "steps",
        "group_size",
        "prompts_per_step",
        "max_tokens",
        "lr",
        "beta",
        "seed",
        "cores",
        "micro_batch_size",
        "ours_trainers",
        "batching",
    ):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    return cmd + ["--trl-mode", trl_mode, "--part", part]


def child_env() -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    # Ray starts its workers at niceness 15; the TRL process runs at the caller's. Same priority for both.
    env["RAY_worker_niceness"] = "0"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def summarise(runs: dict[str, list[dict]]) -> dict:
    def steady(part: str, key: str) -> list[float]:
        return [x for r in runs[part] for x in r[key][1:]]

    out: dict = {}
    for part in PARTS:
        out[f"{part}_step_s"] = median(steady(part, "step_s"))
        # The fastest steady step: on a shared machine the least disturbed by other processes.
        out[f"{part}_step_s_min"] = min(steady(part, "step_s"), default=None)
        out[f"{part}_gen_tok_s"] = median(steady(part, "gen_tok_s"))
        out[f"{part}_peak_rss_mb"] = median([r["peak_rss_mb"] for r in runs[part]])
        out[f"{part}_peak_rss_mb_max"] = max(r["peak_rss_mb"] for r in runs[part])
        pss = [r["peak_pss_mb"] for r in runs[part] if r.get("peak_pss_mb") is not None]
        out[f"{part}_peak_pss_mb"] = median(pss) if pss else None
        out[f"{part}_setup_s"] = median([r["setup_s"] for r in runs[part]])
        out[f"{part}_wall_s"] = median([r["wall_s"] for r in runs[part]])
        curves = [r["rewards"] for r in runs[part]]
        out[f"{part}_rewards"] = [
            round(sum(c[i] for c in curves) / len(curves), 4) for i in range(min(len(c) for c in curves))
        ]
        out[f"{part}_completion_len"] = median(steady(part, "completion_len"))
    pairs = [
        median(t["step_s"][1:]) / median(o["step_s"][1:])
        for o, t in zip(runs["ours"], runs["trl"])
        if len(o["step_s"]) > 1 and len(t["step_s"]) > 1
    ]
    out["speedup"] = median(pairs)
    out["speedup_per_repeat"] = [round(p, 3) for p in pairs]
    if out["ours_step_s_min"] and out["trl_step_s_min"]:
        out["speedup_best_steps"] = out["trl_step_s_min"] / out["ours_step_s_min"]
    phases = {}
    for key in runs["ours"][0]["timing"]:
        phases[key] = median([x for r in runs["ours"] for x in r["timing"][key][1:]])
    out["ours_phase_s"] = phases
    # The phases of ours' fastest steady step (see *_step_s_min).
    best = min(
        ((r, i) for r in runs["ours"] for i in range(1, len(r["step_s"]))),
        key=lambda ri: ri[0]["step_s"][ri[1]],
    )
    out["ours_phase_s_fastest_step"] = {k: v[best[1]] for k, v in best[0]["timing"].items()}
    trl_gen = median(steady("trl", "gen_s"))
    out["trl_phase_s"] = {"gen": trl_gen, "rest": (out["trl_step_s"] or 0) - (trl_gen or 0)}
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


NOTES = [
    "Prompts: both sides train on the same prompts at every step (TRL gets the dataset in the "
    "order GRPODriver's seeded sampler draws, shuffle_dataset=False).",
    "Loss: ours aggregation 'seq-mean-token-mean' = TRL loss_type 'grpo' (token mean per sequence, "
    "then mean over sequences); k3 KL with beta on both; clip 0.2 both sides; one optimizer step "
    "per batch of prompts_per_step * group_size completions (TRL: per_device_train_batch_size = "
    "micro_batch_size, gradient_accumulation_steps = batch / micro_batch_size; ours: micro-batches "
    "of micro_batch_size per rank, gradients accumulated).",
    "Rewards: both use rewards.load('math'); ours calls it through rewards.combine (thread pool, "
    "time-out, error accounting), TRL calls it directly. scale_rewards: ours unbiased group std + "
    "1e-6, TRL group std (torch.std, unbiased) + 1e-4.",
    "Sampling: temperature 1.0, top_p 1.0, no top_k on both. Different RNGs: the completions "
    "differ, so reward curves agree only statistically.",
    "Old log-probs: with one update per batch both use the detached current log-probs "
    "(ratio = 1); TRL's vLLM importance-sampling correction applies only in its vLLM mode.",
    "Forward/backward layout: ours trainer.batching (ours_batching in settings; shared_prefix puts a "
    "group's prompt once in a row followed by its completions, under a 4D attention mask); TRL "
    "pads one row per completion (its only layout for this model).",
    "TRL adds no MoE balance loss here (router_aux_loss_coef=0), as our GRPO trainer adds none.",
    "Generation: ours = a vLLM engine in a Ray actor (colocated with the trainer ranks, weights "
    "streamed after each update); TRL = see trl_mode. Peak RSS sums RSS over the process tree, so "
    "pages shared between processes (torch libraries in every Ray worker) count once per process.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--model", type=Path, help="an HF model dir; default: build --preset and SFT it")
    parser.add_argument("--preset", default="small", choices=["tiny", "small"], help="DeepSeek-V2 preset")
    parser.add_argument("--sft-steps", type=int, default=300, help="SFT steps of the built model")
    parser.add_argument("--steps", type=int, default=8, help="GRPO steps a run (the first is warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per side, alternating")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--prompts-per-step", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128, help="completion length limit")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--micro-batch-size", type=int, default=32, help="sequences per forward/backward")
    parser.add_argument("--seed", type=int, default=0)
    add_ours_args(parser)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="threads / Ray CPUs")
    parser.add_argument(
        "--ours-trainers", type=int, default=1, help="FSDP2 trainer ranks (threads = cores / ranks)"
    )
    parser.add_argument(
        "--trl-mode",
        default="auto",
        choices=["auto", "vllm", "transformers"],
        help="TRL generation: colocated vLLM, transformers generate, or auto (vLLM, else transformers)",
    )
    parser.add_argument("--only", choices=PARTS, help="run one side only (debugging)")
    parser.add_argument("--resummarise", type=Path, help="recompute the summary of this JSON's raw runs")
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.part:  # a child process: one run, JSON on the last stdout line
        result = run_ours(args) if args.part == "ours" else run_trl(args)
        print(json.dumps(result), flush=True)
        return

    if args.resummarise:
        report = json.loads(args.resummarise.read_text())
        report.update(summarise(report["raw"]))
        args.resummarise.write_text(json.dumps(report, indent=2))
        print(json.dumps({k: v for k, v in report.items() if k not in ("raw", "notes")}, indent=1))
        return

    bench_dir = ROOT / "out/bench"
    args.data = write_math_rl(bench_dir / "data/math_l1.jsonl")
    if args.model is None:
        name = f"sft-deepseek_v2-{args.preset}-{args.sft_steps}"
        print(f"model: {bench_dir / name} (built and SFT'd once, then cached)", flush=True)
        args.model = sft_model(bench_dir / name, args.preset, args.sft_steps, seed=args.seed)
    sft_info = (
        json.loads((args.model / "sft.json").read_text()) if (args.model / "sft.json").is_file() else None
    )
    logs = bench_dir / "logs" / time.strftime("grpo_vs_trl-%Y%m%d-%H%M%S")
    load_before = [round(x, 2) for x in os.getloadavg()]
    env = child_env()
    trl_mode, trl_notes = args.trl_mode, []
    runs: dict[str, list[dict]] = {p: [] for p in PARTS}
    parts = [args.only] if args.only else list(PARTS)
    for rep in range(args.repeats):
        for part in parts:
            attempt_mode = "vllm" if (part == "trl" and trl_mode == "auto") else trl_mode
            label = part if part == "ours" else f"trl-{attempt_mode}"
            try:
                result, info = run_child(
                    child_cmd(part, args, attempt_mode), env, logs / f"{label}-{rep}.log"
                )
            except RuntimeError as e:
                if part != "trl" or trl_mode != "auto":
                    raise
                trl_notes.append(f"TRL use_vllm=True vllm_mode='colocate' failed: {str(e)[-1500:]}")
                print("trl: colocated vLLM failed; falling back to transformers generation", flush=True)
                trl_mode = attempt_mode = "transformers"
                result, info = run_child(
                    child_cmd(part, args, attempt_mode), env, logs / f"trl-{attempt_mode}-{rep}.log"
                )
            if part == "trl" and trl_mode == "auto":
                trl_mode = attempt_mode
            result.update(info)
            runs[part].append(result)
            step = median(result["step_s"][1:]) or result["step_s"][0]
            print(
                f"repeat {rep} {part}: step {step:.2f}s (median after warm-up) "
                f"rewards {[round(x, 3) for x in result['rewards']]} peak RSS {info['peak_rss_mb']:.0f} MB "
                f"wall {info['wall_s']:.0f}s",
                flush=True,
            )
    if args.only:
        print(json.dumps(runs, indent=1))
        return

    report = {
        **summarise(runs),
        "trl_mode": runs["trl"][-1]["mode"],
        "ours_layout": {
            "trainer_ranks": args.ours_trainers,
            "trainer_threads": max(1, args.cores // args.ours_trainers),
            "rollout_engines": 1,
            "rollout_threads": args.cores,
            "colocated": True,
            "ray_num_cpus": args.cores,
        },
        "settings": {
            "model": str(args.model),
            "preset": args.preset if sft_info else None,
            "sft": sft_info,
            "steps": args.steps,
            "repeats": args.repeats,
            "group_size": args.group_size,
            "prompts_per_step": args.prompts_per_step,
            "completions_per_step": args.group_size * args.prompts_per_step,
            "max_tokens": args.max_tokens,
            "lr": args.lr,
            "beta": args.beta,
            "clip_eps": 0.2,
            "temperature": 1.0,
            "micro_batch_size": args.micro_batch_size,
            "ours_batching": args.batching,
            "lr_schedule": "constant, no warmup",
            "dtype": "float32",
            "seed": args.seed,
            "data": "level-1 math (out/bench/data/math_l1.jsonl), reward rewards.load('math')",
            "trl": runs["trl"][-1]["config"],
        },
        "machine": {**machine(), "load_avg_before": load_before},
        "notes": NOTES + trl_notes,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "logs": str(logs),
        "raw": runs,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    keys = ("step_s", "gen_tok_s", "peak_rss_mb", "peak_pss_mb", "setup_s", "completion_len")
    print(f"\n{'':<8}" + "".join(f"{k:>16}" for k in keys))
    for part in PARTS:
        print(f"{part:<8}" + "".join(f"{report[f'{part}_{k}'] or 0:>16.2f}" for k in keys))
    print(f"speedup (TRL step / ours): {report['speedup']}  TRL mode: {report['trl_mode']}")
    print(f"ours phases (s): {report['ours_phase_s']}")
    print(f"load average now: {report['machine']['load_avg']}")


if __name__ == "__main__":
    main()
