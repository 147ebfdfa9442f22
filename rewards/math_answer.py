r"""`math` reward: the completion's final answer (``\boxed{...}`` or a ``#### N`` line) checked against
the ``answer`` column with math-verify, in worker processes killed on a hard wall-clock limit.

Scores: 1.0 right; 0.0 wrong, no answer, several different answers, or a verifier that timed out or
failed (a time-out never scores more than a wrong answer); None when the row has no ``answer``.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from rewards.rules import final_answer, hash_answers
from rewards.text import completion_text

_STARTUP_S = 120.0  # how long a caller waits for a worker to become ready
_MAX_ANSWER_CHARS = 1000  # longer "answers" are not answers, and only slow sympy down


class _Worker:
    """One verification process; used by one thread at a time."""

    def __init__(self):
        pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = os.pathsep.join([pkg_parent, *[p for p in sys.path if p]])
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "rewards._math_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": path},
            start_new_session=True,
        )
        self._buf = b""

    def ask(self, message: dict | None, timeout_s: float) -> dict:
        """Send `message` (None: just read) and return the reply; TimeoutError past `timeout_s`."""
        if message is not None:
            self.proc.stdin.write((json.dumps(message) + "\n").encode())
            self.proc.stdin.flush()
        deadline = time.monotonic() + timeout_s
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise TimeoutError
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise EOFError("math worker exited")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


class MathPool:
    """A fixed number of verification workers; a worker past its deadline is killed and replaced."""

    def __init__(self, size: int):
        self.size = size
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self.fatal: str | None = None
        self.replaced = 0
        for _ in range(size):
            self._spawn()

    def _spawn(self) -> None:
        threading.Thread(target=self._start_worker, daemon=True, name="math-worker-start").start()

    def _start_worker(self) -> None:
        w = _Worker()
        with self._lock:
            self._all.add(w)
        try:
            reply = w.ask(None, _STARTUP_S)
        except (TimeoutError, EOFError, OSError, ValueError) as e:
            reply = {"fatal": f"math worker did not start: {type(e).__name__}: {e}"}
        if "fatal" in reply:
            self.fatal = reply["fatal"]
            self._discard(w)
            return
        self._idle.put(w)

    def _discard(self, w: _Worker) -> None:
        w.kill()
        with self._lock:
            self._all.discard(w)

    def check(self, gold: str, pred: str, timeout_s: float, verifier: str | None = None) -> bool | None:
        """True/False from the verifier; None when it timed out or failed (the worker is replaced)."""
        deadline = time.monotonic() + _STARTUP_S
        while True:
            try:
                w = self._idle.get(timeout=0.5)
                break
            except queue.Empty:
                with self._lock:
                    none_left = not self._all
                if (self.fatal and none_left) or time.monotonic() > deadline:
                    raise RuntimeError(self.fatal or "no math worker became ready") from None
        try:
            reply = w.ask({"gold": gold, "pred": pred, "verifier": verifier}, timeout_s)
        except (TimeoutError, EOFError, OSError, ValueError):
            self._discard(w)
            self.replaced += 1
            self._spawn()
            return None
        self._idle.put(w)
        return reply.get("ok") if "ok" in reply else None

    def close(self) -> None:
        with self._lock:
            workers = list(self._all)
        for w in workers:
            self._discard(w)


_pool: MathPool | None = None
_pool_lock = threading.Lock()


def shared_pool(size: int | None = None) -> MathPool:
    """The process-wide pool (created on first use; `size` only matters then)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = MathPool(size or min(4, os.cpu_count() or 1))
            atexit.register(_pool.close)
        return _pool


def gold_text(answer: object) -> str | None:
    """The gold answer of a row: the part after ``####`` for GSM8K-style solutions."""
    if answer is None:
        return None
    text = str(answer)
    hashes = hash_answers(text)
    return hashes[-1] if hashes else text.strip()


def math_reward(timeout_s: float = 10.0, workers: int | None = None, verifier: str | None = None) -> Callable:
    r"""Build the ``math`` reward.

    timeout_s: hard wall-clock limit of one verification (the worker is killed past it; score 0.0).
    workers: size of the shared worker pool when this is the first math reward of the process.
    verifier: ``"module:fn"`` or ``"file.py:fn"``, ``fn(gold: str, pred: str) -> bool`` run in the
        workers instead of math-verify (custom checkers; tests use it to inject a slow verifier).
    """
    pool = shared_pool(workers)

    def math(prompts: list, completions: list, answer: list | None = None, **columns) -> list[float | None]:
        if answer is None:
            raise ValueError("the math reward needs an `answer` column")
        jobs = []
        for c, a in zip(completions, answer, strict=True):
            gold, pred = gold_text(a), final_answer(completion_text(c))
            jobs.append((gold, pred if pred is not None and len(pred) <= _MAX_ANSWER_CHARS else None))

        def score(job):
            gold, pred = job
            if gold is None:
                return None
            if pred is None:
                return 0.0
            return 1.0 if pool.check(gold, pred, timeout_s, verifier) else 0.0

        with ThreadPoolExecutor(max_workers=pool.size, thread_name_prefix="math") as ex:
            return list(ex.map(score, jobs))

    return math
