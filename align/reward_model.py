"""Reward-model training: pairwise (TRL's ``RewardTrainer``) or pointwise, and held-out evaluation.

- Pairwise (Bradley-Terry): TRL's ``RewardTrainer`` on preference pairs, loss
  ``-logsigmoid(r_chosen - r_rejected - margin)``; ``preference_dataset`` tokenizes the pairs as TRL
  tokenizes conversational rows (``[user: prompt]`` + ``[assistant: chosen]`` through the chat template).
- Pointwise: ``PointwiseRewardTrainer``, a small ``transformers.Trainer`` with an MSE or BCE loss on
  labelled completions (``prompt``, ``completion``, ``score``/``label``), for RM_reasoning trained
  on verifier-labelled samples. TRL's ``RewardTrainer`` is pairwise only (its loss and collator take
  chosen/rejected), hence this one.
- Both modes tokenize with ``rewards.reward_model.encode``, the function the reward API scores with;
  ``final/reward_model.json`` records the format, so ``rewards.load`` scores exactly what training saw.
- ``pairwise_metrics`` / ``pointwise_pairs``: held-out pairwise accuracy and mean margin of any
  reward callable (the recipe scores ``final/`` through ``rewards.load``).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
import torch.nn.functional as F
import transformers
from trl import RewardConfig

from align.configs import LoraConfig, RewardModelRecipeConfig
from align.data import DataError
from rewards.reward_model import CARD, encode

TRAIN_FORMATS = {"pairwise": ("preference",), "pointwise": ("pointwise",)}
EVAL_FORMATS = {"pairwise": ("preference",), "pointwise": ("preference", "pointwise")}
GROUP_COLUMNS = ("kind", "category")  # held-out accuracy is also broken down by these, when present


# ----------------------------------------------------------------------------------------------
# Model


def load_model(path: str, dtype: str = "float32") -> tuple[Any, Any]:
    """``AutoModelForSequenceClassification`` with one output, from a causal LM (usually the SFT model).

    The new ``score`` head is random (seeded by the caller); ``pad_token_id`` is set so the head reads
    the last real token of right-padded batches.
    """
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=getattr(torch, dtype)
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def input_format(tokenizer: Any) -> str:
    """``chat`` when the tokenizer has a chat template (as TRL decides), else ``text``."""
    return "chat" if getattr(tokenizer, "chat_template", None) else "text"


def lora_config(lora: LoraConfig) -> Any:
    """A peft ``LoraConfig`` for sequence classification (the score head is trained in full), or None."""
    if lora.r <= 0:
        return None
    import peft

    return peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="SEQ_CLS",
        modules_to_save=["score"],
    )


# ----------------------------------------------------------------------------------------------
# Data


def _where(ds: datasets.Dataset, i: int) -> str:
    """Row ``i`` as ``file:line`` when ``load_split(..., keep_provenance=True)`` recorded it."""
    if "_source" not in ds.column_names:
        return f"row {i}"
    source, row = ds[i]["_source"], ds[i]["_row"]
    return f"{source}:{row}" if source.endswith((".jsonl", ".ndjson")) else f"{source}: row {row}"


def _margins(ds: datasets.Dataset, default: float) -> list[float] | None:
    """Per-pair margins: the ``margin`` column where set, else ``default``; None when all are 0."""
    if "margin" not in ds.column_names:
        return None if default == 0 else [default] * len(ds)
    out = []
    for i, m in enumerate(ds["margin"]):
        if m is None:
            out.append(default)
            continue
        if isinstance(m, bool) or not isinstance(m, int | float) or not math.isfinite(m):
            raise DataError(f"{_where(ds, i)}: field 'margin': expected a finite number, got {m!r}")
        out.append(float(m))
    return out


def preference_dataset(
    ds: datasets.Dataset, tokenizer: Any, fmt: str, margin: float = 0.0
) -> datasets.Dataset:
    """Tokenized preference pairs for TRL's ``RewardTrainer``: ``chosen_ids``, ``rejected_ids``,
    ``length`` (the longer side, for length-grouped batches) and ``margin`` (when any is non-zero).

    Each side is ``encode(tokenizer, prompt, chosen|rejected, fmt)``: for ``chat`` exactly the
    tokens TRL makes of conversational rows (``[user: prompt]`` + ``[assistant: chosen]``), for
    ``text`` those of its plain-text path (prompt + chosen + EOS). Tokenizing here rather than in TRL
    lets the scorer (``rewards.reward_model``) share the very function.
    """
    margins = _margins(ds, margin)
    chosen = [encode(tokenizer, p, c, fmt) for p, c in zip(ds["prompt"], ds["chosen"])]
    rejected = [encode(tokenizer, p, r, fmt) for p, r in zip(ds["prompt"], ds["rejected"])]
    cols: dict[str, list] = {
        "chosen_ids": chosen,
        "rejected_ids": rejected,
        "length": [max(len(c), len(r)) for c, r in zip(chosen, rejected)],
    }
    if margins is not None:
        cols["margin"] = margins
    return datasets.Dataset.from_dict(cols)


def pointwise_target(ds: datasets.Dataset, loss: str) -> list[float]:
    """The regression/classification target of each row: MSE prefers ``score``, BCE ``label``.

    Rows lacking the preferred column use the other; BCE targets must lie in [0, 1].
    """
    order = ("score", "label") if loss == "mse" else ("label", "score")
    columns = {name: ds[name] for name in order if name in ds.column_names}
    out = []
    for i in range(len(ds)):
        value = next(
            (columns[name][i] for name in order if name in columns and columns[name][i] is not None), None
        )
        if value is None:
            raise DataError(f"{_where(ds, i)}: no 'score' or 'label'")
        value = float(value)
        if loss == "bce" and not 0.0 <= value <= 1.0:
            raise DataError(
                f"{_where(ds, i)}: target {value} is outside [0, 1], which pointwise_loss=bce needs "
                "(use labels 0/1 or true/false, or pointwise_loss=mse for unbounded scores)"
            )
        out.append(value)
    return out


def pointwise_dataset(
    ds: datasets.Dataset, tokenizer: Any, fmt: str, loss: str, max_length: int
) -> tuple[datasets.Dataset, int]:
    """Tokenized pointwise rows (``input_ids``, ``target``, ``length``), longer than ``max_length`` dropped (as
    TRL's RewardTrainer drops long pairs); returns the dataset and how many were dropped."""
    targets = pointwise_target(ds, loss)
    ids = [encode(tokenizer, p, c, fmt) for p, c in zip(ds["prompt"], ds["completion"])]
    keep = [i for i, x in enumerate(ids) if len(x) <= max_length]
    data = {
        "input_ids": [ids[i] for i in keep],
        "target": [targets[i] for i in keep],
        "length": [len(ids[i]) for i in keep],
    }
    return datasets.Dataset.from_dict(data), len(ids) - len(keep)


def collate_pointwise(pad_token_id: int) -> Callable[[list[dict]], dict]:
    """Right-pads ``input_ids`` into a batch with ``attention_mask`` and float ``target``."""

    def collate(rows: list[dict]) -> dict:
        width = max(len(r["input_ids"]) for r in rows)
        input_ids_BT = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        mask_BT = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids_BT[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
            mask_BT[i, : len(r["input_ids"])] = 1
        target_B = torch.tensor([float(r["target"]) for r in rows])
        return {"input_ids": input_ids_BT, "attention_mask": mask_BT, "target": target_B}

    return collate


# ----------------------------------------------------------------------------------------------
# Trainers


def pointwise_loss(reward_B: torch.Tensor, target_B: torch.Tensor, kind: str) -> torch.Tensor:
    """``mse``: mean (r - y)^2; ``bce``: binary cross-entropy of sigmoid(r) against y in [0, 1]."""
    if kind == "mse":
        return F.mse_loss(reward_B.float(), target_B.float())
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(reward_B.float(), target_B.float())
    raise ValueError(f"unknown pointwise loss {kind!r}; expected 'mse' or 'bce'")


class PointwiseRewardTrainer(transformers.Trainer):
    """``Trainer`` whose loss is ``pointwise_loss`` of the model's scalar output against ``target``.

    Logs ``loss`` and, averaged over the logging interval, ``mean_reward`` and (for BCE) ``accuracy``:
    the fraction where ``reward > 0`` agrees with ``target > 0.5``.
    """

    def __init__(self, *args, loss_kind: str = "bce", **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_kind = loss_kind
        self._metrics: dict[str, dict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        # As TRL's RewardTrainer: evaluation computes the loss without a `labels` input.
        self.can_return_loss = True
        self.label_names = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        target_B = inputs.pop("target")
        outputs = model(**inputs, use_cache=False)
        reward_B = outputs.logits.squeeze(-1)
        loss = pointwise_loss(reward_B, target_B, self.loss_kind)
        mode = "train" if model.training else "eval"
        with torch.no_grad():
            self._metrics[mode]["mean_reward"].append(reward_B.mean().item())
            if self.loss_kind == "bce":
                agree = ((reward_B > 0) == (target_B > 0.5)).float().mean().item()
                self._metrics[mode]["accuracy"].append(agree)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        logs.update({prefix + k: sum(v) / len(v) for k, v in self._metrics[mode].items() if v})
        self._metrics[mode].clear()
        super().log(logs, start_time)


def _common_args(cfg: RewardModelRecipeConfig, has_eval: bool) -> dict:
    t = cfg.train
    eval_every = has_eval and t.eval_steps > 0
    group = t.group_by_length if t.group_by_length is not None else t.mode == "pairwise"
    return {
        "output_dir": cfg.output_dir,
        "seed": cfg.seed,
        "learning_rate": t.lr,
        "num_train_epochs": t.epochs,
        "max_steps": t.max_steps if t.max_steps > 0 else -1,
        "per_device_train_batch_size": t.batch_size,
        "per_device_eval_batch_size": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "lr_scheduler_type": t.lr_scheduler,
        "warmup_steps": t.warmup,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "bf16": t.bf16,
        "use_cpu": not torch.cuda.is_available(),  # lets bf16 autocast run on CPU
        "gradient_checkpointing": t.gradient_checkpointing,
        "logging_steps": t.logging_steps,
        "logging_first_step": True,
        "eval_strategy": "steps" if eval_every else "no",
        "eval_steps": t.eval_steps if eval_every else None,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        # Batches of similar lengths waste little padding (the RM data mixes 20- and 300-token rows).
        "train_sampling_strategy": "group_by_length" if group else "random",
        "length_column_name": "length",
        "remove_unused_columns": False,  # keeps `length` for the sampler; the collators ignore it
    }


def build_reward_args(cfg: RewardModelRecipeConfig, has_eval: bool) -> RewardConfig:
    """TRL's ``RewardConfig`` for pairwise training (saving and reporting are the recipe's)."""
    return RewardConfig(
        **_common_args(cfg, has_eval),
        max_length=cfg.train.max_length,
        center_rewards_coefficient=cfg.train.center_rewards_coefficient or None,
    )


def build_pointwise_args(cfg: RewardModelRecipeConfig, has_eval: bool) -> transformers.TrainingArguments:
    """``TrainingArguments`` for ``PointwiseRewardTrainer``."""
    return transformers.TrainingArguments(**_common_args(cfg, has_eval))


# ----------------------------------------------------------------------------------------------
# Held-out evaluation


def pairwise_metrics(
    reward: Callable,
    prompts: Sequence,
    chosen: Sequence,
    rejected: Sequence,
    groups: Sequence | None = None,
) -> dict[str, Any]:
    """Score both sides of each pair with ``reward`` (TRL convention) and compare.

    ``pairwise_accuracy``: fraction with ``r_chosen > r_rejected`` (ties count as wrong);
    ``margin_mean``: mean ``r_chosen - r_rejected``; ``reward_mean`` / ``reward_std`` over all scores;
    ``pairwise_accuracy_ci95``: its Wilson 95% interval (100 pairs at 0.85 span 0.77-0.91: a held-out
    set that small cannot tell 0.86 from 0.90); ``accuracy_by`` / ``n_by``: accuracy and pair count
    per value of ``groups`` (e.g. the ``kind`` column), when given.
    """
    n = len(prompts)
    if not n:
        return {"n_pairs": 0, "pairwise_accuracy": None, "margin_mean": None}
    scores = reward(list(prompts) + list(prompts), list(chosen) + list(rejected))
    r_chosen, r_rejected = scores[:n], scores[n:]
    diffs = [c - r for c, r in zip(r_chosen, r_rejected)]
    right = sum(d > 0 for d in diffs)
    mean = sum(scores) / len(scores)
    out: dict[str, Any] = {
        "n_pairs": n,
        "pairwise_accuracy": right / n,
        "pairwise_accuracy_ci95": wilson_interval(right, n),
        "margin_mean": sum(diffs) / n,
        "reward_mean": mean,
        "reward_std": math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores)),
        "chosen_reward_mean": sum(r_chosen) / n,
        "rejected_reward_mean": sum(r_rejected) / n,
    }
    if groups is not None:
        by: dict[str, list[bool]] = defaultdict(list)
        for g, d in zip(groups, diffs):
            by[str(g)].append(d > 0)
        out["accuracy_by"] = {g: sum(v) / len(v) for g, v in sorted(by.items())}
        out["n_by"] = {g: len(v) for g, v in sorted(by.items())}
    return out


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> list[float]:
    """The Wilson score interval of a binomial proportion (95% for the default ``z``), [low, high]."""
    if n <= 0:
        raise ValueError(f"wilson_interval needs n >= 1, got {n}")
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def pointwise_pairs(ds: datasets.Dataset, loss: str) -> tuple[list, list, list]:
    """Pairs from labelled completions: for each prompt, every (higher target, lower target) couple."""
    targets = pointwise_target(ds, loss)
    by_prompt: dict[str, list[tuple[float, Any]]] = defaultdict(list)
    first: dict[str, Any] = {}
    for p, c, y in zip(ds["prompt"], ds["completion"], targets):
        key = json.dumps(p, sort_keys=True)
        first.setdefault(key, p)
        by_prompt[key].append((y, c))
    prompts, chosen, rejected = [], [], []
    for key, items in by_prompt.items():
        for y_hi, c_hi in items:
            for y_lo, c_lo in items:
                if y_hi > y_lo:
                    prompts.append(first[key])
                    chosen.append(c_hi)
                    rejected.append(c_lo)
    return prompts, chosen, rejected


def likelihood_reward(model_path: str, fmt: str, batch_size: int = 32, device: str = "cpu") -> Callable:
    """A reward (TRL convention: ``reward(prompts, completions) -> list[float]``) that scores each
    completion by its summed log-probability under the causal LM at ``model_path``, in the reward
    model's input format ``fmt`` (the tokens of :func:`encode` after those of the prompt alone).

    The baseline an RM should beat: ranking pairs by what its starting model already predicts."""
    from align.models import render_prompt
    from rewards.text import prompt_text

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_path)
    lm = transformers.AutoModelForCausalLM.from_pretrained(model_path).to(device).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0

    def prompt_ids(prompt: Any) -> list[int]:
        if fmt == "chat":
            return render_prompt(tokenizer, prompt)
        return list(tokenizer(text=prompt_text(prompt))["input_ids"])

    def score(prompts: Sequence, completions: Sequence) -> list[float]:
        seqs = []
        for p, c in zip(prompts, completions):
            full, head = encode(tokenizer, p, c, fmt), prompt_ids(p)
            n = next((i for i, (a, b) in enumerate(zip(full, head)) if a != b), min(len(full), len(head)))
            seqs.append((full, min(max(n, 1), len(full) - 1)))  # at least one scored token
        out = []
        for i in range(0, len(seqs), batch_size):
            chunk = seqs[i : i + batch_size]
            width = max(len(f) for f, _ in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, (f, _) in enumerate(chunk):
                ids[r, : len(f)] = torch.tensor(f)
                mask[r, : len(f)] = 1
            with torch.no_grad():
                logits = lm(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                for r, (f, n) in enumerate(chunk):  # the softmax over the reply's positions only
                    logp = logits[r, n - 1 : len(f) - 1].float().log_softmax(-1)
                    target = torch.tensor(f[n:], device=logp.device)
                    out.append(logp.gather(-1, target[:, None]).sum().item())
        return out

    return score


def likelihood_baseline(
    model_path: str, ds: datasets.Dataset, fmt: str, batch_size: int = 32, device: str = "cpu"
) -> dict[str, Any]:
    """Held-out pairwise accuracy of :func:`likelihood_reward` on preference rows (``accuracy_by``
    per ``kind``/``category`` as :func:`evaluate_held_out`), or ``{"skipped": why}`` when the model
    at ``model_path`` is not a causal LM."""
    archs = transformers.AutoConfig.from_pretrained(model_path).architectures or []
    if not any(a.endswith("ForCausalLM") for a in archs):
        return {"skipped": f"{model_path} is not a causal LM (architectures {archs})"}
    m = evaluate_held_out(likelihood_reward(model_path, fmt, batch_size, device), ds, "preference", "bce")
    return {
        k: m[k]
        for k in ("n_pairs", "pairwise_accuracy", "pairwise_accuracy_ci95", "accuracy_by", "n_by")
        if k in m
    }


def evaluate_held_out(reward: Callable, ds: datasets.Dataset, fmt: str, loss: str) -> dict[str, Any]:
    """Held-out metrics of a reward on validated ``preference`` or ``pointwise`` rows (``fmt``)."""
    if fmt == "preference":
        group = next((c for c in GROUP_COLUMNS if c in ds.column_names), None)
        metrics = pairwise_metrics(
            reward, ds["prompt"], ds["chosen"], ds["rejected"], ds[group] if group else None
        )
        if group:
            metrics["accuracy_by_column"] = group
        return metrics
    prompts, chosen, rejected = pointwise_pairs(ds, loss)
    metrics = pairwise_metrics(reward, prompts, chosen, rejected)
    rewards_N = torch.tensor(reward(ds["prompt"], ds["completion"]))
    targets_N = torch.tensor(pointwise_target(ds, loss))
    metrics[f"{loss}_loss"] = pointwise_loss(rewards_N, targets_N, loss).item()
    if loss == "bce":
        metrics["label_accuracy"] = ((rewards_N > 0) == (targets_N > 0.5)).float().mean().item()
    return metrics


# ----------------------------------------------------------------------------------------------
# Saving


def save_final(trainer: transformers.Trainer, run_dir: str | Path, card: dict) -> Path:
    """Write ``<run_dir>/final/``: the sequence-classification model, tokenizer and ``reward_model.json``.

    With LoRA, the adapter goes to ``<run_dir>/adapter/`` and ``final/`` holds the merged model.
    Call on every rank; rank 0 writes.
    """
    run_dir = Path(run_dir)
    final = run_dir / "final"
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):  # a peft model
        trainer.save_model(str(run_dir / "adapter"))
        model = model.merge_and_unload()
    if trainer.accelerator.is_main_process:
        model.save_pretrained(final)
        trainer.processing_class.save_pretrained(final)
        (final / CARD).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    trainer.accelerator.wait_for_everyone()
    return final
