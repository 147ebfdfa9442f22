"""Rollout throughput: standalone vLLM vs the Ray rollout worker vs HF generate, plus the time of
one weight update, on the ``small`` presets, with GRPO-shaped batches (groups of samples at
temperature 1 from a random model, so EOS ends completions at varied lengths).

    python bench/rollout_throughput.py --json out/bench/rollout.json

Each measurement runs in its own process, one after another (no two engines compete for the
cores); warm-up is excluded (a warm-up call plus one short untimed round of the same batch).
Targets: Ray worker >= 0.9x standalone vLLM; vLLM >= 1.3x HF generate.
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

TARGETS = {"ray_vs_standalone": 0.9, "vllm_vs_hf": 1.3}
PARTS = ("standalone", "ray", "hf")


def make_prompts(count: int, seed: int) -> list[list[int]]:
    """Chat-shaped prompts (``<bos><|user|>...<|assistant|>``) of 16-64 random printable chars."""
    import random

    from align.models import BYTE_OFFSET, ROLE_TOKENS, SPECIAL_TOKENS

    user = SPECIAL_TOKENS.index(ROLE_TOKENS["user"])
    assistant = SPECIAL_TOKENS.index(ROLE_TOKENS["assistant"])
    rng = random.Random(seed)
    return [
        [1, user, *(BYTE_OFFSET + rng.randint(32, 126) for _ in range(rng.randint(16, 64))), assistant]
        for _ in range(count)
    ]


def timed_rounds(generate, prompts, params, repeats: int, cpu_clock=time.process_time) -> dict:
    """Untimed short round of the same batch shape, then ``repeats`` timed rounds (best kept).

    Besides wall time, ``cpu_clock`` (CPU seconds of every process doing the work) gives tokens per
    CPU-second, which other jobs on a shared machine disturb much less than tokens per second."""
    from dataclasses import replace

    generate(prompts, replace(params, max_tokens=8, min_tokens=0))
    rounds = []
    for r in range(repeats):
        cpu, start = cpu_clock(), time.perf_counter()
        out = generate(prompts, replace(params, seed=params.seed + 1000 * r))
        seconds, cpu_s = time.perf_counter() - start, cpu_clock() - cpu
        lengths = [len(c.token_ids) for cs in out for c in cs]
        tokens = sum(lengths)
        rounds.append({"s": seconds, "cpu_s": cpu_s, "tokens": tokens, "tok_s": tokens / seconds})
    best = max(rounds, key=lambda x: x["tok_s"])
    return {
        "tok_s": best["tok_s"],
        "tok_per_cpu_s": sum(x["tokens"] for x in rounds) / sum(x["cpu_s"] for x in rounds),
        "rounds": rounds,
        "min_len": min(lengths),
        "max_len": max(lengths),
        "mean_len": sum(lengths) / len(lengths),
    }


def perturbed_state(model_dir: str) -> dict:
    """A trainer's state dict after a 'step': the model's weights plus noise."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model.state_dict()


def run_part(part: str, args: argparse.Namespace) -> dict:
    """One measurement, in this process."""
    from rollout.types import SamplingParams

    prompts = make_prompts(args.prompts, seed=0)
    params = SamplingParams(n=args.group, temperature=1.0, max_tokens=args.max_tokens, seed=0)
    result: dict = {}
    if part == "standalone":
        from rollout.vllm_backend import VLLMBackend

        engine = VLLMBackend(args.model, num_threads=args.threads, max_model_len=1024)
        result["warmup_s"] = engine.warmup()
        result.update(timed_rounds(engine.generate, prompts, params, args.repeats))
        result["weight_update_s"] = engine.load_weights(perturbed_state(args.model).items())
        result["build_s"] = engine.build_s
    elif part == "ray":
        import ray

        from rollout.weight_sync import push_weights
        from rollout.worker import RolloutWorker

        # Ray starts workers at niceness 15; on a shared machine that alone makes the actor lose
        # to every other process. Same priority as the standalone engine, for a fair comparison.
        os.environ["RAY_worker_niceness"] = "0"
        ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
        start = time.perf_counter()
        worker = (
            ray.remote(RolloutWorker)
            .options(num_cpus=args.threads)
            .remote(args.model, "vllm", num_threads=args.threads, warmup=True, max_model_len=1024)
        )
        health = ray.get(worker.health.remote())
        result["build_s"], result["warmup_s"] = time.perf_counter() - start, health["warmup_s"]
        result["num_threads"], result["niceness"] = health["num_threads"], health["niceness"]
        import psutil

        actor = psutil.Process(health["pid"])  # the engine works there, not in this driver

        def cpu_clock() -> float:
            t = actor.cpu_times()
            return time.process_time() + t.user + t.system

        result.update(
            timed_rounds(
                lambda p, s: ray.get(worker.generate.remote(p, s)), prompts, params, args.repeats, cpu_clock
            )
        )
        result["weight_update_s"] = push_weights([worker], perturbed_state(args.model))
        ray.shutdown()
    elif part == "hf":
        from rollout.hf_backend import HFBackend

        engine = HFBackend(args.model, num_threads=args.threads, batch_size=args.hf_batch_size)
        result["warmup_s"] = engine.warmup()
        result.update(timed_rounds(engine.generate, prompts, params, args.repeats))
        result["weight_update_s"] = engine.load_weights(perturbed_state(args.model).items())
    return result


def run_in_subprocess(part: str, model: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--part", part, "--model", str(model)]
    for flag in ("prompts", "group", "max_tokens", "repeats", "threads", "hf_batch_size"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{part} on {model} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(parts: dict) -> dict:
    s, r, h = (parts[p]["tok_s"] for p in PARTS)
    sc, rc, hc = (parts[p]["tok_per_cpu_s"] for p in PARTS)
    return {
        "standalone_vllm_tok_s": round(s, 1),
        "ray_worker_tok_s": round(r, 1),
        "hf_tok_s": round(h, 1),
        "weight_update_s": round(parts["ray"]["weight_update_s"], 4),
        "weight_update_inprocess_s": round(parts["standalone"]["weight_update_s"], 4),
        "ray_vs_standalone": round(r / s, 3),
        "vllm_vs_hf": round(s / h, 3),
        "standalone_vllm_tok_per_cpu_s": round(sc, 1),
        "ray_worker_tok_per_cpu_s": round(rc, 1),
        "hf_tok_per_cpu_s": round(hc, 1),
        "ray_vs_standalone_per_cpu": round(rc / sc, 3),
        "vllm_vs_hf_per_cpu": round(sc / hc, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--archs", nargs="+", default=["deepseek_v2", "qwen2"])
    parser.add_argument("--size", default="small")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per batch")
    parser.add_argument("--group", type=int, default=8, help="samples per prompt (GRPO's G)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds; the best is kept")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--hf-batch-size", type=int, default=64, help="prompts per HF generate call")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.part:  # a child process: one measurement, JSON on the last stdout line
        print(json.dumps(run_part(args.part, args)))
        return

    from align.models import make_tiny_model

    per_model, raw = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            model = make_tiny_model(arch, args.size, Path(tmp) / f"{arch}-{args.size}")
            raw[arch] = {part: run_in_subprocess(part, model, args) for part in PARTS}
            per_model[f"{arch}-{args.size}"] = summarise(raw[arch])
            print(f"{arch}-{args.size}: {per_model[f'{arch}-{args.size}']}", flush=True)

    first = per_model[f"{args.archs[0]}-{args.size}"]
    report = {
        **first,  # headline numbers: the first arch (the toolkit's default model, DeepSeek-V2)
        "headline_model": f"{args.archs[0]}-{args.size}",
        "per_model": per_model,
        "targets": TARGETS,
        "meets_targets": {m: {k: v[k] >= t for k, t in TARGETS.items()} for m, v in per_model.items()},
        "config": {
            k: getattr(args, k)
            for k in ("prompts", "group", "max_tokens", "repeats", "threads", "hf_batch_size")
        }
        | {"temperature": 1.0, "dtype": "float32", "cpu_count": os.cpu_count()},
        "raw": raw,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    print(
        f"\n{'model':<18}{'unit':<10}{'vLLM':>8}{'Ray':>8}{'HF':>8}{'Ray/vLLM':>10}{'vLLM/HF':>9}{'update s':>10}"
    )
    for m, v in per_model.items():
        for unit, suffix, ratio in (("tok/s", "tok_s", ""), ("tok/cpu-s", "tok_per_cpu_s", "_per_cpu")):
            update = "" if ratio else f"{v['weight_update_s']:>10.3f}"
            print(
                f"{m:<18}{unit:<10}{v['standalone_vllm_' + suffix]:>8.0f}{v['ray_worker_' + suffix]:>8.0f}"
                f"{v['hf_' + suffix]:>8.0f}{v['ray_vs_standalone' + ratio]:>10.2f}{v['vllm_vs_hf' + ratio]:>9.2f}{update}"
            )


if __name__ == "__main__":
    main()
