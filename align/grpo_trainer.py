"""Model-side pieces of GRPO training, free of Ray and FSDP: padding-free packing, per-token
log-probs and entropy of completions, length-grouped micro-batches, the loss weight of a
micro-batch, the LR schedule, and merging LoRA adapters into gathered weights.

``hybrid_engine.trainer`` runs these inside its FSDP2 ranks; they work on any ``nn.Module`` that
takes ``input_ids`` and ``position_ids`` and returns ``.logits`` (a transformers causal LM).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

Batching = Literal["padding_free", "padded", "shared_prefix"]


# ----------------------------------------------------------------------------------------------
# Packing


@dataclass
class Packed:
    """Sequences ``prompt + completion`` laid out for one forward pass, and where their completion
    tokens are predicted.

    ``input_ids_RL`` / ``position_ids_RL``: the model input (R rows of L tokens); padding-free
    packing puts all sequences in one row (R = 1) with positions restarting at 0 for each, which
    transformers turns into a block-diagonal causal mask; ``padded`` gives one right-padded row per
    sequence with ``attention_mask_RL``; ``shared_prefix`` gives one row per distinct prompt: the
    prompt once, then each of its completions, with a 4D boolean ``attention_mask_R1LL`` (True:
    attend) that lets a completion token see the prompt and the earlier tokens of its own
    completion only, and positions that continue the prompt's in every completion (GRPO's group of
    completions shares one prompt, so the prompt's tokens are computed once instead of once per
    completion). For the M completion tokens of the batch: ``row_M``,
    ``pos_M`` (the position whose logits predict the token), ``target_M`` (the token), ``seq_M`` and
    ``t_M`` (its sequence and its index in that completion).
    """

    input_ids_RL: torch.Tensor
    position_ids_RL: torch.Tensor
    attention_mask_RL: torch.Tensor | None
    attention_mask_R1LL: torch.Tensor | None
    row_M: torch.Tensor
    pos_M: torch.Tensor
    target_M: torch.Tensor
    seq_M: torch.Tensor
    t_M: torch.Tensor
    num_seqs: int
    max_completion: int


def pack(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    batching: Batching = "padding_free",
    pad_token_id: int = 0,
) -> Packed:
    """Lay out ``prompts[i] + completions[i]`` for a forward pass (see :class:`Packed`)."""
    if len(prompts) != len(completions) or not prompts:
        raise ValueError(
            f"need as many prompts as completions (>0), got {len(prompts)} and {len(completions)}"
        )
    if any(len(p) == 0 for p in prompts) or any(len(c) == 0 for c in completions):
        raise ValueError("prompts and completions must be non-empty")
    if batching == "shared_prefix":
        return _pack_shared_prefix(prompts, completions, pad_token_id)
    rows, positions, index = [], [], []  # index: (row, pos, target, seq, t)
    offset = 0
    for i, (p, c) in enumerate(zip(prompts, completions)):
        seq = [*p, *c]
        if batching == "padding_free":
            row, start = 0, offset
            rows.extend(seq)
            positions.extend(range(len(seq)))
            offset += len(seq)
        else:
            row, start = i, 0
            rows.append(seq)
        for t, tok in enumerate(c):
            index.append((row, start + len(p) - 1 + t, tok, i, t))
    if batching == "padding_free":
        input_ids = torch.tensor([rows], dtype=torch.long)
        position_ids = torch.tensor([positions], dtype=torch.long)
        attention_mask = None
    elif batching == "padded":
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r)
            attention_mask[i, : len(r)] = 1
        position_ids = torch.arange(width).expand(len(rows), width).contiguous()
    else:
        raise ValueError(f"batching must be 'padding_free', 'padded' or 'shared_prefix', got {batching!r}")
    return _packed(input_ids, position_ids, attention_mask, None, index, completions)


def _packed(input_ids, position_ids, mask_RL, mask_R1LL, index, completions) -> Packed:
    """A :class:`Packed` from the model inputs and the ``(row, pos, target, seq, t)`` index rows."""
    idx = torch.tensor(index, dtype=torch.long)
    return Packed(
        input_ids_RL=input_ids,
        position_ids_RL=position_ids,
        attention_mask_RL=mask_RL,
        attention_mask_R1LL=mask_R1LL,
        row_M=idx[:, 0],
        pos_M=idx[:, 1],
        target_M=idx[:, 2],
        seq_M=idx[:, 3],
        t_M=idx[:, 4],
        num_seqs=len(completions),
        max_completion=max(len(c) for c in completions),
    )


def prompt_groups(prompts: Sequence[Sequence[int]]) -> list[list[int]]:
    """The indices of each distinct prompt's sequences, prompts in order of first appearance."""
    members: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(prompts):
        members.setdefault(tuple(p), []).append(i)
    return list(members.values())


def _pack_shared_prefix(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_token_id: int
) -> Packed:
    """``shared_prefix`` layout of :func:`pack`: one row per distinct prompt (rows in the order of
    the prompts' first appearance), ``prompt, completion_a, completion_b, ...``, right-padded."""
    rows, positions, segments, index = [], [], [], []  # segment: 0 prompt, k completion k, -1 pad
    for r, seqs in enumerate(prompt_groups(prompts)):
        p = prompts[seqs[0]]
        row, pos, seg = list(p), list(range(len(p))), [0] * len(p)
        for k, i in enumerate(seqs, start=1):
            c, start = completions[i], len(row)
            row.extend(c)
            pos.extend(range(len(p), len(p) + len(c)))
            seg.extend([k] * len(c))
            # The first completion token is predicted at the prompt's last token, the others at
            # the completion's previous token.
            for t, tok in enumerate(c):
                index.append((r, len(p) - 1 if t == 0 else start + t - 1, tok, i, t))
        rows.append(row)
        positions.append(pos)
        segments.append(seg)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    segment = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, (row, pos, seg) in enumerate(zip(rows, positions, segments)):
        input_ids[r, : len(row)] = torch.tensor(row)
        position_ids[r, : len(row)] = torch.tensor(pos)
        segment[r, : len(row)] = torch.tensor(seg)
    # Query q sees key k <= q of its own segment or of the prompt. A pad query sees the pads up to
    # itself (its output is never read; a row of the mask with no True would give NaN).
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    same = segment[:, :, None] == segment[:, None, :]
    prompt_key = (segment == 0)[:, None, :]
    mask = causal[None] & (same | prompt_key)
    return _packed(input_ids, position_ids, None, mask[:, None], index, completions)


def completion_logprobs(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    *,
    temperature: float = 1.0,
    batching: Batching = "padding_free",
    entropy: bool = False,
    pad_token_id: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs of each completion given its prompt, in one forward pass.

    The logits are divided by ``temperature`` before the log-softmax, as TRL does, so that the
    log-probs are those of the distribution the tokens were sampled from (temperature 0 or 1: the
    raw logits). Only the positions that predict completion tokens go through the softmax.

    ``shared_prefix`` needs a model that takes a 4D attention mask (transformers' ``sdpa`` and
    ``eager`` attention do; flash-attention does not).

    Returns ``(logp_BT, mask_BT, entropy_BT)``: right-padded ``(B, T)`` with T the longest
    completion, ``mask_BT`` 1.0 on real tokens, and the policy's entropy at each completion
    position (no gradient) when ``entropy`` is set, else None. Gradients flow through ``logp_BT``
    when grad mode is on.
    """
    packed = pack(prompts, completions, batching, pad_token_id)
    device = next(model.parameters()).device
    kwargs = {"position_ids": packed.position_ids_RL.to(device), "use_cache": False}
    if packed.attention_mask_RL is not None:
        kwargs["attention_mask"] = packed.attention_mask_RL.to(device)
    if packed.attention_mask_R1LL is not None:
        kwargs["attention_mask"] = _custom_mask(model, packed).to(device)
    logits_RLV = model(input_ids=packed.input_ids_RL.to(device), **kwargs).logits
    # Where the logits are, not where the parameters rest: a reference under FSDP2's CPU offload
    # keeps its parameters on the CPU and computes on the GPU.
    device = logits_RLV.device
    logits_MV = logits_RLV[packed.row_M.to(device), packed.pos_M.to(device)].float()
    if temperature > 0 and temperature != 1.0:
        logits_MV = logits_MV / temperature
    logsm_MV = torch.log_softmax(logits_MV, dim=-1)
    logp_M = logsm_MV.gather(-1, packed.target_M.to(device)[:, None]).squeeze(-1)

    shape = (packed.num_seqs, packed.max_completion)
    seq_M, t_M = packed.seq_M.to(device), packed.t_M.to(device)
    logp_BT = torch.zeros(shape, dtype=logp_M.dtype, device=device).index_put((seq_M, t_M), logp_M)
    mask_BT = torch.zeros(shape, device=device).index_put((seq_M, t_M), torch.ones_like(logp_M))
    entropy_BT = None
    if entropy:
        with torch.no_grad():
            ent_M = -(logsm_MV.exp() * logsm_MV).sum(-1)
            entropy_BT = torch.zeros(shape, device=device).index_put((seq_M, t_M), ent_M)
    return logp_BT, mask_BT, entropy_BT


def _custom_mask(model: torch.nn.Module, packed: Packed) -> torch.Tensor:
    """The shared-prefix 4D boolean mask in the form the model's attention takes: boolean for
    ``sdpa`` (and flex), additive float (0 / dtype min) for ``eager``. A custom mask replaces the
    model's own, so flash-attention (which takes none) and a sliding window that the sequences
    outgrow (which the mask would drop) are refused."""
    mask_R1LL = packed.attention_mask_R1LL
    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None) or "sdpa"
    if "flash" in impl:
        raise ValueError(
            f"batching 'shared_prefix' needs an attention that takes a 4D mask; the model uses {impl!r} "
            "(use attn_implementation 'sdpa' or 'eager', or batching 'padded')"
        )
    window = getattr(config, "sliding_window", None)
    longest = int(packed.position_ids_RL.max()) + 1
    if window and getattr(config, "use_sliding_window", True) and longest > window:
        raise ValueError(
            f"batching 'shared_prefix' does not apply the model's sliding window ({window} tokens) and "
            f"a sequence here has {longest}; use batching 'padded'"
        )
    if impl == "eager":
        dtype = next(model.parameters()).dtype
        return torch.zeros(mask_R1LL.shape, dtype=dtype).masked_fill(~mask_R1LL, torch.finfo(dtype).min)
    return mask_R1LL


# ----------------------------------------------------------------------------------------------
# Micro-batches and loss normalisation


def length_grouped(lengths: Sequence[int], micro_batch_size: int) -> list[list[int]]:
    """Indices split into micro-batches of ``micro_batch_size`` sequences of similar length
    (longest first), so that padding, or the packed row's attention span, stays small."""
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + micro_batch_size] for i in range(0, len(order), micro_batch_size)]


def prompt_grouped(
    prompts: Sequence[Sequence[int]], lengths: Sequence[int], micro_batch_size: int
) -> list[list[int]]:
    """Micro-batches for ``shared_prefix`` batching: the sequences of one prompt kept together
    (so the prompt is computed once), prompts ordered by their longest sequence (longest first),
    cut every ``micro_batch_size`` sequences. As many micro-batches as :func:`length_grouped`
    gives (ranks with equal shards run equal counts); a prompt whose sequences straddle a cut is
    computed in both micro-batches."""
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    groups = [sorted(ix, key=lambda i: (-lengths[i], i)) for ix in prompt_groups(prompts)]
    groups.sort(key=lambda ix: (-lengths[ix[0]], ix[0]))
    order = [i for ix in groups for i in ix]
    return [order[i : i + micro_batch_size] for i in range(0, len(order), micro_batch_size)]


def micro_loss_weight(
    aggregation: str, micro_seqs: int, micro_tokens: int, total_seqs: int, total_tokens: int
) -> float:
    """The factor that turns ``policy_loss`` of one micro-batch into its share of the loss of the
    whole step (all micro-batches of all ranks), so that summing the weighted micro-batch losses
    gives exactly the loss of one big batch under ``aggregation``.

    ``seq-mean-token-mean`` and ``seq-mean-token-sum-norm`` average over sequences: the share is
    ``micro_seqs / total_seqs``; ``token-mean`` averages over tokens: ``micro_tokens / total_tokens``.
    """
    if aggregation == "token-mean":
        return micro_tokens / max(total_tokens, 1)
    return micro_seqs / max(total_seqs, 1)


def lr_factor(
    step: int, warmup_steps: int, total_steps: int, schedule: str = "constant", min_ratio: float = 0.0
) -> float:
    """Multiplier of the peak LR at optimizer step ``step`` (0-based): linear warmup over
    ``warmup_steps``, then ``constant`` or ``cosine`` decay to ``min_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"lr schedule must be 'constant' or 'cosine', got {schedule!r}")
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------------------------
# LoRA: merged weights under the base model's names

_LORA = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])\.(?P<adapter>[^.]+)\.weight$")
_PEFT_PREFIX = "base_model.model."


def base_name(name: str) -> str:
    """A peft parameter name -> the base model's (``base_model.model.`` and ``.base_layer`` removed)."""
    if name.startswith(_PEFT_PREFIX):
        name = name[len(_PEFT_PREFIX) :]
    return name.replace(".base_layer.", ".")


def merge_lora(
    named_tensors: Iterable[tuple[str, torch.Tensor]], scaling: float, adapter: str = "default"
) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream the weights of a peft LoRA model as merged base weights: ``W + scaling * B @ A``
    under the base model's names (what an inference engine loads).

    Tensors pass through as they come (``torch.Tensor``, already gathered); a module's base weight
    is held back only until its ``lora_A`` and ``lora_B`` arrived (peft's ``state_dict`` lists them
    right after it), so memory stays bounded by one module. Adapters other than ``adapter`` are
    dropped.
    """
    held: dict[str, dict[str, torch.Tensor]] = {}  # module -> {"W": ..., "A": ..., "B": ...}

    def ready(module: str) -> Iterator[tuple[str, torch.Tensor]]:
        parts = held[module]
        if {"W", "A", "B"} <= parts.keys():
            del held[module]
            w, a, b = parts["W"], parts["A"], parts["B"]
            merged = (w.float() + scaling * (b.float() @ a.float())).to(w.dtype)
            yield base_name(module + ".weight"), merged

    for name, tensor in named_tensors:
        m = _LORA.match(name)
        if m:
            if m["adapter"] != adapter:
                continue
            module = m["module"]
            held.setdefault(module, {})[m["which"]] = tensor
            yield from ready(module)
        elif name.endswith(".base_layer.weight"):
            module = name[: -len(".base_layer.weight")]
            held.setdefault(module, {})["W"] = tensor
            yield from ready(module)
        else:
            yield base_name(name), tensor
    if held:
        raise ValueError(f"LoRA modules without their base weight or both adapters: {sorted(held)[:5]}")
