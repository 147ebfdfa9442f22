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

Three generic tricks are closed in the program itself: the harness deletes ``main.py`` before the
solution runs (else it could re-run its own source with the asserts stripped: ``compile(...,
optimize=1)``, ``python -O``, or a regex), it switches tracing off with ``sys.settrace`` taken before
the solution runs (else patching ``sys.settrace`` keeps an assert-skipping tracer alive), and an
``a == b`` inside an ``assert`` is checked by a strict comparison defined before the solution: a value
that claims to equal an unrelated object (an ``__eq__`` that always says True), also inside lists,
tuples and dicts, equals nothing.

Limits of this, stated plainly: no check made inside the process that runs the solution can be sound
against code written *to defeat this harness* -- it could read fd 3 and write fd 4 itself, or rebind
the harness's names. That takes knowledge of the harness, which the policy never sees, and each
test's separate process keeps one such trick from covering other tests. Other semantic tricks (an
object that is truthy for ``assert f(x)``, or equal to any value of the expected type) still pass.
"""

from __future__ import annotations

import ast
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
# (by a settrace bound before the solution runs) so a trace function cannot jump over its lines.
# main.py is deleted before the solution runs, so it cannot re-run its own source without the asserts.
# __name__ is changed so `if __name__ == "__main__"` blocks of the solution do not run.
_HARNESS = """\
import os as _align_os, sys as _align_sys
from sys import settrace as _align_settrace, setprofile as _align_setprofile
try:
    _align_os.unlink(__file__)
except OSError:
    pass
{strict_eq}
__name__ = "__solution__"
{solution}
_align_settrace(None)
_align_setprofile(None)
{test}
_align_os.write(4, _align_os.read(3, 64))
_align_os._exit(0)
"""

# `a == b` in a test's assert becomes `_align_eq(a, b)`. Defined before the solution runs, with the
# builtins it uses bound as defaults, so patching builtins does not change it.
_STRICT_EQ = """\
def _align_eq(a, b, _type=type, _isinstance=isinstance, _len=len, _all=all, _zip=zip, _bool=bool,
              _object=object, _exc=Exception,
              _plain=(bool, int, float, complex, str, bytes, type(None), list, tuple, dict, set, frozenset)):
    ta, tb = _type(a), _type(b)
    if ta is tb and (ta is list or ta is tuple):
        return _len(a) == _len(b) and _all(_align_eq(x, y) for x, y in _zip(a, b))
    if ta is tb is dict:
        return a.keys() == b.keys() and _all(_align_eq(a[k], b[k]) for k in a)
    if ta in _plain and tb in _plain:
        return a == b
    for x in (a, b):  # a value of the program's own type: it may not equal an unrelated object
        if _type(x) not in _plain:
            try:
                claims = _bool(x == _object())
            except _exc:
                claims = False
            if claims:
                return False
    for p, q in ((a, b), (b, a)):  # a list/tuple/dict subclass: compare its items strictly
        tp = _type(p)
        if (tp is list or tp is tuple or tp is dict) and _type(q) not in _plain and _isinstance(q, tp):
            return _align_eq(p, tp(q))
    return a == b
"""


class _StrictAssertEq(ast.NodeTransformer):
    """Rewrites each single ``==`` comparison inside an ``assert`` to ``_align_eq(left, right)``."""

    def visit_Assert(self, node: ast.Assert) -> ast.Assert:
        node.test = _EqToCall().visit(node.test)
        return node


class _EqToCall(ast.NodeTransformer):
    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        if len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq):
            call = ast.Call(ast.Name("_align_eq", ast.Load()), [node.left, node.comparators[0]], [])
            return ast.copy_location(call, node)
        return node


def strict_test(test: str) -> str:
    """`test` with its asserts' ``==`` made strict (unchanged when it does not parse: it fails anyway)."""
    try:
        tree = ast.parse(test)
    except (SyntaxError, ValueError):
        return test
    return ast.unparse(ast.fix_missing_locations(_StrictAssertEq().visit(tree)))


def extract_code(text: str) -> str | None:
    """The last fenced Python block (tag python/py or none); the raw text when there is no fence;
    None when there are fences but none is Python, or nothing is left."""
    blocks = _FENCE.findall(text)
    if not blocks:
        return text.strip() or None
    python = [body for tag, body in blocks if tag.lower() in _PYTHON_TAGS]
    return (python[-1].strip() or None) if python else None


_FUTURE = re.compile(r"^from __future__ import [^\n]*$", re.MULTILINE)


def run_test(solution: str, test: str, *, timeout_s: float, memory_mb: int) -> bool:
    """True when `test` ran to completion after `solution` in its own sandboxed program."""
    nonce = secrets.token_hex(16).encode()
    # `from __future__` imports must open the module: they move above the harness's lines.
    future = _FUTURE.findall(solution)
    solution = _FUTURE.sub("", solution)
    program = "".join(f"{line}\n" for line in future) + _HARNESS.format(
        strict_eq=_STRICT_EQ, solution=solution.rstrip("\\ \t\n"), test=strict_test(test)
    )
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
        # A group's completions often repeat one another: each distinct (program, test) runs once.
        unique = list(dict.fromkeys((sol, t) for _, sol, t in jobs))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="code") as ex:
            ran = ex.map(lambda j: run_test(j[0], j[1], timeout_s=timeout_s, memory_mb=memory_mb), unique)
            passed = dict(zip(unique, ran))
        counts = [0] * len(rows)
        for i, sol, t in jobs:
            counts[i] += passed[(sol, t)]
        out: list[float | None] = []
        for row, k in zip(rows, counts):
            if row is None:
                out.append(None)
            else:
                frac = k / len(row[1])
                out.append(float(frac == 1.0) if all_or_nothing else frac)
        return out

    return code
