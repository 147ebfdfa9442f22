"""Weight-update plumbing without an engine: layouts, validation, checkpoint names, buckets, streams."""

from __future__ import annotations

import pytest
import torch

from rollout.types import SamplingParams
from rollout.weights import (
    WeightLayout,
    WeightUpdateError,
    checkpoint_shapes,
    iter_buckets,
    layer_key,
    shapes_of,
)
from rollout.worker import split_evenly


def test_sampling_params_validate_and_normalise():
    p = SamplingParams(n=2, temperature=0.0, stop_token_ids=[5, 6])
    assert p.greedy and p.stop_token_ids == (5, 6)
    for bad in (
        {"n": 0},
        {"temperature": -1},
        {"top_p": 0.0},
        {"max_tokens": 0},
        {"min_tokens": 9, "max_tokens": 8},
    ):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


def test_split_evenly_covers_in_order():
    assert split_evenly(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert split_evenly(1, 2) == [(0, 1), (1, 1)]
    for count in range(10):
        for parts in range(1, 4):
            bounds = split_evenly(count, parts)
            assert [i for a, b in bounds for i in range(a, b)] == list(range(count))


def test_layer_key_groups_by_decoder_layer():
    assert layer_key("model.layers.12.mlp.experts.gate_up_proj") == "model.layers.12."
    assert layer_key("model.layers.1.mlp.experts.3.up_proj.weight") == "model.layers.1."
    assert layer_key("model.embed_tokens.weight") == layer_key("lm_head.weight") == ""


@pytest.mark.parametrize("arch", ["deepseek_v2", "qwen2"])
def test_layout_converts_to_the_saved_checkpoint(model_dir, hf_model, arch):
    """transformers' save-time conversion of the in-memory names gives exactly the stored tensors:
    fused MoE experts become per-expert names, on meta tensors and on real ones."""
    path = model_dir(arch)
    layout = WeightLayout.from_pretrained(path)
    layout.check_matches_checkpoint(path)
    stored = checkpoint_shapes(path)
    assert layout.checkpoint_shapes() == stored
    model = hf_model(arch)
    real = WeightLayout(model).to_checkpoint(model.state_dict())
    assert shapes_of(real) == stored
    if arch == "deepseek_v2":
        assert "model.layers.1.mlp.experts.gate_up_proj" in layout.shapes
        assert "model.layers.1.mlp.experts.7.up_proj.weight" in stored
        fused = model.state_dict()["model.layers.1.mlp.experts.gate_up_proj"]  # [experts, 2 * inter, hidden]
        inter = fused.shape[1] // 2
        torch.testing.assert_close(real["model.layers.1.mlp.experts.7.gate_proj.weight"], fused[7, :inter])
        torch.testing.assert_close(real["model.layers.1.mlp.experts.7.up_proj.weight"], fused[7, inter:])


def test_validation_names_the_offending_tensors(model_dir):
    layout = WeightLayout.from_pretrained(model_dir("deepseek_v2"))
    good = dict(layout.shapes)
    layout.validate(good)
    missing = {k: v for k, v in good.items() if k != "model.norm.weight"}
    with pytest.raises(WeightUpdateError, match=r"missing tensor 'model\.norm\.weight'"):
        layout.validate(missing)
    name = "model.layers.1.mlp.experts.gate_up_proj"
    wrong = {**good, name: (8, 63, 64)}
    with pytest.raises(
        WeightUpdateError, match=rf"'{name}' has shape \(8, 63, 64\), the model expects \(8, 64, 64\)"
    ):
        layout.validate(wrong)
    typo = {**good, "model.layers.0.self_attn.q_prj.weight": (192, 64)}
    with pytest.raises(WeightUpdateError, match=r"unknown tensor .*q_prj.*did you mean .*q_proj"):
        layout.validate(typo)
    layout.validate(missing, complete=False)


def test_tied_copies_are_accepted_and_dropped(tmp_path):
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=64, tie_word_embeddings=True,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config)
    layout = WeightLayout(model)
    assert layout.aliases == {"lm_head.weight"} and "lm_head.weight" not in layout.shapes
    state = model.state_dict()
    layout.validate(shapes_of(state))  # what a trainer sends, tied copy included
    assert "lm_head.weight" not in layout.to_checkpoint(state)


def test_iter_buckets_bounds_size_and_keeps_order():
    tensors = [(f"t{i}", torch.zeros(100 + i)) for i in range(10)]  # ~400 bytes each
    buckets = list(iter_buckets(tensors, bucket_bytes=1000))
    assert [n for b in buckets for n, _ in b] == [n for n, _ in tensors]
    assert all(sum(t.numel() * 4 for _, t in b) <= 1000 for b in buckets) and len(buckets) == 5
    big = list(iter_buckets([("big", torch.zeros(1000))], bucket_bytes=10))
    assert len(big) == 1  # a tensor larger than a bucket travels alone


def test_assembly_releases_whole_layers_and_checks_each_tensor(model_dir, hf_model):
    model = hf_model("deepseek_v2")
    layout = WeightLayout(model)
    state = model.state_dict()
    assembly = layout.assembly(shapes_of(state))
    layers = []
    for bucket in iter_buckets(state.items(), bucket_bytes=20_000):
        layers += assembly.add(bucket)
    assembly.finish()
    assert sorted(n for layer in layers for n in layer) == sorted(layout.shapes)
    assert all(len({layer_key(n) for n in layer}) == 1 for layer in layers)

    assembly = layout.assembly(shapes_of(state))
    name = "model.layers.0.self_attn.o_proj.weight"
    with pytest.raises(WeightUpdateError, match=rf"'{name}' has shape \(64, 63\), the spec says \(64, 64\)"):
        assembly.add([(name, torch.zeros(64, 63))])
    assembly.add([(name, state[name])])
    with pytest.raises(WeightUpdateError, match=rf"'{name}' sent twice"):
        assembly.add([(name, state[name])])
    with pytest.raises(WeightUpdateError, match=r"stream ended early: missing tensor"):
        assembly.finish()
