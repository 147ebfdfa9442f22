"""Rollout fixtures: tiny model dirs, a local Ray, and vLLM engines in Ray actors.

Every vLLM engine lives in its own Ray actor process, never in the pytest process: an in-process
CPU engine replaces ``torch.set_num_threads`` with a no-op and seeds global RNGs, which would leak
into other tests, and engines are expensive, so each is built once per session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from align.models import make_tiny_model

ENGINE = {"max_model_len": 512, "kv_cache_gib": 0.25}
ACTOR_CPUS = 0.5  # four engines fit in ray.init(num_cpus=2)


def actor_gpus() -> float:
    """A quarter GPU per engine where the CUDA build of vLLM needs one (none on CPU)."""
    import torch

    return 0.25 if torch.cuda.is_available() else 0


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """``model_dir(arch)``: the tiny preset of ``arch`` saved once per session."""
    built: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in built:
            built[arch] = make_tiny_model(arch, "tiny", tmp_path_factory.mktemp("models") / f"{arch}-tiny")
        return built[arch]

    return get


@pytest.fixture(scope="session")
def ray_local():
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def vllm_worker(ray_local, model_dir):
    """``vllm_worker(arch)``: a warmed-up ``RolloutWorker`` actor with a vLLM engine, one per arch."""
    from rollout.worker import RolloutWorker

    actor_cls = ray_local.remote(RolloutWorker)
    workers = {}

    def get(arch: str):
        if arch not in workers:
            workers[arch] = actor_cls.options(num_cpus=ACTOR_CPUS, num_gpus=actor_gpus()).remote(
                str(model_dir(arch)), "vllm", num_threads=1, warmup=True, **ENGINE
            )
        return workers[arch]

    yield get
    for w in workers.values():
        ray_local.kill(w)


@pytest.fixture
def group_options():
    """``RolloutGroup`` keyword arguments matching the session's workers."""
    return {
        "num_cpus_per_worker": ACTOR_CPUS,
        "num_gpus_per_worker": actor_gpus(),
        "num_threads": 1,
        **ENGINE,
    }


@pytest.fixture
def hf_model(model_dir):
    """``hf_model(arch)``: a fresh transformers model from the tiny dir (tests may perturb it)."""
    from transformers import AutoModelForCausalLM

    def get(arch: str):
        return AutoModelForCausalLM.from_pretrained(model_dir(arch)).eval()

    return get


def teacher_forced_logprobs(model, prompt: list[int], completion: list[int]) -> list[float]:
    """log p(completion[t] | prompt, completion[:t]) under ``model``'s raw logits (one forward pass)."""
    import torch

    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logp = model(ids).logits[0, len(prompt) - 1 : -1].float().log_softmax(-1)
    return logp.gather(-1, torch.tensor(completion).unsqueeze(-1)).squeeze(-1).tolist()


@pytest.fixture
def teacher_logprobs():
    return teacher_forced_logprobs


PROMPTS = [  # different lengths, so HF left-pads
    [1, 4, 79, 80, 81, 82, 83, 84, 85],
    [1, 4, 50],
    [1, 6, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 5],
]


@pytest.fixture
def prompts():
    return [list(p) for p in PROMPTS]
