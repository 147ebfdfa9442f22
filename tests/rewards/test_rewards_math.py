"""The math reward: answer extraction, math-verify equivalence, and a killed verifier scoring 0."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from rewards import load
from rewards.math_answer import gold_text, shared_pool


@pytest.fixture(scope="module")
def math_reward():
    return load("math", timeout_s=20.0)


def test_boxed_hash_nested_and_equivalent_forms(math_reward):
    cases = [
        (r"so the answer is \boxed{\frac{1}{2}}", "0.5", 1.0),
        (r"\boxed{0.5}", r"\frac{1}{2}", 1.0),
        (r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{1}{\sqrt{2}}", 1.0),  # nested braces
        ("Adding up:\n#### 72", "Natalia sold 48/2 = 24 clips.\n#### 72", 1.0),  # GSM8K gold
        (r"\boxed{71}", "72", 0.0),
        (r"\boxed{3} wait, no: \boxed{4}", "4", 0.0),  # two different final answers
        ("\\boxed{4} so\n#### 4", "4", 1.0),  # the same answer twice
        ("I think it is 72", "72", 0.0),  # no final-answer marker
        (r"\boxed{x^2+1}", "1 + x^{2}", 1.0),
    ]
    got = math_reward(["q"] * len(cases), [c for c, _, _ in cases], answer=[a for _, a, _ in cases])
    assert got == [want for _, _, want in cases]


def test_message_completions_and_missing_answers(math_reward):
    comps = [[{"role": "assistant", "content": r"\boxed{7}"}], r"\boxed{7}"]
    assert math_reward(["q", "q"], comps, answer=["7", None]) == [1.0, None]
    with pytest.raises(ValueError, match="answer"):
        math_reward(["q"], ["x"])


def test_gold_text_takes_the_part_after_hashes():
    assert gold_text("steps\n#### 1,000") == "1,000"
    assert gold_text(" 5 ") == "5"


def test_verifier_timeout_scores_zero_and_the_pool_recovers(math_reward):
    slow = load("math", timeout_s=1.0, verifier=f"{Path(__file__).with_name('_slow_verifier.py')}:slow")
    pool = shared_pool()
    replaced = pool.replaced
    t0 = time.monotonic()
    assert slow(["q"], [r"\boxed{2}"], answer=["2"]) == [0.0]  # the hung verifier would say True
    assert time.monotonic() - t0 < 5.0
    assert pool.replaced == replaced + 1
    assert math_reward(["q", "q"], [r"\boxed{2}", r"\boxed{3}"], answer=["2", "2"]) == [1.0, 0.0]
