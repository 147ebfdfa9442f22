"""Rule rewards against hand-computed values."""

from __future__ import annotations

import pytest

from rewards import load
from rewards.rules import boxed_contents, final_answer, script_of


def test_boxed_contents_balances_braces_and_skips_unclosed():
    text = r"so \boxed{\frac{1}{2}} and \boxed{ {a}{b} } and \boxed{open"
    assert boxed_contents(text) == [r"\frac{1}{2}", " {a}{b} "]


def test_final_answer_single_repeated_or_conflicting():
    assert final_answer(r"\boxed{3}") == "3"
    assert final_answer("work\n#### 42\n") == "42"
    assert final_answer("\\boxed{42} so\n#### 42") == "42"  # the same answer twice is one answer
    assert final_answer(r"\boxed{3} or \boxed{4}") is None
    assert final_answer("no answer here") is None


def test_format():
    fmt = load("format")
    comps = [r"x \boxed{1}", r"\boxed{1} \boxed{1}", "#### 1", r"\boxed{}", r"\boxed{ {2} }"]
    assert fmt([""] * 5, comps) == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert load("format", style="hash")([""] * 2, ["a\n#### 7", "#### 7\n#### 8"]) == [1.0, 0.0]


def test_length_window():
    length = load("length", min_chars=4, max_chars=10)
    comps = ["", "ab", "abcd", "x" * 10, "x" * 15, "x" * 40]
    # below: -(4-n)/4 ; above: -min(1, (n-10)/10)
    assert length([""] * 6, comps) == [-1.0, -0.5, 0.0, 0.0, -0.5, -1.0]


def test_repetition_by_hand():
    rep = load("repetition", ngram_size=2)
    # "a b a b a": bigrams ab ba ab ba -> 2 distinct of 4 -> -(1 - 2/4) = -0.5
    # "a b c d": 3 distinct of 3 -> 0 ; "a": no bigram -> 0
    assert rep([""] * 3, ["a b a b a", "A b c d", "a"]) == [-0.5, 0.0, 0.0]
    half = load("repetition", ngram_size=1, max_penalty=-0.5, unit="char")
    assert half([""], ["aaaa"]) == [-0.5 * (1 - 1 / 4)]


def test_language_consistency():
    lang = load("language")
    prompts = ["What is 2+2?", "2+2는 무엇인가요?", "1+1", "Hi"]
    comps = ["It is four", "답은 four 입니다", "two", "42"]
    # 1: all Latin -> 1 ; 2: Hangul prompt; letters 답은입니다 (5 Hangul) + four (4 Latin) -> 5/9
    # 3: prompt has no letters -> None ; 4: completion has no letters -> None
    assert lang(prompts, comps) == [1.0, pytest.approx(5 / 9), None, None]
    assert load("language", script="LATIN")([""], ["ab가"]) == [pytest.approx(2 / 3)]
    assert script_of("ひ") == script_of("漢") == "CJK"


def test_rule_weighted_set_by_hand():
    rule = load(
        "rule",
        weights={"format": 1.0, "length": 0.5, "language": 2.0},
        length={"min_chars": 10, "max_chars": 20},
    )
    prompts = ["Solve 1+1.", "1+1"]
    comps = [r"\boxed{2}", r"\boxed{2} \boxed{3} words words"]
    # 0: format 1, length (10-9)/10 -> -0.1 * 0.5, language: letters 'boxed' Latin -> 1 * 2
    # 1: format 0, length 31 > 20 -> -(31-20)/20 * 0.5, language None (prompt without letters)
    assert rule(prompts, comps) == [pytest.approx(1 - 0.05 + 2), pytest.approx(-0.275)]


def test_rule_rejects_unknown_names():
    with pytest.raises(Exception, match="unknown rules"):
        load("rule", weights={"fromat": 1.0})


def test_lexicon_by_hand(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("# a word list\nsorry I\ncan't help\nwith THAT\n")
    lex = load("lexicon", path=str(words))
    comps = ["Sorry, I can't help with that.", "Sorry, ae pe sor.", "42 = 6*7", "help help zzz"]
    # the list splits like the text ("can't" -> can, t): 1 all known -> 0 ; 2: sorry ae pe sor -> -3/4
    # 3: no letters -> 0 ; 4: help help zzz -> -1/3
    assert lex([""] * 4, comps) == [0.0, -0.75, 0.0, pytest.approx(-1 / 3)]
    both = load("lexicon", path=str(words), words=["pe", "Ae"])
    assert both([""], ["Sorry, ae pe sor."]) == [-0.25]
    rule = load("rule", weights={"lexicon": 2.0}, lexicon={"words": ["ok"]})
    assert rule([""] * 2, ["ok ok", "ok no"]) == [0.0, -1.0]


def test_lexicon_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="needs a word list"):
        load("lexicon")
    with pytest.raises(ValueError, match="list of strings"):
        load("lexicon", words="sorry help")
    with pytest.raises(ValueError, match=r"missing\.txt: cannot read"):
        load("lexicon", path=str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match=r"empty\.txt: no words"):
        load("lexicon", path=str(tmp_path / "empty.txt"))


def test_entry_point_by_hand():
    ep = load("entry_point")
    comps = [
        "```python\ndef count_l(s):\n    return s.count('l')\n```",  # defines it
        "```python\ndef count_g(s):\n    return s.count('l')\n```",  # another name
        "```python\ndef count_l(s):\n    return s.count('l'\n```",  # does not parse
        "count_l = lambda s: s.count('l')",  # raw code, an assignment
        "```python\nif True:\n    def count_l(s): return 0\n```",  # not at the top level
        "The answer is 7.",  # a math completion, no entry point in its row
    ]
    names = ["count_l"] * 5 + [None]
    assert ep([""] * 6, comps, entry_point=names) == [1.0, 0.0, 0.0, 1.0, 0.0, None]
    assert ep([""], ["x"]) == [None]  # no entry_point column at all
    rule = load("rule", weights={"entry_point": 0.5})
    assert rule([""] * 2, comps[:2], entry_point=["count_l"] * 2) == [0.5, 0.0]
