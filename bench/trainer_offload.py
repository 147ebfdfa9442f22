"""The trainer's update step and its offload schedule, on the GPU and on the CPU of the same machine.

For each model size, one FSDP2 trainer rank (``hybrid_engine.trainer.TrainerWorker``, the class the
Ray actors wrap) runs GRPO updates on a fixed synthetic batch, then offloads its parameters and
AdamW state to CPU (as it does around every rollout in colocated mode) and reloads them. Recorded per
size and device: setup time, median update time and tokens/s, reference log-prob time, offload and
reload seconds, and device memory before, while offloaded and after reload. The CPU run of the same
sizes in the same invocation is the peer (``CUDA_VISIBLE_DEVICES=`` in a child process).

    python bench/trainer_offload.py --out bench/results/trainer_offload.json
    python bench/trainer_offload.py --sizes tiny,small --devices cpu --steps 3   # no GPU

Sizes: the ``tiny`` and ``small`` DeepSeek-V2 presets (``align.models.PRESETS``) and ``medium``, a
bench-only DeepSeek-V2 of about 0.2B parameters (too slow for the CPU peer; GPU only by default).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Bench-only size on top of the small preset: 0.24B parameters.
MEDIUM = {
    "hidden_size": 1024,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "qk_nope_head_dim": 128,
    "v_head_dim": 128,
    "intermediate_size": 2816,
    "moe_intermediate_size": 512,
    "n_routed_experts": 16,
    "num_experts_per_tok": 2,
}


def build_model(size: str, out: Path) -> Path:
    if (out / "config.json").is_file():
        return out
    from align.models import make_tiny_model

    if size in ("tiny", "small"):
        return make_tiny_model("deepseek_v2", size, out)
    import torch
    from transformers import AutoModelForCausalLM

    from align.models import PRESETS, build_config, build_tokenizer

    config = type(build_config("deepseek_v2", "small"))(**{**PRESETS["deepseek_v2"]["small"], **MEDIUM})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    build_tokenizer().save_pretrained(out)
    return out


def _batch(seqs: int, prompt_len: int, completion_len: int, vocab: int, seed: int = 0):
    import torch

    from hybrid_engine.batch import GRPOBatch

    g = torch.Generator().manual_seed(seed)
    # Completions of varied length, as rollouts give: between half and all of completion_len.
    prompts = [torch.randint(7, vocab, (prompt_len,), generator=g).tolist() for _ in range(seqs)]
    lens = torch.randint(completion_len // 2, completion_len + 1, (seqs,), generator=g).tolist()
    completions = [torch.randint(7, vocab, (n,), generator=g).tolist() for n in lens]
    return GRPOBatch.build(prompts, completions, torch.randn(seqs, generator=g))


def worker(args: argparse.Namespace) -> dict:
    """One size on whatever device this process sees; prints one JSON line."""
    import torch

    from align.configs import GRPOConfig, ModelConfig, TrainerConfig
    from hybrid_engine.trainer import TrainerWorker, live_cuda_blocks
    from hybrid_engine.trainer import _free_port as free_port

    if torch.cuda.is_available():
        # Allocation stacks, so that what stays on the device while offloaded can be named.
        torch.cuda.memory._record_memory_history(max_entries=200_000)
    model_dir = build_model(args.size, Path(args.work) / f"dsv2-{args.size}")
    cfg = json.loads((model_dir / "config.json").read_text())
    batch = _batch(args.seqs, args.prompt_len, args.completion_len, cfg["vocab_size"])
    w = TrainerWorker(
        0,
        1,
        ModelConfig(path=str(model_dir), dtype=args.dtype),
        TrainerConfig(lr=1e-5, micro_batch_size=args.micro_batch_size, threads=0, batching=args.batching),
        GRPOConfig(beta=0.04),
        total_steps=args.steps + 2,
        use_ref=True,
    )
    t0 = time.perf_counter()
    info = w.setup("127.0.0.1", free_port())
    setup_s = time.perf_counter() - t0
    cuda = w.device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    try:
        # Warm-up step (kernels, allocator), then timed steps with reference log-probs as GRPO does.
        batch.ref_logp_BT = w.compute_logprobs(batch, "ref")
        w.update(batch)
        ref_s, update_s = [], []
        for _ in range(args.steps):
            sync()
            t = time.perf_counter()
            batch.ref_logp_BT = w.compute_logprobs(batch, "ref")
            sync()
            ref_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            out = w.update(batch)
            sync()
            update_s.append(time.perf_counter() - t)
        record = {
            "size": args.size,
            "device": str(w.device),
            "device_name": torch.cuda.get_device_name(0) if cuda else "cpu",
            "threads": torch.get_num_threads(),
            "params": info["params"],
            "dtype": args.dtype,
            "batching": args.batching,
            "seqs": args.seqs,
            "tokens_per_step": batch.total_tokens + args.seqs * args.prompt_len,
            "completion_tokens_per_step": batch.total_tokens,
            "setup_s": setup_s,
            "update_s_median": statistics.median(update_s),
            "update_s_all": update_s,
            "ref_logprobs_s_median": statistics.median(ref_s),
            "update_tokens_per_s": (batch.total_tokens + args.seqs * args.prompt_len)
            / statistics.median(update_s),
            "loss_finite": bool(out["skipped"] == 0.0),
        }
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            w.update(batch)
            record["update_peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
            record["memory_before_offload"] = w.memory()
            offload_s, reload_s, offloaded_mem = [], [], []
            for _ in range(3):
                offload_s.append(w.offload())
                offloaded_mem.append(w.memory())
                reload_s.append(w.reload())
            record["memory_offloaded"] = offloaded_mem[-1]
            w.offload()
            record["offloaded_live_blocks"] = live_cuda_blocks()
            w.reload()
            record["memory_after_reload"] = w.memory()
            record["offload_s_median"] = statistics.median(offload_s)
            record["reload_s_median"] = statistics.median(reload_s)
            # Training goes on after the round trips.
            out = w.update(batch)
            record["update_after_reload_finite"] = bool(out["skipped"] == 0.0)
        return record
    finally:
        w.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", "--out", dest="out", default="bench/results/trainer_offload.json")
    p.add_argument("--work", default="out/bench/trainer_offload")
    p.add_argument("--sizes", default="tiny,small,medium")
    p.add_argument("--devices", default="cuda,cpu", help="cuda, cpu or both; cuda is skipped without one")
    p.add_argument("--cpu-sizes", default="tiny,small", help="sizes the CPU peer runs")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--seqs", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--completion-len", type=int, default=192)
    p.add_argument("--micro-batch-size", type=int, default=16)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batching", default="padded")
    p.add_argument("--size", help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return

    import torch

    devices = [d for d in args.devices.split(",") if d]
    if "cuda" in devices and not torch.cuda.is_available():
        print("no CUDA here: running the CPU peer only", file=sys.stderr)
        devices.remove("cuda")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    results, failures = [], []
    for device in devices:
        sizes = (
            args.sizes.split(",")
            if device == "cuda"
            else [s for s in args.sizes.split(",") if s in args.cpu_sizes.split(",")]
        )
        for size in sizes:
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            if device == "cpu":
                env["CUDA_VISIBLE_DEVICES"] = ""
            cmd = [sys.executable, __file__, "--worker", "--size", size] + [
                a for a in sys.argv[1:] if a != "--worker"
            ]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                failures.append(
                    {"size": size, "device": device, "rc": proc.returncode, "stderr": proc.stderr[-3000:]}
                )
                print(f"{device}/{size}: FAILED rc={proc.returncode}\n{proc.stderr[-3000:]}", file=sys.stderr)
                continue
            r = json.loads(lines[-1][len("RESULT ") :])
            results.append(r)
            line = (
                f"{device}/{size}: {r['params'] / 1e6:.1f}M params, update {r['update_s_median']:.3f}s "
                f"({r['update_tokens_per_s']:.0f} tok/s), ref {r['ref_logprobs_s_median']:.3f}s"
            )
            if "offload_s_median" in r:
                line += (
                    f", offload {r['offload_s_median']:.3f}s reload {r['reload_s_median']:.3f}s, allocated "
                    f"{r['memory_before_offload']['trainer_allocated_gib']:.3f} -> "
                    f"{r['memory_offloaded']['trainer_allocated_gib']:.4f} GiB"
                )
            print(line, flush=True)
    # GPU against the CPU peer of the same size.
    by = {(r["device"].split(":")[0], r["size"]): r for r in results}
    speedups = {
        size: by[("cpu", size)]["update_s_median"] / by[("cuda", size)]["update_s_median"]
        for (dev, size) in by
        if dev == "cuda" and ("cpu", size) in by
    }
    report = {
        "bench": "trainer_offload",
        "argv": sys.argv[1:],
        "results": results,
        "gpu_over_cpu_update_speedup": speedups,
        "failures": failures,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}; GPU/CPU update speedup: {speedups}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
