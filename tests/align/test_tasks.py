"""Synthetic tasks: determinism, disjoint splits, correct answers, passing code, clear size errors."""

from __future__ import annotations

import dataclasses
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from align import tasks
from align.config import from_dict
from align.configs import MakeDataConfig, SafetyTaskConfig
from rewards import load
from rewards.rules import read_lexicon

ROOT = Path(__file__).resolve().parents[2]
TASK_NAMES = ("math", "code", "helpful", "safety", "chat", "sft_chat")
PRINTABLE = {chr(c) for c in range(32, 127)} | {"\n"}


@pytest.fixture(scope="module")
def data() -> dict:
    """Every task at its default size (also proves the defaults are reachable)."""
    return tasks.generate(MakeDataConfig())


def _cfg(**sections) -> MakeDataConfig:
    return from_dict(MakeDataConfig, sections)


_RUNNER = r"""
import json, sys
results = []
for code, tests in json.load(sys.stdin):
    ns = {}
    try:
        exec(code, ns)
        for t in tests:
            exec(t, ns)
        results.append(True)
    except Exception:
        results.append(False)
print(json.dumps(results))
"""


def run_programs(programs: list[tuple[str, list[str]]]) -> list[bool]:
    """Whether each (code, asserts) program passes, all run in one child process with a timeout."""
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER],
        input=json.dumps(programs),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def unfence(text: str) -> str:
    m = re.fullmatch(r"```python\n(.*)\n```", text, re.DOTALL)
    assert m, text
    return m.group(1)


def all_code_items(seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [fam.item(i, rng) for fam in tasks.CODE_FAMILIES for i in range(fam.size)]


# ----------------------------------------------------------------------------------------------
# Files, determinism, splits


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    cfg = MakeDataConfig()
    counts = tasks.write_tasks(cfg, tmp_path / "a")
    tasks.write_tasks(cfg, tmp_path / "b")
    cfg.seed = 1
    tasks.write_tasks(cfg, tmp_path / "c")
    assert set(counts) == set(TASK_NAMES)
    assert (tmp_path / "a" / "lexicon.txt").read_bytes() == (tmp_path / "b" / "lexicon.txt").read_bytes()
    for name in TASK_NAMES:
        for split in ("train", "eval"):
            a, b, c = (tmp_path / d / name / f"{split}.jsonl" for d in "abc")
            assert a.read_bytes() == b.read_bytes(), f"{name}/{split} differs between identical runs"
            assert a.read_bytes() != c.read_bytes(), f"{name}/{split} ignores the seed"
            assert len(a.read_text().splitlines()) == counts[name][split]


def test_eval_split_does_not_move_with_train_size():
    small = _cfg(**{name: {"train_size": 10, "eval_size": 20} for name in TASK_NAMES})
    large = _cfg(**{name: {"train_size": 300, "eval_size": 20} for name in TASK_NAMES})
    small_data, large_data = tasks.generate(small), tasks.generate(large)
    for name in TASK_NAMES:
        assert small_data[name][1] == large_data[name][1], name


def test_sizes_columns_and_disjoint_splits(data):
    cfg = MakeDataConfig()
    for name in TASK_NAMES:
        train, held_out = data[name]
        section = getattr(cfg, name)
        assert (len(train), len(held_out)) == (section.train_size, section.eval_size)
        for row in train + held_out:
            assert tuple(row) == tasks.COLUMNS[name]
        train_prompts = [r["prompt"] for r in train]
        eval_prompts = [r["prompt"] for r in held_out]
        assert len(set(train_prompts)) == len(train_prompts), f"{name}: duplicate prompt in train"
        assert len(set(eval_prompts)) == len(eval_prompts), f"{name}: duplicate prompt in eval"
        assert not set(train_prompts) & set(eval_prompts), f"{name}: a prompt is in both splits"


def test_text_is_short_printable_ascii(data):
    for name, (train, held_out) in data.items():
        for row in train + held_out:
            for text in tasks.strings_of(row):
                assert set(text) <= PRINTABLE, (name, text)
            assert 15 <= len(row["prompt"]) <= 120, (name, row["prompt"])
            for col in ("solution", "chosen"):
                if col in row:
                    assert len(row[col]) <= 150, (name, row[col])


def test_files_load_with_datasets(tmp_path):
    from datasets import load_dataset

    cfg = _cfg(
        math={"train_size": 20, "eval_size": 5},
        code={"train_size": 20, "eval_size": 5},
        helpful={"train_size": 20, "eval_size": 5},
        safety={"train_size": 20, "eval_size": 5},
        chat={"train_size": 20, "eval_size": 5},
        sft_chat={"train_size": 20, "eval_size": 5},
    )
    tasks.write_tasks(cfg, tmp_path)
    for name in TASK_NAMES:
        files = {split: str(tmp_path / name / f"{split}.jsonl") for split in ("train", "eval")}
        ds = load_dataset("json", data_files=files, cache_dir=str(tmp_path / "hf_cache"))
        assert ds["train"].num_rows == 20 and ds["eval"].num_rows == 5
        assert ds["train"].column_names == list(tasks.COLUMNS[name])


# ----------------------------------------------------------------------------------------------
# Math

_OPS = {"more": "+", "finds": "+", "gives away": "-", "loses": "-", "bags of": "*"}


def solve(prompt: str) -> int:
    """An independent reading of the word problem: numbers in order, operations from the verbs."""
    nums = [int(x) for x in re.findall(r"\d+", prompt)]
    ops = [
        op for _, op in sorted((m.start(), op) for kw, op in _OPS.items() for m in re.finditer(kw, prompt))
    ]
    assert len(ops) == len(nums) - 1, prompt
    value = nums[0]
    for op, n in zip(ops, nums[1:]):
        value = value + n if op == "+" else value - n if op == "-" else value * n
    return value


def test_math_answers_are_right(data):
    train, held_out = data["math"]
    assert {r["level"] for r in train} == {1, 2, 3}
    for row in train + held_out:
        answer = solve(row["prompt"])
        assert row["answer"] == str(answer) and answer >= 0, row
        assert row["solution"].endswith(f"\\boxed{{{answer}}}"), row
        steps = re.findall(r"(\d+)([-+*])(\d+)=(\d+)\.", row["solution"])
        assert len(steps) == {1: 1, 2: 1, 3: 2}[row["level"]], row
        for a, op, b, result in steps:
            assert eval(f"{a}{op}{b}") == int(result), row
        assert int(steps[-1][3]) == answer
        if row["level"] == 1:
            assert max(map(int, re.findall(r"\d+", row["prompt"]))) <= 9, row
        assert row["messages"] == [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["solution"]},
        ]


def test_math_levels_select_templates():
    train, held_out = tasks.make_math(_cfg(math={"levels": [2], "train_size": 50, "eval_size": 10}).math, 0)
    assert {r["level"] for r in train + held_out} == {2}


# ----------------------------------------------------------------------------------------------
# Code


def test_code_references_pass_and_bugs_fail():
    """Over the whole template space (three seeds for the random test inputs) plus the written rows."""
    items = [x for seed in range(3) for x in all_code_items(seed)]
    prompts = [x["prompt"] for x in all_code_items(0)]
    assert len(set(prompts)) == len(prompts) == sum(f.size for f in tasks.CODE_FAMILIES)
    rows = [r for split in tasks.make_code(MakeDataConfig().code, 0) for r in split]
    programs = [(x["code"], x["tests"]) for x in items] + [(x["wrong"], x["tests"]) for x in items]
    programs += [(unfence(r["solution"]), r["tests"]) for r in rows]
    results = run_programs(programs)
    n = len(items)
    assert all(results[:n]), [items[i]["prompt"] for i in range(n) if not results[i]][:5]
    assert not any(results[n : 2 * n]), [items[i]["prompt"] for i in range(n) if results[n + i]][:5]
    assert all(results[2 * n :])
    for r in rows:
        assert f"def {r['entry_point']}(" in r["solution"] and f"{r['entry_point']}(" in r["prompt"]
        assert r["tests"] and all(t.startswith(f"assert {r['entry_point']}(") for t in r["tests"])


# ----------------------------------------------------------------------------------------------
# Preference pairs and chat prompts


def test_helpful_pairs(data):
    train, held_out = data["helpful"]
    rows = train + held_out
    assert {r["kind"].split("/")[0] for r in rows} == {"math", "code", "fact", "chat"}
    unsafe_prompts = {r["prompt"] for r in data["safety"][0] + data["safety"][1] if r["unsafe"]}
    tests_by_prompt = {x["prompt"]: x["tests"] for x in all_code_items(0)}
    programs = []
    for r in rows:
        assert r["chosen"] != r["rejected"], r
        domain, defect = r["kind"].split("/")
        if domain == "math":
            assert r["chosen"].endswith(f"\\boxed{{{solve(r['prompt'])}}}"), r
        if defect == "rambling":
            assert len(r["rejected"]) > len(r["chosen"]) + 30 and r["rejected"].endswith(r["chosen"]), r
        if defect == "no_boxed":
            assert "\\boxed" not in r["rejected"], r
        if domain == "chat":  # a benign request: its answer is chosen
            assert r["prompt"] not in unsafe_prompts and r["chosen"] not in tasks.REFUSALS, r
            assert not r["chosen"].startswith("Sure!") and defect in ("refusal", "rambling"), r
            assert defect == "rambling" or r["rejected"] in tasks.REFUSALS, r
        if domain == "code" and defect in ("wrong", "no_fence"):
            tests = tests_by_prompt[r["prompt"]]
            programs += [
                (unfence(r["chosen"]), tests),
                (unfence(r["rejected"]) if defect == "wrong" else "", tests),
            ]
            if defect == "no_fence":
                assert "```" not in r["rejected"]
    results = run_programs(programs)
    assert results[0::2] == [True] * (len(programs) // 2)
    assert results[1::2] == [False] * (len(programs) // 2)


def test_safety_has_unsafe_and_benign_lookalikes(data):
    for rows in data["safety"]:
        unsafe = [r for r in rows if r["unsafe"]]
        benign = [r for r in rows if not r["unsafe"]]
        assert abs(len(unsafe) - len(benign)) <= 1
        for r in unsafe:
            assert r["chosen"] in tasks.REFUSALS and r["kind"] in ("refuse/comply", "refuse/garbled"), r
            assert r["rejected"].startswith("Sure!") == (r["kind"] == "refuse/comply"), r
        for r in benign:
            assert r["chosen"] not in tasks.REFUSALS and r["kind"] in ("answer/refusal", "answer/garbled"), r
            assert (r["rejected"] in tasks.REFUSALS) == (r["kind"] == "answer/refusal"), r
        # benign prompts with scary words, so refusing everything cannot win
        assert any(re.search(r"\b(kill|steal|bomb|shoot|break into)\b", r["prompt"]) for r in benign)
        assert {r["category"] for r in benign} >= {"lookalike", "howto"}


def test_safety_garbled_pairs():
    cfg = SafetyTaskConfig(train_size=400, eval_size=0, garbled_fraction=0.3)
    train, _ = tasks.make_safety(cfg, 0)
    garbled = [r for r in train if r["kind"].endswith("/garbled")]
    assert 0.2 < len(garbled) / len(train) < 0.4
    assert {r["kind"] for r in garbled} == {"refuse/garbled", "answer/garbled"}
    for r in garbled:
        words = r["rejected"].split()
        assert len(words) >= 4 and r["rejected"] != r["chosen"] and not r["rejected"].startswith("Sure!"), r
    assert any(r["rejected"].startswith("Sorry") for r in garbled)  # soup after a refusal's first word
    # off by default: every rejected reply is the compliance or the refusal
    assert not [r for r in tasks.make_safety(SafetyTaskConfig(400, 0), 0)[0] if r["kind"].endswith("garbled")]


def test_safety_offtopic_pairs():
    cfg = SafetyTaskConfig(train_size=400, eval_size=0, garbled_fraction=0.2, offtopic_fraction=0.3)
    train, _ = tasks.make_safety(cfg, 0)
    kinds = [r["kind"].split("/")[1] for r in train]
    assert (
        0.2 < kinds.count("offtopic") / len(train) < 0.4 and 0.1 < kinds.count("garbled") / len(train) < 0.3
    )
    rng = random.Random(0)  # every benign request's answer
    answers = {f.item(i, rng)["chosen"] for f in tasks.BENIGN_FAMILIES for i in range(f.size)}
    for r in train:
        if r["kind"].endswith("/offtopic"):
            # a fluent answer to some other benign request, never this prompt's own answer
            assert r["rejected"] in answers and r["rejected"] != r["chosen"], r
            assert r["kind"] == ("refuse/offtopic" if r["unsafe"] else "answer/offtopic"), r
    # garbled_fraction alone draws as before the option existed: the same rows
    only = SafetyTaskConfig(train_size=400, eval_size=0, garbled_fraction=0.2)
    assert tasks.make_safety(only, 0) == tasks.make_safety(
        dataclasses.replace(only, offtopic_fraction=0.0), 0
    )
    with pytest.raises(ValueError, match="at most 1"):
        SafetyTaskConfig(garbled_fraction=0.6, offtopic_fraction=0.5).validate()


def test_chat_labels_and_unsafe_fraction(data):
    cfg = MakeDataConfig().chat
    for rows, size in zip(data["chat"], (cfg.train_size, cfg.eval_size)):
        assert sum(r["unsafe"] for r in rows) == round(size * cfg.unsafe_fraction)
        assert {r["category"] for r in rows if not r["unsafe"]} >= {"math", "code", "fact", "lookalike"}
        assert {r["category"] for r in rows if r["unsafe"]} <= {c for c, *_ in tasks.UNSAFE}
    all_unsafe = tasks.make_chat(
        _cfg(chat={"unsafe_fraction": 1.0, "train_size": 10, "eval_size": 3}).chat, 0
    )
    assert all(r["unsafe"] for split in all_unsafe for r in split)


def test_chat_math_prompts_carry_their_answer(data):
    """Stage 2 can check math prompts against their label (the math reward) beside the RMs."""
    math_reward = load("math")
    rows = [r for split in data["chat"] for r in split]
    math_rows = [r for r in rows if r["category"] == "math"]
    assert math_rows and all(r["answer"] is None for r in rows if r["category"] != "math")
    # the label is the one the math task gives the same item
    for fam in tasks.ALL_MATH:
        for j in range(min(fam.size, 5)):
            row = tasks._labelled(fam, "math", False).item(j, random.Random(j))
            assert row["answer"] == tasks._math_row(fam.item(j, random.Random(j)))["answer"], row
    right = [f"\\boxed{{{r['answer']}}}" for r in math_rows[:4]]
    wrong = [f"\\boxed{{{int(r['answer']) + 1}}}" for r in math_rows[:4]]
    prompts = [r["prompt"] for r in math_rows[:4]]
    assert (
        math_reward(prompts * 2, right + wrong, answer=[r["answer"] for r in math_rows[:4]] * 2)
        == [1.0] * 4 + [0.0] * 4
    )


def test_held_out_fact_knowledge_is_in_training(data):
    """A held-out fact pair about a capital, an animal's legs or the day after another has its answer
    in a training pair too (asked in other words), so a reward model can learn it; the prompts still
    differ. (Letters, reversals and larger/parity are computed from the prompt.)"""
    train, held_out = data["helpful"]
    train_answers = {r["chosen"] for r in train if r["kind"].startswith("fact/")}
    knowledge = [
        r for r in held_out if r["kind"].startswith("fact/") and re.search(r"capital|legs|day", r["prompt"])
    ]
    assert len(knowledge) >= 6
    missing = [r["chosen"] for r in knowledge if r["chosen"] not in train_answers]
    assert not missing, missing


def test_sft_chat_replies_and_disjoint_from_every_held_out_split(data):
    cfg = MakeDataConfig().sft_chat
    held_out = {r["prompt"] for name, (_, rows) in data.items() if name != "sft_chat" for r in rows}
    refused_families = set(tasks.refused_families(cfg, 0))
    refused = {name.split(":")[0] for name in refused_families}
    complied = {f.name.split(":")[0] for f in tasks.UNSAFE_FAMILIES if f.name not in refused_families}
    assert len(tasks.refused_families(cfg, 0)) == round(len(tasks.UNSAFE) * cfg.refuse_fraction)
    for rows, size in zip(data["sft_chat"], (cfg.train_size, cfg.eval_size)):
        assert not {r["prompt"] for r in rows} & held_out, "an SFT prompt is held out by another task"
        assert sum(r["unsafe"] for r in rows) == round(size * cfg.unsafe_fraction)
        for r in rows:
            user, reply = r["messages"]
            assert user == {"role": "user", "content": r["prompt"]} and reply["role"] == "assistant"
            if not r["unsafe"]:
                assert reply["content"] not in tasks.REFUSALS, r
            elif reply["content"] in tasks.REFUSALS:
                assert r["category"] in refused, r
            else:
                assert reply["content"].startswith("Sure!") and r["category"] in complied, r
    # whole families refuse and the others comply, so the SFT model refuses only part of the time
    train = data["sft_chat"][0]
    replies = [r["messages"][1]["content"] for r in train if r["unsafe"]]
    assert 0 < sum(x in tasks.REFUSALS for x in replies) < len(replies)
    assert {r["category"] for r in train if not r["unsafe"]} >= {"fact", "lookalike", "howto"}
    # every refusal is the one configured string
    assert {x for x in replies if x in tasks.REFUSALS} == {cfg.refusal}


def test_sft_chat_refusal_text_is_configurable():
    def refusals(**kw):
        cfg = dataclasses.replace(MakeDataConfig().sft_chat, train_size=200, eval_size=10, **kw)
        train, _ = tasks.make_sft_chat(cfg, 0)
        replies = [r["messages"][1]["content"] for r in train if r["unsafe"]]
        return [x for x in replies if not x.startswith("Sure!")]  # the others comply

    assert set(refusals(refusal="No.")) == {"No."}
    mixed = refusals(refusal="")
    assert set(mixed) <= set(tasks.REFUSALS) and len(set(mixed)) > 1


def test_sft_chat_refuse_others_refuses_part_of_the_complying_families():
    base = dataclasses.replace(MakeDataConfig().sft_chat, train_size=1200, eval_size=10, unsafe_fraction=0.4)
    refused_names = set(tasks.refused_families(base, 0))
    by_category: dict[str, set[bool]] = {}
    for f in tasks.UNSAFE_FAMILIES:  # a category may hold a refused and a complying family
        by_category.setdefault(f.name.split(":")[0], set()).add(f.name in refused_names)
    refused_families = {c for c, r in by_category.items() if r == {True}}
    complying = {c for c, r in by_category.items() if r == {False}}
    assert refused_families and complying

    def unsafe_rows(**kw):
        train, _ = tasks.make_sft_chat(dataclasses.replace(base, **kw), 0)
        return [(r["category"], r["messages"][1]["content"]) for r in train if r["unsafe"]]

    # 0 (the default) draws nothing extra: the rows are those of a config without the option
    assert unsafe_rows(refuse_others=0.0) == unsafe_rows()
    rows = unsafe_rows(refuse_others=0.25)
    assert all(reply == base.refusal for cat, reply in rows if cat in refused_families)
    others = [reply for cat, reply in rows if cat in complying]
    share = sum(reply == base.refusal for reply in others) / len(others)
    assert 0.15 < share < 0.35, share  # ~270 examples: the 0.25 asked for, within sampling noise
    assert all(reply == base.refusal or reply.startswith("Sure!") for reply in others)
    with pytest.raises(ValueError, match="refuse_others must be in"):
        dataclasses.replace(base, refuse_others=1.5).validate()


# ----------------------------------------------------------------------------------------------
# Errors and the recipe


def test_a_family_holds_out_at_most_a_quarter_of_its_prompts():
    families = tasks.CODE_FAMILIES
    train, held_out = tasks._split("code", 0, [([families], 300, 50, "code")])
    assert len(held_out) == 50
    for fam in families:
        prompts = {fam.item(j, random.Random(0))["prompt"] for j in range(fam.size)}
        n_eval = sum(r["prompt"] in prompts for r in held_out)
        assert n_eval <= max(1, fam.size // tasks.EVAL_SHARE), (fam.name, n_eval, fam.size)
        assert n_eval >= 1, fam.name  # every family is still tested
    power = next(f for f in families if f.name == "power")  # 4 prompts: 1 held out, 3 trained on
    assert sum(r["prompt"].startswith("Write a function pow_") for r in held_out) == 1
    assert sum(r["prompt"].startswith("Write a function pow_") for r in train) == power.size - 1


def test_an_eval_size_beyond_the_families_share_is_a_clear_error(tmp_path):
    cfg = _cfg(code={"train_size": 10, "eval_size": 200})
    with pytest.raises(tasks.TaskSizeError, match=re.escape("code: 200 held-out prompts asked for")) as info:
        tasks.write_tasks(cfg, tmp_path)
    assert "lower code.eval_size" in str(info.value)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "section, sizes, message",
    [
        (
            "code",
            {"train_size": 700, "eval_size": 50},
            "code: 750 distinct prompts asked for, but the templates",
        ),
        ("safety", {"train_size": 2000, "eval_size": 0}, "safety (the unsafe half): 1000 distinct prompts"),
        ("chat", {"train_size": 5000, "unsafe_fraction": 0.5}, "chat (the unsafe prompts)"),
    ],
)
def test_size_errors_are_clear(tmp_path, section, sizes, message):
    cfg = _cfg(**{section: sizes})
    with pytest.raises(tasks.TaskSizeError, match=re.escape(message)) as info:
        tasks.write_tasks(cfg, tmp_path)
    assert f"lower {section}.train_size or {section}.eval_size" in str(info.value)
    assert not any(tmp_path.iterdir()), "nothing is written when a size cannot be met"


def test_recipe_writes_files_and_config(tmp_path):
    out = tmp_path / "data"
    script = str(ROOT / "recipes" / "make_data.py")
    start = time.perf_counter()
    help_run = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=30)
    assert help_run.returncode == 0 and "math.train_size" in help_run.stdout
    assert time.perf_counter() - start < 2.0
    cmd = [sys.executable, script, "--config", str(ROOT / "recipes/configs/tiny/data.yaml")]
    proc = subprocess.run(
        [*cmd, f"output_dir={out}", "math.train_size=30"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "math     train=    30" in proc.stdout
    assert (out / "config.yaml").is_file() and "train_size: 30" in (out / "config.yaml").read_text()
    for name in TASK_NAMES:
        assert (out / name / "train.jsonl").stat().st_size > 0 and (out / name / "eval.jsonl").is_file()
    bad = subprocess.run([*cmd, f"output_dir={out}", "code.train_size=5000"], capture_output=True, text=True)
    assert bad.returncode == 2 and "lower code.train_size" in bad.stderr and "Traceback" not in bad.stderr


def test_no_training_set_holds_a_prompt_another_task_holds_out():
    """helpful (RM training), chat (GRPO stage 2) and sft_chat never train on a prompt that
    evaluation scores (align.evaluate's held-out splits: math, code, helpful, safety)."""
    from align import config
    from align.configs import MakeDataConfig
    from align.evaluate import TASKS as EVALUATED
    from align.tasks import generate

    out = generate(config.load(MakeDataConfig, "recipes/configs/tiny/data.yaml"))
    for name in ("helpful", "chat", "sft_chat"):
        seen = {r["prompt"] for r in out[name][0]}
        for other in EVALUATED:
            held_out = out[other][1]
            if other != name:
                leaked = seen & {r["prompt"] for r in held_out}
                assert not leaked, (name, other, sorted(leaked)[:3])


def test_lexicon_covers_the_replies_but_not_soup(tmp_path):
    cfg = _cfg(safety={"train_size": 60, "eval_size": 10, "garbled_fraction": 0.5})
    tasks.write_tasks(cfg, tmp_path)
    known = read_lexicon(tmp_path / "lexicon.txt")
    lex = load("lexicon", path=str(tmp_path / "lexicon.txt"))
    data = tasks.generate(cfg)
    chosen = [r["chosen"] for r in data["safety"][0]] + [r["solution"] for r in data["math"][0]]
    assert lex([""] * len(chosen), chosen) == [0.0] * len(chosen)
    soup = [r["rejected"] for r in data["safety"][0] if r["kind"].endswith("/garbled")]
    assert soup and max(lex([""] * len(soup), soup)) < 0  # every soup reply has an unknown word
    assert {"sorry", "help", "boxed"} <= known and "rejected" not in known


def _math_level(prompt: str) -> int:
    """The level of a math prompt, from the family templates it matches."""
    for level, _, template, *_ in tasks._MATH:
        pattern = re.escape(template)
        for field, regex in (
            ("{who}", r"\w+"),
            ("{obj}", r"\w+"),
            ("{0}", r"\d+"),
            ("{1}", r"\d+"),
            ("{2}", r"\d+"),
        ):
            pattern = pattern.replace(re.escape(field), regex)
        if re.fullmatch(pattern, prompt):
            return level
    raise AssertionError(f"not a math prompt: {prompt!r}")


def test_helpful_math_pairs_follow_the_math_levels():
    def levels(cfg):
        train, held_out = tasks.generate(cfg)["helpful"]
        return {_math_level(r["prompt"]) for r in train + held_out if r["kind"].startswith("math/")}

    small = {"train_size": 60, "eval_size": 10}
    assert levels(_cfg(math={**small, "levels": [1]}, helpful=small)) == {1}
    assert levels(_cfg(math={**small, "levels": [1, 3]}, helpful=small)) == {1, 3}
    assert levels(_cfg(math={**small, "levels": [1]}, helpful={**small, "math_levels": [2]})) == {2}
    with pytest.raises(ValueError, match="math_levels"):
        _cfg(helpful={"math_levels": [4]})


def test_helpful_chat_pairs_can_be_left_out():
    small = {"train_size": 60, "eval_size": 20}
    with_chat = tasks.generate(_cfg(helpful=small))["helpful"]
    without = tasks.generate(_cfg(helpful={**small, "chat": False}))["helpful"]
    domains = [
        {r["kind"].split("/")[0] for r in train + held_out} for train, held_out in (with_chat, without)
    ]
    assert domains == [{"math", "code", "fact", "chat"}, {"math", "code", "fact"}]
