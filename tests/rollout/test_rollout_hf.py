"""The transformers backend: output shapes, finish reasons, raw logprobs, padding, weights."""

from __future__ import annotations

import pytest
import torch

from rollout.hf_backend import HFBackend
from rollout.types import SamplingParams
from rollout.weights import WeightUpdateError

EOS = 2


@pytest.fixture
def hf(model_dir):
    return HFBackend(model_dir("qwen2"), batch_size=4)


def test_shapes_n_and_length_finish(hf, prompts):
    out = hf.generate(prompts, SamplingParams(n=3, temperature=1.0, max_tokens=6, seed=0))
    assert len(out) == len(prompts) and all(len(cs) == 3 for cs in out)
    for i, cs in enumerate(out):
        for c in cs:
            assert c.prompt_index == i and len(c.token_ids) == len(c.logprobs) <= 6
            assert c.finish_reason == ("stop" if c.token_ids[-1] == EOS else "length")
            assert all(lp <= 0 for lp in c.logprobs)


def test_stop_tokens_and_eos_end_completions(hf, prompts):
    greedy = hf.generate(prompts[:1], SamplingParams(temperature=0.0, max_tokens=8))[0][0]
    stop = greedy.token_ids[3]
    first = greedy.token_ids.index(stop)
    out = hf.generate(prompts[:1], SamplingParams(temperature=0.0, max_tokens=8, stop_token_ids=[stop]))[0][0]
    assert out.token_ids == greedy.token_ids[: first + 1] and out.finish_reason == "stop"
    # A random model puts ~1/1024 of its mass on EOS (a vocabulary of 1024): seeded, some samples stop.
    many = hf.generate(prompts, SamplingParams(n=16, temperature=1.0, max_tokens=32, seed=1))
    flat = [c for cs in many for c in cs]
    assert any(c.finish_reason == "stop" for c in flat)
    for c in flat:
        assert EOS not in c.token_ids[:-1]
        assert (c.finish_reason == "stop") == (c.token_ids[-1] == EOS)
        assert c.finish_reason == "stop" or len(c.token_ids) == 32


def test_logprobs_are_the_raw_model_distribution(hf, prompts, teacher_logprobs):
    """Sampling with temperature/top-k/top-p still reports the unprocessed model's logprobs."""
    params = SamplingParams(n=2, temperature=0.7, top_k=5, top_p=0.9, max_tokens=8, seed=3)
    for prompt, cs in zip(prompts, hf.generate(prompts, params)):
        for c in cs:
            expected = teacher_logprobs(hf.model, prompt, c.token_ids)
            torch.testing.assert_close(torch.tensor(c.logprobs), torch.tensor(expected), atol=1e-4, rtol=0)


def test_left_padded_batch_matches_one_prompt_at_a_time(hf, prompts):
    params = SamplingParams(n=2, temperature=0.0, max_tokens=12, min_tokens=12)
    batched = hf.generate(prompts, params)
    for prompt, cs in zip(prompts, batched):
        alone = hf.generate([prompt], params)[0]
        assert cs[0].token_ids == cs[1].token_ids == alone[0].token_ids  # greedy n > 1: copies
        torch.testing.assert_close(
            torch.tensor(cs[0].logprobs), torch.tensor(alone[0].logprobs), atol=1e-4, rtol=0
        )


def test_seed_reproduces_samples(hf, prompts):
    params = SamplingParams(n=2, temperature=1.0, max_tokens=8, seed=7)
    ids = lambda out: [[c.token_ids for c in cs] for cs in out]  # noqa: E731
    assert ids(hf.generate(prompts, params)) == ids(hf.generate(prompts, params))


def test_weight_update_and_rejected_updates(hf, model_dir, prompts):
    from transformers import AutoModelForCausalLM

    params = SamplingParams(temperature=0.0, max_tokens=8, min_tokens=8)
    before = hf.generate(prompts, params)
    trainer = AutoModelForCausalLM.from_pretrained(model_dir("qwen2"))
    with torch.no_grad():
        for p in trainer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    state = trainer.state_dict()
    bad = {k: v for k, v in state.items() if k != "model.layers.1.mlp.down_proj.weight"}
    with pytest.raises(WeightUpdateError, match=r"missing tensor 'model\.layers\.1\.mlp\.down_proj\.weight'"):
        hf.load_weights(bad.items())
    assert hf.generate(prompts, params) == before
    hf.load_weights(state.items())
    after = hf.generate(prompts, params)
    assert after != before
    assert all(
        torch.equal(p, trainer.state_dict()[n]) for n, p in hf.model.state_dict().items()
    )  # every weight arrived


def test_sleep_blocks_generation_until_wake(hf, prompts):
    hf.sleep()
    with pytest.raises(RuntimeError, match="asleep"):
        hf.generate(prompts, SamplingParams(max_tokens=2))
    hf.wake_up()
    assert hf.info()["asleep"] is False and len(hf.generate(prompts, SamplingParams(max_tokens=2))) == 3
