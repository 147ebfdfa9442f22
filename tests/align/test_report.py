"""align.report on a synthetic two-stage GRPO run directory."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from align.report import EVAL_KEYS, PLOTS, ReportError, read_metrics, summary_table, write_report

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Stage "reasoning": steps 1-8; stage "preference": steps 9-14.
REASONING = range(1, 9)
PREFERENCE = range(9, 15)

EVALS = {
    "sft": {"math_acc": 0.25, "code_pass": 0.5, "helpful_rm": -1.0, "safety_rm": 0.5,
            "unsafe_refusal_rate": 0.4, "benign_refusal_rate": 0.1, "n_math": 200},
    "stage1": {"math_acc": 0.5, "code_pass": 0.625, "helpful_rm": -0.5, "safety_rm": 0.25,
               "unsafe_refusal_rate": 0.3, "benign_refusal_rate": None, "n_math": 200},
    "stage2": {"math_acc": 0.375, "code_pass": 0.5, "helpful_rm": 1.5, "safety_rm": 2.0,
               "unsafe_refusal_rate": 0.9},  # benign_refusal_rate missing
}  # fmt: skip


def record(step: int) -> dict:
    stage = "reasoning" if step in REASONING else "preference"
    r = {"step": step, "stage": stage, "time_s": 2.0 * step, "reward/mean": step / 10}
    if stage == "reasoning":
        r.update({"reward/math/mean": step / 20, "reward/code/mean": 1.0, "reward/code/timeout_frac": 0.5})
    else:
        r.update({"reward/helpful/mean": float(step), "reward/safety/mean": -1.0, "reward/safety/std": 3.0})
    r.update(
        {
            "reward/std": 0.5,
            "train/kl": 0.01 * step,
            "train/pg_loss": 0.1,
            "completion/length_mean": 100.0 + step,
            "timing/gen": 1.0,
            "timing/reward": 0.5,
            "timing/update": 0.25,
            "timing/weight_sync": 0.125,
            "timing/step": 2.0,
        }
    )
    return r


def make_run(tmp_path: Path, steps=(*REASONING, *PREFERENCE), evals=("sft", "stage1", "stage2")) -> Path:
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(record(s)) + "\n" for s in steps))
    for label in evals:
        (run / "eval" / f"{label}.json").write_text(json.dumps(EVALS[label]))
    return run


def mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs)


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 5000, (path, len(data))


def test_full_report(tmp_path):
    run = make_run(tmp_path)
    summary = write_report(run)
    out = run / "report"

    assert json.loads((out / "summary.json").read_text()) == summary
    assert list(summary)[:3] == ["sft", "stage1", "stage2"]
    for label in ("sft", "stage1", "stage2"):
        assert set(summary[label]) == set(EVAL_KEYS)
    assert summary["stage1"]["math_acc"] == 0.5
    assert summary["stage1"]["benign_refusal_rate"] is None
    assert summary["stage2"]["benign_refusal_rate"] is None  # missing key -> null
    assert "n_math" not in summary["sft"]

    training = summary["training"]
    assert list(training) == ["reasoning", "preference"]
    r, p = training["reasoning"], training["preference"]
    assert (r["steps"], r["first_step"], r["last_step"]) == (8, 1, 8)
    assert (p["steps"], p["first_step"], p["last_step"]) == (6, 9, 14)
    assert r["reward_first5"] == pytest.approx(mean(s / 10 for s in range(1, 6)))
    assert r["reward_last5"] == pytest.approx(mean(s / 10 for s in range(4, 9)))  # 0.6
    assert r["reward_last5"] == pytest.approx(0.6)
    assert p["reward_last5"] == pytest.approx(mean(s / 10 for s in range(10, 15)))
    assert set(r["components"]) == {"math", "code"}
    assert set(p["components"]) == {"helpful", "safety"}
    assert r["components"]["math"]["mean"] == pytest.approx(mean(s / 20 for s in REASONING))
    assert r["components"]["math"]["last5"] == pytest.approx(mean(s / 20 for s in range(4, 9)))
    assert p["components"]["helpful"]["first5"] == pytest.approx(mean(range(9, 14)))
    assert r["kl_mean"] == pytest.approx(mean(0.01 * s for s in REASONING))
    assert p["length_mean"] == pytest.approx(mean(100.0 + s for s in PREFERENCE))
    assert r["step_time_mean"] == pytest.approx(2.0)
    assert p["total_time_s"] == pytest.approx(12.0)

    assert summary["plots"] == list(PLOTS)
    assert summary["skipped_plots"] == {}
    for name in PLOTS:
        assert_png(out / name)

    md = (out / "summary.md").read_text()
    assert "| metric | sft | stage1 | stage2 | stage1-sft | stage2-stage1 |" in md
    assert "| math_acc | 0.250 | 0.500 | 0.375 | +0.250 | -0.125 |" in md
    assert "| benign_refusal_rate | 0.100 | n/a | n/a | n/a | n/a |" in md
    assert "| reasoning | 8 | 0.300 | 0.600 |" in md
    for name in PLOTS:
        assert f"]({name})" in md

    table = summary_table(summary)
    assert "stage2-stage1" in table
    assert table.splitlines()[2].split() == ["math_acc", "0.250", "0.500", "0.375", "+0.250", "-0.125"]


def test_only_stage1_finished(tmp_path):
    run = make_run(tmp_path, steps=REASONING, evals=("sft", "stage1"))
    summary = write_report(run)
    assert [k for k in summary if k not in ("training", "plots", "skipped_plots")] == ["sft", "stage1"]
    assert list(summary["training"]) == ["reasoning"]
    md = (run / "report" / "summary.md").read_text()
    assert "| metric | sft | stage1 | stage1-sft |" in md
    assert "stage2" not in md
    assert "stage2" not in summary_table(summary)
    assert summary["plots"] == list(PLOTS)


def test_truncated_last_line_is_skipped(tmp_path, caplog):
    run = make_run(tmp_path)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 15, "stage": "prefer')
    with caplog.at_level(logging.WARNING, logger="align.report"):
        summary = write_report(run)
    assert summary["training"]["preference"]["steps"] == 6
    assert any("metrics.jsonl:15" in m and "truncated" in m for m in caplog.messages)


def test_malformed_middle_line_names_file_and_line(tmp_path):
    run = make_run(tmp_path)
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = '{"step": 3, "stage": oops}\n'
    path.write_text("".join(lines))
    with pytest.raises(ReportError, match=r"metrics\.jsonl:3\b"):
        write_report(run)
    lines[2] = '["not", "an", "object"]\n'
    path.write_text("".join(lines))
    with pytest.raises(ReportError, match=r"metrics\.jsonl:3: .*JSON object"):
        read_metrics(path)


def test_resumed_run_keeps_last_record_per_step(tmp_path):
    run = make_run(tmp_path, steps=range(1, 7))
    with (run / "metrics.jsonl").open("a") as f:  # resumed from step 4: 5 and 6 written again
        for s in (5, 6, 7):
            f.write(json.dumps({**record(s), "reward/mean": 1.0}) + "\n")
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 8))
    assert [r["reward/mean"] for r in records[-3:]] == [1.0, 1.0, 1.0]


def test_partial_inputs_skip_plots(tmp_path):
    run = make_run(tmp_path)
    (run / "metrics.jsonl").unlink()
    summary = write_report(run)
    assert summary["training"] == {}
    assert summary["plots"] == ["heldout.png"]
    assert set(summary["skipped_plots"]) == set(PLOTS) - {"heldout.png"}
    assert "training:" not in summary_table(summary)
    assert "No training records" in (run / "report" / "summary.md").read_text()

    # metrics without train/kl and timing; no eval/: those plots skipped and stale PNGs removed
    run2 = tmp_path / "run2"
    run2.mkdir()
    (run2 / "report").mkdir()
    (run2 / "report" / "kl.png").write_bytes(b"stale")
    rows = [{"step": s, "stage": "reasoning", "reward/mean": 0.1 * s} for s in range(1, 4)]
    (run2 / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = write_report(run2)
    assert summary["plots"] == ["rewards.png"]
    assert not (run2 / "report" / "kl.png").exists()
    assert summary["training"]["reasoning"]["kl_mean"] is None
    assert "no held-out results" in summary_table(summary)
    md = (run2 / "report" / "summary.md").read_text()
    assert "`kl.png` skipped" in md


def test_cli(tmp_path):
    run = make_run(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "align.report", str(run)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "stage2-stage1" in proc.stdout
    assert "math_acc" in proc.stdout and "benign_refusal_rate" in proc.stdout
    assert (run / "report" / "summary.json").is_file()

    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "align.report", str(empty)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "neither metrics.jsonl nor eval/" in proc.stderr
