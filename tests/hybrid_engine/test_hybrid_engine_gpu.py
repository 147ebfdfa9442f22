"""The GPU offload schedule: trainer state leaves the device during rollout and comes back so that
training resumes bit for bit; a colocated run records device memory falling during rollout.
Skipped without CUDA (tests/conftest.py)."""

from __future__ import annotations

import gc
import socket

import pytest
import torch

from align import config
from align.configs import GRPOConfig, GRPORecipeConfig, ModelConfig, TrainerConfig
from hybrid_engine.batch import GRPOBatch

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(seed: int) -> GRPOBatch:
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(7, 200, (4 + i % 5,), generator=g).tolist() for i in range(8)]
    completions = [torch.randint(7, 200, (2 + i % 7,), generator=g).tolist() for i in range(8)]
    return GRPOBatch.build(prompts, completions, torch.randn(8, generator=g))


def _with_ref(worker, batch: GRPOBatch) -> GRPOBatch:
    """The reference's log-probs, as GRPO with ``beta > 0`` computes them before each update (the
    reference sits on CPU under FSDP2 offload and computes on the GPU)."""
    batch.ref_logp_BT = worker.compute_logprobs(batch, "ref")
    return batch


def _trained_state(model_dir, offload_between: bool) -> tuple[dict, dict]:
    """Two updates (KL to the reference included) on one NCCL rank, optionally offloading everything to CPU between them."""
    from hybrid_engine.trainer import TrainerWorker, live_cuda_blocks

    torch.cuda.memory._record_memory_history(max_entries=100_000)

    worker = TrainerWorker(
        0,
        1,
        ModelConfig(path=str(model_dir)),
        TrainerConfig(lr=1e-3, micro_batch_size=3, threads=0),
        GRPOConfig(beta=0.04),
        total_steps=4,
    )
    worker.setup("127.0.0.1", _free_port())
    try:
        worker.update(_with_ref(worker, _batch(0)))
        memory = {"before": worker.memory()}
        if offload_between:
            worker.offload()
            memory["offloaded"] = worker.memory()
            memory["live_blocks"] = live_cuda_blocks()
            worker.reload()
        worker.update(_with_ref(worker, _batch(1)))
        state = worker.full_state_dict()
        opt = {
            k: v.to_local().cpu().clone()
            for s in worker.optimizer.state.values()
            for k, v in s.items()
            if v.dim()
        }
        return {**state, **{f"opt/{k}": v for k, v in opt.items()}}, memory
    finally:
        worker.shutdown()
        del worker
        gc.collect()
        torch.cuda.empty_cache()


def test_offload_frees_device_memory_and_training_resumes_bit_for_bit(tmp_path):
    from align.models import make_tiny_model

    model_dir = make_tiny_model("deepseek_v2", "tiny", tmp_path / "tiny")
    # The offloaded run first, while nothing else of this process is on the device.
    offloaded, memory = _trained_state(model_dir, offload_between=True)
    plain, _ = _trained_state(model_dir, offload_between=False)
    assert memory["offloaded"]["trainer_allocated_gib"] < memory["before"]["trainer_allocated_gib"]
    assert memory["offloaded"]["trainer_allocated_gib"] < 1e-3, memory
    assert plain.keys() == offloaded.keys()
    for name in plain:
        assert torch.equal(plain[name], offloaded[name]), name


def test_colocated_gpu_run_records_memory_per_phase(tmp_path):
    """One colocated rank + engine on the GPU: while the engine generates the trainer holds
    nothing on the device; while the trainer works the engine sleeps."""
    import json
    from pathlib import Path

    import ray

    from align.models import make_tiny_model
    from hybrid_engine.driver import GRPODriver
    from hybrid_engine.metrics import RunLog

    model_dir = make_tiny_model("deepseek_v2", "tiny", tmp_path / "tiny")
    data = tmp_path / "math.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"What is {i}+1?", "answer": str(i + 1)}) + "\n" for i in range(16))
    )
    root = Path(__file__).resolve().parents[2]
    cfg = config.load(
        GRPORecipeConfig,
        root / "recipes/configs/tiny/grpo_single.yaml",
        [
            f"output_dir={tmp_path / 'run'}",
            f"model.path={model_dir}",
            f"stages.0.data.train=[{data}]",
            "stages.0.steps=2",
            "trainer.num_workers=1",
            "rollout.num_workers=1",
            "rollout.kv_cache_gib=1",
            "hybrid_engine.colocate=true",
            "hybrid_engine.offload=true",
            "grpo.prompts_per_step=4",
            "grpo.group_size=4",
        ],
    )
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=4, num_gpus=1, include_dashboard=False)
    driver = GRPODriver(cfg)
    runlog = RunLog(cfg.output_dir)
    try:
        driver.start()
        assert driver.offload
        records = driver.run_stage(cfg.stages[0], runlog)
    finally:
        runlog.close()
        driver.shutdown()
        if started:
            ray.shutdown()
    for r in records:
        for phase in ("sleep", "reload", "wake", "offload", "weight_sync", "gen", "update"):
            assert f"timing/{phase}" in r, phase
        assert r["memory/rollout/trainer_allocated_gib"] < 1e-3 < r["memory/train/trainer_allocated_gib"]
        # The device as a whole: the engine's weights and KV cache are released while training.
        assert r["memory/train/device_used_gib"] < r["memory/rollout/device_used_gib"]
