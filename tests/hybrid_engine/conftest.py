"""Hybrid-engine fixtures: level-1 math prompts and a tiny DeepSeek-V2 taught them by a short SFT.

The SFT is a plain loop (assistant tokens only, AdamW, warmup + cosine, clipping) rather than
recipes/sft.py, to keep the session short: a few hundred steps of batch 32 on 0.47M parameters.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

SFT_STEPS = 300
SFT_SEED = 0


def write_math_rl(path: Path, size: int = 1000, seed: int = 0) -> Path:
    """Level-1 math problems as ``rl`` rows: prompt, answer, level."""
    from align.configs import MathTaskConfig
    from align.tasks import make_math

    train, _ = make_math(MathTaskConfig(train_size=size, eval_size=64, levels=[1]), seed=seed)
    path.write_text(
        "".join(json.dumps({k: r[k] for k in ("prompt", "answer", "level")}) + "\n" for r in train)
    )
    return path


def sft_tiny(
    out_dir: Path, steps: int = SFT_STEPS, seed: int = SFT_SEED, lr: float = 3e-3, batch: int = 32
) -> Path:
    """The tiny DeepSeek-V2 preset trained on level-1 worked solutions; saved as an HF model dir."""
    import torch
    from transformers import AutoModelForCausalLM

    from align.configs import MathTaskConfig
    from align.models import build_tokenizer, make_tiny_model
    from align.tasks import make_math

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = make_tiny_model("deepseek_v2", "tiny", out_dir.parent / f"{out_dir.name}-init", seed=seed)
        tok = build_tokenizer()
        train, _ = make_math(MathTaskConfig(train_size=1000, eval_size=64, levels=[1]), seed=0)
        data = []
        for r in train:
            prompt = tok.apply_chat_template(
                [{"role": "user", "content": r["prompt"]}], add_generation_prompt=True, return_dict=False
            )
            data.append(
                (list(prompt), tok(r["solution"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
            )
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(base)
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
        warmup = 20
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0)))
        )
        rng = random.Random(seed)
        for _ in range(steps):
            rows = rng.sample(data, batch)
            width = max(len(p) + len(c) for p, c in rows)
            ids = torch.zeros(batch, width, dtype=torch.long)
            mask = torch.zeros(batch, width, dtype=torch.long)
            labels = torch.full((batch, width), -100)
            for i, (p, c) in enumerate(rows):
                ids[i, : len(p) + len(c)] = torch.tensor(p + c)
                mask[i, : len(p) + len(c)] = 1
                labels[i, len(p) : len(p) + len(c)] = torch.tensor(c)
            model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
        model.save_pretrained(out_dir)
        tok.save_pretrained(out_dir)
    finally:
        torch.set_num_threads(threads)
    return out_dir


@pytest.fixture(scope="session")
def math_rl(tmp_path_factory) -> Path:
    return write_math_rl(tmp_path_factory.mktemp("data") / "math_l1.jsonl")


@pytest.fixture(scope="session")
def sft_model(tmp_path_factory) -> Path:
    return sft_tiny(tmp_path_factory.mktemp("models") / "sft-tiny")


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray for this module (4 logical CPUs on however many cores), or the one running."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def untrained_rm():
    """``untrained_rm(model_dir, out_dir)``: a seeded, untrained one-output sequence-classification
    reward model (and tokenizer) on ``model_dir``'s weights, saved to ``out_dir``; returns it."""

    def make(model_dir: Path, out_dir: Path) -> Path:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        torch.manual_seed(0)
        rm = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
        tok = AutoTokenizer.from_pretrained(model_dir)
        rm.config.pad_token_id = tok.pad_token_id
        rm.save_pretrained(out_dir)
        tok.save_pretrained(out_dir)
        return out_dir

    return make
