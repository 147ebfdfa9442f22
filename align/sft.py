"""Supervised fine-tuning pieces around TRL's ``SFTTrainer``: the MoE balance loss, run metrics, LoRA.

TRL does the training loop, the chat template, assistant-only / completion-only masks, packing and
padding-free batches; accelerate does devices, DDP and mixed precision. What this module adds:

- ``expert_balance_loss``: DeepSeek-V2's expert-level balance loss of one MoE layer, a pure function.
  transformers' DeepSeek-V2 returns router logits but adds no auxiliary loss, and TRL's built-in
  ``router_aux_loss_coef`` path uses Mixtral's loss, which pools all layers and the whole batch into
  one ``f`` and ``P``; the paper (and DeepSeek's reference code) computes ``alpha1 * sum_i f_i P_i``
  per sequence and per layer, averages over sequences and sums over layers.
- ``BalancedSFTTrainer``: ``SFTTrainer`` plus that loss, read from the gate modules by forward hooks,
  per sequence and over real tokens only, added to the loss and logged as ``aux_loss``.
- ``MetricsLogger``: writes ``metrics.jsonl`` and TensorBoard events under the run directory.
- ``build_sft_args`` / ``lora_config`` / ``save_final``: our config -> TRL/peft objects -> ``final/``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from align.configs import LoraConfig, SFTRecipeConfig
from align.data import DataError

FORMATS = ("messages", "prompt_completion")  # the data formats SFT trains on
COLUMNS = {"messages": ["messages"], "prompt_completion": ["prompt", "completion"]}


# ----------------------------------------------------------------------------------------------
# MoE expert-level balance loss


def expert_balance_loss(
    router_logits_TE: torch.Tensor, topk_idx_TK: torch.Tensor, seq_idx_T: torch.Tensor | None = None
) -> torch.Tensor:
    """DeepSeek-V2's expert-level balance loss of one MoE layer, without ``alpha1``: ``sum_i f_i * P_i``.

    - ``router_logits_TE``: (T, N') gate logits of T tokens over N' routed experts; the affinities are
      ``s_TE = softmax(router_logits_TE)``.
    - ``topk_idx_TK``: (T, K') the experts each token was routed to.
    - ``seq_idx_T``: (T,) which sequence each token belongs to (0, 1, ...), -1 for padding; None: all
      T tokens form one sequence. ``sequence_ids`` builds it from a batch.

    Per sequence of T_s tokens, as the paper defines it ("T: the number of tokens in a sequence"; the
    reference code's ``seq_aux``): ``f_i = N' / (K' T_s) * sum_t 1(token t selects expert i)`` and
    ``P_i = 1/T_s * sum_t s_{i,t}``; the result is the mean over sequences of ``sum_i f_i P_i``. It is
    1.0 for perfectly uniform routing and up to N' when one expert takes everything; gradients flow
    through ``P`` only (``f`` counts discrete choices).
    """
    n_experts, k = router_logits_TE.shape[-1], topk_idx_TK.shape[-1]
    s_TE = router_logits_TE.float().softmax(dim=-1)
    if seq_idx_T is None:
        seq_idx_T = torch.zeros(s_TE.shape[0], dtype=torch.long)
    seq_T = seq_idx_T.reshape(-1).to(s_TE.device, torch.long)
    real_T = seq_T >= 0
    s_TE, seq_T = s_TE[real_T], seq_T[real_T]
    picked_TE = torch.zeros_like(s_TE).scatter_(1, topk_idx_TK[real_T].long(), 1.0)
    n_seq = int(seq_T.max()) + 1 if seq_T.numel() else 1

    def per_sequence_sum(x_TE: torch.Tensor) -> torch.Tensor:  # (T, E) -> (n_seq, E)
        return x_TE.new_zeros(n_seq, x_TE.shape[1]).index_add(0, seq_T, x_TE)

    tokens_S1 = per_sequence_sum(torch.ones_like(s_TE[:, :1]))
    f_SE = n_experts / (k * tokens_S1.clamp(min=1)) * per_sequence_sum(picked_TE)
    p_SE = per_sequence_sum(s_TE) / tokens_S1.clamp(min=1)
    present_S = tokens_S1[:, 0] > 0  # ids without tokens (a padding-only row) do not count
    return (f_SE * p_SE).sum(-1)[present_S].mean() if present_S.any() else s_TE.sum() * 0.0


def sequence_ids(
    attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None, shape: tuple[int, int]
) -> torch.Tensor:
    """(B*S,) sequence index of each token of a (B, S) batch, -1 for padding (``expert_balance_loss``).

    A padded batch has one sequence per row; a packed or padding-free row holds several, each
    starting where ``position_ids`` is 0.
    """
    batch, length = shape
    if position_ids is not None:
        starts_T = (position_ids.expand(batch, length) == 0).reshape(-1)
        seq_T = torch.cumsum(starts_T.long(), 0) - 1
    else:
        seq_T = torch.arange(batch).repeat_interleave(length)
    if attention_mask is not None:
        seq_T = seq_T.to(attention_mask.device).masked_fill(attention_mask.reshape(-1) == 0, -1)
    return seq_T


def moe_gates(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The routed-expert gates of a model (DeepSeek-V2/V3 ``*TopkRouter`` modules); [] for dense models.

    Each returns ``(router_logits (T, N'), topk_weights (T, K'), topk_indices (T, K'))``.
    """
    return [m for m in model.modules() if type(m).__name__.endswith("TopkRouter")]


@contextlib.contextmanager
def capture_routing(gates: list[torch.nn.Module]) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Within the block, every forward of a gate appends ``(router_logits_TE, topk_idx_TK)`` to the list."""
    routed: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(module, args, output):
        routed.append((output[0], output[2]))

    handles = [g.register_forward_hook(hook) for g in gates]
    try:
        yield routed
    finally:
        for h in handles:
            h.remove()


class BalancedSFTTrainer(SFTTrainer):
    """``SFTTrainer`` plus DeepSeek-V2's expert-level balance loss: ``alpha1 * sum_layers sum_i f_i P_i``.

    Logged per step as ``aux_loss`` (the term added to the loss) and ``expert_balance`` (the mean over
    MoE layers of ``sum_i f_i P_i``: 1.0 is uniform routing). Dense models or ``aux_loss_alpha=0``
    train exactly as ``SFTTrainer``.
    """

    def __init__(self, *args, aux_loss_alpha: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.aux_loss_alpha = aux_loss_alpha
        self.gates = moe_gates(self.model) if aux_loss_alpha > 0 else []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self.gates:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        seq_idx = sequence_ids(
            inputs.get("attention_mask"), inputs.get("position_ids"), inputs["input_ids"].shape
        )
        with capture_routing(self.gates) as routed:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = result if return_outputs else (result, None)

        # The first forward is the loss's; return_outputs=True runs a second one (no grad) after it.
        per_layer = [expert_balance_loss(logits, idx, seq_idx) for logits, idx in routed[: len(self.gates)]]
        balance = torch.stack(per_layer)
        aux = self.aux_loss_alpha * balance.sum()
        # As TRL does for its own aux loss: with num_items_in_batch, Trainer leaves the gradient
        # accumulation average to the loss, so spread the per-micro-batch term over the steps.
        steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
        loss = loss + aux.to(loss.device) / steps

        mode = "train" if model.training else "eval"
        gathered = self.accelerator.gather(torch.stack([aux, balance.mean()]).detach()[None])
        self._metrics[mode]["aux_loss"].append(gathered[:, 0].mean().item())
        self._metrics[mode]["expert_balance"].append(gathered[:, 1].mean().item())
        return (loss, outputs) if return_outputs else loss


# ----------------------------------------------------------------------------------------------
# Run metrics


def metric_name(key: str, summary: bool = False) -> str:
    """Trainer log key -> run metric name: ``loss`` -> ``train/loss``, ``eval_loss`` -> ``eval/loss``."""
    if key.startswith("eval_"):
        return "eval/" + key[len("eval_") :]
    if summary:  # the end-of-training record: train_runtime, train_loss (mean over the run), total_flos
        return "summary/" + key.removeprefix("train_")
    return "train/" + key


class MetricsLogger(TrainerCallback):
    """Appends one JSON object per log event to ``metrics.jsonl`` and mirrors it to TensorBoard ``tb/``.

    Each record holds ``step``, ``stage``, ``time_s`` (since training started) and every metric, named
    ``train/...``, ``eval/...`` or (the end-of-training record) ``summary/...``. Rank 0 writes.
    """

    def __init__(self, run_dir: str | Path, stage: str = "sft"):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb_dir = Path(run_dir) / "tb"
        self.stage = stage
        self._tb = None
        self._start = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = time.monotonic()
        if state.is_world_process_zero:
            from torch.utils.tensorboard import SummaryWriter

            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")  # a rerun into the same directory starts a fresh file
            self._tb = SummaryWriter(log_dir=str(self.tb_dir))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        summary = "train_runtime" in logs
        metrics = {
            metric_name(k, summary): v for k, v in logs.items() if isinstance(v, (int, float)) and v == v
        }
        record = {"step": state.global_step, "stage": self.stage, "time_s": round(self._elapsed(), 3)}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({**record, **metrics}) + "\n")
        if self._tb is not None:
            for name, value in metrics.items():
                self._tb.add_scalar(name, value, state.global_step)
            self._tb.flush()

    def on_train_end(self, args, state, control, **kwargs):
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def _elapsed(self) -> float:
        return time.monotonic() - self._start


# ----------------------------------------------------------------------------------------------
# Our config -> TRL / peft


def sft_dataset(ds: datasets.Dataset, fmt: str, curriculum: str = "") -> datasets.Dataset:
    """The columns TRL trains on for ``fmt``, ordered by ``curriculum`` (ascending, stable) if given.

    Other columns (``answer``, ``level``, ...) are dropped: TRL would take a ``prompt`` column beside
    ``messages`` as prompt/completion data.
    """
    if fmt not in COLUMNS:
        raise DataError(f"SFT trains on {' or '.join(FORMATS)} data, got format '{fmt}'")
    if curriculum:
        if curriculum not in ds.column_names:
            raise DataError(
                f"train.curriculum={curriculum!r}: no such column (columns: {', '.join(ds.column_names)})"
            )
        keys = ds[curriculum]
        ds = ds.select(sorted(range(len(keys)), key=keys.__getitem__))  # Python's sort is stable
    return ds.select_columns(COLUMNS[fmt])


def build_sft_args(cfg: SFTRecipeConfig, fmt: str, has_eval: bool) -> SFTConfig:
    """TRL's ``SFTConfig`` from our config. Saving is ours (``save_final``); reporting is ``MetricsLogger``'s."""
    t = cfg.train
    eval_every = has_eval and t.eval_steps > 0
    return SFTConfig(
        output_dir=cfg.output_dir,
        seed=cfg.seed,
        learning_rate=t.lr,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps if t.max_steps > 0 else -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        bf16=t.bf16,
        use_cpu=not torch.cuda.is_available(),  # lets bf16 autocast run on CPU
        gradient_checkpointing=t.gradient_checkpointing,
        # padding-free batches keep sequences whole (TRL refuses a max_length it would not enforce)
        max_length=None if t.batching == "padding_free" else t.max_length,
        packing=t.batching == "packing",
        padding_free=t.batching == "padding_free",
        assistant_only_loss=t.completion_only and fmt == "messages",
        completion_only_loss=t.completion_only if fmt == "prompt_completion" else None,
        router_aux_loss_coef=0.0,  # BalancedSFTTrainer adds the paper's loss instead of Mixtral's
        train_sampling_strategy="sequential" if t.curriculum else "random",
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if eval_every else "no",
        eval_steps=t.eval_steps if eval_every else None,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )


def lora_config(lora: LoraConfig) -> Any:
    """A peft ``LoraConfig`` for causal LMs, or None when ``lora.r == 0`` (full fine-tuning)."""
    if lora.r <= 0:
        return None
    import peft

    return peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )


def save_final(trainer: SFTTrainer, run_dir: str | Path) -> Path:
    """Write ``<run_dir>/final/``: an HF model dir with tokenizer, loadable by transformers and vLLM.

    With LoRA the adapter goes to ``<run_dir>/adapter/`` and ``final/`` holds the merged model.
    Call on every rank; rank 0 writes.
    """
    run_dir = Path(run_dir)
    final = run_dir / "final"
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):  # a peft model
        trainer.save_model(str(run_dir / "adapter"))
        model = model.merge_and_unload()
    model.config.use_cache = True  # Trainer turns the KV cache off for training; generation wants it
    if trainer.accelerator.is_main_process:
        model.save_pretrained(final)
        trainer.processing_class.save_pretrained(final)
    trainer.accelerator.wait_for_everyone()
    return final
