"""rewards.load: every spec kind, options, and the message of a bad spec."""

from __future__ import annotations

import textwrap

import pytest

import rewards
from rewards import RewardSpecError, completion_text, load

REWARD_SRC = """
def brevity(prompts, completions, **columns):
    return [1.0 / (1 + len(c)) for c in completions]

def make_scaled(scale=1.0):
    def scaled(prompts, completions, **columns):
        return [scale * len(c) for c in completions]
    return scaled

class Counter:
    def __init__(self, offset=0):
        self.offset = offset
    def __call__(self, prompts, completions, **columns):
        return [self.offset + len(c) for c in completions]
"""


@pytest.fixture
def reward_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(REWARD_SRC)
    return path


def test_builtin_names_load_and_score():
    for name in ("format", "length", "repetition", "language", "rule"):  # lexicon needs a word list
        fn = load(name)
        assert callable(fn)
        assert len(fn(["q"], ["\\boxed{1}"])) == 1
    assert load("length", min_chars=2, max_chars=3)([""], ["abcde"]) == [-2 / 3]


def test_file_spec_plain_factory_and_class(reward_file):
    assert load(f"{reward_file}:brevity")(["p"], ["abc"]) == [0.25]
    assert load(f"{reward_file}:make_scaled", scale=2.0)(["p"], ["abc"]) == [6.0]
    assert load(f"{reward_file}:Counter")(["p"], ["ab"]) == [2]
    assert load(f"{reward_file}:Counter", offset=10)(["p"], ["ab"]) == [12]


def test_dotted_spec(reward_file, monkeypatch):
    monkeypatch.syspath_prepend(str(reward_file.parent))
    assert load("my_rewards:brevity")(["p"], ["abc"]) == [0.25]
    assert load("my_rewards.brevity")(["p"], [""]) == [1.0]
    assert load("rewards.rules:length_reward", max_chars=2)([""], ["abcd"]) == [-1.0]


def test_entry_point_from_an_installed_distribution(tmp_path, monkeypatch):
    """A fake installed package (a .dist-info on sys.path) registers `brevity` in align.rewards."""
    (tmp_path / "fake_reward_pkg.py").write_text(REWARD_SRC)
    dist = tmp_path / "fake_reward_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-reward-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        textwrap.dedent("""
        [align.rewards]
        brevity = fake_reward_pkg:brevity
        scaled = fake_reward_pkg:make_scaled
        broken = fake_reward_pkg_missing:fn
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load("brevity")(["p"], ["abc"]) == [0.25]
    assert load("scaled", scale=3.0)(["p"], ["ab"]) == [6.0]
    with pytest.raises(RewardSpecError, match="entry point 'fake_reward_pkg_missing:fn'.*failed to import"):
        load("broken")
    with pytest.raises(RewardSpecError) as err:
        load("brevty")
    assert "registered: ['brevity', 'broken', 'scaled']); did you mean 'brevity'?" in str(err.value)


def test_bad_spec_lists_every_kind_tried():
    with pytest.raises(RewardSpecError) as err:
        load("mth")
    msg = str(err.value)
    for kind in ("built-in name", "entry point", "file", "reward-model directory", "http(s)", "dotted path"):
        assert kind in msg
    assert "did you mean 'math'" in msg


def test_bad_file_and_dotted_specs_say_why(reward_file):
    with pytest.raises(RewardSpecError, match="no file"):
        load("nowhere/missing.py:fn")
    with pytest.raises(RewardSpecError, match="has no attribute 'nope'"):
        load(f"{reward_file}:nope")
    with pytest.raises(RewardSpecError, match="ModuleNotFoundError"):
        load("no_such_pkg.mod:fn")
    with pytest.raises(RewardSpecError, match="bad options"):
        load("length", max_char=3)
    with pytest.raises(RewardSpecError, match="not callable"):
        load("rewards.loading:ENTRY_POINT_GROUP")


def test_model_dir_without_a_model_and_server_urls(tmp_path):
    with pytest.raises(RewardSpecError, match="is a directory but not a reward model: no config.json"):
        load(str(tmp_path))
    remote = load("http://localhost:8000/score")  # a client; nothing is contacted until it scores
    assert callable(remote)


def test_callable_spec_passes_through():
    def fn(prompts, completions, **columns):
        return [0.0] * len(completions)

    assert load(fn) is fn


def test_completion_text_handles_strings_and_messages():
    assert completion_text("hi") == "hi"
    assert completion_text([{"role": "assistant", "content": "a"}]) == "a"
    msgs = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [{"type": "text", "text": "b"}]},
    ]
    assert completion_text(msgs) == "b"
    assert rewards.load("length", max_chars=1)(["p"], [[{"role": "assistant", "content": "abc"}]]) == [-1.0]


def test_package_imports_none_of_the_others_and_stays_light():
    import subprocess
    import sys

    code = (
        "import sys, rewards, rewards.rules, rewards.code_tests, rewards.math_answer\n"
        "bad = [m for m in ('align', 'rollout', 'hybrid_engine', 'recipes', 'torch', 'math_verify') if m in sys.modules]\n"
        "print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=rewards.__path__[0] + "/..",
    )
    assert out.stdout.strip() == "[]"
