"""Rewards that fail on purpose, loaded by file spec in the two-stage recipe tests.

``flaky``: for a fixed share of samples (chosen by a hash of prompt and completion, so the same
sample always fails the same way) it raises (10%), returns NaN (5%) or hangs (5%: at 2% the 64
samples of the tests' run drew no hang once the tokenizer changed); otherwise it scores the
completion's length. ``broken``: raises on every sample. ``slow_marked``: announces its
process in a file, then scores slowly (killed mid-call by the reward-actor tests).
"""

from __future__ import annotations

import os
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
        elif b < 20:
            time.sleep(3600)  # hangs: the per-call deadline abandons it
        else:
            out.append(-min(len(c), 40) / 40)
    return out


def broken(prompts, completions, **columns):
    raise RuntimeError("broken reward: always fails")


def slow_marked(prompts, completions, marker=None, **columns):
    """Writes its process id to the file ``marker[0]`` names, then scores the length of each
    completion after a pause: a test can kill the process while a call is in flight."""
    if marker:
        with open(marker[0], "w") as f:
            f.write(str(os.getpid()))
    time.sleep(2.0)
    return [float(len(c)) for c in completions]
