"""The code reward: tests run in the sandbox, scored in the parent; forged passes score 0."""

from __future__ import annotations

import pytest

from rewards import load
from rewards.code_tests import extract_code

TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 5"]  # the last never passes
WRONG_TESTS = ["assert add(1, 2) == 4"]  # fails for any honest solution


@pytest.fixture(scope="module")
def code():
    return load("code", timeout_s=5.0)


def fenced(src: str, tag: str = "python") -> str:
    return f"Here you go:\n```{tag}\n{src}\n```\nDone."


def test_pass_partial_and_all_or_nothing(code):
    good = fenced("def add(a, b):\n    return a + b")
    third = fenced("def add(a, b):\n    return a + b if a > 0 else 1")  # passes the first test only
    bad = "def add(a, b):\n    return None"  # raw code without a fence
    got = code(["q"] * 4, [good, third, bad, good], tests=[TESTS, TESTS, TESTS, TESTS[:2]])
    assert got == [pytest.approx(2 / 3), pytest.approx(1 / 3), 0.0, 1.0]
    strict = load("code", all_or_nothing=True)
    assert strict(["q"] * 2, [good, good], tests=[TESTS, TESTS[:2]]) == [0.0, 1.0]


def test_repeated_programs_run_once(code, monkeypatch):
    """A group's identical completions share one sandbox run per (program, test), scored the same."""
    from rewards import code_tests

    calls = []
    real = code_tests.run_test

    def counting(solution, test, **kw):
        calls.append((solution, test))
        return real(solution, test, **kw)

    monkeypatch.setattr(code_tests, "run_test", counting)
    good = fenced("def add(a, b):\n    return a + b")
    other = "Same program, other words around it:\n" + fenced("def add(a, b):\n    return a + b")
    third = fenced("def add(a, b):\n    return a + b if a > 0 else 1")
    got = code(["q"] * 5, [good, good, third, good, other], tests=[TESTS] * 4 + [TESTS[:2]])
    assert got == [pytest.approx(2 / 3)] * 2 + [pytest.approx(1 / 3), pytest.approx(2 / 3), 1.0]
    assert len(calls) == len(set(calls)) == 2 * len(TESTS)  # two distinct programs x three tests


def test_no_code_or_no_tests(code):
    comps = [fenced("echo hi", tag="bash"), fenced("def add(a, b): return a + b"), "```python\n```"]
    assert code(["q"] * 3, comps, tests=[TESTS, None, TESTS]) == [0.0, None, 0.0]
    with pytest.raises(ValueError, match="tests"):
        code(["q"], ["x"])


def test_extract_code_takes_last_python_block():
    text = "```python\nfirst\n```\n```bash\nls\n```\n```py\nsecond\n```"
    assert extract_code(text) == "second"
    assert extract_code("```python\nunclosed = 1") == "unclosed = 1"
    assert extract_code("plain = 1") == "plain = 1"


FORGERIES = {
    "os._exit(0) before the test": "import os\nos._exit(0)",
    "sys.exit(0) before the test": "import sys\nsys.exit(0)",
    "exit inside the tested function": "import os\ndef add(a, b):\n    os._exit(0)",
    "SystemExit inside the tested function": "def add(a, b):\n    raise SystemExit(0)",
    "fake PASS lines": "print('PASS')\nprint('OK: 1 passed')\nprint('All tests passed')\ndef add(a, b): return 0",
    "patched AssertionError": (
        "import builtins\nclass Quiet(BaseException): pass\nbuiltins.AssertionError = Quiet\n"
        "def add(a, b): return 0"
    ),
    "excepthook exits 0": "import sys, os\nsys.excepthook = lambda *a: os._exit(0)\ndef add(a, b): return 0",
    "atexit exits 0": "import atexit, os\natexit.register(lambda: os._exit(0))\ndef add(a, b): return 0",
    "guessed side channel": "import os\nos.write(4, b'0' * 32)\nos._exit(0)",
    "kills itself": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
    "replaces os.write": "import os\nos.write = lambda fd, b: len(b)\nos._exit(0)",
    "replaces exec and compile": (
        "import builtins\nbuiltins.exec = lambda *a, **k: None\nbuiltins.compile = lambda *a, **k: None\n"
        "def add(a, b): return 0"
    ),
    "tracer that skips assert lines": (
        "import sys, linecache\n"
        "def skip(frame, event, arg):\n"
        "    if event == 'line' and linecache.getline(frame.f_code.co_filename, frame.f_lineno).startswith('assert'):\n"
        "        frame.f_lineno += 1\n"
        "    return skip\n"
        "sys.settrace(skip)\nsys._getframe().f_trace = skip\n"
        "def add(a, b): return 0"
    ),
    "main guard runs a fake report": "if __name__ == '__main__':\n    import os\n    os._exit(0)\ndef add(a, b): return 0",
}


def test_forged_passes_score_zero(code):
    comps = [fenced(src) for src in FORGERIES.values()]
    got = code(["q"] * len(comps), comps, tests=[WRONG_TESTS] * len(comps))
    assert dict(zip(FORGERIES, got)) == dict.fromkeys(FORGERIES, 0.0)


def test_exit_status_alone_would_have_been_fooled():
    """Why the nonce: the os._exit(0) forgery exits with status 0 and says nothing on the side channel."""
    from rewards import sandbox

    res = sandbox.run(
        "import os\nos._exit(0)\nassert False", timeout_s=5, memory_mb=256, side_input=b"n" * 32
    )
    assert res.returncode == 0 and res.side_output == b""


def test_future_imports_in_a_solution_still_work(code):
    """`from __future__` must open a module; the harness's own lines would otherwise come first."""
    src = (
        '"""Adds."""\nfrom __future__ import annotations\n\ndef add(a: int, b: int) -> int:\n    return a + b'
    )
    assert code(["q"], [fenced(src)], tests=[TESTS[:2]]) == [1.0]
