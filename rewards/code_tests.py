"""`code` reward: the completion's program run against the row's ``tests`` in the sandbox.

Score: the fraction of tests passed (``all_or_nothing``: 1.0 only if all pass, else 0.0); 0.0 when the
completion holds no Python; None when the row has no tests.

How a pass is decided, and why. A program can print anything, exit with any status (``os._exit(0)``,
``SystemExit``), replace ``sys.excepthook``, register ``atexit`` hooks or patch builtins, so neither
its output nor its exit status says that an assert ran. Each test therefore runs as its own sandboxed
program -- the solution, then that one test, then a harness tail, in one module -- and passes only
when the trusted
parent receives, on fd 4, the random nonce it wrote to fd 3: the tail reads the nonce *after* the
test statement has run, so while the solution's top-level code runs the nonce is not in the
program's memory, source, argv or environment, only in a kernel pipe buffer. Exiting early, failing
the assert, printing "PASS", patching ``AssertionError`` (the ``assert`` statement raises the real
one), ``exec`` or ``os.write``, exit hooks or a trace function all leave fd 4 without the nonce.

Limits of this, stated plainly: no check made inside the process that runs the solution can be sound
against code written *to defeat this harness* -- it could read fd 3 and write fd 4 itself, or rebind
the harness's names. That takes knowledge of the harness, which the policy never sees, and each
test's separate process keeps one such trick from covering other tests. Semantic
tricks (a return value whose ``__eq__`` is always True) pass any assert-string test; only tests that
compare ``repr``/types, or serialised results compared outside the process, close that.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from rewards import sandbox
from rewards.text import completion_text

_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = {"python", "py", "python3", "py3", ""}

# The solution and the test are pasted into one module, not exec()'d, so patching builtins such as
# exec/compile/__import__ cannot stop the test from running; tracing is switched off before the test
# so a trace function cannot jump over its lines. __name__ is changed so `if __name__ == "__main__"`
# blocks of the solution do not run.
_HARNESS = """\
import os as _align_os, sys as _align_sys
__name__ = "__solution__"
{solution}
_align_sys.settrace(None)
_align_sys.setprofile(None)
{test}
_align_os.write(4, _align_os.read(3, 64))
_align_os._exit(0)
"""


def extract_code(text: str) -> str | None:
    """The last fenced Python block (tag python/py or none); the raw text when there is no fence;
    None when there are fences but none is Python, or nothing is left."""
    blocks = _FENCE.findall(text)
    if not blocks:
        return text.strip() or None
    python = [body for tag, body in blocks if tag.lower() in _PYTHON_TAGS]
    return (python[-1].strip() or None) if python else None


def run_test(solution: str, test: str, *, timeout_s: float, memory_mb: int) -> bool:
    """True when `test` ran to completion after `solution` in its own sandboxed program."""
    nonce = secrets.token_hex(16).encode()
    program = _HARNESS.format(solution=solution.rstrip("\\ \t\n"), test=test)
    res = sandbox.run(program, timeout_s=timeout_s, memory_mb=memory_mb, side_input=nonce)
    return res.returncode == 0 and not res.timed_out and res.side_output == nonce


def code_reward(
    timeout_s: float = 5.0, memory_mb: int = 512, all_or_nothing: bool = False, workers: int | None = None
) -> Callable:
    """Build the ``code`` reward.

    timeout_s, memory_mb: limits of each test's program (wall clock and CPU; address space).
    all_or_nothing: 1.0 only when every test passes.
    workers: programs run at the same time (default: the number of CPUs).
    """
    workers = workers or os.cpu_count() or 1

    def code(prompts: list, completions: list, tests: list | None = None, **columns) -> list[float | None]:
        if tests is None:
            raise ValueError("the code reward needs a `tests` column (a list of assert strings per row)")
        rows: list[tuple[str | None, list[str]] | None] = []
        for c, t in zip(completions, tests, strict=True):
            if t is None or len(t) == 0:
                rows.append(None)
            else:
                rows.append((extract_code(completion_text(c)), [t] if isinstance(t, str) else list(t)))
        jobs = [
            (i, sol, t) for i, row in enumerate(rows) if row and row[0] for sol in [row[0]] for t in row[1]
        ]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="code") as ex:
            passed = list(
                ex.map(lambda j: run_test(j[1], j[2], timeout_s=timeout_s, memory_mb=memory_mb), jobs)
            )
        counts = [0] * len(rows)
        for (i, _, _), ok in zip(jobs, passed):
            counts[i] += ok
        out: list[float | None] = []
        for row, k in zip(rows, counts):
            if row is None:
                out.append(None)
            else:
                frac = k / len(row[1])
                out.append(float(frac == 1.0) if all_or_nothing else frac)
        return out

    return code
