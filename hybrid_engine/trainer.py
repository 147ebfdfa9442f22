"""The trainer worker group: FSDP2 ranks as Ray actors (:class:`TrainerWorker`) and the driver-side
handle that calls them in lockstep (:class:`TrainerGroup`).

Each rank holds a shard of the policy (``fully_shard`` on every decoder layer, then the root),
AdamW over its shard, the LR schedule, and (when ``beta > 0``) a sharded frozen reference model.
Every method that runs the model is a collective: the group calls it on all ranks at once, and
the ranks run the same number of forward passes (equal shards, equal micro-batch counts).
"""

from __future__ import annotations

import math
import os
import resource
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from align.configs import GRPOConfig, ModelConfig, TrainerConfig
from hybrid_engine.batch import GRPOBatch

if TYPE_CHECKING:
    import torch

# Per-token metrics each rank sums over its tokens; the group divides by all tokens.
TOKEN_METRICS = ("pg_loss", "kl", "clip_frac", "ratio_mean", "entropy", "rollout_logp_abs_diff")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _rss_gib() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)


def shard_model(model: torch.nn.Module, **fsdp_kwargs: Any) -> torch.nn.Module:
    """``fully_shard`` every decoder layer (the model's ``_no_split_modules`` classes), then the root."""
    from torch.distributed.fsdp import fully_shard

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    block_names = set(getattr(inner, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in block_names]
    if not blocks:
        raise ValueError(f"no decoder layers found to shard in {type(inner).__name__} (_no_split_modules)")
    for block in blocks:
        fully_shard(block, **fsdp_kwargs)
    fully_shard(model, **fsdp_kwargs)
    return model


def live_cuda_blocks(top: int = 8) -> list[dict]:
    """The largest allocated blocks on the GPU now, with the Python frames that allocated them
    (frames only after ``torch.cuda.memory._record_memory_history()``): what an offload left."""
    import torch

    blocks = [
        b for seg in torch.cuda.memory_snapshot() for b in seg["blocks"] if b["state"] == "active_allocated"
    ]
    blocks.sort(key=lambda b: -b["size"])
    out = []
    for b in blocks[:top]:
        frames = [
            f"{f['filename']}:{f['line']} {f['name']}"
            for f in b.get("frames", [])
            if f.get("filename", "").endswith(".py")
        ]
        # The innermost frames, then the first few outside site-packages (the caller here).
        ours = [f for f in frames if "site-packages" not in f and "/torch/" not in f]
        out.append({"bytes": b["size"], "frames": frames[:3] + ours[:4]})
    return out


def _optimizer_to(optimizer: torch.optim.Optimizer, device: Any) -> None:
    for state in optimizer.state.values():
        for key, value in state.items():
            if hasattr(value, "to") and getattr(value, "dim", lambda: 0)() > 0:
                state[key] = value.to(device, non_blocking=True)


class TrainerWorker:
    """One FSDP2 rank. Used as a Ray actor by :class:`TrainerGroup`.

    Args:
        rank, world_size: this rank and the number of ranks.
        model: the policy (``model.path``, ``dtype``, ``lora``).
        trainer: optimisation settings.
        grpo: the objective (clip ranges, beta, aggregation); :meth:`set_grpo` replaces it per stage.
        temperature: the rollout's sampling temperature (logits are divided by it).
        total_steps: optimizer steps of the whole run (the LR schedule's length).
        use_ref: build the reference model (any stage with ``beta > 0``).
        seed: base seed (each rank adds its rank).
    """

    def __init__(
        self,
        rank: int,
        world_size: int,
        model: ModelConfig,
        trainer: TrainerConfig,
        grpo: GRPOConfig,
        *,
        temperature: float = 1.0,
        total_steps: int = 1,
        use_ref: bool = True,
        seed: int = 0,
    ):
        import torch

        self.rank, self.world_size = rank, world_size
        self.model_cfg, self.cfg, self.grpo = model, trainer, grpo
        self.temperature = temperature
        self.total_steps = max(total_steps, 1)
        self.use_ref = use_ref
        self.seed = seed
        if trainer.threads > 0:
            torch.set_num_threads(trainer.threads)
        self.device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        self.model = self.ref = self.optimizer = self.scheduler = None
        self.steps_done = 0
        self.skipped_updates = 0
        self.offloaded = False
        self.ref_reset = False  # the reference was replaced by a copy of the policy

    # Setup --------------------------------------------------------------------------------------

    def master_address(self) -> tuple[str, int]:
        """Where rank 0 listens for the process-group rendezvous (called on rank 0)."""
        import ray

        return ray.util.get_node_ip_address(), _free_port()

    def setup(self, master_addr: str, master_port: int) -> dict[str, Any]:
        """Join the process group, load and shard the policy (and reference), build AdamW + schedule."""
        import torch
        import torch.distributed as dist
        from transformers import AutoModelForCausalLM

        from align.grpo_trainer import lr_factor

        backend = "nccl" if self.device.type == "cuda" else "gloo"
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        dist.init_process_group(
            backend,
            init_method=f"tcp://{master_addr}:{master_port}",
            rank=self.rank,
            world_size=self.world_size,
        )
        torch.manual_seed(self.seed + self.rank)
        dtype = getattr(torch, self.model_cfg.dtype)

        def load() -> torch.nn.Module:
            m = AutoModelForCausalLM.from_pretrained(self.model_cfg.path, dtype=dtype)
            m.config.use_cache = False
            return m

        model = load()
        self.lora_scaling = None
        if self.model_cfg.lora.r > 0:
            import peft

            lora = self.model_cfg.lora
            torch.manual_seed(self.seed)  # the same adapter init on every rank
            model = peft.get_peft_model(
                model,
                peft.LoraConfig(
                    r=lora.r,
                    lora_alpha=lora.alpha,
                    lora_dropout=lora.dropout,
                    target_modules=list(lora.target_modules),
                    task_type="CAUSAL_LM",
                ),
            )
            self.lora_scaling = lora.alpha / lora.r
        # Dropout off, as veRL does: old, new and reference log-probs must come from one function.
        model.eval()
        self.model = shard_model(model.to(self.device))
        n_params = sum(p.numel() for p in model.parameters())
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        n_trainable = sum(p.numel() for p in trainable)

        if self.use_ref and self.lora_scaling is None:
            from torch.distributed.fsdp import CPUOffloadPolicy

            # The reference lives on CPU and visits the GPU layer by layer (FSDP2 CPU offload).
            kwargs = {"offload_policy": CPUOffloadPolicy()} if self.device.type == "cuda" else {}
            self.ref = shard_model(load().eval().requires_grad_(False), **kwargs)

        self.optimizer = torch.optim.AdamW(trainable, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        cfg = self.cfg
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: lr_factor(
                step, cfg.warmup_steps, self.total_steps, cfg.lr_scheduler, cfg.min_lr_ratio
            ),
        )
        return {
            "rank": self.rank,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "device": str(self.device),
            "params": n_params,
            "trainable_params": n_trainable,
            "threads": torch.get_num_threads(),
        }

    def set_grpo(self, grpo: GRPOConfig) -> None:
        self.grpo = grpo

    # Log-probs ----------------------------------------------------------------------------------

    def _micro_batches(self, batch: GRPOBatch) -> list[list[int]]:
        from align.grpo_trainer import length_grouped, prompt_grouped

        if self.cfg.batching == "shared_prefix":
            return prompt_grouped(batch.prompts(), batch.lengths_B.tolist(), self.cfg.micro_batch_size)
        return length_grouped(batch.lengths_B.tolist(), self.cfg.micro_batch_size)

    def _logprobs(self, model: torch.nn.Module, micro: GRPOBatch, entropy: bool = False):
        from align.grpo_trainer import completion_logprobs

        return completion_logprobs(
            model,
            micro.prompts(),
            micro.completions(),
            temperature=self.temperature,
            batching=self.cfg.batching,
            entropy=entropy,
        )

    def compute_logprobs(self, batch: GRPOBatch, which: str = "policy") -> torch.Tensor:
        """``(B, T)`` log-probs of the shard's completions under the current policy (``policy``: the
        old-policy log-probs before an update) or the reference (``ref``). Collective."""
        import contextlib

        import torch

        if which not in ("policy", "ref"):
            raise ValueError(f"which must be 'policy' or 'ref', got {which!r}")
        model, ctx = self.model, contextlib.nullcontext()
        if which == "ref":
            if self.lora_scaling is not None:
                ctx = self.model.disable_adapter()  # the base model is the reference under LoRA
            elif self.ref is None:
                raise RuntimeError("no reference model: the trainer was built with use_ref=False")
            else:
                model = self.ref
        out = torch.zeros(batch.completion_ids_BT.shape, dtype=torch.float32)
        with torch.no_grad(), ctx:
            for idx in self._micro_batches(batch):
                logp_BT, _, _ = self._logprobs(model, batch.select(idx))
                out[idx, : logp_BT.shape[1]] = logp_BT.float().cpu()
        # FSDP2 leaves the root's parameters unsharded after a forward (it expects a backward):
        # with no backward here they would sit on the device (the CPU-offloaded reference's
        # embeddings and head through the rollout, measured on an H200).
        if hasattr(model, "reshard"):
            model.reshard()
        return out

    # Update -------------------------------------------------------------------------------------

    def update(self, batch: GRPOBatch) -> dict[str, float]:
        """One optimizer step on this rank's shard: gradients accumulate over length-grouped
        micro-batches; clipping; the step is skipped (and counted) when the loss or the gradient
        norm is not finite on any rank. Collective.

        Returns sums over this rank's tokens of :data:`TOKEN_METRICS` (``*_sum``), ``tokens``,
        ``loss`` (this rank's share of the step's loss), and ``grad_norm``, ``lr``, ``skipped``,
        ``skipped_updates`` (the same on every rank).
        """
        import torch
        import torch.distributed as dist

        from align.grpo import policy_loss
        from align.grpo_trainer import micro_loss_weight

        g = self.grpo
        sums = {f"{k}_sum": 0.0 for k in TOKEN_METRICS}
        tokens, loss_total, finite = 0.0, 0.0, True
        self.optimizer.zero_grad(set_to_none=True)
        for idx in self._micro_batches(batch):
            micro = batch.select(idx)
            logp_BT, mask_BT, ent_BT = self._logprobs(self.model, micro, entropy=True)
            width = logp_BT.shape[1]
            dev = logp_BT.device
            old_BT = (
                micro.old_logp_BT[:, :width].to(dev) if micro.old_logp_BT is not None else logp_BT.detach()
            )
            ref_BT = micro.ref_logp_BT[:, :width].to(dev) if micro.ref_logp_BT is not None else None
            loss, metrics = policy_loss(
                logp_BT,
                old_BT,
                ref_BT if g.beta > 0 else None,
                micro.advantages_B.to(dev),
                mask_BT,
                g.clip_eps,
                g.beta,
                g.aggregation,
                clip_eps_high=g.clip_eps_high,
            )
            n_tok = float(mask_BT.sum())
            weight = micro_loss_weight(
                g.aggregation, len(idx), int(n_tok), batch.total_seqs, batch.total_tokens
            )
            # FSDP averages gradients over ranks; the weights already normalise over the whole step.
            (loss * weight * self.world_size).backward()
            finite = finite and bool(torch.isfinite(loss))
            loss_total += float(loss.detach()) * weight
            tokens += n_tok
            metrics["entropy"] = float((ent_BT * mask_BT).sum()) / max(n_tok, 1.0)
            if micro.rollout_logp_BT is not None and self.temperature == 1.0:
                diff = (logp_BT.detach().cpu() - micro.rollout_logp_BT[:, :width]).abs()
                metrics["rollout_logp_abs_diff"] = float((diff * mask_BT.cpu()).sum()) / max(n_tok, 1.0)
            for k in TOKEN_METRICS:
                if k in metrics:
                    sums[f"{k}_sum"] += metrics[k] * n_tok

        flag = torch.tensor([1.0 if finite else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else float("inf")
        params = [p for p in self.model.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        lr = self.scheduler.get_last_lr()[0]
        skipped = not (flag.item() == 1.0 and math.isfinite(norm))
        if skipped:
            self.skipped_updates += 1  # never applied; the LR schedule does not advance either
        else:
            self.optimizer.step()
            self.scheduler.step()
            self.steps_done += 1
        self.optimizer.zero_grad(set_to_none=True)
        return {
            **sums,
            "tokens": tokens,
            "loss": loss_total,
            "grad_norm": norm,
            "lr": lr,
            "skipped": float(skipped),
            "skipped_updates": float(self.skipped_updates),
        }

    # Weights out --------------------------------------------------------------------------------

    def engine_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The policy's full weights under the base model's names, gathered from the FSDP2 shards
        one tensor at a time (``DTensor.full_tensor()``, a collective); LoRA adapters merged."""
        from rollout.weights import full_tensor

        gathered = ((name, full_tensor(t).detach()) for name, t in self.model.state_dict().items())
        if self.lora_scaling is None:
            return gathered
        from align.grpo_trainer import merge_lora

        return merge_lora(gathered, self.lora_scaling)

    def engine_spec(self) -> dict[str, tuple[int, ...]]:
        """Names and global shapes of :meth:`engine_weights` (no gathering)."""
        import torch

        from align.grpo_trainer import merge_lora

        meta = ((n, torch.empty(t.shape, device="meta")) for n, t in self.model.state_dict().items())
        if self.lora_scaling is None:
            return {n: tuple(t.shape) for n, t in meta}
        # merge_lora's B @ A on meta tensors gives the merged shapes without memory
        return {n: tuple(t.shape) for n, t in merge_lora(meta, 1.0)}

    def push_weights(self, workers: Sequence[Any], bucket_bytes: int = 64 << 20) -> float:
        """The layout swap: gather the full weights bucket by bucket and stream them to ``workers``
        (rollout engine actors). Every rank must call this (the gathers are collectives); a rank
        with no workers only takes part in the gathers. Returns seconds."""
        start = time.perf_counter()
        from hybrid_engine.weight_sync import stream_weights

        weights = self.engine_weights()
        try:
            if workers:
                stream_weights(workers, self.engine_spec(), weights, bucket_bytes)
        finally:
            for _ in weights:  # the rest of the gathers, so that the other ranks never hang
                pass
        return time.perf_counter() - start

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The whole policy on CPU under base-model names (LoRA merged) on rank 0, None elsewhere.
        Collective."""
        state = {n: t.cpu() for n, t in self.engine_weights()}
        return state if self.rank == 0 else None

    def save_pretrained(self, path: str) -> str | None:
        """Write the policy as an HF model directory (weights + config + tokenizer) from rank 0.
        Collective."""
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        was_offloaded = self.offloaded
        self.reload()  # the gathers are collectives on the device
        state = self.full_state_dict()
        if was_offloaded:
            self.offload()
        if self.rank != 0:
            return None
        config = AutoConfig.from_pretrained(self.model_cfg.path)
        config.use_cache = True
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, self.model_cfg.dtype))
        model.load_state_dict(state, assign=True, strict=True)
        model.tie_weights()
        model.save_pretrained(path)
        AutoTokenizer.from_pretrained(self.model_cfg.path).save_pretrained(path)
        gen = Path(self.model_cfg.path) / "generation_config.json"
        if gen.is_file() and not (Path(path) / "generation_config.json").is_file():
            (Path(path) / "generation_config.json").write_bytes(gen.read_bytes())
        return path

    # Checkpoints --------------------------------------------------------------------------------

    def save_state(self, path: str) -> None:
        """Write this rank's training state under ``path``: the policy and AdamW shards through
        ``torch.distributed.checkpoint`` (``path/dcp``; the reference too once
        :meth:`reset_reference` replaced it), and the LR schedule, counters and RNG states
        (``path/rank<R>.pt``). Collective."""
        import torch
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

        was_offloaded = self.offloaded
        self.reload()
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        state: dict[str, Any] = {"model": model_sd, "optim": optim_sd}
        if self.ref_reset:
            state["ref"] = get_model_state_dict(self.ref)
        dcp.save(state, checkpoint_id=os.path.join(path, "dcp"))
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(
            {
                "scheduler": self.scheduler.state_dict(),
                "steps_done": self.steps_done,
                "skipped_updates": self.skipped_updates,
                "ref_reset": self.ref_reset,
                "rng": rng,
            },
            os.path.join(path, f"rank{self.rank}.pt"),
        )
        if was_offloaded:
            self.offload()

    def load_state(self, path: str) -> None:
        """Restore what :meth:`save_state` wrote (same number of ranks). Collective."""
        import torch
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            get_model_state_dict,
            get_state_dict,
            set_model_state_dict,
            set_state_dict,
        )

        side = torch.load(os.path.join(path, f"rank{self.rank}.pt"), weights_only=False)
        was_offloaded = self.offloaded
        self.reload()
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        state: dict[str, Any] = {"model": model_sd, "optim": optim_sd}
        if side["ref_reset"]:
            if self.ref is None:
                raise RuntimeError(f"{path} holds a reset reference model but this run builds none")
            state["ref"] = get_model_state_dict(self.ref)
        dcp.load(state, checkpoint_id=os.path.join(path, "dcp"))
        set_state_dict(
            self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
        )
        if side["ref_reset"]:
            set_model_state_dict(self.ref, state["ref"])
        self.ref_reset = side["ref_reset"]
        self.scheduler.load_state_dict(side["scheduler"])
        self.steps_done = side["steps_done"]
        self.skipped_updates = side["skipped_updates"]
        torch.set_rng_state(side["rng"]["torch"])
        if "cuda" in side["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(side["rng"]["cuda"])
        if was_offloaded:
            self.offload()

    def reset_reference(self) -> None:
        """Make the KL reference a copy of the current policy (a stage with ``reset_reference``):
        each policy tensor is gathered whole, then each rank keeps its shard of it in the reference.
        Collective (every rank walks the parameters in the same order)."""
        import torch
        from torch.distributed.tensor import distribute_tensor

        if self.ref is None:
            raise RuntimeError(
                "reset_reference needs a separate reference model: a stage with beta > 0 and no LoRA "
                "(with LoRA the reference is the base model with the adapter disabled)"
            )
        was_offloaded = self.offloaded
        self.reload()
        ref = dict(self.ref.named_parameters())
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                whole = param.full_tensor() if hasattr(param, "full_tensor") else param
                dst = ref[name]
                if hasattr(dst, "to_local"):
                    mesh = dst.device_mesh
                    shard = distribute_tensor(whole.to(mesh.device_type), mesh, dst.placements)
                    dst.to_local().copy_(shard.to_local())
                else:
                    dst.copy_(whole.to(dst.device))
        if was_offloaded:
            self.offload()
        self.ref_reset = True

    # Offload schedule ---------------------------------------------------------------------------

    def offload(self) -> float:
        """Move params, grads and optimizer state to CPU (GPU only; a no-op on CPU). Seconds."""
        import torch

        if self.device.type != "cuda" or self.offloaded:
            return 0.0
        start = time.perf_counter()
        self.model.reshard()  # no unsharded (all-gathered) parameters left behind on the device
        self.model.to("cpu")  # FSDP2 moves the sharded parameters (and any grads) with the module
        _optimizer_to(self.optimizer, "cpu")
        torch.cuda.synchronize()
        # cuBLAS/cuBLASLt workspaces (tens of MiB on Hopper) live in the caching allocator and
        # would otherwise stay on the device through the rollout; they are re-made on first use.
        if hasattr(torch._C, "_cuda_clearCublasWorkspaces"):
            torch._C._cuda_clearCublasWorkspaces()
        torch.cuda.empty_cache()
        self.offloaded = True
        return time.perf_counter() - start

    def reload(self) -> float:
        """Bring params and optimizer state back to the GPU (a no-op on CPU). Seconds."""
        import torch

        if self.device.type != "cuda" or not self.offloaded:
            return 0.0
        start = time.perf_counter()
        self.model.to(self.device)
        _optimizer_to(self.optimizer, self.device)
        torch.cuda.synchronize()
        self.offloaded = False
        return time.perf_counter() - start

    def memory(self) -> dict[str, float]:
        """GPU: this process's allocated/reserved memory and the device's used memory (every
        process on it, the colocated engine included), GiB. CPU: peak RSS of this rank."""
        import torch

        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            return {
                "trainer_allocated_gib": torch.cuda.memory_allocated(self.device) / 2**30,
                "trainer_reserved_gib": torch.cuda.memory_reserved(self.device) / 2**30,
                "device_used_gib": (total - free) / 2**30,
            }
        return {"trainer_peak_rss_gib": _rss_gib()}

    def state_digest(self) -> float:
        """A float fingerprint of this rank's parameter and optimizer shards (resume checks)."""
        import torch

        total = torch.zeros((), dtype=torch.float64)
        for p in self.model.parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            total += local.detach().double().cpu().sum() + local.detach().double().cpu().square().sum()
        for state in self.optimizer.state.values():
            for v in state.values():
                if hasattr(v, "dim") and v.dim() > 0:
                    local = v.to_local() if hasattr(v, "to_local") else v
                    total += local.detach().double().cpu().sum()
        return float(total)

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class TrainerFailure(RuntimeError):
    """A trainer rank died: the group cannot go on (its collectives need every rank)."""


class TrainerGroup:
    """``num_workers`` :class:`TrainerWorker` actors driven in lockstep from the driver.

    Args:
        placement: ``(placement_group, bundle_indices)`` per rank, or None (Ray schedules freely).
        num_cpus, num_gpus: Ray resources per rank (a fractional GPU when colocated with an engine).
        The other arguments go to :class:`TrainerWorker`.
    """

    def __init__(
        self,
        num_workers: int,
        model: ModelConfig,
        trainer: TrainerConfig,
        grpo: GRPOConfig,
        *,
        placement: tuple[Any, Sequence[int]] | None = None,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        **worker_kwargs: Any,
    ):
        import ray

        self.workers = []
        for rank in range(num_workers):
            options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus}
            if placement is not None:
                from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

                pg, bundles = placement
                options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    pg, placement_group_bundle_index=bundles[rank]
                )
            actor = ray.remote(TrainerWorker).options(**options)
            self.workers.append(actor.remote(rank, num_workers, model, trainer, grpo, **worker_kwargs))
        addr, port = ray.get(self.workers[0].master_address.remote())
        self.info = ray.get([w.setup.remote(addr, port) for w in self.workers])

    def __len__(self) -> int:
        return len(self.workers)

    def _all(self, method: str, *args: Any) -> list[Any]:
        return self._gather(method, [getattr(w, method).remote(*args) for w in self.workers])

    def _each(self, method: str, per_rank: Sequence[Sequence[Any]]) -> list[Any]:
        refs = [getattr(w, method).remote(*args) for w, args in zip(self.workers, per_rank)]
        return self._gather(method, refs)

    def _gather(self, method: str, refs: list[Any]) -> list[Any]:
        """The ranks' results; a rank that died (or raised) fails the call at once, rather than
        after the other ranks give up waiting for it in a collective."""
        import ray
        from ray.exceptions import RayActorError

        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(ready[0])
            except RayActorError as e:
                rank = refs.index(ready[0])
                raise TrainerFailure(f"trainer rank {rank} died during {method}: {e}") from e
        return ray.get(refs)

    def set_grpo(self, grpo: GRPOConfig) -> None:
        self._all("set_grpo", grpo)

    def compute_logprobs(self, shards: Sequence[GRPOBatch], which: str) -> list[torch.Tensor]:
        return self._each("compute_logprobs", [(s, which) for s in shards])

    def update(self, shards: Sequence[GRPOBatch]) -> dict[str, float]:
        """One optimizer step over all shards; the ranks' metrics combined (token-weighted means)."""
        per_rank = self._each("update", [(s,) for s in shards])
        tokens = sum(r["tokens"] for r in per_rank)
        out = {k: sum(r[f"{k}_sum"] for r in per_rank) / max(tokens, 1.0) for k in TOKEN_METRICS}
        if not any(r["rollout_logp_abs_diff_sum"] for r in per_rank):
            out.pop("rollout_logp_abs_diff")
        first = per_rank[0]
        out.update(
            loss=sum(r["loss"] for r in per_rank),
            grad_norm=first["grad_norm"],
            lr=first["lr"],
            skipped=first["skipped"],
            skipped_updates=first["skipped_updates"],
        )
        return out

    def push_weights(self, targets: Sequence[Sequence[Any]], bucket_bytes: int) -> float:
        """Rank i streams the gathered weights to the engine actors ``targets[i]`` (may be empty)."""
        return max(self._each("push_weights", [(list(t), bucket_bytes) for t in targets]))

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return self._all("full_state_dict")[0]

    def save_pretrained(self, path: str | Path) -> str:
        return self._all("save_pretrained", str(path))[0]

    def save_state(self, path: str | Path) -> None:
        self._all("save_state", str(path))

    def load_state(self, path: str | Path) -> None:
        self._all("load_state", str(path))

    def reset_reference(self) -> None:
        self._all("reset_reference")

    def state_digest(self) -> float:
        """Sum of the ranks' :meth:`TrainerWorker.state_digest` (equal states, equal digests)."""
        return sum(self._all("state_digest"))

    def offload(self) -> float:
        return max(self._all("offload"))

    def reload(self) -> float:
        return max(self._all("reload"))

    def memory(self) -> dict[str, float]:
        """The largest value of each memory figure over the ranks."""
        per_rank = self._all("memory")
        return {k: max(m[k] for m in per_rank) for k in per_rank[0]}

    def shutdown(self) -> None:
        import ray

        try:
            ray.get([w.shutdown.remote() for w in self.workers], timeout=30)
        except Exception:  # noqa: BLE001 - dying actors need no clean exit
            pass
        for w in self.workers:
            ray.kill(w)
        self.workers = []
