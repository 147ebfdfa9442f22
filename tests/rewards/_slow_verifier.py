"""A verifier that never finishes, loaded by spec inside the math workers (see test_rewards_math)."""

import time


def slow(gold: str, pred: str) -> bool:
    time.sleep(600)
    return True  # a hung verifier must never turn into a pass
