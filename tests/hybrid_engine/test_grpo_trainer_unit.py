"""GRPO trainer pieces without Ray: packing and log-probs, micro-batch loss weights, the LR
schedule, the LoRA merge, the batch container, placement bundles, the config, and one FSDP2 rank
(world size 1, gloo) run in this process."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
import torch

from align import config
from align.configs import GRPOConfig, GRPORecipeConfig, LoraConfig, ModelConfig, TrainerConfig
from align.grpo import policy_loss
from align.grpo_trainer import (
    completion_logprobs,
    length_grouped,
    lr_factor,
    merge_lora,
    micro_loss_weight,
    pack,
    prompt_grouped,
)
from align.models import make_tiny_model
from hybrid_engine.batch import GRPOBatch
from hybrid_engine.placement import Placement, bundles_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return make_tiny_model("deepseek_v2", "tiny", tmp_path_factory.mktemp("models") / "dsv2-tiny")


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_dir).eval()


def _seqs(seed: int, prompt_lens, completion_lens):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(7, 200, (n,), generator=g).tolist() for n in prompt_lens]
    completions = [torch.randint(7, 200, (n,), generator=g).tolist() for n in completion_lens]
    return prompts, completions


# ----------------------------------------------------------------------------------------------
# Packing and log-probs


def test_pack_indexes_the_positions_that_predict_completion_tokens():
    packed = pack([[1, 2], [3]], [[4, 5], [6]])
    assert packed.input_ids_RL.tolist() == [[1, 2, 4, 5, 3, 6]]
    assert packed.position_ids_RL.tolist() == [[0, 1, 2, 3, 0, 1]]
    assert packed.pos_M.tolist() == [1, 2, 4] and packed.target_M.tolist() == [4, 5, 6]
    assert packed.seq_M.tolist() == [0, 0, 1] and packed.t_M.tolist() == [0, 1, 0]
    padded = pack([[1, 2], [3]], [[4, 5], [6]], "padded")
    assert padded.input_ids_RL.tolist() == [[1, 2, 4, 5], [3, 6, 0, 0]]
    assert padded.attention_mask_RL.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert padded.row_M.tolist() == [0, 0, 1] and padded.pos_M.tolist() == [1, 2, 0]


def test_logprobs_padded_and_padding_free_equal_one_sequence_at_a_time(tiny):
    prompts, completions = _seqs(0, (5, 9, 3, 12), (4, 1, 7, 3))
    with torch.no_grad():
        free, mask, ent_free = completion_logprobs(tiny, prompts, completions, entropy=True)
        padded, mask_p, ent_pad = completion_logprobs(
            tiny, prompts, completions, batching="padded", entropy=True
        )
        for i, (p, c) in enumerate(zip(prompts, completions)):
            logits = tiny(torch.tensor([p + c])).logits[0, len(p) - 1 : -1]
            expected = logits.log_softmax(-1).gather(-1, torch.tensor(c)[:, None]).squeeze(-1)
            torch.testing.assert_close(free[i, : len(c)], expected, atol=1e-5, rtol=0)
            entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
            torch.testing.assert_close(ent_free[i, : len(c)], entropy, atol=1e-5, rtol=0)
    torch.testing.assert_close(free, padded, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent_free, ent_pad, atol=1e-5, rtol=0)
    assert mask.tolist() == mask_p.tolist()
    assert mask.sum(1).tolist() == [4, 1, 7, 3] and (free * (1 - mask)).abs().sum() == 0


def test_pack_shared_prefix_puts_each_prompt_once_and_masks_the_other_completions():
    packed = pack([[1, 2], [3], [1, 2]], [[4, 5], [6], [7]], "shared_prefix")
    assert packed.input_ids_RL.tolist() == [[1, 2, 4, 5, 7], [3, 6, 0, 0, 0]]
    assert packed.position_ids_RL.tolist() == [[0, 1, 2, 3, 2], [0, 1, 0, 0, 0]]
    # completion [7] is predicted from the prompt's last token, like [4, 5]'s first token
    assert packed.row_M.tolist() == [0, 0, 0, 1] and packed.pos_M.tolist() == [1, 2, 1, 0]
    assert packed.target_M.tolist() == [4, 5, 7, 6] and packed.seq_M.tolist() == [0, 0, 2, 1]
    mask = packed.attention_mask_R1LL[:, 0].int().tolist()
    assert mask[0] == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 0, 0, 1],  # 7 sees the prompt and itself, not 4, 5
    ]
    assert mask[1][:2] == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0]]
    assert all(any(q) for q in mask[1])  # pad queries see something: no NaN rows


@pytest.mark.parametrize(
    "family,attn", [("deepseek_v2", "sdpa"), ("deepseek_v2", "eager"), ("qwen2", "sdpa")]
)
def test_logprobs_and_gradients_shared_prefix_equal_padded(tiny_dir, tmp_path, family, attn):
    """Groups of completions of one prompt (and one prompt alone), in one shared-prefix forward:
    the same log-probs, entropies and parameter gradients as one padded row per sequence."""
    from transformers import AutoModelForCausalLM

    path = tiny_dir if family == "deepseek_v2" else make_tiny_model(family, "tiny", tmp_path / family)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn)
    group_prompts, completions = _seqs(4, (5, 11, 2), (3, 8, 1, 6, 2, 5, 4))
    prompts = [group_prompts[k] for k in (0, 1, 0, 1, 0, 2, 1)]  # groups interleaved, as dealt
    results = {}
    for batching in ("padded", "shared_prefix"):
        model.zero_grad()
        logp, mask, ent = completion_logprobs(model, prompts, completions, batching=batching, entropy=True)
        (logp * mask * torch.linspace(-1, 1, logp.shape[1])).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[batching] = logp.detach(), mask, ent, grads
    (lp_a, m_a, e_a, g_a), (lp_b, m_b, e_b, g_b) = results["padded"], results["shared_prefix"]
    assert m_a.tolist() == m_b.tolist()
    torch.testing.assert_close(lp_b, lp_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(e_b, e_a, atol=1e-5, rtol=0)
    assert g_a.keys() == g_b.keys() and len(g_a) > 10
    for name in g_a:
        torch.testing.assert_close(g_b[name], g_a[name], atol=1e-5, rtol=1e-4)


def test_shared_prefix_refuses_flash_attention_and_an_outgrown_sliding_window(tiny):
    prompts, completions = _seqs(5, (4, 4), (2, 3))
    old = tiny.config._attn_implementation
    try:
        tiny.config._attn_implementation = "flash_attention_2"
        with pytest.raises(ValueError, match="shared_prefix.*flash_attention_2.*padded"):
            completion_logprobs(tiny, prompts, completions, batching="shared_prefix")
    finally:
        tiny.config._attn_implementation = old
    had, window = hasattr(tiny.config, "sliding_window"), getattr(tiny.config, "sliding_window", None)
    try:
        tiny.config.sliding_window = 7  # the longest sequence has 4 + 3 tokens: fits
        completion_logprobs(tiny, prompts, completions, batching="shared_prefix")
        tiny.config.sliding_window = 6
        with pytest.raises(ValueError, match="sliding window \\(6 tokens\\).* has 7"):
            completion_logprobs(tiny, prompts, completions, batching="shared_prefix")
    finally:
        if had:
            tiny.config.sliding_window = window
        else:
            del tiny.config.sliding_window


def test_logprobs_follow_the_sampling_temperature(tiny):
    prompts, completions = _seqs(1, (6,), (5,))
    with torch.no_grad():
        hot, _, _ = completion_logprobs(tiny, prompts, completions, temperature=0.7)
        logits = tiny(torch.tensor([prompts[0] + completions[0]])).logits[0, 5:-1] / 0.7
    expected = logits.log_softmax(-1).gather(-1, torch.tensor(completions[0])[:, None]).squeeze(-1)
    torch.testing.assert_close(hot[0], expected, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------
# Micro-batches, loss weights, LR


def test_length_grouped_sorts_longest_first_and_covers_all():
    groups = length_grouped([3, 9, 1, 9, 5], 2)
    assert groups == [[1, 3], [4, 0], [2]]


def test_prompt_grouped_keeps_a_prompt_together_and_cuts_like_length_grouped():
    prompts = [[1], [2, 2], [1], [3], [2, 2], [1], [3], [2, 2]]
    lengths = [4, 5, 9, 2, 3, 6, 3, 5]
    micro = prompt_grouped(prompts, lengths, 3)
    # prompt [1] (longest 9) first, then [2, 2] (5), then [3]; longest first within a prompt
    assert micro == [[2, 5, 0], [1, 7, 4], [6, 3]]
    assert len(micro) == len(length_grouped(lengths, 3))
    assert prompt_grouped(prompts, lengths, 4) == [[2, 5, 0, 1], [7, 4, 6, 3]]  # [2, 2] straddles


@pytest.mark.parametrize("aggregation", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"])
def test_weighted_micro_losses_sum_to_the_big_batch_loss(aggregation):
    g = torch.Generator().manual_seed(0)
    lens = [5, 2, 7, 1, 4, 6]
    mask = (torch.arange(7)[None] < torch.tensor(lens)[:, None]).float()
    logp = -torch.rand(6, 7, generator=g)
    old = logp + 0.1 * torch.randn(6, 7, generator=g)
    ref = logp + 0.1 * torch.randn(6, 7, generator=g)
    adv = torch.randn(6, generator=g)
    args = {"clip_eps": 0.2, "beta": 0.1, "aggregation": aggregation, "max_tokens": 7}
    whole, _ = policy_loss(logp, old, ref, adv, mask, **args)
    total = 0.0
    for idx in length_grouped(lens, 4):
        width = max(lens[i] for i in idx)  # micro-batches are trimmed to their longest completion
        sel = (torch.tensor(idx), slice(0, width))
        part, _ = policy_loss(logp[sel], old[sel], ref[sel], adv[idx], mask[sel], **args)
        total += part * micro_loss_weight(aggregation, len(idx), int(mask[sel].sum()), 6, int(mask.sum()))
    assert float(total) == pytest.approx(float(whole), rel=1e-6)


def test_lr_factor_warmup_constant_and_cosine():
    assert [lr_factor(s, 2, 10) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]
    assert lr_factor(2, 2, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(6, 2, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(10, 2, 10, "cosine", min_ratio=0.1) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        lr_factor(5, 0, 10, "linear")


def test_merge_lora_equals_peft_merge_and_unload(tiny_dir):
    import peft
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    names = list(base.state_dict())
    lora = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "kv_b_proj", "o_proj"], task_type="CAUSAL_LM"
    )
    model = peft.get_peft_model(base, lora)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)  # peft starts B at 0, which would hide a wrong merge
    merged = dict(merge_lora(model.state_dict().items(), scaling=8 / 4))
    expected = model.merge_and_unload().state_dict()
    assert list(merged) == names
    for name in names:
        torch.testing.assert_close(merged[name], expected[name], atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------
# The batch container, placement, config


def test_batch_select_and_balanced_shards():
    prompts, completions = _seqs(2, (3, 4, 5, 6, 7, 8), (6, 5, 4, 3, 2, 1))
    completions[0] = completions[0] + [9, 9, 9]  # lengths 12, 9, 9, 9, 9, 9
    batch = GRPOBatch.build(
        prompts, completions, [0.1 * i for i in range(6)], [[-0.5] * len(c) for c in completions]
    )
    assert batch.completion_mask_BT.sum(1).tolist() == [len(c) for c in completions]
    assert batch.total_seqs == 6 and batch.total_tokens == sum(map(len, completions))
    sub = batch.select([3, 5])
    assert sub.prompts() == [prompts[3], prompts[5]] and sub.completions() == [completions[3], completions[5]]
    assert sub.completion_ids_BT.shape == (2, 3) and sub.prompt_ids_BP.shape == (2, 8)
    assert sub.total_seqs == 6 and sub.advantages_B.tolist() == pytest.approx([0.3, 0.5])
    shards, index = batch.shard(2)
    assert sorted(i for ix in index for i in ix) == list(range(6)) and [len(s) for s in shards] == [3, 3]
    assert shards[0].completions() == [completions[i] for i in index[0]]
    with pytest.raises(ValueError, match="split evenly"):
        batch.shard(4)


def test_shard_by_prompt_keeps_each_prompt_on_one_rank():
    prompts, completions = _seqs(6, (3, 4, 5, 6), (9, 2, 8, 1, 3, 7, 5, 6))
    rows = [prompts[i // 2] for i in range(8)]  # 4 prompts x 2 completions, contiguous
    batch = GRPOBatch.build(rows, completions, [0.0] * 8)
    shards, index = batch.shard(2, by_prompt=True)
    assert sorted(i for ix in index for i in ix) == list(range(8)) and [len(s) for s in shards] == [4, 4]
    assert all(i ^ 1 in ix for ix in index for i in ix)  # sequences 2k and 2k+1 share prompt k
    # dealt by sequence without by_prompt (the length balance splits pairs here), and when the
    # prompts cannot go whole (3 prompts on 2 ranks)
    assert not all(i ^ 1 in ix for ix in batch.shard(2)[1] for i in ix)
    odd = GRPOBatch.build(rows[:6], completions[:6], [0.0] * 6)
    assert odd.shard(2, by_prompt=True)[1] == odd.shard(2)[1]


def test_bundles_colocated_and_separate():
    bundles, trainers, engines = bundles_for(True, 2, 2, trainer_cpus=0.5, rollout_cpus=0.5, use_gpu=True)
    assert bundles == [{"CPU": 1.0, "GPU": 1.0}] * 2 and trainers == [0, 1] and engines == [0, 1]
    bundles, trainers, engines = bundles_for(False, 2, 1, trainer_cpus=1, rollout_cpus=2, use_gpu=False)
    assert bundles == [{"CPU": 1}, {"CPU": 1}, {"CPU": 2}] and trainers == [0, 1] and engines == [2]
    with pytest.raises(ValueError):
        bundles_for(True, 1, 2, trainer_cpus=1, rollout_cpus=1, use_gpu=False)
    colocated = Placement(None, [0, 1], [0, 1], 0, 0, colocate=True)
    assert colocated.shares() == {0: [0], 1: [1]}
    apart = Placement(None, [0, 1], [2], 0, 0, colocate=False)
    assert apart.shares() == {0: [0], 1: []}


def test_grpo_config_loads_and_validates():
    cfg = config.load(None, ROOT / "recipes/configs/tiny/grpo_single.yaml", ["stages.0.grpo.beta=0.0"])
    assert isinstance(cfg, GRPORecipeConfig) and cfg.stages[0].rewards["math"].spec == "math"
    assert cfg.stages[0].grpo.apply(cfg.grpo).beta == 0.0 and cfg.grpo.beta == 0.04
    with pytest.raises(config.ConfigError, match="split evenly"):
        config.load(
            None,
            ROOT / "recipes/configs/tiny/grpo_single.yaml",
            ["grpo.prompts_per_step=3", "trainer.num_workers=2", "grpo.group_size=1"],
        )
    with pytest.raises(config.ConfigError, match="colocate"):
        config.load(None, ROOT / "recipes/configs/tiny/grpo_single.yaml", ["rollout.num_workers=3"])
    with pytest.raises(config.ConfigError, match="did you mean 'clip_eps'"):
        config.load(None, ROOT / "recipes/configs/tiny/grpo_single.yaml", ["grpo.clip_esp=0.1"])


# ----------------------------------------------------------------------------------------------
# One FSDP2 rank in this process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def rank(tiny_dir):
    """``rank(**trainer_overrides)``: a set-up world-size-1 TrainerWorker (gloo); torn down after."""
    from hybrid_engine.trainer import TrainerWorker

    made = []

    def build(grpo: GRPOConfig | None = None, lora_rank: int = 0, **trainer) -> TrainerWorker:
        if made:
            made.pop().shutdown()
        cfg = TrainerConfig(**{"lr": 1e-2, "micro_batch_size": 8, "threads": 0, **trainer})
        model = ModelConfig(path=str(tiny_dir), lora=LoraConfig(r=lora_rank, alpha=2 * lora_rank))
        worker = TrainerWorker(0, 1, model, cfg, grpo or GRPOConfig(beta=0.1), total_steps=4)
        worker.setup("127.0.0.1", _free_port())
        made.append(worker)
        return worker

    yield build
    for worker in made:
        worker.shutdown()


def _batch(seed: int = 3, n: int = 8) -> GRPOBatch:
    prompts, completions = _seqs(seed, [3 + (i % 4) for i in range(n)], [1 + (i * 5) % 7 for i in range(n)])
    adv = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    return GRPOBatch.build(prompts, completions, adv)


def _grouped_batch(seed: int = 7, prompts: int = 4, group: int = 2) -> GRPOBatch:
    """``prompts`` prompts with ``group`` completions each, groups contiguous (as the driver builds)."""
    n = prompts * group
    heads, completions = _seqs(
        seed, [3 + (k % 4) for k in range(prompts)], [1 + (i * 5) % 7 for i in range(n)]
    )
    adv = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    return GRPOBatch.build([heads[i // group] for i in range(n)], completions, adv)


def test_rank_update_shared_prefix_equals_padded(rank):
    """The trainer's step with ``shared_prefix`` micro-batches (3 sequences: a group straddles
    two of them) is the step of ``padded`` ones: loss, KL, gradient norm and new weights."""
    batch = _grouped_batch(group=3)
    steps = {}
    for batching in ("padded", "shared_prefix"):
        worker = rank(batching=batching, micro_batch_size=3)
        batch.ref_logp_BT = worker.compute_logprobs(batch, "ref") - 0.01 * batch.completion_mask_BT
        steps[batching] = worker.update(batch), worker.full_state_dict()
    (a, state_a), (b, state_b) = steps["padded"], steps["shared_prefix"]
    for key in ("loss", "grad_norm", "kl_sum", "tokens"):
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), key
    for name, tensor in state_b.items():
        torch.testing.assert_close(tensor, state_a[name], atol=2e-3, rtol=0)


def test_rank_update_invariant_to_micro_batch_size_and_ref_frozen(rank):
    batch = _batch()
    worker = rank(micro_batch_size=8)
    policy0 = worker.compute_logprobs(batch, "policy")
    torch.testing.assert_close(policy0, worker.compute_logprobs(batch, "ref"))
    batch.ref_logp_BT = worker.compute_logprobs(batch, "ref")
    one = worker.update(batch)
    assert one["skipped"] == 0.0 and one["grad_norm"] > 0 and one["tokens"] == batch.total_tokens
    assert one["kl_sum"] == pytest.approx(0.0, abs=1e-6) and one["ratio_mean_sum"] / one[
        "tokens"
    ] == pytest.approx(1.0)
    state_one = worker.full_state_dict()
    moved = worker.compute_logprobs(batch, "policy")
    assert (moved - policy0).abs().max() > 1e-4  # the policy moved ...
    torch.testing.assert_close(
        worker.compute_logprobs(batch, "ref"), batch.ref_logp_BT
    )  # ... the reference did not

    worker = rank(micro_batch_size=3)  # three micro-batches of accumulated gradients
    three = worker.update(batch)
    assert three["loss"] == pytest.approx(one["loss"], rel=1e-5)
    assert three["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-5)
    # The gradient norm (before clipping) matches to 1e-5, so the accumulated gradients do. Adam's
    # first step is about lr * sign(grad): where a gradient is ~0, the rounding of another summation
    # order can move a weight by part of a step (lr = 1e-2), hence the loose check of the weights
    # (a lost micro-batch would move many by whole steps).
    for name, tensor in worker.full_state_dict().items():
        torch.testing.assert_close(tensor, state_one[name], atol=2e-3, rtol=0)


def test_rank_skips_a_non_finite_update_and_counts_it(rank):
    worker = rank(grpo=GRPOConfig(beta=0.0))
    batch = _batch()
    before = worker.full_state_dict()
    batch.advantages_B[2] = float("nan")
    out = worker.update(batch)
    assert out["skipped"] == 1.0 and out["skipped_updates"] == 1.0 and not math.isfinite(out["loss"])
    for name, tensor in worker.full_state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert worker.scheduler.last_epoch == 0  # the LR schedule did not advance
    batch.advantages_B[2] = 0.5
    out = worker.update(batch)
    assert out["skipped"] == 0.0 and out["skipped_updates"] == 1.0 and worker.steps_done == 1


def test_lora_rank_trains_adapters_and_exports_merged_weights(rank, tiny_dir):
    from transformers import AutoModelForCausalLM

    worker = rank(lora_rank=4, micro_batch_size=4)
    info_params = sum(p.numel() for p in worker.model.parameters() if p.requires_grad)
    assert 0 < info_params < 0.1 * sum(p.numel() for p in worker.model.parameters())
    batch = _batch()
    start = worker.compute_logprobs(batch, "policy")
    torch.testing.assert_close(start, worker.compute_logprobs(batch, "ref"))  # B = 0: adapters are a no-op
    batch.ref_logp_BT = start
    for _ in range(2):  # the first step moves B off 0, the second makes A matter too
        assert worker.update(batch)["skipped"] == 0.0
    policy = worker.compute_logprobs(batch, "policy")
    assert (policy - start).abs().max() > 1e-4
    torch.testing.assert_close(worker.compute_logprobs(batch, "ref"), start)  # the base is the reference

    # What the engines get: base-model names, W + scale * B @ A, giving the trained policy's log-probs.
    merged = worker.full_state_dict()
    assert worker.engine_spec() == {n: tuple(t.shape) for n, t in merged.items()}
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert list(merged) == list(model.state_dict())
    model.load_state_dict(merged)
    with torch.no_grad():
        exported, _, _ = completion_logprobs(model.eval(), batch.prompts(), batch.completions())
    torch.testing.assert_close(exported, policy, atol=1e-5, rtol=0)


def _two_rank_update(rank_id: int, port: int, model_dir: str, result: str) -> None:
    from hybrid_engine.trainer import TrainerWorker

    torch.set_num_threads(1)
    worker = TrainerWorker(
        rank_id,
        2,
        ModelConfig(path=model_dir),
        TrainerConfig(lr=1e-2, micro_batch_size=3),
        GRPOConfig(beta=0.0),
    )
    worker.setup("127.0.0.1", port)
    shards, _ = _grouped_batch().shard(2, by_prompt=True)  # shared_prefix, the default batching
    metrics = worker.update(shards[rank_id])
    state = worker.full_state_dict()
    if rank_id == 0:
        torch.save({"metrics": metrics, "state": state}, result)
    worker.shutdown()


@pytest.mark.slow  # spawns two processes that import torch and transformers
def test_two_ranks_step_like_one_rank_on_the_whole_batch(rank, tiny_dir, tmp_path):
    """FSDP2 over 2 gloo ranks, each on its shard of whole prompts, takes the step one rank takes
    on the whole batch: the loss normalisation spans ranks and FSDP's gradient average is undone."""
    import torch.multiprocessing as mp

    result = tmp_path / "rank0.pt"
    mp.spawn(_two_rank_update, args=(_free_port(), str(tiny_dir), str(result)), nprocs=2, join=True)
    two = torch.load(result)
    worker = rank(grpo=GRPOConfig(beta=0.0), micro_batch_size=3)
    one = worker.update(_grouped_batch())
    assert two["metrics"]["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-5)
    two_tokens = two["metrics"]["tokens"]
    assert 0 < two_tokens < one["tokens"]  # rank 0 saw its shard only
    for name, tensor in worker.full_state_dict().items():
        torch.testing.assert_close(two["state"][name], tensor, atol=2e-3, rtol=0)
