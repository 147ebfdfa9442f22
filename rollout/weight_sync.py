"""Trainer side of a weight update over Ray: stream a model's weights to rollout workers in
buckets of bounded size (works on CPU and GPU; tensors travel through Ray's object store).

On CUDA, :mod:`rollout.cuda_sync` moves the bytes with CUDA IPC or NCCL instead.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rollout.weights import iter_buckets, shapes_of

if TYPE_CHECKING:
    import torch


def push_weights(
    workers: Sequence[Any],
    weights: torch.nn.Module | Mapping[str, torch.Tensor],
    *,
    bucket_bytes: int = 64 << 20,
) -> float:
    """Send ``weights`` (a model, whose ``state_dict()`` is used, or a state dict; trainer names,
    FSDP2 ``DTensor`` shards allowed) to every worker (:class:`rollout.worker.RolloutWorker` actor
    handles). Returns seconds.

    The names and shapes go first and every worker validates them against its model: a missing,
    unknown or mis-shaped tensor raises :class:`rollout.weights.WeightUpdateError` naming it
    before any worker changes a weight. Then buckets of about ``bucket_bytes`` follow, each put in
    the object store once and read by all workers, so the trainer holds at most one gathered
    bucket at a time. Sharded tensors are gathered (``full_tensor()``, a collective) as their
    bucket is built: on a multi-rank trainer every rank must call this in lockstep.
    """
    import ray

    start = time.perf_counter()
    state = weights.state_dict() if hasattr(weights, "state_dict") else dict(weights)
    spec = shapes_of(state)
    begun = [w.begin_weight_stream.remote(spec) for w in workers]
    try:
        ray.get(begun)
        for bucket in iter_buckets(state.items(), bucket_bytes):
            ref = ray.put([(name, tensor.cpu()) for name, tensor in bucket])
            ray.get([w.load_weight_bucket.remote(ref) for w in workers])
            del ref
        ray.get([w.end_weight_stream.remote() for w in workers])
    except BaseException:
        # Close the stream wherever it is still open (a worker that rejected the spec has none).
        ray.wait([w.abort_weight_stream.remote() for w in workers], num_returns=len(workers), timeout=60)
        raise
    return time.perf_counter() - start
