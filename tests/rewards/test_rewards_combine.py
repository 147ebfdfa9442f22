"""rewards.combine: weighted sums by hand, metrics, and per-sample isolation of failures."""

from __future__ import annotations

import asyncio
import inspect
import math
import threading
import time

import pytest

import rewards
from rewards import RewardError, combine

P = ["p0", "p1", "p2", "p3"]
C = ["a", "bb", "ccc", "dddd"]


def length(prompts, completions, **columns):
    return [float(len(c)) for c in completions]


def first_char_is_c(prompts, completions, **columns):
    return [None if c.startswith("a") else float(c.startswith("c")) for c in completions]


def test_weighted_sum_and_metrics_by_hand():
    total = combine({"len": (length, 0.5), "c": (first_char_is_c, 2.0)})
    out = total(P, C)
    # len: 1,2,3,4 -> x0.5 = .5,1,1.5,2 ; c: None,0,1,0 -> x2 = -,0,2,0
    assert out == [0.5, 1.0, 3.5, 2.0]
    m = total.last.metrics
    assert m["reward/len/mean"] == 2.5
    assert m["reward/len/std"] == pytest.approx(math.sqrt(1.25))
    assert m["reward/c/mean"] == pytest.approx(1 / 3)
    assert m["reward/c/none_frac"] == 0.25
    assert m["reward/c/error_frac"] == 0.0 and m["reward/c/timeout_frac"] == 0.0
    assert m["reward/mean"] == pytest.approx(7 / 4)
    assert total.last.components["c"] == [None, 0.0, 1.0, 0.0]


def test_all_none_components_give_none_and_strings_are_loaded():
    def never(prompts, completions, **columns):
        return [None] * len(completions)

    total = combine({"never": never, "len": ("length", 1.0)})
    assert total(["p"], ["x"]) == [0.0]  # built-in `length` loaded by name: inside the window
    assert combine({"never": (never, 1.0)})(["p", "q"], ["x", "y"]) == [None, None]


def test_exception_and_nan_on_one_sample_only_hit_that_sample():
    def picky(prompts, completions, **columns):
        out = []
        for c in completions:
            if c == "bb":
                raise ValueError("bad sample")
            out.append(float("nan") if c == "ccc" else 1.0)
        return out

    total = combine({"picky": (picky, 1.0)}, min_samples=100)
    assert total(P, C) == [1.0, None, None, 1.0]  # batch raised -> per-sample calls
    m = total.last.metrics
    assert m["reward/picky/error_frac"] == 0.5
    assert m["reward/picky/none_frac"] == 0.5


def test_wrong_length_return_falls_back_to_per_sample_calls():
    calls = []

    def only_first(prompts, completions, **columns):
        calls.append(len(completions))
        return [1.0]

    assert combine({"x": only_first})(P, C) == [1.0] * 4
    assert calls == [4, 1, 1, 1, 1]


def test_columns_are_sliced_per_sample_in_the_fallback():
    state = object()  # TRL passes objects such as trainer_state: passed through, not sliced

    def needs_answer(prompts, completions, answer, trainer_state, **columns):
        assert trainer_state is state
        if len(completions) > 1:
            raise RuntimeError("batch path broken")
        return [float(completions[0] == answer[0])]

    got = combine({"a": needs_answer})(P, C, answer=["a", "x", "ccc", "y"], trainer_state=state)
    assert got == [1.0, 0.0, 1.0, 0.0]


def test_hanging_sample_times_out_without_hanging_the_run():
    release = threading.Event()

    def hangs_on_ccc(prompts, completions, **columns):
        if "ccc" in completions:
            release.wait(30)
        return [1.0] * len(completions)

    total = combine({"h": hangs_on_ccc}, timeout_s=0.3, min_samples=100)
    t0 = time.monotonic()
    out = total(P, C)
    elapsed = time.monotonic() - t0
    release.set()
    assert out == [1.0, 1.0, None, 1.0]
    assert elapsed < 2.0  # batch deadline + one round of per-sample deadlines
    assert total.last.metrics["reward/h/timeout_frac"] == 0.25


def test_error_threshold_over_a_window_raises_reward_error():
    def broken_on_b(prompts, completions, **columns):
        if any("b" in c for c in completions):
            raise KeyError("answer")
        return [1.0] * len(completions)

    total = combine({"kb": broken_on_b}, max_error_frac=0.5, window=4, min_samples=4)
    total(["p"] * 4, ["a", "a", "a", "b"])  # 1/4 failed: fine
    total(["p"] * 2, ["a", "b"])  # window: a a b? -> last 4 = a,b,a,b: 2/4 is not > 0.5
    with pytest.raises(RewardError, match=r"'kb' failed on 3 of its last 4 samples.*KeyError: 'answer'"):
        total(["p"], ["b"])


def test_async_reward_batch_and_per_sample_timeouts():
    async def slow_on_ccc(prompts, completions, **columns):
        if "ccc" in completions:
            await asyncio.sleep(10)
        await asyncio.sleep(0.01)
        return [2.0] * len(completions)

    total = combine({"slow": (slow_on_ccc, 0.5)}, timeout_s=0.3, min_samples=100)
    t0 = time.monotonic()
    assert total(P, C) == [1.0, 1.0, None, 1.0]
    assert time.monotonic() - t0 < 2.5  # per-sample calls ran concurrently, the slow one cancelled
    assert total.last.metrics["reward/slow/timeout_frac"] == 0.25


def test_non_numbers_and_system_exit_are_errors_not_crashes():
    def weird(prompts, completions, **columns):
        if len(completions) > 1:
            raise SystemExit(3)
        return {"a": ["oops"], "bb": [True], "ccc": [float("inf")], "dddd": [7]}[completions[0]]

    total = combine({"w": weird}, min_samples=100)
    assert total(P, C) == [None, 1.0, None, 7.0]
    assert total.last.metrics["reward/w/error_frac"] == 0.5


def test_mismatched_columns_are_rejected():
    with pytest.raises(ValueError, match="one entry per sample"):
        combine({"len": length})(P, C, answer=["x"])


def test_too_many_hung_calls_declare_the_reward_broken():
    release = threading.Event()

    def always_hangs(prompts, completions, **columns):
        release.wait(30)
        return [0.0] * len(completions)

    total = combine({"stuck": always_hangs}, timeout_s=0.1, max_hung=3, min_samples=1000)
    try:
        with pytest.raises(RewardError, match="'stuck' has 5 calls still hanging"):
            total(P, C)  # the batch call and four per-sample calls are abandoned
    finally:
        release.set()


def test_rewards_are_called_with_keywords_like_trl():
    def completions_only(completions, **kwargs):  # the TRL docs' style: no `prompts` parameter
        return [float(len(c)) for c in completions]

    total = combine({"c": completions_only})
    assert total(P, C) == [1.0, 2.0, 3.0, 4.0]
    assert total(prompts=P, completions=C, completion_ids=[[1], [2], [3], [4]]) == [1.0, 2.0, 3.0, 4.0]


# ----------------------------------------------------------------------------------------------
# select_rows: a reward applied to some rows only (None, "not applicable", on the others)


def test_select_rows_scores_only_the_selected_rows_and_slices_their_columns():
    calls = []

    def rm(prompts, completions, category, answer, trainer_state=None):
        calls.append((list(prompts), list(completions), list(category), list(answer), trainer_state))
        return [10.0 * len(c) for c in completions]

    cat = ["math", "unsafe", "code", "lookalike"]
    ans = ["1", None, None, None]
    skip = rewards.select_rows(rm, skip={"category": ["math", "code"]})
    assert skip(P, C, category=cat, answer=ans, trainer_state="S") == [None, 20.0, None, 40.0]
    assert calls == [(["p1", "p3"], ["bb", "dddd"], ["unsafe", "lookalike"], [None, None], "S")]
    only = rewards.select_rows(rm, only={"category": ["math", "lookalike"]})
    assert only(P, C, category=cat, answer=ans) == [10.0, None, None, 40.0]
    both = rewards.select_rows(rm, only={"category": ["math", "unsafe"]}, skip={"answer": ["1"]})
    assert both(P, C, category=cat, answer=ans) == [None, 20.0, None, None]
    calls.clear()
    assert only(P, C, category=["x"] * 4, answer=ans) == [None] * 4 and calls == []  # not called
    # the reward itself stays reachable (the GRPO driver reads a Ray actor reward's restart count)
    assert inspect.unwrap(only) is rm and inspect.unwrap(rewards.select_rows(rm, skip={"a": [1]})) is rm


def test_select_rows_in_a_weighted_sum_adds_nothing_on_the_rows_it_skips():
    by_cat = rewards.select_rows(length, only={"category": ["b", "d"]})
    total = combine({"len": (length, 1.0), "sel": (by_cat, 3.0)})
    assert total(P, C, category=["a", "b", "c", "d"]) == [1.0, 2.0 + 6.0, 3.0, 4.0 + 12.0]
    assert total.last.metrics["reward/sel/none_frac"] == 0.5
    assert total.last.metrics["reward/sel/error_frac"] == 0.0


def test_select_rows_async_reward():
    async def alen(prompts, completions, **columns):
        await asyncio.sleep(0)
        return [float(len(c)) for c in completions]

    sel = rewards.select_rows(alen, skip={"category": ["a"]})
    assert asyncio.run(sel(P, C, category=["a", "b", "a", "b"])) == [None, 2.0, None, 4.0]
    total = combine({"sel": (sel, 1.0)})
    assert total(P, C, category=["a", "b", "a", "b"]) == [None, 2.0, None, 4.0]


def test_select_rows_errors():
    with pytest.raises(ValueError, match="give `only` or `skip`"):
        rewards.select_rows(length)
    with pytest.raises(ValueError, match=r"only\['category'\]: a list of values"):
        rewards.select_rows(length, only={"category": "math"})
    sel = rewards.select_rows(length, only={"category": ["a"]})
    with pytest.raises(ValueError, match=r"column\(s\) \['category'\] not passed"):
        sel(P, C, answer=["1"] * 4)
    bad = rewards.select_rows(lambda prompts, completions, **c: [1.0], only={"category": ["a", "b"]})
    with pytest.raises(ValueError, match="returned 1 values for 2 samples"):
        bad(P, C, category=["a", "b", "c", "d"])
    # inside combine a missing column is an error on every sample, counted, never a silent 0
    total = combine({"sel": (sel, 1.0)}, max_error_frac=1.0)
    assert total(P, C) == [None] * 4
    assert total.last.metrics["reward/sel/error_frac"] == 1.0
