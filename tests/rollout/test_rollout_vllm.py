"""The vLLM backend (in a Ray rollout worker) against transformers: shapes, finish reasons, n > 1,
seeds, and greedy tokens and logprobs that agree with HF generate."""

from __future__ import annotations

import pytest
import ray
import torch

from rollout.hf_backend import HFBackend
from rollout.types import SamplingParams

pytestmark = pytest.mark.slow
EOS = 2
ARCHS = ["deepseek_v2", "qwen2"]


def _ids(out):
    return [[c.token_ids for c in cs] for cs in out]


@pytest.fixture
def synced(vllm_worker, hf_model):
    """``synced(arch)``: the arch's worker and an HF model holding the same weights."""

    def get(arch: str):
        worker, model = vllm_worker(arch), hf_model(arch)
        ray.get(worker.load_weights.remote(model.state_dict()))
        return worker, model

    return get


def test_shapes_n_finish_reasons_and_eos(vllm_worker, prompts):
    worker = vllm_worker("deepseek_v2")
    out = ray.get(
        worker.generate.remote(prompts, SamplingParams(n=16, temperature=1.0, max_tokens=256, seed=1))
    )
    assert len(out) == len(prompts) and all(len(cs) == 16 for cs in out)
    flat = [c for cs in out for c in cs]
    assert all(c.prompt_index == i for i, cs in enumerate(out) for c in cs)
    assert all(len(c.token_ids) == len(c.logprobs) for c in flat)
    # A random model puts ~1/1024 of its mass on EOS (a vocabulary of 1024): 48 x 256 tokens see it
    # ~12 times, and most samples run to the limit.
    assert {c.finish_reason for c in flat} == {"stop", "length"}
    for c in flat:
        assert EOS not in c.token_ids[:-1]  # EOS ends a completion and is part of it
        assert (c.finish_reason == "stop") == (c.token_ids[-1] == EOS)
        assert c.finish_reason == "stop" or len(c.token_ids) == 256
    assert len({tuple(c.token_ids) for c in out[0]}) == 16  # n samples, not n copies


def test_stop_token_ids_and_greedy_copies(vllm_worker, prompts):
    worker = vllm_worker("qwen2")
    greedy = ray.get(worker.generate.remote(prompts, SamplingParams(n=3, temperature=0.0, max_tokens=8)))
    assert all(len(cs) == 3 and cs[0].token_ids == cs[1].token_ids == cs[2].token_ids for cs in greedy)
    first = greedy[0][0].token_ids
    stop = first[3]
    params = SamplingParams(temperature=0.0, max_tokens=8, stop_token_ids=[stop])
    out = ray.get(worker.generate.remote(prompts[:1], params))[0][0]
    assert out.token_ids == first[: first.index(stop) + 1] and out.finish_reason == "stop"


def test_seeds_reproduce_and_differ(vllm_worker, prompts):
    worker = vllm_worker("qwen2")
    a = ray.get(worker.generate.remote(prompts, SamplingParams(n=2, max_tokens=8, seed=5)))
    b = ray.get(worker.generate.remote(prompts, SamplingParams(n=2, max_tokens=8, seed=5)))
    c = ray.get(worker.generate.remote(prompts, SamplingParams(n=2, max_tokens=8, seed=6)))
    assert _ids(a) == _ids(b) and _ids(a) != _ids(c)
    # Prompt i samples with seed + i: the same prompt twice in a call gets two different samples.
    twice = ray.get(worker.generate.remote([prompts[0]] * 2, SamplingParams(max_tokens=8, seed=5)))
    assert twice[0][0].token_ids != twice[1][0].token_ids


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_tokens_and_logprobs_match_hf(synced, prompts, arch):
    worker, model = synced(arch)
    params = SamplingParams(temperature=0.0, max_tokens=24, min_tokens=24)
    vllm_out = ray.get(worker.generate.remote(prompts, params))
    hf_out = HFBackend(model=model).generate(prompts, params)  # batched, left-padded
    for v, h in zip(vllm_out, hf_out):
        assert v[0].token_ids == h[0].token_ids
        torch.testing.assert_close(
            torch.tensor(v[0].logprobs), torch.tensor(h[0].logprobs), atol=1e-4, rtol=0
        )


@pytest.mark.parametrize("arch", ARCHS)
def test_sampled_logprobs_are_the_raw_model_distribution(synced, prompts, teacher_logprobs, arch):
    """vLLM's logprobs (raw_logprobs mode) are the unprocessed model's, as GRPO's old policy needs,
    even when sampling with temperature, top-k and top-p."""
    worker, model = synced(arch)
    params = SamplingParams(n=2, temperature=0.7, top_k=5, top_p=0.9, max_tokens=8, seed=2)
    for prompt, cs in zip(prompts, ray.get(worker.generate.remote(prompts, params))):
        for c in cs:
            expected = teacher_logprobs(model, prompt, c.token_ids)
            torch.testing.assert_close(torch.tensor(c.logprobs), torch.tensor(expected), atol=1e-4, rtol=0)


def test_seeded_sampling_survives_batches_larger_than_one_prefill_step(vllm_worker):
    """vLLM 0.32 CPU crashes ('CPU Generator does not use offset') when a seeded request's prefill
    is chunked; the backend keeps prompts whole (chunked prefill off on CPU)."""
    worker = vllm_worker("qwen2")
    prompts = [[1] + [50 + (i + j) % 90 for j in range(300)] for i in range(16)]  # 4.8k prompt tokens
    out = ray.get(worker.generate.remote(prompts, SamplingParams(n=2, max_tokens=2, seed=0)))
    assert [len(cs) for cs in out] == [2] * 16
