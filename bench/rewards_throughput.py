r"""Reward throughput on the CPU: the ``math`` reward (math-verify in its worker pool) and the sandbox.

    python bench/rewards_throughput.py --json out/bench/rewards_throughput.json
    python bench/rewards_throughput.py --batches 5 --sandbox-programs 20      # quick check

``math_per_s``: completions scored per second by ``rewards.load("math")`` on GRPO-shaped batches
(``--prompts`` problems x ``--group`` samples, 16 x 8 as in the recipes; a group shares one gold
answer) of ordinary completions: right and wrong ``\boxed{...}`` and ``#### N`` answers, equivalent forms (``\frac``,
decimals), no answer, and two conflicting answers; gold answers plain or GSM8K-style (``#### N``).
Every batch has new problems, so math-verify's parse cache helps only within a group, as in
training. The pool start-up and one warm-up batch are not timed. Every score is checked against the
label the completion was made with (``math_mismatches`` must be 0, or the figure means nothing).

``sandbox_per_s``: trivial programs (``print(1)``) through ``rewards.sandbox.run``, one at a time and
``--threads`` at a time from a thread pool; the better of the two. The first program (which runs
the isolation probe) and a few warm-up ones are not timed.

Targets: math >= 200 completions/s on 2 cores, sandbox >= 10 programs/s. CPU seconds are reported
too (this process plus the math workers / the sandboxed programs): other jobs on a shared machine
disturb per-CPU-second figures much less than per-second ones.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))

TARGETS = {"math_per_s": 200.0, "sandbox_per_s": 10.0}

# Kinds of completion and how often each occurs; the label is the score a correct reward gives.
KINDS = (
    ("boxed_right", 0.34, 1.0),
    ("boxed_wrong", 0.20, 0.0),
    ("hash_right", 0.14, 1.0),
    ("hash_wrong", 0.10, 0.0),
    ("equivalent", 0.10, 1.0),
    ("no_answer", 0.07, 0.0),
    ("conflicting", 0.05, 0.0),
)
FILLER = (
    "Let me read the problem carefully.",
    "I will work through it step by step.",
    "First, note what we start with.",
    "Then apply each change in order.",
    "Checking the arithmetic once more.",
    "So the result follows.",
)


def make_completion(rng: random.Random, row: dict, kind: str) -> str:
    """One completion of `kind` for a math row (its steps, then the answer in the kind's form)."""
    gold = int(row["answer"])
    steps = row["solution"].rsplit("\\boxed", 1)[0].strip()
    wrong = gold + rng.choice((-10, -2, -1, 1, 2, 3, 10))
    talk = " ".join(rng.sample(FILLER, rng.randint(2, 5)))
    body = f"{talk}\n{steps}\n"
    if kind == "boxed_right":
        return body + f"The answer is \\boxed{{{gold}}}."
    if kind == "boxed_wrong":
        return body + f"The answer is \\boxed{{{wrong}}}."
    if kind == "hash_right":
        return body + f"#### {gold}"
    if kind == "hash_wrong":
        return body + f"#### {wrong}"
    if kind == "equivalent":
        form = rng.choice(
            (f"\\frac{{{2 * gold}}}{{2}}", f"{gold}.0", f"{gold}.00", f"\\dfrac{{{3 * gold}}}{{3}}")
        )
        return body + f"So we get \\boxed{{{form}}}."
    if kind == "no_answer":
        return body + "Wait, let me recount the"
    if kind == "conflicting":
        return body + f"Maybe \\boxed{{{gold}}}, or rather\n#### {wrong}"
    raise ValueError(kind)


def make_batches(n_batches: int, prompts: int, group: int, seed: int) -> list[dict]:
    """`n_batches` GRPO batches: {"prompts", "completions", "answer", "labels", "kinds"}, each
    `prompts` new problems x `group` completions."""
    from align.configs import MathTaskConfig
    from align.tasks import make_math

    rng = random.Random(seed)
    rows, _ = make_math(
        MathTaskConfig(train_size=n_batches * prompts, eval_size=1, levels=[1, 2, 3]), seed=seed
    )
    names, weights, labels = zip(*KINDS)
    label_of = dict(zip(names, labels))
    batches = []
    for b in range(n_batches):
        batch = {"prompts": [], "completions": [], "answer": [], "labels": [], "kinds": []}
        for row in rows[b * prompts : (b + 1) * prompts]:
            gsm8k = rng.random() < 0.5  # gold as GSM8K writes it: the worked solution, then "#### N"
            gold = (
                f"{row['solution'].rsplit(chr(92) + 'boxed', 1)[0].strip()}\n#### {row['answer']}"
                if gsm8k
                else row["answer"]
            )
            for kind in rng.choices(names, weights, k=group):
                batch["prompts"].append(row["prompt"])
                batch["completions"].append(make_completion(rng, row, kind))
                batch["answer"].append(gold)
                batch["labels"].append(label_of[kind])
                batch["kinds"].append(kind)
        batches.append(batch)
    return batches


def pool_cpu_s(pool) -> float:
    """CPU seconds of the math pool's worker processes (user + system)."""
    import psutil

    total = 0.0
    for w in list(pool._all):
        try:
            t = psutil.Process(w.proc.pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def bench_math(args: argparse.Namespace) -> dict:
    import rewards
    from rewards.math_answer import shared_pool

    batches = make_batches(args.batches + 1, args.prompts, args.group, args.seed)
    start = time.perf_counter()
    math = rewards.load("math", **({"workers": args.math_workers} if args.math_workers else {}))
    pool = shared_pool()
    warm = batches.pop(0)
    math(warm["prompts"], warm["completions"], answer=warm["answer"])  # waits for the pool, then one batch
    startup_s = time.perf_counter() - start

    batch_s, mismatches, by_kind = [], 0, {}
    cpu0, wcpu0, t0 = time.process_time(), pool_cpu_s(pool), time.perf_counter()
    for batch in batches:
        b0 = time.perf_counter()
        scores = math(batch["prompts"], batch["completions"], answer=batch["answer"])
        batch_s.append(time.perf_counter() - b0)
        for kind, label, score in zip(batch["kinds"], batch["labels"], scores):
            ok = score == label
            mismatches += not ok
            n, bad = by_kind.get(kind, (0, 0))
            by_kind[kind] = (n + 1, bad + (not ok))
    seconds = time.perf_counter() - t0
    cpu_s = (time.process_time() - cpu0) + (pool_cpu_s(pool) - wcpu0)
    n = sum(len(b["completions"]) for b in batches)
    return {
        "math_per_s": n / seconds,
        "math_per_cpu_s": n / cpu_s if cpu_s > 0 else None,
        "completions": n,
        "batches": len(batches),
        "batch_size": args.prompts * args.group,
        "seconds": seconds,
        "cpu_s": cpu_s,
        "median_batch_s": median(batch_s),
        "max_batch_s": max(batch_s),
        "startup_and_warmup_s": startup_s,
        "workers": pool.size,
        "workers_replaced": pool.replaced,
        "math_mismatches": mismatches,
        "by_kind": {k: {"count": c, "mismatches": m} for k, (c, m) in sorted(by_kind.items())},
    }


def bench_sandbox(args: argparse.Namespace) -> dict:
    from rewards import sandbox

    def one(_=None) -> float:
        t = time.perf_counter()
        res = sandbox.run("print(1)", timeout_s=10.0, memory_mb=256)
        if not (res.ok and res.stdout == "1\n"):
            raise RuntimeError(f"sandbox program failed: {res}")
        return time.perf_counter() - t

    start = time.perf_counter()
    one()  # runs the isolation probe first
    first_s = time.perf_counter() - start
    for _ in range(3):
        one()

    def timed(run_all) -> dict:
        c0 = os.times()
        t0 = time.perf_counter()
        latencies = run_all()
        seconds = time.perf_counter() - t0
        c1 = os.times()
        cpu = sum(
            getattr(c1, k) - getattr(c0, k) for k in ("user", "system", "children_user", "children_system")
        )
        n = len(latencies)
        return {
            "per_s": n / seconds,
            "per_cpu_s": n / cpu if cpu > 0 else None,
            "programs": n,
            "seconds": seconds,
            "cpu_s": cpu,
            "median_latency_s": median(latencies),
            "max_latency_s": max(latencies),
        }

    sequential = timed(lambda: [one() for _ in range(args.sandbox_programs)])
    with ThreadPoolExecutor(max_workers=args.threads) as ex:
        concurrent = timed(lambda: list(ex.map(one, range(args.sandbox_programs))))
    best = max(("sequential", sequential), ("concurrent", concurrent), key=lambda kv: kv[1]["per_s"])
    return {
        "sandbox_per_s": best[1]["per_s"],
        "sandbox_best": best[0],
        "sequential": sequential,
        "concurrent": {**concurrent, "threads": args.threads},
        "first_program_with_probe_s": first_s,
        "mode": sandbox._ensure_isolation(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--prompts", type=int, default=16, help="problems per GRPO batch (the recipes: 16)")
    parser.add_argument(
        "--group", type=int, default=8, help="completions per problem (GRPO's G; the recipes: 8)"
    )
    parser.add_argument("--batches", type=int, default=30, help="timed math batches")
    parser.add_argument(
        "--math-workers", type=int, help="math-verify worker processes (default: the reward's)"
    )
    parser.add_argument("--sandbox-programs", type=int, default=40, help="programs per sandbox measurement")
    parser.add_argument(
        "--threads", type=int, default=2, help="threads of the concurrent sandbox measurement"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", choices=("math", "sandbox"), help="leave one part out")
    args = parser.parse_args()

    load_before = [round(x, 2) for x in os.getloadavg()]
    report: dict = {"targets": TARGETS}
    if args.skip != "math":
        m = bench_math(args)
        report["math_per_s"] = round(m["math_per_s"], 1)
        report["math"] = m
    if args.skip != "sandbox":
        s = bench_sandbox(args)
        report["sandbox_per_s"] = round(s["sandbox_per_s"], 2)
        report["sandbox"] = s
    report["meets_targets"] = {k: report[k] >= t for k, t in TARGETS.items() if k in report}
    if "math" in report and report["math"]["math_mismatches"]:
        report["meets_targets"]["math_per_s"] = False  # a reward that scores wrongly has no throughput
    report["settings"] = {
        k: getattr(args, k)
        for k in ("prompts", "group", "batches", "math_workers", "sandbox_programs", "threads", "seed")
    }
    report["machine"] = {**machine(), "load_avg_before": load_before}
    report["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")

    print(f"\n{'metric':<28}{'per s':>10}{'per CPU-s':>11}{'target':>8}  pass")
    if "math" in report:
        m = report["math"]
        print(
            f"{'math_per_s':<28}{m['math_per_s']:>10.1f}{m['math_per_cpu_s'] or 0:>11.1f}"
            f"{TARGETS['math_per_s']:>8.0f}  {report['meets_targets']['math_per_s']}"
        )
        print(
            f"  {m['completions']} completions in {m['batches']} batches of {m['batch_size']}, "
            f"{m['workers']} workers, median batch {m['median_batch_s']:.3f}s, mismatches {m['math_mismatches']}"
        )
    if "sandbox" in report:
        s = report["sandbox"]
        print(
            f"{'sandbox_per_s':<28}{s['sandbox_per_s']:>10.2f}{'':>11}"
            f"{TARGETS['sandbox_per_s']:>8.0f}  {report['meets_targets']['sandbox_per_s']}"
        )
        for label, part in (
            ("  sequential", s["sequential"]),
            (f"  concurrent ({args.threads} threads)", s["concurrent"]),
        ):
            print(
                f"{label:<28}{part['per_s']:>10.2f}{part['per_cpu_s'] or 0:>11.2f}"
                f"    median latency {part['median_latency_s'] * 1000:.0f} ms"
            )
    print(f"load average before: {load_before}  now: {report['machine']['load_avg']}")


if __name__ == "__main__":
    main()
