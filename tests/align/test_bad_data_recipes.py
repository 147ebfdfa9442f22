"""Malformed training files fed to each recipe (sft, reward_model, grpo_two_stage).

Each file is a handful of good rows with one bad row (or an empty file). With ``on_bad_row: error``
every recipe stops with exit status 2 and the data error of ``align.data`` (file:line, field, why)
before it trains anything: no ``final/``, no metrics, no checkpoint; the GRPO recipe checks every
stage's data before it starts Ray. With ``on_bad_row: skip`` all the bad rows of one file land in
``rejected_rows.jsonl`` (line, field), the recipe trains on the good rows only, and says how many.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "recipes" / "configs" / "tiny"
N_GOOD = 12
BAD_AT = 5  # the bad row's line (1-based)


def _huge(row: dict, key: str) -> dict:
    from align.data import MAX_ROW_BYTES

    return {**row, key: "x" * (MAX_ROW_BYTES + 10)}


def _turns(*pairs: tuple[str, str]) -> list[dict]:
    return [{"role": role, "content": content} for role, content in pairs]


# recipe -> {kind: (bad line or None for an empty file, field named in the error or None, reason)}
def bad_rows(recipe: str, good: dict) -> dict[str, tuple[bytes | None, str | None, str]]:
    def line(obj) -> bytes:
        return json.dumps(obj).encode()

    common = {
        "bad_json": (b'{"prompt": "unclosed', None, "invalid JSON"),
        "non_utf8": (b'{"prompt": "caf\xe9 \xff"}', None, "not valid UTF-8"),
        "empty_file": (None, None, "no rows"),
    }
    if recipe == "sft":
        return {
            **common,
            "missing_column": (line({"text": "hi"}), None, "no known columns (has: text)"),
            "wrong_type": (line({"messages": "hello"}), "messages", "expected a list"),
            "empty_prompt": (
                line({"messages": _turns(("user", ""), ("assistant", "a"))}),
                "messages[0].content",
                "empty",
            ),
            "huge_row": (line(_huge(good, "pad")), None, "over the 1,000,000-byte limit"),
            "turns_out_of_order": (
                line({"messages": _turns(("assistant", "a"), ("user", "q"))}),
                "messages[0].role",
                "expected 'user'",
            ),
        }
    if recipe == "reward_model":
        return {
            **common,
            "missing_column": (line({"prompt": "q", "chosen": "a"}), "rejected", "missing"),
            "wrong_type": (line({"prompt": "q", "chosen": 5, "rejected": "b"}), "chosen", "integer 5"),
            "empty_prompt": (line({"prompt": "", "chosen": "a", "rejected": "b"}), "prompt", "empty"),
            "huge_row": (line(_huge(good, "pad")), None, "over the 1,000,000-byte limit"),
            "chosen_equals_rejected": (
                line({"prompt": "q", "chosen": "same", "rejected": "same"}),
                "chosen",
                "equal to 'rejected'",
            ),
        }
    return {  # grpo: rl rows (prompt + the columns rewards read)
        **common,
        "missing_column": (line({"answer": "3", "level": 1}), "prompt", "missing"),
        "wrong_type": (line({**good, "prompt": 7}), "prompt", "integer 7"),
        "empty_prompt": (line({**good, "prompt": ""}), "prompt", "empty"),
        "huge_row": (line(_huge(good, "pad")), None, "over the 1,000,000-byte limit"),
        "turns_out_of_order": (
            line({**good, "prompt": _turns(("assistant", "a"))}),
            "prompt[0].role",
            "'user'",
        ),
    }


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Path]:
    """A tiny DeepSeek-V2 and a few good rows of each recipe's data."""
    from align.models import make_tiny_model
    from recipes import make_data

    root = tmp_path_factory.mktemp("bad_data")
    model = Path(make_tiny_model("deepseek_v2", "tiny", root / "model", seed=0))
    data = root / "data"
    args = [f"output_dir={data}", "math.levels=[1]"]
    for task in ("math", "code", "helpful", "safety", "chat", "sft_chat"):
        args += [f"{task}.train_size=16", f"{task}.eval_size=4"]
    assert make_data.main(["--config", str(TINY / "data.yaml"), *args]) == 0
    good = {
        "sft": data / "sft_chat" / "train.jsonl",
        "reward_model": data / "helpful" / "train.jsonl",
        "grpo": data / "math" / "train.jsonl",
    }
    return {"root": root, "model": model, **good}


def good_rows(base, recipe: str) -> list[dict]:
    rows = [json.loads(x) for x in base[recipe].read_text().splitlines()][:N_GOOD]
    if recipe == "grpo":
        rows = [{k: r[k] for k in ("prompt", "answer", "level")} for r in rows]
    if recipe == "sft":
        rows = [{"messages": r["messages"]} for r in rows]
    return rows


def write_bad_file(path: Path, good: list[dict], bad: bytes | None) -> Path:
    if bad is None:
        path.write_bytes(b"")
        return path
    lines = [json.dumps(r).encode() for r in good]
    lines.insert(BAD_AT - 1, bad)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def recipe_argv(recipe: str, base, train: Path, out: Path, *extra: str) -> list[str]:
    if recipe == "sft":
        return [
            "--config", str(TINY / "sft.yaml"), f"output_dir={out}", f"model.path={base['model']}",
            f"data.train=[{train}]", "train.max_steps=2", "train.batch_size=4", "train.logging_steps=1", *extra,
        ]  # fmt: skip
    if recipe == "reward_model":
        return [
            "--config", str(TINY / "rm_helpful.yaml"), f"output_dir={out}", f"model.path={base['model']}",
            f"data.train=[{train}]", "data.eval=[]", "train.max_steps=2", "train.batch_size=4", *extra,
        ]  # fmt: skip
    cfg = yaml.safe_load((TINY / "grpo_two_stage.yaml").read_text())
    cfg["output_dir"], cfg["model"]["path"] = str(out), str(base["model"])
    stage = cfg["stages"][0]
    stage["data"] = {"train": [str(train)], "format": "rl", **dict(x.split("=", 1) for x in extra)}
    stage["rewards"] = {"math": {"spec": "math", "weight": 1.0}}
    stage["steps"] = 1
    cfg["stages"] = [stage]
    cfg["rollout"].update(cpus_per_worker=0.25, kv_cache_gib=0.25, max_tokens=16)
    cfg["trainer"].update(cpus_per_worker=0.25, num_workers=1)
    cfg["grpo"].update(prompts_per_step=2, group_size=2)
    cfg["eval"]["enabled"], cfg["report"] = False, False
    path = out.parent / f"{out.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return ["--config", str(path)]


def run_in_process(recipe: str, argv: list[str]) -> int:
    from recipes import grpo_two_stage, reward_model, sft

    main = {"sft": sft.main, "reward_model": reward_model.main, "grpo": grpo_two_stage.main}[recipe]
    handler = signal.getsignal(signal.SIGTERM)
    try:
        return main(argv)
    finally:
        signal.signal(signal.SIGTERM, handler)  # the GRPO recipe installs its own


CASES = [
    (recipe, kind)
    for recipe, kinds in {
        "sft": ["bad_json", "non_utf8", "empty_file", "missing_column", "wrong_type", "empty_prompt", "huge_row", "turns_out_of_order"],
        "reward_model": ["bad_json", "non_utf8", "empty_file", "missing_column", "wrong_type", "empty_prompt", "huge_row", "chosen_equals_rejected"],
        "grpo": ["bad_json", "non_utf8", "empty_file", "missing_column", "wrong_type", "empty_prompt", "huge_row", "turns_out_of_order"],
    }.items()
    for kind in kinds
]  # fmt: skip


@pytest.mark.parametrize(("recipe", "kind"), CASES)
def test_a_bad_row_stops_the_recipe_before_training(base, tmp_path, capsys, recipe, kind):
    good = good_rows(base, recipe)
    bad, field, reason = bad_rows(recipe, good[0])[kind]
    train = write_bad_file(tmp_path / f"{kind}.jsonl", good, bad)
    out = tmp_path / "run"
    assert run_in_process(recipe, recipe_argv(recipe, base, train, out)) == 2
    err = capsys.readouterr().err
    prefix = {"sft": "sft", "reward_model": "reward_model", "grpo": "grpo"}[recipe]
    assert f"{prefix}: data error: " in err, err
    if bad is None:
        assert str(train) in err and reason in err, err
    else:
        assert f"{train}:{BAD_AT}: " in err, err  # file:line
        if field:
            assert f"field '{field}'" in err, err
        assert reason in err, err
    # nothing was trained on: no model, no metrics, no checkpoint
    assert not (out / "final").exists() and not (out / "metrics.jsonl").exists()
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())


@pytest.mark.parametrize("recipe", ["sft", "reward_model"])
def test_skip_mode_rejects_every_bad_row_and_trains_on_the_good_ones(base, tmp_path, capsys, recipe):
    good = good_rows(base, recipe)
    kinds = {k: v for k, v in bad_rows(recipe, good[0]).items() if v[0] is not None}
    lines = [json.dumps(r).encode() for r in good]
    for bad, _, _ in kinds.values():  # the bad rows at lines N_GOOD+1, N_GOOD+2, ...
        lines.append(bad)
    train = tmp_path / "mixed.jsonl"
    train.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "run"
    argv = recipe_argv(recipe, base, train, out, "data.on_bad_row=skip", "data.max_bad_fraction=0.5")
    assert run_in_process(recipe, argv) == 0
    printed = capsys.readouterr().out
    n_bad = len(kinds)
    assert (
        f"train: {N_GOOD} rows" in printed and f"{n_bad} of {N_GOOD + n_bad} rows bad and skipped" in printed
    )
    records = [json.loads(x) for x in (out / "rejected_rows.jsonl").read_text().splitlines()]
    assert [r["line"] for r in records] == list(range(N_GOOD + 1, N_GOOD + n_bad + 1))
    for record, (kind, (_, field, _)) in zip(records, kinds.items()):
        assert record["split"] == "train" and record["source"] == str(train), kind
        assert record["field"] == field, (kind, record)
    assert (out / "final" / "config.json").is_file()


@pytest.mark.slow
def test_grpo_skip_mode_rejects_every_bad_row_and_trains_on_the_good_ones(base, tmp_path):
    good = good_rows(base, "grpo")
    kinds = {k: v for k, v in bad_rows("grpo", good[0]).items() if v[0] is not None}
    lines = [json.dumps(r).encode() for r in good] + [bad for bad, _, _ in kinds.values()]
    train = tmp_path / "mixed.jsonl"
    train.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "run"
    argv = recipe_argv("grpo", base, train, out, "on_bad_row=skip", "max_bad_fraction=0.5")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "grpo_two_stage.py"), *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    n_bad = len(kinds)
    assert f"reasoning/train: {N_GOOD} rows" in proc.stdout
    assert f"{n_bad} of {N_GOOD + n_bad} rows bad and skipped" in proc.stdout
    records = [json.loads(x) for x in (out / "rejected_rows.jsonl").read_text().splitlines()]
    assert [r["line"] for r in records] == list(range(N_GOOD + 1, N_GOOD + n_bad + 1))
    assert all(r["split"] == "reasoning/train" for r in records)
    # the one step drew its prompts from the good rows only
    (step,) = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert step["data_indices"] and all(0 <= i < N_GOOD for i in step["data_indices"])
    assert (out / "final" / "config.json").is_file()
