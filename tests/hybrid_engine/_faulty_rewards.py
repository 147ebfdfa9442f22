"""Rewards that fail on purpose, loaded by file spec in the two-stage recipe tests.

``flaky``: for a fixed share of samples (chosen by a hash of prompt and completion, so the same
sample always fails the same way) it raises (10%), returns NaN (5%) or hangs (2%); otherwise it
scores the completion's length. ``broken``: raises on every sample.
"""

from __future__ import annotations

import time
import zlib


def _bucket(prompt, completion) -> int:
    return zlib.crc32(f"{prompt}\x00{completion}".encode()) % 100


def flaky(prompts, completions, **columns):
    out = []
    for p, c in zip(prompts, completions):
        b = _bucket(p, c)
        if b < 10:
            raise ValueError("flaky reward: failing on purpose")
        if b < 15:
            out.append(float("nan"))
        elif b < 17:
            time.sleep(3600)  # hangs: the per-call deadline abandons it
        else:
            out.append(-min(len(c), 40) / 40)
    return out


def broken(prompts, completions, **columns):
    raise RuntimeError("broken reward: always fails")
