"""Summarise a GRPO run directory: plots, ``summary.json`` and ``summary.md`` under ``RUN_DIR/report/``.

Usage::

    python -m align.report RUN_DIR          # writes RUN_DIR/report/, prints the held-out table

Reads (each optional, but at least one of the first two must exist):

- ``metrics.jsonl``: one ``{"step", "stage", "time_s", <metric>: float, ...}`` object per step (see
  :class:`hybrid_engine.metrics.RunLog`). A truncated last line (a run killed mid-write) is skipped
  with a warning; any other malformed line is an error naming the file and line. When a resumed run
  repeated steps, the last record of each step wins.
- ``eval/<label>.json``: held-out results at ``sft`` (before stage 1), ``stage1``, ``stage2``, ...

Writes ``report/``: ``rewards.png``, ``heldout.png``, ``kl.png``, ``length.png``, ``timing.png`` (each
skipped, and listed under ``skipped_plots``, when its data is absent), ``summary.json``::

    {"sft": {<EVAL_KEYS>: float | null}, "stage1": {...}, ...,       # one entry per eval file
     "training": {<stage>: {"steps", "first_step", "last_step", "reward_mean", "reward_first5",
                            "reward_last5", "components": {<name>: {"mean", "first5", "last5"}},
                            "kl_mean", "length_mean", "step_time_mean", "total_time_s"}},
     "plots": ["rewards.png", ...], "skipped_plots": {"kl.png": "<why>", ...}}

and ``summary.md`` (held-out table with deltas between consecutive eval points, training table, images).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from align.evaluate import METRIC_KEYS

log = logging.getLogger(__name__)

EVAL_KEYS = METRIC_KEYS  # what align.evaluate writes to eval/<label>.json
RATE_KEYS = ("math_acc", "code_pass", "unsafe_refusal_rate", "benign_refusal_rate")  # in [0, 1]
RM_KEYS = ("helpful_rm", "safety_rm")  # reward-model scores, unbounded
RESERVED = ("training", "plots", "skipped_plots")  # summary.json keys that are not eval labels
PLOTS = ("rewards.png", "heldout.png", "kl.png", "length.png", "timing.png")
# timing/* phases in the order train_step runs them; others follow alphabetically.
PHASE_ORDER = (
    "gen",
    "reward",
    "sleep",
    "reload",
    "old_logp",
    "ref",
    "update",
    "wake",
    "weight_sync",
    "offload",
)
WINDOW = 5  # steps in the first/last-N reward means

_COMPONENT = re.compile(r"^reward/(.+)/mean$")


class ReportError(ValueError):
    """Bad or missing inputs (the message names the file, and the line where there is one)."""


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The per-step records of a ``metrics.jsonl``, sorted by step, one per step (the last wins)."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    by_step: dict[int, dict[str, Any]] = {}
    repeated = 0
    for k, (lineno, line) in enumerate(numbered):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"expected a JSON object, got {type(record).__name__}")
            step = record.get("step")
            if not isinstance(step, int) or isinstance(step, bool):
                raise ValueError(f"'step' must be an integer, got {step!r}")
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            if k == len(numbered) - 1:
                log.warning("%s:%d: skipping a truncated last line (%s)", path, lineno, e)
                continue
            raise ReportError(f"{path}:{lineno}: malformed record: {e}") from e
        if step in by_step:
            repeated += 1
        by_step[step] = record
    if repeated:
        log.info("%s: %d step(s) repeated (a resumed run); kept the last record of each", path, repeated)
    return [by_step[s] for s in sorted(by_step)]


def _label_key(label: str) -> tuple[int, int, str]:
    if label == "sft":
        return (0, 0, label)
    m = re.fullmatch(r"stage(\d+)", label)
    if m:
        return (1, int(m.group(1)), label)
    return (2, 0, label)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def read_evals(eval_dir: str | Path) -> dict[str, dict[str, float | None]]:
    """``{label: {EVAL_KEYS: float | None}}`` from ``eval/<label>.json``, in sft, stage1, stage2, ... order."""
    eval_dir = Path(eval_dir)
    if not eval_dir.is_dir():
        return {}
    out: dict[str, dict[str, float | None]] = {}
    for path in sorted(eval_dir.glob("*.json"), key=lambda p: _label_key(p.stem)):
        label = path.stem
        if label in RESERVED:
            log.warning("%s: ignored ('%s' is a reserved summary key)", path, label)
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ReportError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from e
        if not isinstance(data, dict):
            raise ReportError(f"{path}: expected a JSON object, got {type(data).__name__}")
        out[label] = {key: _number(data.get(key)) for key in EVAL_KEYS}
    return out


# ----------------------------------------------------------------------------------------------
# Training figures
# ----------------------------------------------------------------------------------------------


def _values(records: Iterable[dict[str, Any]], key: str) -> list[float]:
    return [v for r in records if (v := _number(r.get(key))) is not None]


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _stage_name(record: dict[str, Any]) -> str:
    stage = record.get("stage")
    return str(stage) if stage not in (None, "") else "(none)"


def split_stages(records: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records grouped by stage, stages in order of first appearance."""
    stages: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        stages.setdefault(_stage_name(r), []).append(r)
    return stages


def component_names(records: Iterable[dict[str, Any]]) -> list[str]:
    """Reward components with a ``reward/<name>/mean`` metric, in first-seen order."""
    names: dict[str, None] = {}
    for r in records:
        for key in r:
            m = _COMPONENT.match(key)
            if m:
                names.setdefault(m.group(1), None)
    return list(names)


def training_summary(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-stage figures (see the module doc). Means skip steps without the metric; None when none has it.
    ``total_time_s`` sums ``timing/step``."""
    out: dict[str, dict[str, Any]] = {}
    for stage, rows in split_stages(records).items():
        reward = _values(rows, "reward/mean")
        step_times = _values(rows, "timing/step")
        components = {}
        for name in component_names(rows):
            vals = _values(rows, f"reward/{name}/mean")
            components[name] = {
                "mean": _mean(vals),
                "first5": _mean(vals[:WINDOW]),
                "last5": _mean(vals[-WINDOW:]),
            }
        out[stage] = {
            "steps": len(rows),
            "first_step": rows[0]["step"],
            "last_step": rows[-1]["step"],
            "reward_mean": _mean(reward),
            "reward_first5": _mean(reward[:WINDOW]),
            "reward_last5": _mean(reward[-WINDOW:]),
            "components": components,
            "kl_mean": _mean(_values(rows, "train/kl")),
            "length_mean": _mean(_values(rows, "completion/length_mean")),
            "step_time_mean": _mean(step_times),
            "total_time_s": sum(step_times) if step_times else None,
        }
    return out


# ----------------------------------------------------------------------------------------------
# Plots (matplotlib's object API on an Agg canvas: no pyplot state, no display)
# ----------------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, format="png")


def _series(rows: Iterable[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = _number(r.get(key))
        if v is not None:
            xs.append(r["step"])
            ys.append(v)
    return xs, ys


def _plot_by_stage(records, key: str, title: str, ylabel: str, path: Path) -> str | None:
    """One metric vs step, a color per stage, dashed lines at stage boundaries. Returns why it was skipped."""
    stages = split_stages(records)
    if not any(_series(rows, key)[0] for rows in stages.values()):
        return f"no {key} in metrics.jsonl"
    fig = _figure(8, 4)
    ax = fig.add_subplot()
    for i, (stage, rows) in enumerate(stages.items()):
        xs, ys = _series(rows, key)
        if xs:
            ax.plot(xs, ys, marker="." if len(xs) < 50 else None, color=f"C{i}", label=stage)
        if i:
            ax.axvline(rows[0]["step"] - 0.5, color="grey", linestyle="--", linewidth=1)
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(title="stage")
    _save(fig, path)
    return None


def plot_rewards(records, path: Path) -> str | None:
    """``reward/mean`` and each ``reward/<component>/mean`` vs step, one subplot per stage."""
    stages = split_stages(records)
    names = component_names(records)
    keys = ["reward/mean"] + [f"reward/{n}/mean" for n in names]
    if not any(_series(records, k)[0] for k in keys):
        return "no reward/* means in metrics.jsonl"
    fig = _figure(max(6, 5 * len(stages)), 4)
    axes = fig.subplots(1, len(stages), squeeze=False)[0]
    for ax, (stage, rows) in zip(axes, stages.items()):
        xs, ys = _series(rows, "reward/mean")
        if xs:
            ax.plot(xs, ys, color="black", linewidth=2, label="total")
        for j, name in enumerate(names):
            xs, ys = _series(rows, f"reward/{name}/mean")
            if xs:
                ax.plot(xs, ys, color=f"C{j}", label=name)
        ax.set(title=f"stage: {stage}", xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    axes[0].set_ylabel("mean reward")
    _save(fig, path)
    return None


def plot_heldout(evals: dict[str, dict[str, float | None]], path: Path) -> str | None:
    """Held-out rates (left) and reward-model scores (right) across the eval points."""
    if not any(v is not None for e in evals.values() for v in e.values()):
        return "no eval/*.json with held-out metrics"
    labels = list(evals)
    fig = _figure(11, 4)
    axes = fig.subplots(1, 2)
    for ax, keys, title in (
        (axes[0], RATE_KEYS, "held-out rates"),
        (axes[1], RM_KEYS, "reward-model scores"),
    ):
        for j, key in enumerate(keys):
            ys = [evals[label][key] for label in labels]
            if any(y is not None for y in ys):
                ys = [math.nan if y is None else y for y in ys]
                ax.plot(range(len(labels)), ys, marker="o", color=f"C{j}", label=key)
        ax.set_xticks(range(len(labels)), labels)
        ax.set(title=title, xlabel="eval point")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    axes[0].set_ylim(-0.02, 1.02)
    _save(fig, path)
    return None


def _phase_key(name: str) -> tuple[int, str]:
    return (PHASE_ORDER.index(name), "") if name in PHASE_ORDER else (len(PHASE_ORDER), name)


def plot_timing(records, path: Path) -> str | None:
    """Mean seconds per step by phase (``timing/*`` but ``timing/step``), a stacked bar per stage;
    ``other`` is ``timing/step`` less the phases."""
    phases = sorted(
        {k.removeprefix("timing/") for r in records for k in r if k.startswith("timing/")} - {"step"},
        key=_phase_key,
    )
    if not phases:
        return "no timing/* phases in metrics.jsonl"
    stages = split_stages(records)
    means = {p: [_mean(_values(rows, f"timing/{p}")) or 0.0 for rows in stages.values()] for p in phases}
    totals = [_mean(_values(rows, "timing/step")) for rows in stages.values()]
    other = [max(0.0, t - sum(means[p][i] for p in phases)) if t else 0.0 for i, t in enumerate(totals)]
    if any(other):
        means["other"] = other
    fig = _figure(max(5, 1.6 * len(stages) + 3), 4.5)
    ax = fig.add_subplot()
    x = list(range(len(stages)))
    bottom = [0.0] * len(stages)
    for j, (phase, heights) in enumerate(means.items()):
        ax.bar(x, heights, bottom=bottom, color=f"C{j % 10}", label=phase, width=0.6)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_xticks(x, list(stages))
    ax.set(title="mean step time by phase", xlabel="stage", ylabel="seconds per step")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    _save(fig, path)
    return None


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------


def eval_labels(summary: dict[str, Any]) -> list[str]:
    """The eval points of a summary, in sft, stage1, stage2, ... order."""
    return sorted(
        (k for k, v in summary.items() if k not in RESERVED and isinstance(v, dict)), key=_label_key
    )


def _fmt(value: float | None, digits: int = 3, sign: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def eval_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the held-out table: one row per EVAL_KEYS metric, a column per eval point,
    then the delta of each eval point over the previous one."""
    labels = eval_labels(summary)
    pairs = list(zip(labels[1:], labels[:-1]))
    header = ["metric", *labels, *(f"{a}-{b}" for a, b in pairs)]
    rows = []
    for key in EVAL_KEYS:
        values = [summary[label].get(key) for label in labels]
        deltas = [
            None
            if summary[a].get(key) is None or summary[b].get(key) is None
            else summary[a][key] - summary[b][key]
            for a, b in pairs
        ]
        rows.append([key, *(_fmt(v) for v in values), *(_fmt(d, sign=True) for d in deltas)])
    return header, rows


def training_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the training table: one row per stage."""
    training = summary.get("training") or {}
    names: dict[str, None] = {}
    for fig in training.values():
        names.update(dict.fromkeys(fig.get("components", {})))
    header = [
        "stage",
        "steps",
        "reward first-5",
        "reward last-5",
        *(f"{n} mean" for n in names),
        "kl mean",
        "step s mean",
        "total s",
    ]
    rows = []
    for stage, fig in training.items():
        comps = fig.get("components", {})
        rows.append(
            [
                stage,
                str(fig["steps"]),
                _fmt(fig["reward_first5"]),
                _fmt(fig["reward_last5"]),
                *(_fmt(comps.get(n, {}).get("mean")) for n in names),
                _fmt(fig["kl_mean"], 4),
                _fmt(fig["step_time_mean"], 2),
                _fmt(fig["total_time_s"], 1),
            ]
        )
    return header, rows


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def summary_table(summary: dict[str, Any]) -> str:
    """Plain-text held-out table (and the training table when there was training) for the console."""
    parts = []
    if eval_labels(summary):
        parts.append(_text_table(*eval_rows(summary)))
    else:
        parts.append("(no held-out results: no eval/*.json)")
    if summary.get("training"):
        parts.append("training:\n" + _text_table(*training_rows(summary)))
    return "\n\n".join(parts)


def summary_markdown(summary: dict[str, Any], title: str = "Run report") -> str:
    out = [f"# {title}", "", "## Held-out evaluation", ""]
    if eval_labels(summary):
        out.append(_md_table(*eval_rows(summary)))
    else:
        out.append("No held-out results (no `eval/*.json`).")
    out += ["", "## Training", ""]
    if summary.get("training"):
        out.append(_md_table(*training_rows(summary)))
        out += [
            "",
            f"Reward first-5 / last-5: mean `reward/mean` over a stage's first / last {WINDOW} steps.",
        ]
    else:
        out.append("No training records (no `metrics.jsonl` or it is empty).")
    out += ["", "## Plots", ""]
    for name in summary.get("plots", []):
        out += [f"![{name.removesuffix('.png')}]({name})", ""]
    for name, why in summary.get("skipped_plots", {}).items():
        out.append(f"- `{name}` skipped: {why}")
    return "\n".join(out).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------


def write_report(run_dir: str | Path) -> dict[str, Any]:
    """Write ``run_dir/report/`` (plots, ``summary.json``, ``summary.md``) and return the summary.
    Raises :class:`ReportError` when the run has neither ``metrics.jsonl`` nor ``eval/``, or an input
    is malformed."""
    run_dir = Path(run_dir)
    metrics_path, eval_dir = run_dir / "metrics.jsonl", run_dir / "eval"
    if not metrics_path.is_file() and not eval_dir.is_dir():
        raise ReportError(f"{run_dir}: neither metrics.jsonl nor eval/ found; is this a GRPO run directory?")
    records = read_metrics(metrics_path) if metrics_path.is_file() else []
    evals = read_evals(eval_dir)
    out_dir = run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)

    summary: dict[str, Any] = dict(evals)
    summary["training"] = training_summary(records)
    makers = {
        "rewards.png": lambda p: plot_rewards(records, p),
        "heldout.png": lambda p: plot_heldout(evals, p),
        "kl.png": lambda p: _plot_by_stage(records, "train/kl", "KL to the reference", "train/kl", p),
        "length.png": lambda p: _plot_by_stage(
            records, "completion/length_mean", "mean completion length", "tokens", p
        ),
        "timing.png": lambda p: plot_timing(records, p),
    }
    plots, skipped = [], {}
    for name, make in makers.items():
        path = out_dir / name
        why = make(path)
        if why is None:
            plots.append(name)
            log.info("wrote %s", path)
        else:
            skipped[name] = why
            path.unlink(missing_ok=True)  # a stale plot from an earlier report
            log.info("skipped %s: %s", name, why)
    summary["plots"] = plots
    summary["skipped_plots"] = skipped

    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out_dir / "summary.md").write_text(
        summary_markdown(summary, title=f"Run report: {run_dir.resolve().name}"), encoding="utf-8"
    )
    log.info("wrote %s and %s", out_dir / "summary.json", out_dir / "summary.md")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m align.report",
        description="Plot and summarise a GRPO run directory into RUN_DIR/report/.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s"
    )
    try:
        summary = write_report(args.run_dir)
    except ReportError as e:
        print(f"report error: {e}", file=sys.stderr)
        return 2
    print(summary_table(summary))
    print(f"\nreport: {Path(args.run_dir) / 'report'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
