"""Weight updates for rollout engines: validation against the engine's model, checkpoint-name
conversion with transformers' own save-time machinery, and bounded-memory streaming.

Trainers send tensors under the names of the transformers model's ``state_dict()``. transformers 5
keeps MoE experts fused there (``model.layers.1.mlp.experts.gate_up_proj``) while vLLM loads
checkpoint names (``model.layers.1.mlp.experts.0.gate_proj.weight``, ...); :class:`WeightLayout`
converts one with ``transformers.core_model_loading.revert_weight_conversion``, the function
``save_pretrained`` uses, so any architecture transformers can save converts the same way.

An update is checked against the layout before anything is applied: every tensor of the model must
be present once, under a known name, with the model's shape (dtype may differ; engines cast).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    import transformers

MAX_LISTED = 5  # problems named in one error message


class WeightUpdateError(ValueError):
    """A weight update that does not fit the engine's model; the message names the tensors."""


def layer_key(name: str) -> str:
    """The decoder layer a weight belongs to: its name up to the outermost integer segment
    (``model.layers.3.``), or ``""`` for weights outside the layer stack (embeddings, final norm,
    head). transformers' conversions never cross layers, so a layer is the unit of conversion."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1]) + "."
    return ""


def tensor_nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded (FSDP2 ``DTensor``) tensor gathered whole; plain tensors as they are."""
    gather = getattr(tensor, "full_tensor", None)
    return gather() if callable(gather) else tensor


def shapes_of(named_tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Names and (global) shapes, without gathering or copying anything."""
    return {name: tuple(t.shape) for name, t in named_tensors.items()}


def iter_buckets(
    named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int = 64 << 20
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group a stream of tensors into lists of about ``bucket_bytes`` (a larger tensor travels alone).
    Sharded tensors are gathered as they are reached, so at most one bucket is materialised."""
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in named_tensors:
        tensor = full_tensor(tensor).detach()
        if bucket and size + tensor_nbytes(tensor) > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += tensor_nbytes(tensor)
    if bucket:
        yield bucket


def checkpoint_shapes(model_dir: str | Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors in a model directory's safetensors files (headers only)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def _describe(problems: list[str]) -> str:
    shown = "; ".join(problems[:MAX_LISTED])
    more = len(problems) - MAX_LISTED
    return shown + (f"; and {more} more" if more > 0 else "")


class WeightLayout:
    """What a transformers model's ``state_dict()`` holds, and how it maps to checkpoint names.

    ``shapes`` maps every weight a trainer must send to its shape; ``aliases`` are tied copies
    (e.g. ``lm_head.weight`` tied to the embeddings) that may be sent and are then ignored, as
    ``save_pretrained`` drops them. Build one from a live model or, without allocating weights,
    from a model directory (:meth:`from_pretrained`).
    """

    def __init__(self, model: transformers.PreTrainedModel):
        from transformers.modeling_utils import remove_tied_weights_from_state_dict

        state = model.state_dict()
        kept = remove_tied_weights_from_state_dict(dict(state), model)
        self.model = model
        self.shapes: dict[str, tuple[int, ...]] = shapes_of(kept)
        self.aliases: set[str] = set(state) - set(kept)
        self.layers: dict[str, set[str]] = {}
        for name in self.shapes:
            self.layers.setdefault(layer_key(name), set()).add(name)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, trust_remote_code: bool = False) -> WeightLayout:
        """The layout of the model in ``model_dir``, built on the meta device (no memory, no weights)."""
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
        return cls(model)

    def validate(self, shapes: Mapping[str, Sequence[int]], complete: bool = True) -> None:
        """Raise :class:`WeightUpdateError` naming every unknown, mis-shaped or (when ``complete``)
        missing tensor of an update described by ``shapes`` (name -> shape)."""
        unknown, misshaped = [], []
        for name, shape in shapes.items():
            shape = tuple(int(s) for s in shape)
            if name in self.aliases:
                continue
            if name not in self.shapes:
                close = difflib.get_close_matches(name, self.shapes, n=1)
                unknown.append(
                    f"unknown tensor {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                )
            elif shape != self.shapes[name]:
                misshaped.append(f"tensor {name!r} has shape {shape}, the model expects {self.shapes[name]}")
        missing = [f"missing tensor {n!r}" for n in self.shapes if n not in shapes] if complete else []
        problems = misshaped + missing + unknown
        if problems:
            raise WeightUpdateError(
                f"weight update rejected, the engine keeps its current weights: {_describe(problems)}"
            )

    def to_checkpoint(self, named_tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The same weights under checkpoint names (per-expert MoE weights, tied copies dropped),
        via transformers' save-time conversion. Pass whole layers: a conversion may need all of a
        layer's tensors."""
        from transformers.core_model_loading import revert_weight_conversion

        kept = {n: t for n, t in named_tensors.items() if n not in self.aliases}
        return revert_weight_conversion(self.model, kept)

    def checkpoint_shapes(self) -> dict[str, tuple[int, ...]]:
        """The checkpoint names and shapes this layout converts to (computed on meta tensors)."""
        import torch

        meta = {n: torch.empty(s, device="meta") for n, s in self.shapes.items()}
        return shapes_of(self.to_checkpoint(meta))

    def check_matches_checkpoint(self, model_dir: str | Path) -> None:
        """Raise when converting this layout does not give the tensors stored in ``model_dir``
        (then checkpoint-name conversion would feed the engine wrong names)."""
        ours, stored = self.checkpoint_shapes(), checkpoint_shapes(model_dir)
        problems = [f"{n!r} converts to no stored tensor" for n in ours if n not in stored]
        problems += [f"stored {n!r} is produced by no weight" for n in stored if n not in ours]
        problems += [
            f"{n!r}: converted {ours[n]}, stored {stored[n]}"
            for n in ours
            if n in stored and ours[n] != stored[n]
        ]
        if problems:
            raise WeightUpdateError(
                f"transformers' conversion does not reproduce {model_dir}: {_describe(problems)}"
            )

    def assembly(self, spec: Mapping[str, Sequence[int]]) -> WeightAssembly:
        """Start receiving an update described by ``spec`` (validated here, before anything is applied)."""
        return WeightAssembly(self, spec)


class WeightAssembly:
    """Collects a streamed update layer by layer and hands out whole layers once all their tensors
    arrived, so memory stays bounded by a bucket plus the layers in flight. Each tensor is checked
    against the spec before it is accepted."""

    def __init__(self, layout: WeightLayout, spec: Mapping[str, Sequence[int]]):
        layout.validate(spec)
        self.layout = layout
        self.spec = {n: tuple(int(s) for s in shape) for n, shape in spec.items()}
        self._waiting: dict[str, set[str]] = {}
        for name in self.spec:
            if name not in layout.aliases:
                self._waiting.setdefault(layer_key(name), set()).add(name)
        self._pending: dict[str, dict[str, torch.Tensor]] = {}
        self._seen: set[str] = set()

    def check(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
        """The bucket as a list, after checking every tensor against the spec (nothing kept yet)."""
        bucket = list(named_tensors)
        problems, names = [], set()
        for name, tensor in bucket:
            if name not in self.spec:
                problems.append(f"tensor {name!r} is not in the update's spec")
            elif name in self._seen or name in names:
                problems.append(f"tensor {name!r} sent twice")
            elif tuple(tensor.shape) != self.spec[name]:
                problems.append(
                    f"tensor {name!r} has shape {tuple(tensor.shape)}, the spec says {self.spec[name]}"
                )
            names.add(name)
        if problems:
            raise WeightUpdateError(f"weight bucket rejected: {_describe(problems)}")
        return bucket

    def add(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        """Accept a checked bucket; return the layers it completed (trainer names)."""
        done = []
        for name, tensor in self.check(named_tensors):
            self._seen.add(name)
            if name in self.layout.aliases:
                continue
            key = layer_key(name)
            self._pending.setdefault(key, {})[name] = tensor
            self._waiting[key].discard(name)
            if not self._waiting[key]:
                done.append(self._pending.pop(key))
                del self._waiting[key]
        return done

    def finish(self) -> None:
        """Raise unless every tensor of the spec arrived."""
        missing = sorted(n for names in self._waiting.values() for n in names)
        if missing:
            raise WeightUpdateError(
                f"weight stream ended early: {_describe([f'missing tensor {n!r}' for n in missing])}"
            )
