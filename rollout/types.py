"""The rollout contract: sampling parameters in, completions out, and the Protocol every backend meets."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. The same meaning on every backend.

    Generation stops at the model's EOS token (its ``generation_config.eos_token_id``) and at any of
    ``stop_token_ids``; the stop token is part of the completion (GRPO trains on it). ``temperature``
    0 is greedy. ``top_k`` <= 0 and ``top_p`` 1 turn those filters off. ``seed`` makes a call
    reproducible: on vLLM prompt ``i`` of the call samples with seed ``seed + i`` (so a result does
    not depend on how a batch is split between workers); ``transformers.generate`` has one random
    stream for the whole batch, so only greedy outputs are comparable across backends.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 256
    min_tokens: int = 0
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(
                f"min_tokens must be in [0, max_tokens={self.max_tokens}], got {self.min_tokens}"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class Completion:
    """One sampled continuation of prompt ``prompt_index`` (its index in the ``generate`` call).

    ``logprobs[t]`` is the log-probability of ``token_ids[t]`` under the model's raw distribution
    (log-softmax of the logits before temperature, top-k and top-p), i.e. the old-policy logprob
    GRPO needs. ``finish_reason`` is ``stop`` when the last token is EOS or a stop token, ``length``
    when ``max_tokens`` ran out.
    """

    prompt_index: int
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason


@runtime_checkable
class RolloutBackend(Protocol):
    """A generation engine that also takes new weights.

    Weight names are the trainer's: the names of ``model.state_dict()`` of the transformers model
    (MoE experts fused, as transformers 5 keeps them in memory); each backend converts what it
    needs. Every update is checked against the engine's model first: a missing, unknown or
    mis-shaped tensor raises :class:`rollout.weights.WeightUpdateError` naming it, and the engine
    keeps its previous weights.
    """

    def generate(
        self, prompt_token_ids: Sequence[Sequence[int]], params: SamplingParams
    ) -> list[list[Completion]]:
        """Per prompt, its ``params.n`` completions."""
        ...

    def warmup(self) -> float:
        """A short throw-away generation absorbing the first-call warm-up; returns its seconds."""
        ...

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> float:
        """Replace all weights at once (validated before anything changes); returns seconds."""
        ...

    def check_weight_spec(self, spec: Mapping[str, Sequence[int]]) -> None:
        """Validate an update described by name -> shape, applying nothing."""
        ...

    def begin_weight_stream(self, spec: Mapping[str, Sequence[int]]) -> None:
        """Start a bucketed update of all weights; ``spec`` names every tensor and its shape."""
        ...

    def load_weight_bucket(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """One bucket of the update started by :meth:`begin_weight_stream`."""
        ...

    def end_weight_stream(self) -> None:
        """Finish the update; every tensor of the spec must have arrived."""
        ...

    def abort_weight_stream(self) -> None:
        """Close an open stream unfinished (the engine refuses to serve if it was half applied)."""
        ...

    def sleep(self) -> None:
        """Release accelerator memory (weights and KV cache) until :meth:`wake_up`."""
        ...

    def wake_up(self, tags: list[str] | None = None) -> None: ...

    def info(self) -> dict[str, Any]:
        """What the engine is and its state (for ``health``)."""
        ...
