"""Reward models: losses and metrics by hand, inputs as TRL builds them, and recipes/reward_model.py
run as users run it (tiny DeepSeek-V2, a slice of the helpful pairs)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch

import rewards
from align import config
from align import reward_model as rm
from align.configs import HelpfulTaskConfig, RewardModelRecipeConfig
from align.models import make_tiny_model
from align.tasks import make_helpful
from rewards.reward_model import encode

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "reward_model.py"
CONFIG = ROOT / "recipes" / "configs" / "tiny" / "rm_helpful.yaml"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
# A few epochs over 192 pairs: enough for the tiny model to beat chance on held-out pairs reliably.
TRAIN = [
    "train.max_steps=60",
    "train.batch_size=8",
    "train.lr=3e-3",
    "train.logging_steps=10",
    "train.max_length=320",
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model("deepseek_v2", "tiny", tmp_path_factory.mktemp("models") / "dsv2-tiny")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    train, held_out = make_helpful(HelpfulTaskConfig(train_size=192, eval_size=64, chat=False), seed=0)
    out = tmp_path_factory.mktemp("data")
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "eval.jsonl", held_out)
    # Pointwise rows as a verifier would label them: chosen 1, rejected 0.
    points = [
        {"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}
        for r in train
        for side in ("chosen", "rejected")
    ]
    write_jsonl(out / "points.jsonl", points)
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_recipe(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(RECIPE), "--config", str(CONFIG), *args]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------------------------
# Pure pieces


def test_pointwise_losses_by_hand():
    r, y = torch.tensor([0.0, 2.0, -1.0]), torch.tensor([1.0, 0.0, 0.0])
    assert rm.pointwise_loss(r, y, "mse").item() == pytest.approx((1 + 4 + 1) / 3)
    # bce: -[y log s(r) + (1-y) log(1-s(r))]; s(0)=1/2, 1-s(2)=s(-2), 1-s(-1)=s(1)
    s = torch.sigmoid
    expected = -(
        torch.log(s(torch.tensor(0.0))) + torch.log(s(torch.tensor(-2.0))) + torch.log(s(torch.tensor(1.0)))
    )
    assert rm.pointwise_loss(r, y, "bce").item() == pytest.approx(expected.item() / 3, rel=1e-6)
    with pytest.raises(ValueError, match="unknown pointwise loss"):
        rm.pointwise_loss(r, y, "hinge")


def test_pairwise_metrics_by_hand():
    table = {"a": 3.0, "b": 1.0, "c": 0.0, "d": 2.0, "e": 5.0, "f": 5.0}

    def reward(prompts, completions, **columns):
        return [table[c] for c in completions]

    got = rm.pairwise_metrics(reward, ["p"] * 3, ["a", "c", "e"], ["b", "d", "f"], groups=["x", "y", "y"])
    assert got["pairwise_accuracy"] == pytest.approx(1 / 3)  # a>b right, c<d wrong, e=f a tie: wrong
    assert got["margin_mean"] == pytest.approx((2 - 2 + 0) / 3)
    assert got["accuracy_by"] == {"x": 1.0, "y": 0.0} and got["n_by"] == {"x": 1, "y": 2}
    assert got["chosen_reward_mean"] == pytest.approx(8 / 3) and got["n_pairs"] == 3
    assert got["pairwise_accuracy_ci95"] == pytest.approx(rm.wilson_interval(1, 3))


def test_wilson_interval_by_hand():
    # 85 of 100: centre (0.85 + 1.96^2/200) / (1 + 1.96^2/100), half-width
    # 1.96 * sqrt(0.85 * 0.15 / 100 + 1.96^2 / 40000) / (1 + 1.96^2/100)
    z = 1.959964
    centre = (0.85 + z * z / 200) / (1 + z * z / 100)
    half = z * math.sqrt(0.85 * 0.15 / 100 + z * z / 40000) / (1 + z * z / 100)
    assert rm.wilson_interval(85, 100) == pytest.approx([centre - half, centre + half])
    assert rm.wilson_interval(85, 100) == pytest.approx([0.7672, 0.9069], abs=1e-4)
    low, high = rm.wilson_interval(0, 10)  # all wrong: the interval still leaves room above 0
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    assert rm.wilson_interval(10, 10)[1] <= 1.0
    with pytest.raises(ValueError, match="n >= 1"):
        rm.wilson_interval(0, 0)


def test_pointwise_pairs_and_targets():
    ds = datasets.Dataset.from_list(
        [
            {"prompt": "p", "completion": "a", "score": 1.0},
            {"prompt": "p", "completion": "b", "score": 0.0},
            {"prompt": "p", "completion": "c", "score": 0.5},
            {"prompt": "q", "completion": "d", "score": 1.0},  # alone: no pair
        ]
    )
    prompts, chosen, rejected = rm.pointwise_pairs(ds, "mse")
    assert sorted(zip(chosen, rejected)) == [("a", "b"), ("a", "c"), ("c", "b")] and set(prompts) == {"p"}
    bad = datasets.Dataset.from_list([{"prompt": "p", "completion": "a", "score": 3.0}])
    with pytest.raises(rm.DataError, match=r"outside \[0, 1\]"):
        rm.pointwise_target(bad, "bce")
    labels = datasets.Dataset.from_list(
        [
            {"prompt": "p", "completion": "a", "label": True, "score": 0.2},
            {"prompt": "p", "completion": "b", "label": False, "score": 0.9},
        ]
    )
    assert rm.pointwise_target(labels, "bce") == [1.0, 0.0]  # BCE prefers the label,
    assert rm.pointwise_target(labels, "mse") == [0.2, 0.9]  # MSE the score


def test_inputs_are_tokenized_as_trl_does(tiny_model):
    """Our pre-tokenized pairs equal what TRL's RewardTrainer makes of conversational rows, and the
    reward API's `encode` (what GRPO scores) is that same function."""
    from trl import RewardTrainer

    model, tokenizer = rm.load_model(str(tiny_model))
    rows = [
        {"prompt": "What is 2+3?", "chosen": "2+3=5. \\boxed{5}", "rejected": "6", "margin": 0.5},
        {
            "prompt": "Name a color.",
            "chosen": "Blue.",
            "rejected": "Hmm, let me think. Blue.",
            "margin": None,
        },
    ]
    ours = rm.preference_dataset(datasets.Dataset.from_list(rows), tokenizer, "chat", margin=0.1)
    assert ours["margin"] == [0.5, 0.1]  # the column where set, else train.margin
    conversational = datasets.Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "chosen": [{"role": "assistant", "content": r["chosen"]}],
                "rejected": [{"role": "assistant", "content": r["rejected"]}],
            }
            for r in rows
        ]
    )
    cfg = config.load(RewardModelRecipeConfig, None, [f"output_dir={tiny_model.parent / 'trl'}"])
    trl_ds = RewardTrainer(
        model=model,
        args=rm.build_reward_args(cfg, False),
        train_dataset=conversational,
        processing_class=tokenizer,
    ).train_dataset
    assert ours["chosen_ids"] == trl_ds["chosen_ids"] and ours["rejected_ids"] == trl_ds["rejected_ids"]
    assert tokenizer.decode(ours["chosen_ids"][1]) == "<bos><|user|>Name a color.<|assistant|>Blue.<eos>"
    assert ours["chosen_ids"][0] == encode(tokenizer, "What is 2+3?", "2+3=5. \\boxed{5}")
    assert ours["length"] == [max(len(c), len(r)) for c, r in zip(ours["chosen_ids"], ours["rejected_ids"])]
    with pytest.raises(rm.DataError, match="field 'margin'"):
        rm.preference_dataset(datasets.Dataset.from_list([{**rows[0], "margin": "big"}]), tokenizer, "chat")


def test_likelihood_reward_sums_the_completion_tokens_logprobs(tiny_model):
    """The init-model baseline scores a reply by the LM's log-probs of its tokens after the prompt's,
    computed here one token at a time with no padding; batches of mixed lengths give the same."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model)
    lm = transformers.AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    prompts = ["What is 2+3?", "Name a color."]
    replies = ["2+3=5. \\boxed{5}", "Blue."]
    expected = []
    for p, c in zip(prompts, replies):
        full = encode(tokenizer, p, c)
        head = tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        assert full[: len(head)] == list(head)
        total = 0.0
        for j in range(len(head), len(full)):
            with torch.no_grad():
                logits = lm(input_ids=torch.tensor([full[:j]])).logits[0, -1]
            total += logits.log_softmax(-1)[full[j]].item()
        expected.append(total)
    assert tokenizer.decode(encode(tokenizer, prompts[1], replies[1])[len(head) :]) == "Blue.<eos>"
    for batch_size in (1, 2):
        got = rm.likelihood_reward(str(tiny_model), "chat", batch_size=batch_size)(prompts, replies)
        assert got == pytest.approx(expected, abs=1e-4)

    held_out = datasets.Dataset.from_list(
        [{"prompt": prompts[0], "chosen": replies[0], "rejected": "7", "kind": "math/wrong"}]
    )
    base = rm.likelihood_baseline(str(tiny_model), held_out, "chat")
    assert base["n_pairs"] == 1 and set(base["accuracy_by"]) == {"math/wrong"}
    chosen, rejected = rm.likelihood_reward(str(tiny_model), "chat")([prompts[0]] * 2, [replies[0], "7"])
    assert chosen == pytest.approx(expected[0], abs=1e-4)
    assert base["pairwise_accuracy"] == float(chosen > rejected)


def test_help_imports_nothing_heavy():
    code = (
        "import runpy, sys\n"
        "sys.argv = ['reward_model.py', '--help']\n"
        "try:\n"
        f"    runpy.run_path({str(RECIPE)!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print([m for m in ('torch', 'transformers', 'trl', 'datasets', 'vllm', 'ray') if m in sys.modules])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "train.pointwise_loss" in proc.stdout and proc.stdout.strip().splitlines()[-1] == "[]"


def test_shipped_configs_load():
    for name in ("rm_helpful", "rm_safety"):
        cfg = config.load(None, ROOT / "recipes" / "configs" / "tiny" / f"{name}.yaml")
        assert isinstance(cfg, RewardModelRecipeConfig) and cfg.model.path == "out/sft/final"


# ----------------------------------------------------------------------------------------------
# The recipe, run as users run it


@pytest.fixture(scope="module")
def pairwise_run(tiny_model, data_dir, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run = tmp_path_factory.mktemp("rm") / "pairwise"
    proc = run_recipe(
        f"output_dir={run}",
        f"model.path={tiny_model}",
        f"data.train=[{data_dir / 'train.jsonl'}]",
        f"data.eval=[{data_dir / 'eval.jsonl'}]",
        *TRAIN,
    )
    return run, proc


@pytest.mark.slow
def test_pairwise_rm_beats_chance_and_loads_as_a_reward(pairwise_run, data_dir):
    run, proc = pairwise_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out pairwise accuracy" in proc.stdout

    assert config.load(RewardModelRecipeConfig, run / "config.yaml").train.max_steps == 60
    records = read_metrics(run)
    assert all(r["stage"] == "reward_model" for r in records)
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) >= 5 and losses[-1] < losses[0], losses
    assert list((run / "tb").glob("events.out.tfevents.*"))

    result = json.loads((run / "eval.json").read_text())
    assert result["n_pairs"] == 64 and result["format"] == "preference"
    assert result["pairwise_accuracy"] > 0.6, result  # 0.78 with this seed; chance is 0.5
    assert result["margin_mean"] > 0 and result["accuracy_by_column"] == "kind"
    base = result["init_model_likelihood"]  # the starting model's own ranking of the same pairs
    assert (
        base["n_pairs"] == 64
        and 0.0 <= base["pairwise_accuracy"] <= 1.0
        and "math/wrong" in base["accuracy_by"]
    )
    assert "starting model's own log-likelihood ranks" in proc.stdout
    final = [r for r in records if "eval/pairwise_accuracy" in r]
    assert final and final[-1]["eval/pairwise_accuracy"] == result["pairwise_accuracy"]

    card = json.loads((run / "final" / "reward_model.json").read_text())
    assert card["format"] == "chat" and card["max_length"] == 320 and card["mode"] == "pairwise"
    held_out = [json.loads(line) for line in (data_dir / "eval.jsonl").read_text().splitlines()]
    reward = rewards.load(str(run))  # the run dir is a reward spec: it finds final/
    prompts = [r["prompt"] for r in held_out]
    chosen = reward(prompts, [r["chosen"] for r in held_out])
    rejected = reward(prompts, [r["rejected"] for r in held_out])
    assert sum(chosen) / len(chosen) > sum(rejected) / len(rejected)
    accuracy = sum(c > r for c, r in zip(chosen, rejected)) / len(held_out)
    assert accuracy == pytest.approx(result["pairwise_accuracy"])  # the scores the recipe's eval saw


@pytest.mark.slow
def test_pointwise_mode_trains(pairwise_run, data_dir, tmp_path):
    """BCE on labelled completions. It starts from the pairwise RM: from random weights the tiny
    model sits at log(2) for ~40 steps before it learns, too long for a test."""
    run = tmp_path / "rm"
    proc = run_recipe(
        f"output_dir={run}",
        f"model.path={pairwise_run[0] / 'final'}",
        f"data.train=[{data_dir / 'points.jsonl'}]",
        f"data.eval=[{data_dir / 'eval.jsonl'}]",
        "train.mode=pointwise",
        "train.pointwise_loss=bce",
        *TRAIN,
        "train.max_steps=20",
        "train.batch_size=16",
        "train.lr=1e-3",
        "train.logging_steps=5",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_metrics(run)
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) >= 4 and losses[-1] < losses[0] - 0.05, losses
    assert any("train/accuracy" in r for r in records)
    result = json.loads((run / "eval.json").read_text())
    assert result["n_pairs"] == 64 and result["pairwise_accuracy"] > 0.6, result
    card = json.loads((run / "final" / "reward_model.json").read_text())
    assert card["mode"] == "pointwise" and card["pointwise_loss"] == "bce"


@pytest.mark.slow
def test_bad_row_fails_with_file_and_line(tiny_model, data_dir, tmp_path):
    good = json.loads((data_dir / "train.jsonl").read_text().splitlines()[0])
    bad = write_jsonl(tmp_path / "bad.jsonl", [good, {**good, "rejected": good["chosen"]}])
    proc = run_recipe(f"output_dir={tmp_path / 'rm'}", f"model.path={tiny_model}", f"data.train=[{bad}]")
    assert proc.returncode == 2
    assert f"{bad}:2: field 'chosen': equal to 'rejected'" in proc.stderr
    # pointwise mode refuses preference data, naming the formats it takes
    from align.configs import DataConfig
    from align.data import load_split

    with pytest.raises(rm.DataError, match="rows are 'preference'.*takes pointwise"):
        load_split([str(data_dir / "train.jsonl")], DataConfig(), accept=rm.TRAIN_FORMATS["pointwise"])
