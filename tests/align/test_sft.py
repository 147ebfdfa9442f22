"""SFT: the balance loss by hand, loss masks, and recipes/sft.py run as users run it (tiny models)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from align import config, sft
from align.configs import MathTaskConfig, SFTRecipeConfig
from align.models import make_tiny_model
from align.tasks import make_math

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "sft.py"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
STEPS = ["train.max_steps=24", "train.batch_size=8", "train.lr=3e-3", "train.logging_steps=4"]


# ----------------------------------------------------------------------------------------------
# Fixtures: a tiny DeepSeek-V2 (one MoE layer) and math data in both SFT formats


@pytest.fixture(scope="module")
def moe_model(tmp_path_factory) -> Path:
    return make_tiny_model("deepseek_v2", "tiny", tmp_path_factory.mktemp("models") / "dsv2-tiny")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    train, held_out = make_math(MathTaskConfig(train_size=192, eval_size=16, levels=[1]), seed=0)
    out = tmp_path_factory.mktemp("data")
    for name, rows in (("train", train), ("eval", held_out)):
        write_jsonl(out / f"chat_{name}.jsonl", [{"messages": r["messages"]} for r in rows])
        write_jsonl(
            out / f"pc_{name}.jsonl",
            [{"prompt": r["prompt"] + "\n", "completion": r["solution"]} for r in rows],
        )
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_recipe(
    *args: str, launcher: list[str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    cmd = (launcher or [sys.executable]) + [str(RECIPE), *args]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def train_losses(records: list[dict]) -> list[float]:
    return [r["train/loss"] for r in records if "train/loss" in r]


# ----------------------------------------------------------------------------------------------
# The expert-level balance loss against a hand computation


def test_expert_balance_loss_by_hand():
    # T=4 tokens, N'=4 experts, K'=2; logits = log(s) so that softmax gives s exactly.
    s = torch.tensor(
        [
            [0.4, 0.3, 0.2, 0.1],
            [0.1, 0.5, 0.3, 0.1],
            [0.25, 0.25, 0.25, 0.25],
            [0.7, 0.1, 0.1, 0.1],
        ]
    )
    idx = torch.tensor([[0, 1], [1, 2], [2, 3], [0, 1]])
    # counts per expert: e0: 2, e1: 3, e2: 2, e3: 1; f_i = N'/(K'T) * count = 4/8 * count
    f = torch.tensor([1.0, 1.5, 1.0, 0.5])
    p = torch.tensor([1.45, 1.15, 0.85, 0.55]) / 4  # column means of s
    expected = float((f * p).sum())  # = (1.45 + 1.725 + 0.85 + 0.275) / 4 = 1.075
    assert expected == pytest.approx(1.075)
    assert float(sft.expert_balance_loss(s.log(), idx)) == pytest.approx(expected, rel=1e-6)

    # Padding tokens do not count: token 3 is padding -> T=3, counts e0: 1, e1: 2, e2: 2, e3: 1.
    f3 = 4 / (2 * 3) * torch.tensor([1.0, 2.0, 2.0, 1.0])
    p3 = s[:3].mean(0)
    padded = sft.expert_balance_loss(s.log(), idx, torch.tensor([0, 0, 0, -1]))
    assert float(padded) == pytest.approx(float((f3 * p3).sum()), rel=1e-6)

    # Two sequences of two tokens: f and P per sequence (T_s = 2), then the mean over sequences.
    # seq 0: counts [1, 2, 1, 0] -> f = 4/(2*2) * counts = [1, 2, 1, 0]; P = [.25, .4, .25, .1] -> 1.3
    # seq 1: counts [1, 1, 1, 1] -> f = [1, 1, 1, 1];  P = [.475, .175, .175, .175]          -> 1.0
    two = sft.expert_balance_loss(s.log(), idx, torch.tensor([0, 0, 1, 1]))
    assert float(two) == pytest.approx((1.3 + 1.0) / 2, rel=1e-6)

    # Uniform routing gives exactly 1; the gradient reaches the logits through P.
    logits = torch.zeros(4, 4)
    uniform = sft.expert_balance_loss(logits.detach(), torch.tensor([[0, 1], [2, 3], [0, 1], [2, 3]]))
    assert uniform.item() == pytest.approx(1.0)
    skewed = s.log().requires_grad_()
    sft.expert_balance_loss(skewed, idx).backward()
    assert skewed.grad is not None and skewed.grad.abs().sum() > 0


def test_sequence_ids_of_padded_and_packed_batches():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert sft.sequence_ids(mask, None, (2, 3)).tolist() == [0, 0, 0, 1, 1, -1]
    packed = torch.tensor([[0, 1, 2, 0, 1, 0]])  # three sequences in one padding-free row
    assert sft.sequence_ids(None, packed, (1, 6)).tolist() == [0, 0, 0, 1, 1, 2]
    assert sft.sequence_ids(None, None, (2, 2)).tolist() == [0, 0, 1, 1]


def test_hooks_capture_the_models_own_routing(moe_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(moe_model).eval()
    gates = sft.moe_gates(model)
    assert len(gates) == model.config.num_hidden_layers - model.config.first_k_dense_replace
    ids = torch.randint(7, 100, (2, 9))
    with torch.no_grad(), sft.capture_routing(gates) as routed:
        out = model(input_ids=ids, output_router_logits=True, use_cache=False)
    assert len(routed) == len(gates)
    logits, idx = routed[0]
    assert torch.equal(logits, out.router_logits[0])  # the logits transformers records
    assert idx.shape == (2 * 9, model.config.num_experts_per_tok)
    assert torch.equal(idx.sort(-1).values, logits.softmax(-1).topk(idx.shape[-1]).indices.sort(-1).values)
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    assert len(routed) == len(gates)  # the hooks are gone after the block


# ----------------------------------------------------------------------------------------------
# Config -> TRL arguments, and the loss masks TRL builds from them


def _cfg(*overrides: str) -> SFTRecipeConfig:
    return config.load(SFTRecipeConfig, None, list(overrides))


def test_sft_args_follow_the_config(tmp_path):
    args = sft.build_sft_args(_cfg(f"output_dir={tmp_path}"), "messages", has_eval=False)
    assert args.assistant_only_loss and not args.packing and not args.padding_free
    assert args.router_aux_loss_coef == 0.0 and args.save_strategy == "no" and not args.gradient_checkpointing
    args = sft.build_sft_args(
        _cfg(f"output_dir={tmp_path}", "train.batching=padding_free"), "prompt_completion", True
    )
    assert args.completion_only_loss and not args.assistant_only_loss
    assert args.padding_free and args.max_length is None and args.eval_strategy == "no"
    args = sft.build_sft_args(
        _cfg(f"output_dir={tmp_path}", "train.batching=packing", "train.eval_steps=5"), "messages", True
    )
    assert args.packing and args.max_length == 512 and args.eval_strategy == "steps"
    with pytest.raises(config.ConfigError, match="curriculum needs batching"):
        _cfg("train.curriculum=level", "train.batching=packing")


@pytest.mark.parametrize("fmt", ["messages", "prompt_completion"])
def test_loss_only_on_the_reply(moe_model, data_dir, tmp_path, fmt):
    """Labels keep exactly the assistant turn (messages) or the completion, each with its <eos>."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prefix = "chat" if fmt == "messages" else "pc"
    rows = [json.loads(line) for line in (data_dir / f"{prefix}_train.jsonl").read_text().splitlines()[:2]]
    tokenizer = AutoTokenizer.from_pretrained(moe_model)
    trainer = sft.BalancedSFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(moe_model),
        args=sft.build_sft_args(_cfg(f"output_dir={tmp_path}"), fmt, has_eval=False),
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
        aux_loss_alpha=0.001,
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    for i, row in enumerate(rows):
        ids, labels = batch["input_ids"][i], batch["labels"][i]
        reply = row["messages"][-1]["content"] if fmt == "messages" else row["completion"]
        assert tokenizer.decode(ids[labels != -100]) == reply + tokenizer.eos_token
        prompt = row["messages"][0]["content"] if fmt == "messages" else row["prompt"]
        assert prompt in tokenizer.decode(ids[batch["attention_mask"][i].bool()])


def test_curriculum_orders_rows_easy_to_hard():
    import datasets

    ds = datasets.Dataset.from_dict({"messages": [[{"n": i}] for i in range(5)], "level": [3, 1, 2, 1, 3]})
    ordered = sft.sft_dataset(ds, "messages", curriculum="level")
    assert ordered.column_names == ["messages"]
    assert [m[0]["n"] for m in ordered["messages"]] == [1, 3, 2, 0, 4]  # stable within a level
    with pytest.raises(sft.DataError, match="no such column"):
        sft.sft_dataset(ds, "messages", curriculum="difficulty")


# ----------------------------------------------------------------------------------------------
# The recipe, run as users run it


def test_full_finetune_on_chat_data(moe_model, data_dir, tmp_path):
    run = tmp_path / "run"
    proc = run_recipe(
        "--config",
        str(ROOT / "recipes/configs/tiny/sft_test.yaml"),
        f"output_dir={run}",
        f"model.path={moe_model}",
        f"data.train=[{data_dir / 'chat_train.jsonl'}]",
        f"data.eval=[{data_dir / 'chat_eval.jsonl'}]",
        *STEPS,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    saved = config.load(SFTRecipeConfig, run / "config.yaml")
    assert saved.output_dir == str(run) and saved.train.max_steps == 24

    records = read_metrics(run)
    assert all(r["stage"] == "sft" and isinstance(r["step"], int) for r in records)
    losses = train_losses(records)
    assert len(losses) >= 4 and losses[-1] < losses[0] - 0.5, losses
    aux = [r["train/aux_loss"] for r in records if "train/aux_loss" in r]
    assert aux and all(0.0 < a < 0.001 * 8 for a in aux)  # alpha * one layer's sum_i f_i P_i (in [1, N'])
    assert any("eval/loss" in r for r in records)
    assert list((run / "tb").glob("events.out.tfevents.*"))

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(run / "final")
    tokenizer = AutoTokenizer.from_pretrained(run / "final")
    assert model.config.use_cache
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Mia has 2 cards and gets 3 more. How many cards now?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]


def test_prompt_completion_with_packing(moe_model, data_dir, tmp_path):
    run = tmp_path / "run"
    proc = run_recipe(
        "--config",
        str(ROOT / "recipes/configs/tiny/sft_test.yaml"),
        f"output_dir={run}",
        f"model.path={moe_model}",
        f"data.train=[{data_dir / 'pc_train.jsonl'}]",
        "train.batching=packing",
        "train.max_length=256",
        *STEPS,
        "train.batch_size=3",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = train_losses(read_metrics(run))
    assert losses[-1] < losses[0] - 0.5, losses
    assert (run / "final" / "model.safetensors").exists()


def test_lora_saves_adapter_and_merged_model(moe_model, data_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    proc = run_recipe(
        "--config",
        str(ROOT / "recipes/configs/tiny/sft_test.yaml"),
        f"output_dir={run}",
        f"model.path={moe_model}",
        f"data.train=[{data_dir / 'chat_train.jsonl'}]",
        "model.lora.r=8",
        "model.lora.target_modules=[q_proj, o_proj]",
        "train.batching=padding_free",
        *STEPS,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "adapter" / "adapter_config.json").exists()
    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)

    AutoModelForCausalLM.from_pretrained(run / "final")  # the merged model loads on its own
    base, merged = load_file(moe_model / "model.safetensors"), load_file(run / "final" / "model.safetensors")
    assert base.keys() == merged.keys()
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all(k.endswith(("q_proj.weight", "o_proj.weight")) for k in changed), changed


def test_bad_row_fails_with_file_and_line(moe_model, data_dir, tmp_path):
    good = (data_dir / "chat_train.jsonl").read_text().splitlines()[:2]
    bad = write_jsonl(
        tmp_path / "bad.jsonl", [json.loads(good[0]), {"messages": [{"role": "user", "content": "hi"}]}]
    )
    proc = run_recipe(
        "--config",
        str(ROOT / "recipes/configs/tiny/sft_test.yaml"),
        f"output_dir={tmp_path / 'run'}",
        f"model.path={moe_model}",
        f"data.train=[{bad}]",
    )
    assert proc.returncode == 2
    assert f"{bad}:2: field 'messages[0].role': the last turn must be 'assistant'" in proc.stderr


def test_help_imports_nothing_heavy():
    code = (
        "import runpy, sys\n"
        "sys.argv = ['sft.py', '--help']\n"
        "try:\n"
        f"    runpy.run_path({str(RECIPE)!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print([m for m in ('torch', 'transformers', 'trl', 'datasets', 'vllm', 'ray') if m in sys.modules])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "aux_loss_alpha" in proc.stdout and proc.stdout.strip().splitlines()[-1] == "[]"


# ----------------------------------------------------------------------------------------------
# Slow: vLLM loads final/, and two processes train over gloo


@pytest.mark.slow
def test_final_loads_in_vllm(moe_model, data_dir, tmp_path):
    run = tmp_path / "run"
    proc = run_recipe(
        "--config",
        str(ROOT / "recipes/configs/tiny/sft_test.yaml"),
        f"output_dir={run}",
        f"model.path={moe_model}",
        f"data.train=[{data_dir / 'chat_train.jsonl'}]",
        "train.max_steps=4",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    script = tmp_path / "vllm_load.py"
    script.write_text(
        textwrap.dedent(
            f"""
            from vllm import LLM, SamplingParams

            if __name__ == "__main__":
                llm = LLM(model={str(run / "final")!r}, enforce_eager=True, dtype="float32", max_model_len=256,
                          seed=0)
                out = llm.generate(["<bos><|user|>Mia has 2 cards and gets 3 more.<|assistant|>"],
                                   SamplingParams(max_tokens=8, temperature=0.0))
                print("GENERATED", len(out[0].outputs[0].token_ids))
            """
        )
    )
    env = {**ENV, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0 and "GENERATED" in proc.stdout, (proc.stdout + proc.stderr)[-4000:]


@pytest.mark.slow
def test_two_processes_over_gloo(moe_model, data_dir, tmp_path):
    run = tmp_path / "run"
    # `--cpu` alone runs a single process; `--multi_gpu` picks accelerate's torchrun launcher, and
    # without CUDA the Trainer joins the processes over gloo.
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    proc = run_recipe(
        "--config",
        str(ROOT / "recipes/configs/tiny/sft_test.yaml"),
        f"output_dir={run}",
        f"model.path={moe_model}",
        f"data.train=[{data_dir / 'chat_train.jsonl'}]",
        *STEPS,
        launcher=launcher,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    records = [r for r in read_metrics(run) if "train/loss" in r]
    assert [r["step"] for r in records] == sorted({r["step"] for r in records})  # rank 0 alone writes
    assert records[-1]["train/epoch"] == pytest.approx(24 * 8 * 2 / 192)  # two ranks share each epoch
    assert records[-1]["train/loss"] < records[0]["train/loss"] - 0.5
    assert (run / "final" / "model.safetensors").exists()
