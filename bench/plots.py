"""Plots of the benchmark JSON files for docs/benchmarks.md (``make bench`` runs it last).

    python bench/plots.py [--results bench/results] [--out docs/img]

Writes, for each input that exists:
- ``bench_reward_curves.png``: mean reward per GRPO step, this toolkit and TRL (``grpo_vs_trl*.json``);
- ``bench_time_to_accuracy*.png``: held-out accuracy against training time, both sides, one per
  ``time_to_accuracy*.json``, with TRL's final accuracy as a line;
- ``bench_scaling.png``: step time against completions per step, log-log, with the fitted exponent
  (``scaling.json``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _figure(width: float = 6.0, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _finish(fig, ax, out: Path, which: str = "major") -> Path:
    """Grid, legend, layout; save to ``out``."""
    ax.grid(alpha=0.3, which=which)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    return out


def reward_curves(results: list[tuple[str, dict]], out: Path) -> Path:
    fig, ax = _figure()
    for (label, d), style in zip(results, ("-", "--", ":")):
        for side, color in (("ours", "tab:blue"), ("trl", "tab:orange")):
            ys = d.get(f"{side}_rewards") or []
            name = "this toolkit" if side == "ours" else f"TRL ({d.get('trl_mode', '')})"
            ax.plot(range(1, len(ys) + 1), ys, style, color=color, marker="o", ms=3, label=f"{name}, {label}")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean reward (math)")
    ax.set_title("Reward per step, same SFT start, prompts and seeds")
    return _finish(fig, ax, out)


def time_to_accuracy(d: dict, out: Path) -> Path:
    fig, ax = _figure()
    for side, color, name in (("ours", "tab:blue", "this toolkit"), ("trl", "tab:orange", "TRL")):
        curve = d.get(f"{side}_curve") or []
        ax.plot([p["time_s"] for p in curve], [p["acc"] for p in curve], "-o", ms=3, color=color, label=name)
    if d.get("trl_final_acc") is not None:
        ax.axhline(d["trl_final_acc"], color="tab:orange", ls=":", lw=1, label="TRL's final accuracy")
    ax.set_xlabel("training time (s, generation + update, evaluation excluded)")
    ax.set_ylabel("held-out accuracy (greedy)")
    lr = (d.get("settings") or {}).get("lr")
    ax.set_title("Held-out math accuracy against time" + (f" (lr {float(lr):g})" if lr else ""))
    return _finish(fig, ax, out)


def scaling(d: dict, out: Path) -> Path:
    fig, ax = _figure()
    rows = d.get("results") or []
    xs = [r["completions"] for r in rows]
    ys = [r["step_s"] for r in rows]
    ax.loglog(xs, ys, "o", color="tab:blue", label="step time")
    if d.get("exponent") is not None and xs:
        import math

        # the least-squares line in log-log space passes through the means of log x and log y
        ym = math.exp(sum(math.log(y) for y in ys) / len(ys))
        xm = math.exp(sum(math.log(x) for x in xs) / len(xs))
        fit = [ym * (x / xm) ** d["exponent"] for x in sorted(xs)]
        ax.loglog(sorted(xs), fit, "-", color="gray", label=f"fit: exponent {d['exponent']:.2f}")
    ax.set_xlabel("completions per step")
    ax.set_ylabel("step time (s)")
    ax.set_title("GRPO step time against batch size")
    return _finish(fig, ax, out, which="both")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="bench/results")
    p.add_argument("--out", default="docs/img")
    args = p.parse_args(argv)
    results, out = Path(args.results), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    vs = [(f.stem.removeprefix("grpo_vs_trl").strip("_") or "run", json.loads(f.read_text()))
          for f in sorted(results.glob("grpo_vs_trl*.json"))]  # fmt: skip
    if vs:
        written.append(reward_curves(vs, out / "bench_reward_curves.png"))
    for f in sorted(results.glob("time_to_accuracy*.json")):  # one plot per run (e.g. _lr1e-3)
        d = json.loads(f.read_text())
        written.append(time_to_accuracy(d, out / f"bench_{f.stem}.png"))
    if (results / "scaling.json").is_file():
        written.append(scaling(json.loads((results / "scaling.json").read_text()), out / "bench_scaling.png"))
    for path in written:
        print(f"wrote {path}")
    if not written:
        print(f"no benchmark results in {results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
