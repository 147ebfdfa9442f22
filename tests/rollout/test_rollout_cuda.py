"""CUDA-only rollout paths: sleep mode that frees GPU memory, and weight sync over CUDA IPC
(colocated trainer and engine, the hybrid engine) and NCCL, verified by greedy equality with the
trainer's model. Skipped without CUDA (tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch

from rollout.hf_backend import HFBackend
from rollout.types import SamplingParams
from rollout.weight_sync import push_weights
from rollout.weights import WeightUpdateError

pytestmark = [pytest.mark.gpu, pytest.mark.slow]
GREEDY = SamplingParams(temperature=0.0, max_tokens=16, min_tokens=16)
ENGINE = {"max_model_len": 512, "gpu_memory_utilization": 0.3, "dtype": "float32"}


def _perturb(model, seed: int) -> None:
    gen = torch.Generator(device=model.device).manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, device=p.device) * 0.05)


def _assert_same(vllm_out, hf_out):
    for v, h in zip(vllm_out, hf_out):
        assert v[0].token_ids == h[0].token_ids
        torch.testing.assert_close(
            torch.tensor(v[0].logprobs), torch.tensor(h[0].logprobs), atol=2e-3, rtol=0
        )


@pytest.fixture(scope="module")
def gpu_worker(ray_local, model_dir):
    """``gpu_worker(arch)``: a vLLM worker actor on half of GPU 0, built for CUDA-IPC weight transfer."""
    from rollout.worker import RolloutWorker

    actor_cls = ray_local.remote(RolloutWorker)
    workers = {}

    def get(arch: str):
        if arch not in workers:
            workers[arch] = actor_cls.options(num_cpus=0.5, num_gpus=0.5).remote(
                str(model_dir(arch)), "vllm", warmup=True, weight_transfer_backend="ipc", **ENGINE
            )
        return workers[arch]

    yield get
    for w in workers.values():
        ray_local.kill(w)


def _trainer(hf_model, arch):
    return hf_model(arch).to("cuda")


@pytest.mark.parametrize("arch", ["deepseek_v2", "qwen2"])
def test_cuda_ipc_sync_matches_the_colocated_trainer(ray_local, gpu_worker, hf_model, prompts, arch):
    from rollout.cuda_sync import CudaWeightSync

    worker, trainer = gpu_worker(arch), _trainer(hf_model, arch)
    _perturb(trainer, seed=1)
    sync = CudaWeightSync(trainer, [worker], backend="ipc")
    try:
        sync.push()
        _assert_same(
            ray_local.get(worker.generate.remote(prompts, GREEDY)),
            HFBackend(model=trainer, device="cuda").generate(prompts, GREEDY),
        )
        # A bad update is refused before a byte moves, naming the tensor; outputs stay.
        before = ray_local.get(worker.generate.remote(prompts, GREEDY))
        name = "model.norm.weight"
        with torch.no_grad():
            trainer.model.norm.weight = torch.nn.Parameter(trainer.model.norm.weight[:-1].clone())
        with pytest.raises(WeightUpdateError, match=rf"'{name}' has shape"):
            sync.push()
        assert [c[0].token_ids for c in ray_local.get(worker.generate.remote(prompts, GREEDY))] == [
            c[0].token_ids for c in before
        ]
    finally:
        sync.close()


def test_ray_bucket_push_from_a_cuda_trainer(ray_local, gpu_worker, hf_model, prompts):
    worker, trainer = gpu_worker("deepseek_v2"), _trainer(hf_model, "deepseek_v2")
    _perturb(trainer, seed=2)
    push_weights([worker], trainer, bucket_bytes=64 << 10)
    _assert_same(
        ray_local.get(worker.generate.remote(prompts, GREEDY)),
        HFBackend(model=trainer, device="cuda").generate(prompts, GREEDY),
    )


def test_sleep_frees_gpu_memory_and_weights_load_while_asleep(ray_local, gpu_worker, hf_model, prompts):
    """The hybrid-engine schedule: sleep, wake the weights only, load new ones, then the KV cache."""
    worker, trainer = gpu_worker("qwen2"), _trainer(hf_model, "qwen2")
    ray_local.get(worker.generate.remote(prompts, GREEDY))
    free_awake = torch.cuda.mem_get_info()[0]
    ray_local.get(worker.sleep.remote())
    freed = torch.cuda.mem_get_info()[0] - free_awake
    assert freed > 1 << 30, f"sleep freed only {freed / 2**20:.0f} MiB"  # at least the KV cache
    _perturb(trainer, seed=3)
    ray_local.get(worker.wake_up.remote(["weights"]))
    ray_local.get(worker.load_weights.remote({k: v.cpu() for k, v in trainer.state_dict().items()}))
    ray_local.get(worker.wake_up.remote(["kv_cache"]))
    assert ray_local.get(worker.health.remote())["ok"]
    _assert_same(
        ray_local.get(worker.generate.remote(prompts, GREEDY)),
        HFBackend(model=trainer, device="cuda").generate(prompts, GREEDY),
    )


@pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="NCCL needs the trainer and the engine on different GPUs"
)
def test_cuda_nccl_sync_matches_a_remote_trainer(ray_local, model_dir, hf_model, prompts):
    from rollout.cuda_sync import CudaWeightSync
    from rollout.worker import RolloutWorker

    worker = (
        ray_local.remote(RolloutWorker)
        .options(num_cpus=0.5, num_gpus=1)
        .remote(str(model_dir("qwen2")), "vllm", weight_transfer_backend="nccl", **ENGINE)
    )
    engine_gpu = int(ray_local.get(worker.__ray_call__.remote(lambda self: ray_local.get_gpu_ids()))[0])
    device = f"cuda:{next(i for i in range(torch.cuda.device_count()) if i != engine_gpu)}"
    torch.cuda.set_device(device)  # NCCL refuses two ranks on one GPU
    trainer = hf_model("qwen2").to(device)
    _perturb(trainer, seed=4)
    sync = CudaWeightSync(trainer, [worker], backend="nccl")
    try:
        sync.push()
        _assert_same(
            ray_local.get(worker.generate.remote(prompts, GREEDY)),
            HFBackend(model=trainer, device=device).generate(prompts, GREEDY),
        )
    finally:
        sync.close()
        ray_local.kill(worker)
        torch.cuda.set_device(0)
