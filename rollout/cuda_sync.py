"""CUDA weight sync through vLLM's own weight-transfer engines: CUDA IPC when the trainer and the
engine share a GPU (colocated: the paper's hybrid engine), an NCCL broadcast when they do not.

The rollout workers must be built with ``weight_transfer_backend="ipc"`` or ``"nccl"``; they
expose the control-plane methods vLLM's ``RayVLLMWeightSyncClient`` calls. The trainer's weights
are converted to checkpoint names layer by layer with transformers' save-time conversion
(:class:`CheckpointSource`), and every update is validated by the workers (names and shapes)
before a byte moves. Needs a GPU: its tests are marked ``gpu``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

from rollout.weights import WeightLayout, full_tensor, layer_key, shapes_of

if TYPE_CHECKING:
    import torch


class CheckpointSource(WeightSource):
    """A trainer model's weights under checkpoint names (per-expert MoE weights, tied copies
    dropped), one decoder layer at a time, for vLLM's trainer-side transfer engines.

    FSDP2 shards are gathered per layer (``full_tensor()``, a collective: every trainer rank
    iterates in the same order). ``dtype`` casts on the way (e.g. a float32 master copy sent to a
    bfloat16 engine)."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype | None = None):
        self.model = model
        self.layout = WeightLayout(model)
        self.dtype = dtype
        self._meta: list[ParamMeta] | None = None

    def _layers(self) -> list[list[str]]:
        """Trainer names grouped by decoder layer, in ``state_dict`` order."""
        layers: dict[str, list[str]] = {}
        for name in self.model.state_dict():
            if name not in self.layout.aliases:
                layers.setdefault(layer_key(name), []).append(name)
        return list(layers.values())

    def metadata(self) -> list[ParamMeta]:
        import torch

        if self._meta is None:
            state, meta = self.model.state_dict(), []
            for names in self._layers():
                fake = {
                    n: torch.empty(tuple(state[n].shape), dtype=self.dtype or state[n].dtype, device="meta")
                    for n in names
                }
                meta += [
                    ParamMeta(n, t.dtype, tuple(t.shape)) for n, t in self.layout.to_checkpoint(fake).items()
                ]
            self._meta = meta
        return self._meta

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        state = self.model.state_dict()
        for names in self._layers():
            layer = {n: full_tensor(state[n]).detach() for n in names}
            if self.dtype is not None:
                layer = {n: t.to(self.dtype) for n, t in layer.items()}
            yield from self.layout.to_checkpoint(layer).items()


class CudaWeightSync:
    """Pushes a trainer model's weights to rollout workers over CUDA IPC or NCCL.

    Build it once (the rendezvous happens here) on every trainer rank, then call :meth:`push`
    after each optimizer step, on every rank.

    Args:
        model: the trainer's transformers model (FSDP2-sharded or not).
        workers: :class:`rollout.worker.RolloutWorker` actor handles built with
            ``weight_transfer_backend=backend``.
        backend: ``ipc`` (colocated: each worker on the GPU of a trainer rank) or ``nccl``.
        rank: this trainer rank (rank 0 sends; the others join the gathers).
        master_address, master_port: NCCL rendezvous on the trainer's node. vLLM numbers an
            engine's NCCL ranks from its own position, so two engines cannot share a group: each
            worker gets its own group, on ``master_port + i`` (free ports when ``None``).
        tensor_parallel_size: GPUs per engine (NCCL group size is 1 + this).
        packed: batch tensors into fixed-size buffers (bounded memory).
        dtype: cast to the engine's dtype on the way.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        workers: Sequence[Any],
        *,
        backend: str = "ipc",
        rank: int = 0,
        master_address: str = "127.0.0.1",
        master_port: int | None = None,
        tensor_parallel_size: int = 1,
        packed: bool = True,
        dtype: torch.dtype | None = None,
    ):
        from vllm.distributed.weight_transfer.clients import RayVLLMWeightSyncClient
        from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

        self.workers = list(workers)
        self.model = model
        self.source = CheckpointSource(model, dtype)
        if backend == "ipc":
            from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

            info = IPCTrainerInitInfo(rank=rank, packed=packed)
            self.clients = [RayVLLMWeightSyncClient(self.workers)]
            self.engines = [
                WeightTransferTrainerFactory.trainer_init(info, client=self.clients[0], source=self.source)
            ]
        elif backend == "nccl":
            from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

            ports = [
                master_port + i if master_port is not None else _free_port() for i in range(len(self.workers))
            ]
            self.clients = [RayVLLMWeightSyncClient(w) for w in self.workers]
            self.engines = [
                WeightTransferTrainerFactory.trainer_init(
                    NCCLTrainerInitInfo(
                        rank=rank,
                        master_address=master_address,
                        master_port=ports[i],
                        world_size=1 + tensor_parallel_size,
                        packed=packed,
                    ),
                    client=client,
                    source=self.source,
                )
                for i, client in enumerate(self.clients)
            ]
        else:
            raise ValueError(f"unknown CUDA weight-transfer backend {backend!r}; choose ipc or nccl")

    def push(self) -> float:
        """Validate the update on every worker (a missing or mis-shaped tensor raises
        :class:`rollout.weights.WeightUpdateError` naming it, nothing sent), then send it.
        Returns seconds."""
        import ray

        start = time.perf_counter()
        spec = shapes_of(self.model.state_dict())
        ray.get([w.check_weight_spec.remote(spec) for w in self.workers])  # on every rank: all fail alike
        for engine in self.engines:
            engine.send_weights()
        return time.perf_counter() - start

    def close(self) -> None:
        for engine, client in zip(self.engines, self.clients):
            engine.shutdown()
            if engine.is_sender:
                client.shutdown_weight_transfer_engine()
        self.engines, self.clients = [], []


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]
