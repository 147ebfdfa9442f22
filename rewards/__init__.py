"""Rewards: the TRL reward convention, spec loading, isolated weighted combination, built-ins, sandbox.

A reward is any callable ``fn(prompts: list, completions: list, **columns) -> list[float | None]``
(completions are strings or message lists; columns are the dataset's other columns, one entry per
sample; None means "not applicable to this sample"). ``async def`` rewards are accepted too.

    import rewards
    math = rewards.load("math")                                  # built-in
    mine = rewards.load("my_pkg.rewards:brevity")                # dotted path
    other = rewards.load("extra/reward.py:score", scale=2.0)     # file, with factory options
    total = rewards.combine({"math": (math, 1.0), "rule": ("rule", 0.2)}, timeout_s=30)
    values = total(prompts, completions, answer=answers)         # weighted sums
    total.last.metrics                                           # reward/math/mean, ...
    safety = rewards.select_rows(rm, only={"category": ["unsafe"]})  # None on the other rows

This package imports nothing from align, rollout, hybrid_engine or recipes.
"""

from rewards import sandbox
from rewards.combine import Combined, Outcome, RewardError, Scores, combine, score_isolated, select_rows
from rewards.loading import BUILTINS, ENTRY_POINT_GROUP, RewardSpecError, load
from rewards.text import completion_text, prompt_text

__all__ = [
    "BUILTINS",
    "ENTRY_POINT_GROUP",
    "Combined",
    "Outcome",
    "RewardError",
    "RewardSpecError",
    "Scores",
    "combine",
    "completion_text",
    "load",
    "prompt_text",
    "sandbox",
    "score_isolated",
    "select_rows",
]
