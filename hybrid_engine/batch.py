"""`GRPOBatch`: the one data container that crosses the Ray boundary between the driver and the
trainer ranks (veRL's ``DataProto``, cut down to what GRPO needs)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def _pad(rows: Sequence[Sequence[float]], dtype: torch.dtype, width: int | None = None) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0) if width is None else width
    out = torch.zeros((len(rows), width), dtype=dtype)
    for i, r in enumerate(rows):
        if len(r):
            out[i, : len(r)] = torch.as_tensor(r, dtype=dtype)
    return out


@dataclass
class GRPOBatch:
    """B sequences (prompts x group size, groups contiguous in the driver's batch), as tensors.

    Token tensors are right-padded with 0 and come with their lengths. ``old_logp_BT`` and
    ``ref_logp_BT`` are filled by the trainer ranks (when ``ppo_epochs > 1`` and ``beta > 0``);
    ``rollout_logp_BT`` holds the engine's raw log-probs of the sampled tokens (a diagnostic).
    ``total_seqs`` and ``total_tokens`` count the whole step (every rank's shard), for the loss
    normalisation of :func:`align.grpo_trainer.micro_loss_weight`.
    """

    prompt_ids_BP: torch.Tensor
    prompt_lens_B: torch.Tensor
    completion_ids_BT: torch.Tensor
    completion_lens_B: torch.Tensor
    advantages_B: torch.Tensor
    rollout_logp_BT: torch.Tensor | None = None
    old_logp_BT: torch.Tensor | None = None
    ref_logp_BT: torch.Tensor | None = None
    total_seqs: int = 0
    total_tokens: int = 0

    @classmethod
    def build(
        cls,
        prompts: Sequence[Sequence[int]],
        completions: Sequence[Sequence[int]],
        advantages: Sequence[float] | torch.Tensor,
        rollout_logprobs: Sequence[Sequence[float]] | None = None,
    ) -> GRPOBatch:
        """From token-id lists (one prompt per sequence, repeated within a group)."""
        if not len(prompts) == len(completions) == len(advantages):
            raise ValueError("prompts, completions and advantages need one entry per sequence")
        lens = torch.tensor([len(c) for c in completions], dtype=torch.long)
        return cls(
            prompt_ids_BP=_pad(prompts, torch.long),
            prompt_lens_B=torch.tensor([len(p) for p in prompts], dtype=torch.long),
            completion_ids_BT=_pad(completions, torch.long),
            completion_lens_B=lens,
            advantages_B=torch.as_tensor(advantages, dtype=torch.float32).reshape(-1),
            rollout_logp_BT=None if rollout_logprobs is None else _pad(rollout_logprobs, torch.float32),
            total_seqs=len(completions),
            total_tokens=int(lens.sum()),
        )

    def __len__(self) -> int:
        return int(self.prompt_lens_B.numel())

    @property
    def completion_mask_BT(self) -> torch.Tensor:
        width = self.completion_ids_BT.shape[1]
        return (torch.arange(width)[None, :] < self.completion_lens_B[:, None]).float()

    @property
    def lengths_B(self) -> torch.Tensor:
        """Prompt + completion tokens of each sequence."""
        return self.prompt_lens_B + self.completion_lens_B

    def prompts(self) -> list[list[int]]:
        return [row[:n].tolist() for row, n in zip(self.prompt_ids_BP, self.prompt_lens_B.tolist())]

    def completions(self) -> list[list[int]]:
        return [row[:n].tolist() for row, n in zip(self.completion_ids_BT, self.completion_lens_B.tolist())]

    def select(self, index: Sequence[int] | torch.Tensor) -> GRPOBatch:
        """The sequences ``index`` (in that order), padding trimmed to their longest; totals kept."""
        idx = torch.as_tensor(index, dtype=torch.long)
        p_width = int(self.prompt_lens_B[idx].max()) if len(idx) else 0
        t_width = int(self.completion_lens_B[idx].max()) if len(idx) else 0

        def take(t: torch.Tensor | None, width: int | None = None) -> torch.Tensor | None:
            if t is None:
                return None
            t = t[idx]
            return t if width is None else t[:, :width]

        return dataclasses.replace(
            self,
            prompt_ids_BP=take(self.prompt_ids_BP, p_width),
            prompt_lens_B=take(self.prompt_lens_B),
            completion_ids_BT=take(self.completion_ids_BT, t_width),
            completion_lens_B=take(self.completion_lens_B),
            advantages_B=take(self.advantages_B),
            rollout_logp_BT=take(self.rollout_logp_BT, t_width),
            old_logp_BT=take(self.old_logp_BT, t_width),
            ref_logp_BT=take(self.ref_logp_BT, t_width),
        )

    def shard(self, parts: int, by_prompt: bool = False) -> tuple[list[GRPOBatch], list[list[int]]]:
        """Split into ``parts`` equal-size shards with similar token counts (sequences sorted by
        length and dealt out in a snake order), one per trainer rank. Every rank then runs the same
        number of micro-batches, which FSDP's collectives need. Returns the shards and the
        indices each took.

        ``by_prompt`` (for ``shared_prefix`` batching) deals whole prompts instead -- the sequences
        of one prompt stay on one rank, so its tokens are computed once -- when every prompt has
        the same number of sequences and the prompts split evenly over the ranks; otherwise it
        deals sequences as above."""
        if len(self) % parts:
            raise ValueError(f"{len(self)} sequences do not split evenly over {parts} ranks")
        lengths = self.lengths_B.tolist()
        units: list[list[int]] = [[i] for i in range(len(self))]
        if by_prompt:
            from align.grpo_trainer import prompt_groups

            groups = prompt_groups(self.prompts())
            if len({len(g) for g in groups}) == 1 and len(groups) % parts == 0:
                units = groups
        units.sort(key=lambda ix: (-sum(lengths[i] for i in ix), ix[0]))
        index: list[list[int]] = [[] for _ in range(parts)]
        for k, unit in enumerate(units):
            lap, pos = divmod(k, parts)
            index[pos if lap % 2 == 0 else parts - 1 - pos].extend(unit)
        return [self.select(ix) for ix in index], index
