"""Streaming gathered trainer weights into rollout engines, bucket by bucket (bounded memory)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rollout.weights import iter_buckets

if TYPE_CHECKING:
    import torch


def stream_weights(
    workers: Sequence[Any],
    spec: Mapping[str, Sequence[int]],
    named_tensors: Iterable[tuple[str, torch.Tensor]],
    bucket_bytes: int = 64 << 20,
) -> None:
    """Send every weight of ``spec`` (name -> shape) to each :class:`rollout.worker.RolloutWorker`
    actor in ``workers``, using the engine's streamed-update API.

    The spec goes first and every engine validates it before changing anything; then buckets of
    about ``bucket_bytes`` follow, each put in the object store once and read by all engines, so
    the sender holds one gathered bucket at a time. ``named_tensors`` may gather lazily (FSDP2
    ``full_tensor()``). On failure the streams are aborted (an engine that had loaded part of the
    update refuses to serve until a full one, see ``VLLMBackend.abort_weight_stream``).

    Same protocol as :func:`rollout.weight_sync.push_weights`, which takes a whole state dict;
    here names and tensors come separately so that LoRA-merged weights can be streamed.
    """
    import ray

    try:
        ray.get([w.begin_weight_stream.remote(dict(spec)) for w in workers])
        for bucket in iter_buckets(named_tensors, bucket_bytes):
            ref = ray.put([(name, tensor.cpu()) for name, tensor in bucket])
            ray.get([w.load_weight_bucket.remote(ref) for w in workers])
            del ref
        ray.get([w.end_weight_stream.remote() for w in workers])
    except BaseException:
        ray.wait([w.abort_weight_stream.remote() for w in workers], num_returns=len(workers), timeout=60)
        raise
