"""The Ray rollout worker (one engine per actor) and :class:`RolloutGroup`, which spreads a batch of
prompts over several workers and puts the completions back in prompt order."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rollout.backends import make_backend
from rollout.types import Completion, SamplingParams

if TYPE_CHECKING:
    import torch


def trim_heap() -> bool:
    """Give the C heap's free pages back to the OS (glibc ``malloc_trim``); False where unavailable.

    Generation allocates and frees many short-lived buffers of varying size; glibc keeps the freed
    pages, so a CPU engine's resident memory grew by about 1 MB a step over a 300-step GRPO run
    (``bench/soak.py``) although nothing stayed alive: with a trim after each batch it stays flat.
    """
    global _libc
    if _libc is None:
        try:
            import ctypes

            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    return bool(_libc) and bool(_libc.malloc_trim(0))


_libc: Any = None


class RolloutWorker:
    """Owns one rollout engine. Used as a Ray actor (``ray.remote(RolloutWorker)``, which
    :class:`RolloutGroup` does), or as a plain object in the current process.

    Args:
        model_path: HF model directory the engine starts from.
        backend: ``vllm`` (default) or ``hf``.
        num_threads: torch threads for the engine. A Ray actor with ``num_cpus=k`` starts with
            ``OMP_NUM_THREADS=k``; set this to use more (or fewer) cores than it reserved.
        warmup: run :meth:`warmup` at the end of construction, so the first timed ``generate``
            carries no engine warm-up.

    Ray starts worker processes at niceness 15 (``RAY_worker_niceness``): on a machine shared with
    other work the engine then gets the leftovers. Set ``RAY_worker_niceness=0`` in the
    environment of ``ray.init`` / ``ray start`` to run rollouts at normal priority.
        backend_kwargs: passed to the backend (``tensor_parallel_size``, ``kv_cache_gib``, ...).
    """

    def __init__(
        self,
        model_path: str | Path,
        backend: str = "vllm",
        num_threads: int | None = None,
        warmup: bool = False,
        **backend_kwargs: Any,
    ):
        self.backend_name = backend
        self.engine = make_backend(backend, model_path, num_threads=num_threads, **backend_kwargs)
        self.warmup_s = self.engine.warmup() if warmup else None
        self.generated_tokens = 0
        self.started = time.time()

    # Generation ---------------------------------------------------------------------------------

    def generate(
        self, prompt_token_ids: Sequence[Sequence[int]], params: SamplingParams
    ) -> list[list[Completion]]:
        """Per prompt, ``params.n`` completions."""
        out = self.engine.generate(prompt_token_ids, params)
        self.generated_tokens += sum(len(c.token_ids) for cs in out for c in cs)
        trim_heap()
        return out

    def warmup(self) -> float:
        """A short throw-away generation that absorbs the engine's first-call warm-up; its seconds."""
        self.warmup_s = self.engine.warmup()
        return self.warmup_s

    # Weights ------------------------------------------------------------------------------------

    def load_weights(
        self, named_tensors: Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor]
    ) -> float:
        """Replace all weights in one call (trainer names); validated first. Returns seconds."""
        items = named_tensors.items() if isinstance(named_tensors, Mapping) else named_tensors
        return self.engine.load_weights(items)

    def begin_weight_stream(self, spec: Mapping[str, Sequence[int]]) -> None:
        self.engine.begin_weight_stream(spec)

    def load_weight_bucket(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.engine.load_weight_bucket(named_tensors)

    def end_weight_stream(self) -> None:
        self.engine.end_weight_stream()

    def abort_weight_stream(self) -> None:
        self.engine.abort_weight_stream()

    def check_weight_spec(self, spec: Mapping[str, Sequence[int]]) -> None:
        self.engine.check_weight_spec(spec)

    # vLLM's weight-transfer control plane (CUDA IPC / NCCL): the methods vLLM's
    # RayVLLMWeightSyncClient calls on an actor; see rollout.cuda_sync.

    def init_weight_transfer_engine(self, request: Any) -> None:
        self._vllm().init_weight_transfer_engine(request)

    def start_weight_update(self) -> None:
        self._vllm().start_weight_update()

    def update_weights(self, request: Any) -> None:
        self._vllm().update_weights(request)

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._vllm().finish_weight_update(weight_version)

    def shutdown_weight_transfer_engine(self) -> None:
        self._vllm().shutdown_weight_transfer_engine()

    def update_weight_version(self, new_version: str) -> None:
        self._vllm().update_weight_version(new_version)

    def _vllm(self) -> Any:
        if self.backend_name != "vllm":
            raise RuntimeError(
                f"weight transfer engines need the vllm backend, this worker runs {self.backend_name}"
            )
        return self.engine

    # Memory and health --------------------------------------------------------------------------

    def sleep(self) -> None:
        """Release accelerator memory (see the backend's ``sleep`` for what that means on CPU)."""
        self.engine.sleep()

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.engine.wake_up(tags)

    def health(self, probe: bool = False) -> dict[str, Any]:
        """The engine's state; with ``probe`` also a one-token greedy generation (``probe_s``).
        ``ok`` is true when the engine can serve now."""
        info = dict(self.engine.info())
        info.update(
            pid=os.getpid(),
            host=socket.gethostname(),
            uptime_s=round(time.time() - self.started, 1),
            generated_tokens=self.generated_tokens,
            warmup_s=self.warmup_s,
            niceness=os.nice(0),  # Ray starts workers at 15 (RAY_worker_niceness)
            ok=info["weights_ok"] and not info["asleep"],
        )
        if probe and info["ok"]:
            start = time.perf_counter()
            self.engine.generate([[1, 2, 3]], SamplingParams(temperature=0.0, max_tokens=1))
            info["probe_s"] = round(time.perf_counter() - start, 4)
        return info


def split_evenly(count: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ``(start, stop)`` ranges covering ``range(count)``, sizes differing by at most 1."""
    base, extra = divmod(count, parts)
    bounds, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


class RolloutGroup:
    """Several :class:`RolloutWorker` Ray actors used as one engine.

    ``generate`` splits the prompts into contiguous, nearly equal shards (one per worker), runs
    them in parallel and returns the completions in prompt order, ``prompt_index`` relative to the
    whole call; with ``SamplingParams.seed`` each prompt gets the same seed wherever it runs.

    Args:
        model_path: HF model directory every engine starts from.
        num_workers: actors to start (each holds a whole model and its KV cache).
        backend: ``vllm`` or ``hf``.
        num_cpus_per_worker, num_gpus_per_worker: Ray resources per actor (GPUs: the engine's
            tensor-parallel size).
        num_threads: torch threads per engine (defaults to Ray's ``OMP_NUM_THREADS``, i.e. the CPUs
            reserved).
        warmup: warm every engine up before returning.
        actor_options: more ``ray.remote`` options (e.g. ``scheduling_strategy``).
        backend_kwargs: passed to each backend.
    """

    def __init__(
        self,
        model_path: str | Path,
        num_workers: int = 1,
        *,
        backend: str = "vllm",
        num_cpus_per_worker: float = 1,
        num_gpus_per_worker: float = 0,
        num_threads: int | None = None,
        warmup: bool = True,
        actor_options: Mapping[str, Any] | None = None,
        **backend_kwargs: Any,
    ):
        import ray

        actor = ray.remote(RolloutWorker).options(
            num_cpus=num_cpus_per_worker, num_gpus=num_gpus_per_worker, **(actor_options or {})
        )
        self.workers = [
            actor.remote(str(model_path), backend, num_threads, warmup, **backend_kwargs)
            for _ in range(num_workers)
        ]
        ray.get([w.health.remote() for w in self.workers])  # surface construction errors here

    @classmethod
    def from_workers(cls, workers: Sequence[Any]) -> RolloutGroup:
        """A group over existing :class:`RolloutWorker` actor handles."""
        group = cls.__new__(cls)
        group.workers = list(workers)
        return group

    def generate(
        self, prompt_token_ids: Sequence[Sequence[int]], params: SamplingParams
    ) -> list[list[Completion]]:
        import ray

        shards = [(a, b) for a, b in split_evenly(len(prompt_token_ids), len(self.workers)) if b > a]
        futures = []
        for worker, (start, stop) in zip(self.workers, shards):
            shard_params = params if params.seed is None else replace(params, seed=params.seed + start)
            futures.append(worker.generate.remote(list(prompt_token_ids[start:stop]), shard_params))
        result: list[list[Completion]] = []
        for (start, _), shard in zip(shards, ray.get(futures)):
            for completions in shard:
                for c in completions:
                    c.prompt_index += start
                result.append(completions)
        return result

    def push_weights(self, weights: Any, bucket_bytes: int = 64 << 20) -> float:
        """Send a trainer's weights (a model or a state dict) to every worker, in buckets
        (:func:`rollout.weight_sync.push_weights`). Returns seconds."""
        from rollout.weight_sync import push_weights

        return push_weights(self.workers, weights, bucket_bytes=bucket_bytes)

    def warmup(self) -> list[float]:
        import ray

        return ray.get([w.warmup.remote() for w in self.workers])

    def sleep(self) -> None:
        import ray

        ray.get([w.sleep.remote() for w in self.workers])

    def wake_up(self, tags: list[str] | None = None) -> None:
        import ray

        ray.get([w.wake_up.remote(tags) for w in self.workers])

    def health(self, probe: bool = False, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        """Each worker's :meth:`RolloutWorker.health`; a worker that is dead or does not answer
        within ``timeout_s`` reports ``{"ok": False, "error": ...}``."""
        import ray

        refs = [w.health.remote(probe) for w in self.workers]
        report = []
        for ref in refs:
            try:
                report.append(ray.get(ref, timeout=timeout_s))
            except Exception as e:  # dead actor, timeout, engine error: all mean "not healthy"
                report.append({"ok": False, "error": f"{type(e).__name__}: {e}"})
        return report

    def shutdown(self) -> None:
        import ray

        for w in self.workers:
            ray.kill(w)
        self.workers = []
