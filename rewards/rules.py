"""Rule rewards (DeepSeek-V2's RM_rule): answer format, length window, n-gram repetition, language
consistency, known words (lexicon), the code task's function defined (entry_point), and `rule`, a
weighted set of them. Each function here is a factory: its keyword options are those of
``rewards.load(name, **options)`` and it returns the reward callable."""

from __future__ import annotations

import ast
import collections
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path

from rewards.text import completion_text, prompt_text

Reward = Callable[..., list]

_HASH_LINE = re.compile(r"^[ \t]*####[ \t]*(.*?)[ \t]*$", re.MULTILINE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def boxed_contents(text: str) -> list[str]:
    r"""The contents of every ``\boxed{...}`` (or ``\fbox{...}``) in `text`, braces balanced; an
    unclosed one is skipped."""
    out = []
    for m in _BOXED.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end() : i - 1])
    return out


def hash_answers(text: str) -> list[str]:
    """The answers of every ``#### N`` line (GSM8K style)."""
    return [a for a in _HASH_LINE.findall(text) if a]


def final_answer(text: str) -> str | None:
    r"""The completion's single final answer: from ``\boxed{...}`` and ``#### N`` lines. None when
    there is none, or when there are several *different* ones (repeating the same one is fine)."""
    found = [a.strip() for a in boxed_contents(text) + hash_answers(text)]
    distinct = {re.sub(r"\s+|^\$|\$$|\.$", "", a) for a in found if a}
    return next(a for a in found if a) if len(distinct) == 1 else None


def format_reward(style: str = "boxed") -> Reward:
    r"""1.0 when the completion has exactly one non-empty final answer in the expected form
    (``style="boxed"``: ``\boxed{...}``; ``style="hash"``: a ``#### N`` line), else 0.0."""
    if style not in ("boxed", "hash"):
        raise ValueError(f"format style is 'boxed' or 'hash', not {style!r}")
    find = boxed_contents if style == "boxed" else hash_answers

    def format(prompts: list, completions: list, **columns) -> list[float]:  # noqa: A001
        out = []
        for c in completions:
            answers = find(completion_text(c))
            out.append(1.0 if len(answers) == 1 and answers[0].strip() else 0.0)
        return out

    return format


def length_reward(min_chars: int = 1, max_chars: int = 4096) -> Reward:
    """0.0 inside ``[min_chars, max_chars]``; below it ``-(min_chars - n) / min_chars``; above it
    ``-min(1, (n - max_chars) / max_chars)``. Always in [-1, 0]."""
    if not 0 <= min_chars <= max_chars or max_chars <= 0:
        raise ValueError(f"need 0 <= min_chars <= max_chars and max_chars > 0, got {min_chars}, {max_chars}")

    def length(prompts: list, completions: list, **columns) -> list[float]:
        out = []
        for c in completions:
            n = len(completion_text(c))
            if n < min_chars:
                out.append(-(min_chars - n) / min_chars)
            elif n > max_chars:
                out.append(-min(1.0, (n - max_chars) / max_chars))
            else:
                out.append(0.0)
        return out

    return length


def repetition_reward(ngram_size: int = 3, max_penalty: float = -1.0, unit: str = "word") -> Reward:
    """Open-R1's n-gram repetition penalty: ``max_penalty * (1 - distinct n-grams / n-grams)``, in
    [max_penalty, 0]. ``unit`` is ``word`` (lower-cased whitespace tokens) or ``char`` (for scripts
    written without spaces). Texts shorter than one n-gram get 0."""
    if ngram_size < 1 or max_penalty > 0 or unit not in ("word", "char"):
        raise ValueError("need ngram_size >= 1, max_penalty <= 0 and unit 'word' or 'char'")

    def repetition(prompts: list, completions: list, **columns) -> list[float]:
        out = []
        for c in completions:
            text = completion_text(c).lower()
            tokens = text.split() if unit == "word" else list(text)
            grams = [tuple(tokens[i : i + ngram_size]) for i in range(len(tokens) - ngram_size + 1)]
            out.append(max_penalty * (1 - len(set(grams)) / len(grams)) if grams else 0.0)
        return out

    return repetition


_SCRIPT_FAMILY = {"HIRAGANA": "CJK", "KATAKANA": "CJK", "CJK": "CJK", "FULLWIDTH": "LATIN"}


def script_of(ch: str) -> str | None:
    """The writing system of a letter (``LATIN``, ``CYRILLIC``, ``HANGUL``, ``CJK`` for Han and kana,
    ...) from its Unicode name; None for anything that is not a letter."""
    if not ch.isalpha():
        return None
    name = unicodedata.name(ch, "")
    first = name.split(" ", 1)[0] if name else "UNKNOWN"
    return _SCRIPT_FAMILY.get(first, first)


def language_reward(script: str | None = None) -> Reward:
    """Language consistency: the fraction of the completion's letters written in the prompt's main
    script (or in ``script`` when given, e.g. ``"LATIN"``), in [0, 1]. Digits, symbols and spaces do
    not count. None when the prompt (without ``script``) or the completion has no letters."""

    def language(prompts: list, completions: list, **columns) -> list[float | None]:
        out: list[float | None] = []
        for p, c in zip(prompts, completions, strict=True):
            target = script
            if target is None:
                counts = collections.Counter(s for s in map(script_of, prompt_text(p)) if s)
                target = counts.most_common(1)[0][0] if counts else None
            scripts = [s for s in map(script_of, completion_text(c)) if s]
            out.append(sum(s == target for s in scripts) / len(scripts) if target and scripts else None)
        return out

    return language


_WORD = re.compile(r"[^\W\d_]+")


def words_of(text: str) -> list[str]:
    """The words of ``text`` as the lexicon rule sees them: runs of letters, lower-cased."""
    return _WORD.findall(text.lower())


def read_lexicon(path: str | Path) -> frozenset[str]:
    """The words of a word list (e.g. one per line; lines starting with ``#`` are comments), split and
    lower-cased as completions are (runs of letters: "can't" gives "can" and "t"). Raises
    ``ValueError`` naming the file when it cannot be read or holds no word."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"lexicon {path}: cannot read it ({e})") from e
    words = frozenset(w for line in text.splitlines() if not line.startswith("#") for w in words_of(line))
    if not words:
        raise ValueError(f"lexicon {path}: no words in it")
    return words


def lexicon_reward(path: str | None = None, words: list[str] | None = None) -> Reward:
    """Known words: ``-(unknown words / words)`` of the completion, in [-1, 0], where a word is a run
    of letters (lower-cased) and known means listed in the lexicon (the file ``path``, see
    :func:`read_lexicon`, and/or the list ``words``). 0.0 for a completion without letters. Catches
    the letter soup a drifting policy writes, which a small reward model may score like text."""
    if path is None and not words:
        raise ValueError("the lexicon rule needs a word list: path=FILE and/or words=[...]")
    if isinstance(words, str) or not all(isinstance(w, str) for w in words or ()):
        raise ValueError(f"lexicon words must be a list of strings, got {words!r:.80}")
    known = (read_lexicon(path) if path is not None else frozenset()) | {
        w for word in words or () for w in words_of(word)
    }

    def lexicon(prompts: list, completions: list, **columns) -> list[float]:
        out = []
        for c in completions:
            found = words_of(completion_text(c))
            out.append(-sum(w not in known for w in found) / len(found) if found else 0.0)
        return out

    return lexicon


def _defines(code: str, name: str) -> bool:
    """True when ``code`` parses and binds ``name`` at its top level (a def, class or assignment)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # deep nesting: RecursionError
        return False
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
    return False


def entry_point_reward(column: str = "entry_point") -> Reward:
    """Partial credit on code tasks: 1.0 when the completion's code (its last Python block, as the
    ``code`` reward takes it) parses and defines the name in the row's ``column`` (the function the
    tests call), else 0.0; None for rows without that column (math rows in a mixed batch). A policy
    that misspells the function's name fails every test, whatever its body: this separates it from
    one that gets the name right."""
    from rewards.code_tests import extract_code

    def entry_point(prompts: list, completions: list, **columns) -> list[float | None]:
        names = columns.get(column)
        if names is None:
            return [None] * len(completions)
        out: list[float | None] = []
        for c, name in zip(completions, names, strict=True):
            if not name:
                out.append(None)
                continue
            code = extract_code(completion_text(c))
            out.append(1.0 if code and _defines(code, str(name)) else 0.0)
        return out

    return entry_point


RULES = {
    "format": format_reward,
    "length": length_reward,
    "repetition": repetition_reward,
    "language": language_reward,
    "lexicon": lexicon_reward,
    "entry_point": entry_point_reward,
}
DEFAULT_RULE_WEIGHTS = {"format": 1.0, "length": 1.0, "repetition": 1.0}


def rule_reward(weights: dict[str, float] | None = None, **options: dict) -> Reward:
    """A weighted sum of rule rewards: ``weights`` maps rule names (format, length, repetition,
    language, lexicon, entry_point) to weights (default ``DEFAULT_RULE_WEIGHTS``); ``options`` give
    each rule's options, e.g. ``load("rule", weights={"format": 1, "length": 0.5}, length={"max_chars": 800})``. A rule that is
    None for a sample contributes nothing; a sample where every rule is None gets None."""
    weights = dict(DEFAULT_RULE_WEIGHTS if weights is None else weights)
    unknown = (set(weights) | set(options)) - set(RULES)
    if unknown:
        raise ValueError(f"unknown rules {sorted(unknown)}; rules are {sorted(RULES)}")
    if set(options) - set(weights):
        raise ValueError(f"options for rules without a weight: {sorted(set(options) - set(weights))}")
    parts = {name: (RULES[name](**options.get(name, {})), float(w)) for name, w in weights.items()}

    def rule(prompts: list, completions: list, **columns) -> list[float | None]:
        scored = [(fn(prompts, completions, **columns), w) for fn, w in parts.values()]
        out: list[float | None] = []
        for i in range(len(completions)):
            got = [w * values[i] for values, w in scored if values[i] is not None]
            out.append(sum(got) if got else None)
        return out

    return rule
