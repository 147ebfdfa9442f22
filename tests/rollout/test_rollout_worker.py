"""The Ray rollout worker: verified weight updates (dense and MoE, whole and streamed), rejected
updates that change nothing, sleep / wake, health, and a RolloutGroup of two workers."""

from __future__ import annotations

import pytest
import ray
import torch

from rollout.hf_backend import HFBackend
from rollout.types import SamplingParams
from rollout.weight_sync import push_weights
from rollout.weights import WeightUpdateError
from rollout.worker import RolloutGroup

pytestmark = pytest.mark.slow
GREEDY = SamplingParams(temperature=0.0, max_tokens=16, min_tokens=16)


def _perturb(model, seed: int, scale: float = 0.05) -> None:
    """A trainer step stand-in: noise on every weight (MoE experts, router, MLA projections, ...)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)


def _greedy(engine_out):
    return [(cs[0].token_ids, cs[0].logprobs) for cs in engine_out]


def _assert_same(vllm_out, hf_out):
    for (v_ids, v_lp), (h_ids, h_lp) in zip(_greedy(vllm_out), _greedy(hf_out)):
        assert v_ids == h_ids
        torch.testing.assert_close(torch.tensor(v_lp), torch.tensor(h_lp), atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ["deepseek_v2", "qwen2"])
def test_updated_engine_generates_what_the_trainer_model_does(vllm_worker, hf_model, prompts, arch):
    worker, trainer = vllm_worker(arch), hf_model(arch)
    # Reloading the engine's own weights changes nothing (the CPU MoE repack fix, rollout.vllm_patches).
    ray.get(worker.load_weights.remote(trainer.state_dict()))
    _assert_same(
        ray.get(worker.generate.remote(prompts, GREEDY)), HFBackend(model=trainer).generate(prompts, GREEDY)
    )
    before = ray.get(worker.generate.remote(prompts, GREEDY))

    _perturb(trainer, seed=1)
    seconds = ray.get(worker.load_weights.remote(trainer.state_dict()))  # whole state dict, one call
    after = ray.get(worker.generate.remote(prompts, GREEDY))
    assert _greedy(after) != _greedy(before) and seconds < 10
    _assert_same(after, HFBackend(model=trainer).generate(prompts, GREEDY))

    _perturb(trainer, seed=2)
    push_weights([worker], trainer, bucket_bytes=64 << 10)  # streamed, layers split across buckets
    _assert_same(
        ray.get(worker.generate.remote(prompts, GREEDY)), HFBackend(model=trainer).generate(prompts, GREEDY)
    )
    assert ray.get(worker.health.remote())["weights_ok"]


def test_rejected_updates_name_the_tensor_and_change_nothing(vllm_worker, hf_model, prompts):
    worker, trainer = vllm_worker("deepseek_v2"), hf_model("deepseek_v2")
    ray.get(worker.load_weights.remote(trainer.state_dict()))
    before = ray.get(worker.generate.remote(prompts, GREEDY))
    _perturb(trainer, seed=3)
    state = trainer.state_dict()

    missing = {k: v for k, v in state.items() if k != "model.layers.1.mlp.experts.down_proj"}
    with pytest.raises(
        WeightUpdateError, match=r"missing tensor 'model\.layers\.1\.mlp\.experts\.down_proj'"
    ):
        ray.get(worker.load_weights.remote(missing))
    name = "model.layers.1.self_attn.kv_b_proj.weight"
    misshaped = {**state, name: state[name][:-1]}
    with pytest.raises(
        WeightUpdateError, match=rf"'{name}' has shape \(127, 512\), the model expects \(128, 512\)"
    ):
        ray.get(worker.load_weights.remote(misshaped))
    with pytest.raises(
        WeightUpdateError, match=rf"'{name}' has shape"
    ):  # streamed: the spec is checked first
        push_weights([worker], misshaped, bucket_bytes=64 << 10)
    assert ray.get(worker.health.remote())["ok"]
    assert _greedy(ray.get(worker.generate.remote(prompts, GREEDY))) == _greedy(before)


def test_stream_broken_half_way_stops_serving_until_a_full_update(vllm_worker, hf_model, prompts):
    worker, trainer = vllm_worker("qwen2"), hf_model("qwen2")
    state = trainer.state_dict()
    names = list(state)
    ray.get(worker.begin_weight_stream.remote({n: tuple(t.shape) for n, t in state.items()}))
    ray.get(worker.load_weight_bucket.remote([(n, state[n]) for n in names[: len(names) // 2]]))
    bad = names[-1]
    with pytest.raises(WeightUpdateError, match=rf"'{bad}' has shape"):
        ray.get(worker.load_weight_bucket.remote([(bad, state[bad][:1])]))
    health = ray.get(worker.health.remote())
    assert not health["weights_ok"] and not health["ok"]
    with pytest.raises(RuntimeError, match="failed after part of it was applied"):
        ray.get(worker.generate.remote(prompts, GREEDY))
    ray.get(worker.load_weights.remote(state))  # a complete update recovers
    _assert_same(
        ray.get(worker.generate.remote(prompts, GREEDY)), HFBackend(model=trainer).generate(prompts, GREEDY)
    )


def test_sleep_wake_and_health(vllm_worker, prompts):
    worker = vllm_worker("qwen2")
    health = ray.get(worker.health.remote(probe=True))
    assert health["ok"] and health["backend"] == "vllm" and health["num_threads"] == 1
    assert health["kv_cache_bytes"] == 1 << 28  # kv_cache_gib=0.25 wins over VLLM_CPU_KVCACHE_SPACE
    assert health["probe_s"] < 5 and health["warmup_s"] > 0
    before = ray.get(worker.generate.remote(prompts, GREEDY))
    ray.get(worker.sleep.remote())
    assert ray.get(worker.health.remote())["asleep"]
    with pytest.raises(RuntimeError, match="asleep"):
        ray.get(worker.generate.remote(prompts, GREEDY))
    ray.get(worker.wake_up.remote())
    assert ray.get(worker.health.remote())["ok"]
    assert _greedy(ray.get(worker.generate.remote(prompts, GREEDY))) == _greedy(before)


def test_group_splits_prompts_and_reassembles_in_order(ray_local, model_dir, group_options, hf_model):
    path = model_dir("deepseek_v2")
    group = RolloutGroup(path, num_workers=2, **group_options)
    try:
        prompts = [[1, 4, *range(60, 60 + k)] for k in range(1, 8)]  # 7 prompts: shards of 4 and 3
        out = group.generate(prompts, GREEDY)
        assert [cs[0].prompt_index for cs in out] == list(range(7))
        _assert_same(out, HFBackend(model=hf_model("deepseek_v2")).generate(prompts, GREEDY))
        # A seeded call samples the same wherever each prompt runs.
        sampled = SamplingParams(n=2, max_tokens=8, seed=11)
        one = RolloutGroup.from_workers(group.workers[:1]).generate(prompts, sampled)
        two = group.generate(prompts, sampled)
        assert [[c.token_ids for c in cs] for cs in one] == [[c.token_ids for c in cs] for cs in two]
        trainer = hf_model("deepseek_v2")
        _perturb(trainer, seed=4)
        group.push_weights(trainer, bucket_bytes=64 << 10)
        _assert_same(group.generate(prompts, GREEDY), HFBackend(model=trainer).generate(prompts, GREEDY))
        assert all(h["ok"] and h["weight_version"] == 1 for h in group.health())
    finally:
        group.shutdown()
