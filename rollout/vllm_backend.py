"""The vLLM rollout backend: an in-process ``vllm.LLM`` (CPU or CUDA build) that generates from
token ids and takes new weights from a trainer.

The engine runs in the calling process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, executor ``uni``
when tensor-parallel size is 1), so its worker, and with it the model, can be reached with
``llm.collective_rpc`` through :class:`AlignWorkerExtension`. Build it inside a Ray actor
(:mod:`rollout.worker`) or under ``if __name__ == "__main__":``.

Weight updates load checkpoint-format tensors through vLLM's layer-wise reload
(``initialize_layerwise_reload`` -> ``model.load_weights`` -> ``finalize_layerwise_reload``, what
``model_runner.reload_weights`` does): on the CPU backend the layers are repacked after loading,
so a plain ``model.load_weights`` fails there (``'Parameter' object has no attribute
'weight_loader'``). On CUDA the same path works; colocated or remote trainers can instead use
vLLM's CUDA-IPC / NCCL weight-transfer engines (``weight_transfer_backend``, see
:mod:`rollout.cuda_sync`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rollout.types import Completion, SamplingParams
from rollout.weights import WeightAssembly, WeightLayout, WeightUpdateError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

DEFAULT_CPU_KVCACHE_GIB = "1"  # vLLM CPU otherwise reserves far too much (DESIGN section 4)


class AlignWorkerExtension:
    """Mixed into vLLM's worker (``worker_extension_cls``) and called through
    ``llm.collective_rpc("align_...")``. Every name starts with ``align_`` so that none shadows a
    method of the worker itself (it already has ``update_weights``, ``reload_weights``, ...)."""

    def align_begin_reload(self) -> None:
        """Put the model into layer-wise reload: each layer is reprocessed once all its weights arrived."""
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        with set_current_vllm_config(self.vllm_config):
            initialize_layerwise_reload(self.model_runner.get_model())

    def align_load_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> None:
        """Load checkpoint-format tensors (between ``align_begin_reload`` and ``align_end_reload``)."""
        from vllm.config import set_current_vllm_config

        with set_current_vllm_config(self.vllm_config):
            self.model_runner.get_model().load_weights(iter(named_tensors))

    def align_end_reload(self) -> None:
        """Finish the reload and drop state derived from the old weights."""
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        with set_current_vllm_config(self.vllm_config):
            finalize_layerwise_reload(self.model_runner.get_model(), self.model_config)
        for reset in ("reset_lora_state", "reset_encoder_cache", "reset_mm_cache"):
            getattr(self.model_runner, reset, lambda: None)()

    def align_num_threads(self) -> int:
        import torch

        return torch.get_num_threads()


def _set_num_threads(n: int) -> None:
    """``torch.set_num_threads`` that still works after vLLM's CPU worker replaced it with a no-op."""
    import torch

    torch._C.set_num_threads(n)


class VLLMBackend:
    """A vLLM engine behind :class:`rollout.types.RolloutBackend`.

    Args:
        model_path: HF model directory (weights in checkpoint format, as ``save_pretrained`` writes).
        dtype: engine dtype (float32 is faster than bf16 on the 2-core CPU, DESIGN section 4).
        seed: engine seed (sampling without ``SamplingParams.seed``).
        max_model_len: longest prompt + completion; ``None`` takes the model's.
        tensor_parallel_size: GPUs per engine (1 on CPU).
        kv_cache_gib: KV cache size; ``None`` uses ``VLLM_CPU_KVCACHE_SPACE`` on CPU (set to 1 GiB
            when unset) and ``gpu_memory_utilization`` on CUDA. On CPU a value here removes
            ``VLLM_CPU_KVCACHE_SPACE`` from this process's environment, which would override it.
        gpu_memory_utilization: fraction of GPU memory for weights + KV cache (CUDA).
        enable_sleep_mode: allow :meth:`sleep` to release GPU memory; ``None`` = on for CUDA.
        weight_transfer_backend: ``"ipc"`` or ``"nccl"`` to enable vLLM's weight-transfer engine (CUDA).
        num_threads: torch intra-op threads for the engine; ``None`` keeps the process's setting
            (a Ray actor with ``num_cpus=k`` starts with ``OMP_NUM_THREADS=k``).
        engine_kwargs: any other ``vllm.LLM`` arguments (e.g. ``max_num_seqs``).
    """

    name = "vllm"

    def __init__(
        self,
        model_path: str | Path,
        *,
        dtype: str = "float32",
        seed: int = 0,
        max_model_len: int | None = None,
        tensor_parallel_size: int = 1,
        kv_cache_gib: float | None = None,
        gpu_memory_utilization: float = 0.5,
        enable_sleep_mode: bool | None = None,
        weight_transfer_backend: str | None = None,
        num_threads: int | None = None,
        engine_kwargs: Mapping[str, Any] | None = None,
    ):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine in this process: reachable by rpc
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        os.environ.setdefault("DO_NOT_TRACK", "1")
        if num_threads is not None:
            # vLLM reads OMP_NUM_THREADS to decide the serving thread count (else it drops to 1).
            os.environ["OMP_NUM_THREADS"] = str(num_threads)
            _set_num_threads(num_threads)

        from vllm import LLM
        from vllm.platforms import current_platform

        self.device = "cpu" if current_platform.is_cpu() else "cuda"
        self.model_path = str(model_path)
        self.tensor_parallel_size = tensor_parallel_size
        kwargs: dict[str, Any] = {
            "model": self.model_path,
            "dtype": dtype,
            "seed": seed,
            "max_model_len": max_model_len,
            "tensor_parallel_size": tensor_parallel_size,
            "enforce_eager": self.device == "cpu",  # no compile / graphs on CPU (DESIGN section 4)
            "distributed_executor_backend": "uni" if tensor_parallel_size == 1 else "mp",
            "worker_extension_cls": f"{__name__}.AlignWorkerExtension",
            "logprobs_mode": "raw_logprobs",  # the model's distribution: GRPO's old-policy logprobs
        }
        if self.device == "cpu":
            from rollout.vllm_patches import patch_vllm_cpu_moe_reload, patch_vllm_cpu_rope

            patch_vllm_cpu_rope()
            patch_vllm_cpu_moe_reload()
            if kv_cache_gib is not None:
                # vLLM's CPU platform lets this (whole-GiB) variable override kv_cache_memory_bytes.
                os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
                kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * (1 << 30))
            else:
                os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", DEFAULT_CPU_KVCACHE_GIB)
            # A chunked prefill discards the token sampled for a part-prefilled request and rewinds
            # that request's seeded generator with set_offset, which CPU generators do not have:
            # seeded sampling then dies with "CPU Generator does not use offset". Whole prompts per
            # step avoid it (what vLLM's CPU platform already does for MLA models).
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(max_model_len or _max_positions(self.model_path), 8192)
            self.sleep_mode = False
        else:
            if kv_cache_gib is not None:
                kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * (1 << 30))
            else:
                kwargs["gpu_memory_utilization"] = gpu_memory_utilization
            self.sleep_mode = True if enable_sleep_mode is None else enable_sleep_mode
            kwargs["enable_sleep_mode"] = self.sleep_mode
        if weight_transfer_backend is not None:
            kwargs["weight_transfer_config"] = {"backend": weight_transfer_backend}
        kwargs.update(engine_kwargs or {})

        start = time.perf_counter()
        self.llm = LLM(**kwargs)
        self.build_s = time.perf_counter() - start
        if num_threads is not None:
            _set_num_threads(num_threads)
        self.num_threads = self.llm.collective_rpc("align_num_threads")[0]

        self.layout = WeightLayout.from_pretrained(self.model_path)
        self._layout_error: str | None = None
        try:
            self.layout.check_matches_checkpoint(self.model_path)
        except WeightUpdateError as e:  # generation still works; updates would feed wrong names
            self._layout_error = str(e)
            logger.warning("weight updates disabled: %s", e)
        self.asleep = False
        self.weights_ok = True  # False after an update failed half-way (see abort_weight_stream)
        self.weight_version = 0
        self._assembly: WeightAssembly | None = None
        self._stream_loaded = False

    # ------------------------------------------------------------------------------------------
    # Generation

    def generate(
        self, prompt_token_ids: Sequence[Sequence[int]], params: SamplingParams
    ) -> list[list[Completion]]:
        """Per prompt, ``params.n`` completions (see :class:`rollout.types.Completion`)."""
        from vllm import SamplingParams as VSamplingParams

        self._check_can_serve()
        prompts = [[int(t) for t in p] for p in prompt_token_ids]
        # vLLM refuses n > 1 with greedy sampling; greedy copies are identical, so ask n times.
        copies = params.n if params.greedy else 1
        per_request_n = 1 if params.greedy else params.n
        requests = [p for p in prompts for _ in range(copies)]

        def vllm_params(seed: int | None) -> VSamplingParams:
            return VSamplingParams(
                n=per_request_n,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k if params.top_k > 0 else 0,
                max_tokens=params.max_tokens,
                min_tokens=params.min_tokens,
                stop_token_ids=list(params.stop_token_ids),
                seed=seed,
                logprobs=0,  # the sampled token's logprob only
                flat_logprobs=True,
                detokenize=False,
            )

        if params.seed is None:
            sampling: VSamplingParams | list[VSamplingParams] = vllm_params(None)
        else:
            sampling = [vllm_params(params.seed + i // copies) for i in range(len(requests))]
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in requests], sampling, use_tqdm=False)

        result: list[list[Completion]] = [[] for _ in prompts]
        for i, out in enumerate(outputs):
            prompt_index = i // copies
            for c in sorted(out.outputs, key=lambda c: c.index):
                result[prompt_index].append(
                    Completion(prompt_index, list(c.token_ids), _sampled_logprobs(c), _finish_reason(c))
                )
        return result

    def warmup(self, num_prompts: int = 8, max_tokens: int = 16) -> float:
        """Run a short generation so the first real call does not carry the engine's warm-up
        (several seconds on CPU); returns its duration."""
        start = time.perf_counter()
        prompts = [[1 + (i % 7)] * (4 + i) for i in range(num_prompts)]
        self.generate(prompts, SamplingParams(n=2, temperature=1.0, max_tokens=max_tokens, seed=0))
        return time.perf_counter() - start

    def _check_can_serve(self) -> None:
        if self.asleep:
            raise RuntimeError("the engine is asleep: call wake_up() before generate()")
        if self._assembly is not None:
            raise RuntimeError("a weight stream is open: finish it with end_weight_stream() first")
        if not self.weights_ok:
            raise RuntimeError(
                "an earlier weight update failed after part of it was applied; load a complete update first"
            )

    # ------------------------------------------------------------------------------------------
    # Weights

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> float:
        """Replace all weights (trainer names); validated first, so a bad update changes nothing.
        Returns the seconds it took."""
        start = time.perf_counter()
        named = dict(named_tensors)  # references, no copies
        assembly = self._new_assembly({n: tuple(t.shape) for n, t in named.items()})
        layers = assembly.add(named.items())
        assembly.finish()
        checkpoint = (item for layer in layers for item in self.layout.to_checkpoint(layer).items())
        if self.tensor_parallel_size > 1:  # worker processes: the tensors are pickled, not a generator
            checkpoint = list(checkpoint)
        try:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": checkpoint})
        except BaseException:  # validated, so unexpected: the model may be part new, part old
            self.weights_ok = False
            raise
        self._updated()
        return time.perf_counter() - start

    def begin_weight_stream(self, spec: Mapping[str, Sequence[int]]) -> None:
        """Start a bucketed update; ``spec`` (name -> shape) must describe every weight. A bad spec
        raises here, before the engine changes."""
        if self._assembly is not None:
            raise RuntimeError("a weight stream is already open")
        assembly = self._new_assembly(spec)
        self.llm.collective_rpc("align_begin_reload")
        self._assembly, self._stream_loaded = assembly, False

    def load_weight_bucket(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Check a bucket against the spec, then load every layer it completes. A bad bucket
        aborts the stream (:meth:`abort_weight_stream`)."""
        if self._assembly is None:
            raise RuntimeError("no weight stream is open: call begin_weight_stream(spec) first")
        try:
            for layer in self._assembly.add(named_tensors):
                checkpoint = list(self.layout.to_checkpoint(layer).items())
                self._stream_loaded = True
                self.llm.collective_rpc("align_load_weights", args=(checkpoint,))
        except BaseException:
            self.abort_weight_stream()
            raise

    def end_weight_stream(self) -> None:
        """Finish the update; raises (and aborts) unless every tensor of the spec arrived."""
        if self._assembly is None:
            raise RuntimeError("no weight stream is open")
        try:
            self._assembly.finish()
            self.llm.collective_rpc("align_end_reload")
        except BaseException:
            self.abort_weight_stream()
            raise
        self._assembly = None
        self._updated()

    def abort_weight_stream(self) -> None:
        """Close an open stream without completing it. Layers that received nothing keep their
        weights; if some layers were already loaded the engine is a mix of old and new weights and
        refuses to serve until a complete update (``health()['weights_ok']`` is false)."""
        if self._assembly is None:
            return
        self._assembly = None
        try:
            self.llm.collective_rpc("align_end_reload")
        except Exception:
            self.weights_ok = False
            raise
        if self._stream_loaded:
            self.weights_ok = False
            logger.error("weight stream aborted after part of it was loaded: not serving until a full update")

    def check_weight_spec(self, spec: Mapping[str, Sequence[int]]) -> None:
        """Validate an update described by name -> shape without applying anything."""
        self._new_assembly(spec)

    def _new_assembly(self, spec: Mapping[str, Sequence[int]]) -> WeightAssembly:
        if self._layout_error is not None:
            raise WeightUpdateError(f"weight updates are unavailable for this model: {self._layout_error}")
        return self.layout.assembly(spec)

    def _updated(self) -> None:
        # Cached KV blocks were computed with the old weights.
        self.llm.reset_prefix_cache()
        self.weights_ok = True
        self.weight_version += 1

    # ------------------------------------------------------------------------------------------
    # vLLM's weight-transfer control plane (CUDA IPC / NCCL), the methods
    # vllm.distributed.weight_transfer.clients.RayVLLMWeightSyncClient calls on an actor.

    def init_weight_transfer_engine(self, request: Any) -> None:
        self.llm.init_weight_transfer_engine(request)

    def start_weight_update(self) -> None:
        self.llm.start_weight_update()

    def update_weights(self, request: Any) -> None:
        try:
            self.llm.update_weights(request)
        except BaseException as e:
            self.weights_ok = False
            logger.error("weight transfer failed part-way: %s", e)
            raise

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.llm.finish_weight_update(weight_version)
        self._updated()

    def shutdown_weight_transfer_engine(self) -> None:
        self.llm.shutdown_weight_transfer_engine()

    def update_weight_version(self, new_version: str) -> None:
        self.llm.update_weight_version(new_version)

    # ------------------------------------------------------------------------------------------
    # Sleep / wake

    def sleep(self) -> None:
        """Release memory until :meth:`wake_up`.

        CUDA (``enable_sleep_mode``): ``LLM.sleep(level=1)`` offloads the weights to CPU and
        discards the KV cache. CPU: vLLM pauses scheduling and clears the prefix cache, and its CPU
        worker keeps weights and KV cache where they are (its ``sleep`` is a logged no-op; the KV
        cache is plain host memory whose untouched pages the OS never committed). Either way
        ``generate`` refuses to run until :meth:`wake_up`.
        """
        if self.device == "cuda" and not self.sleep_mode:
            raise RuntimeError("sleep() needs the engine built with enable_sleep_mode=True")
        if not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Bring memory back; ``tags`` (``weights``, ``kv_cache``) wakes part of it (CUDA: load
        weights before allocating the KV cache)."""
        if self.asleep:
            self.asleep = not self.llm.wake_up(tags)

    # ------------------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "device": self.device,
            "model_path": self.model_path,
            "asleep": self.asleep,
            "weights_ok": self.weights_ok,
            "weight_version": self.weight_version,
            "num_threads": self.num_threads,
            "build_s": round(self.build_s, 3),
            "kv_cache_bytes": self.llm.llm_engine.vllm_config.cache_config.kv_cache_memory_bytes,
            "weight_updates": self._layout_error is None,
        }

    def close(self) -> None:
        """Free the engine (its memory returns when the last reference goes)."""
        import gc

        self.llm = None
        gc.collect()


def _max_positions(model_path: str) -> int:
    """The model's longest sequence (what vLLM takes as max_model_len when none is given)."""
    from transformers import AutoConfig

    return int(getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", 0) or 0)


def _sampled_logprobs(completion: Any) -> list[float]:
    """The logprob of each sampled token (``logprobs=0`` asks for nothing else)."""
    flat = completion.logprobs
    if hasattr(flat, "start_indices"):  # FlatLogprobs
        values = [flat.logprobs[s] for s in flat.start_indices]
        tokens = [flat.token_ids[s] for s in flat.start_indices]
    else:  # list of {token_id: Logprob}
        values = [pos[t].logprob for pos, t in zip(flat, completion.token_ids)]
        tokens = list(completion.token_ids)
    if tokens != list(completion.token_ids):
        raise RuntimeError("vLLM returned logprobs for other tokens than the sampled ones")
    return [float(v) for v in values]


def _finish_reason(completion: Any) -> str:
    if completion.finish_reason not in ("stop", "length"):
        raise RuntimeError(f"vLLM request ended with finish_reason={completion.finish_reason!r}")
    return completion.finish_reason


__all__ = ["AlignWorkerExtension", "VLLMBackend"]
