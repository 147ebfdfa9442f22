"""Data loading and validation: files, directories or hub datasets -> a checked ``datasets.Dataset``.

Every row is validated before training starts; a bad row is named by file, line (or row) and field::

    data/train.jsonl:17: field 'chosen': equal to 'rejected'
    data/train.parquet: row 3: field 'prompt': empty string

Sources (``data.train`` / ``data.eval`` entries):

- ``*.jsonl`` / ``*.ndjson``: JSON Lines, one object a line; errors name the 1-based line.
- ``*.json``: a JSON array of objects (errors name the 0-based row index), or JSON Lines when the
  file does not start with ``[``.
- ``*.parquet``: errors name the 0-based row index.
- a directory: its ``.jsonl``/``.ndjson``/``.json``/``.parquet`` files (not sub-folders), sorted by name.
- anything else is a hub dataset ``name[:config][@split]`` (default split: ``split_name``; for
  ``eval`` also ``validation`` or ``test``). Hub datasets load only when online or already cached.

Formats (``data.format``):

- ``messages``: ``messages`` = [{role, content}, ...]; an optional ``system`` turn, then ``user`` /
  ``assistant`` alternating, ending with ``assistant`` (the SFT target); contents non-empty strings.
- ``prompt_completion``: ``prompt``, ``completion``, non-empty strings (or TRL's conversational
  form: prompt messages ending with ``user``, completion messages of the ``assistant``).
- ``preference``: ``prompt``, ``chosen``, ``rejected``, all strings or all message lists; chosen != rejected.
- ``rl``: ``prompt`` (string or messages ending with ``user``) plus any extra columns (``answer``,
  ``tests``, ...), which reach the reward functions as keyword arguments.
- ``pointwise``: ``prompt``, ``completion`` and a numeric ``score`` and/or ``label`` (a number or a bool).

``auto`` infers the format of each row from its non-null columns, first match wins: ``messages`` ->
``chosen``/``rejected`` (preference) -> ``completion`` with ``score``/``label`` (pointwise) ->
``completion`` (prompt_completion) -> ``prompt`` (rl). A file takes the format most of its rows have;
a row of another format in it is a bad row ("mixed formats"); files of one split must agree.
Beyond the format, a column must hold one JSON type in every row of a split (a table needs it).

Order of work in ``load_split``: read and validate every row of every source; bad rows stop the run
(``on_bad_row: error``) or are written to ``<output_dir>/rejected_rows.jsonl`` (``skip``); then rows
are taken in source order up to ``max_rows``, measuring prompt lengths on the way (only rows up to
the cap are measured); prompts over ``max_prompt_tokens`` are counted and reported, kept unless
``drop_too_long=True``, never truncated. The dataset holds the rows' own columns only, unless
``keep_provenance=True`` adds ``_source`` and ``_row`` (for trainers, leave it off: extra columns
reach reward functions and collators).

``rejected_rows.jsonl`` holds one object per bad row: ``split``, ``source``, ``line`` (JSON Lines) or
``row`` (0-based index), ``field``, ``reason``, ``error`` (the full message) and ``raw``: the row
object, or the line's text when it is not a JSON object (non-UTF-8 lines add ``raw_base64``, the
exact bytes; a line over ``MAX_ROW_BYTES`` keeps a ``RAW_PREVIEW_BYTES`` prefix, with
``raw_truncated`` and ``raw_bytes``). A rerun replaces the records of its own split only.

JSON Lines are parsed here line by line, not by ``datasets``' pyarrow reader, so that bad JSON,
non-UTF-8 bytes or a huge line get a file:line error instead of a pyarrow traceback. Rows are held in
memory as Python objects while they are checked; fine for alignment-sized data (up to ~1M rows).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from align.configs import DataConfig

log = logging.getLogger(__name__)

MAX_ROW_BYTES = 1_000_000  # a JSON row (one line) larger than this is a bad row, not a memory hazard
RAW_PREVIEW_BYTES = 4096  # how much of an over-size row rejected_rows.jsonl keeps (the source has all)
FORMATS = ("messages", "prompt_completion", "preference", "rl", "pointwise")
ROLES = ("system", "user", "assistant")
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet"}
PROVENANCE_COLUMNS = ("_source", "_row")
REJECTED_FILE = "rejected_rows.jsonl"
_HUB_NAME = re.compile(r"^[\w.-]+(/[\w.-]+)?(:[\w.-]+)?(@[\w.\-\[\]:%+]+)?$")
_BATCH = 1000


class DataError(ValueError):
    """Data that cannot be used; the message names the file, the line or row, the field and why."""


@dataclass(frozen=True)
class Where:
    """Where a row comes from: ``line`` is 1-based (JSON Lines), ``index`` 0-based (other sources)."""

    source: str
    line: int | None = None
    index: int | None = None

    def __str__(self) -> str:
        if self.line is not None:
            return f"{self.source}:{self.line}"
        if self.index is not None:
            return f"{self.source}: row {self.index}"
        return self.source

    @property
    def row(self) -> int | None:
        return self.line if self.line is not None else self.index


@dataclass
class BadRow:
    """A rejected row: where, which field (None for a whole-row problem), why, and the raw row."""

    where: Where
    reason: str
    field: str | None = None
    raw: Any = None  # the line's text if it is not a JSON object, else the row object
    # raw_base64 (non-UTF-8 bytes), raw_truncated and raw_bytes (over-size rows) when raw is not all
    extra: dict = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        what = f"field '{self.field}': " if self.field else ""
        return f"{self.where}: {what}{self.reason}"

    def record(self, split: str) -> dict:
        """The JSON object written to ``rejected_rows.jsonl``."""
        return {
            "split": split,
            "source": self.where.source,
            "line": self.where.line,
            "row": self.where.index,
            "field": self.field,
            "reason": self.reason,
            "error": str(self),
            "raw": self.raw,
            **self.extra,
        }


@dataclass
class Validated:
    """What ``validate_rows`` found: the format, the good rows (with where they came from), the bad."""

    format: str
    format_inferred: bool
    rows: list[dict]
    wheres: list[Where]
    bad: list[BadRow]

    @property
    def n_read(self) -> int:
        return len(self.rows) + len(self.bad)


@dataclass
class SplitReport:
    """What ``load_split`` did, for logs and ``summary.json``."""

    split: str
    sources: list[str]  # files (directories expanded) and hub names, in reading order
    format: str
    format_inferred: bool
    n_read: int  # rows read, bad ones included (blank lines are not rows)
    n_bad: int
    n_rows: int  # rows in the returned dataset
    max_rows: int
    max_prompt_tokens: int
    length_unit: str | None = None  # "tokens", or "characters (no tokenizer given)", ...; None: not measured
    n_measured: int = 0
    n_too_long: int = 0
    n_dropped_too_long: int = 0
    too_long_example: str | None = None  # "data/train.jsonl:17 (812 tokens)"
    longest_prompt: int = 0
    rejected_path: str | None = None
    first_bad: str | None = None
    capped: bool = False  # max_rows left good rows out

    def summary(self) -> str:
        how = "inferred from the columns" if self.format_inferred else "from data.format"
        parts = [
            f"{self.split}: {self.n_rows} rows, format '{self.format}' ({how}), {len(self.sources)} source(s)"
        ]
        if self.n_bad:
            parts.append(
                f"{self.n_bad} of {self.n_read} rows bad and skipped (listed in {self.rejected_path})"
            )
        if self.capped:
            parts.append(f"capped at data.max_rows={self.max_rows}")
        if self.n_too_long:
            fate = f"{self.n_dropped_too_long} dropped" if self.n_dropped_too_long else "kept, not truncated"
            parts.append(
                f"{self.n_too_long} of {self.n_measured} prompts longer than {self.max_prompt_tokens} "
                f"{self.length_unit} ({fate}); first: {self.too_long_example}"
            )
        return "; ".join(parts)


@dataclass
class LoadedSplit:
    """``load_split``'s result: the dataset a trainer takes, and the report."""

    dataset: datasets.Dataset
    report: SplitReport


@dataclass
class _Rec:
    where: Where
    row: dict | None = None
    bad: BadRow | None = None


class _Bad(Exception):
    def __init__(self, name: str | None, reason: str):
        super().__init__(reason)
        self.field, self.reason = name, reason


# ----------------------------------------------------------------------------------------------
# Row checks


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _short(value: Any, n: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _text(value: Any, name: str) -> str:
    if value is None:
        raise _Bad(name, "missing")
    if not isinstance(value, str):
        raise _Bad(name, f"expected a string, got {_kind(value)} {_short(value)}")
    if not value.strip():
        raise _Bad(name, "empty string")
    return value


def _turns(value: Any, name: str, *, first: str, last: str, system: bool) -> None:
    """A message list: optional system turn (if ``system``), then alternating roles from ``first``."""
    if value is None:
        raise _Bad(name, "missing")
    if not isinstance(value, (list, tuple)):
        raise _Bad(name, f"expected a list of {{role, content}} messages, got {_kind(value)} {_short(value)}")
    if not value:
        raise _Bad(name, "empty list of messages")
    expected = first
    for i, msg in enumerate(value):
        at = f"{name}[{i}]"
        if not isinstance(msg, Mapping):
            raise _Bad(at, f"expected an object with 'role' and 'content', got {_kind(msg)} {_short(msg)}")
        role = msg.get("role")
        if role is None:
            raise _Bad(f"{at}.role", "missing")
        if role not in ROLES:
            raise _Bad(f"{at}.role", f"unknown role {_short(role)} (expected system, user or assistant)")
        _text(msg.get("content"), f"{at}.content")
        if role == "system" and i == 0 and system:
            continue
        if role == "system":
            where = "only as the first turn" if system else "not here"
            raise _Bad(f"{at}.role", f"a 'system' turn is allowed {where}")
        if role != expected:
            raise _Bad(
                f"{at}.role",
                f"expected '{expected}', got '{role}' (turns alternate user/assistant after an optional system turn)",
            )
        expected = "assistant" if role == "user" else "user"
    final = value[-1]["role"]
    if final != last:
        why = " (the SFT target)" if name == "messages" else ""
        raise _Bad(f"{name}[{len(value) - 1}].role", f"the last turn must be '{last}'{why}, got '{final}'")


def _prompt(row: Mapping) -> str:
    """Check ``prompt`` (a string or messages ending with a user turn); return its kind."""
    value = row.get("prompt")
    if isinstance(value, (list, tuple)):
        _turns(value, "prompt", first="user", last="user", system=True)
        return "messages"
    _text(value, "prompt")
    return "string"


def _reply(row: Mapping, name: str, like: str) -> None:
    """Check a response column, which must be of the same kind as the prompt."""
    value = row.get(name)
    if like == "messages":
        if value is not None and not isinstance(value, (list, tuple)):
            raise _Bad(name, f"expected a message list like 'prompt', got {_kind(value)} {_short(value)}")
        _turns(value, name, first="assistant", last="assistant", system=False)
    else:
        if isinstance(value, (list, tuple)):
            raise _Bad(name, "expected a string like 'prompt', got a list")
        _text(value, name)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.strip() == b.strip()
    return [(m["role"], m["content"].strip()) for m in a] == [(m["role"], m["content"].strip()) for m in b]


def _real(value: Any, name: str, *, allow_bool: bool) -> None:
    ok = isinstance(value, (int, float)) and (allow_bool or not isinstance(value, bool))
    if not ok:
        want = "a number or a boolean" if allow_bool else "a number"
        raise _Bad(name, f"expected {want}, got {_kind(value)} {_short(value)}")
    if not math.isfinite(value):
        raise _Bad(name, f"not a finite number: {value}")


def _check(row: Mapping, fmt: str) -> None:
    if fmt == "messages":
        _turns(row.get("messages"), "messages", first="user", last="assistant", system=True)
    elif fmt == "rl":
        _prompt(row)
    elif fmt == "prompt_completion":
        _reply(row, "completion", _prompt(row))
    elif fmt == "preference":
        like = _prompt(row)
        _reply(row, "chosen", like)
        _reply(row, "rejected", like)
        if _same(row["chosen"], row["rejected"]):
            raise _Bad("chosen", "equal to 'rejected'")
    elif fmt == "pointwise":
        _reply(row, "completion", _prompt(row))
        if row.get("score") is None and row.get("label") is None:
            raise _Bad("score", "missing (a pointwise row needs a numeric 'score' or 'label')")
        if row.get("score") is not None:
            _real(row["score"], "score", allow_bool=False)
        if row.get("label") is not None:
            _real(row["label"], "label", allow_bool=True)
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def check_row(row: Mapping[str, Any], fmt: str) -> tuple[str | None, str] | None:
    """Check one row against ``fmt``; return ``(field, reason)`` for its first problem, or None."""
    try:
        _check(row, fmt)
    except _Bad as e:
        return e.field, e.reason
    return None


def infer_format(row: Mapping[str, Any]) -> str | None:
    """The format a row's non-null columns suggest (see the module doc), or None."""
    cols = {k for k, v in row.items() if v is not None}
    if "messages" in cols:
        return "messages"
    if "chosen" in cols or "rejected" in cols:
        return "preference"
    if "completion" in cols:
        return "pointwise" if cols & {"score", "label"} else "prompt_completion"
    if "prompt" in cols:
        return "rl"
    return None


_KEY_COLUMN = {
    "messages": "messages",
    "preference": "chosen",
    "pointwise": "score",
    "prompt_completion": "completion",
}


def _key_column(row: Mapping, fmt: str) -> str:
    """The column that made a row look like ``fmt`` (to name it in a mixed-formats error)."""
    if fmt == "preference":
        return "chosen" if row.get("chosen") is not None else "rejected"
    if fmt == "pointwise":
        return "score" if row.get("score") is not None else "label"
    return _KEY_COLUMN.get(fmt, "prompt")


# ----------------------------------------------------------------------------------------------
# Validation of many rows


def _resolve_format(recs: list[_Rec], fmt: str, split: str) -> tuple[str | None, bool]:
    """``fmt`` itself, or the format most rows of each source have (sources must agree)."""
    if fmt != "auto":
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")
        return fmt, False
    votes: dict[str, Counter] = {}
    for rec in recs:
        guess = infer_format(rec.row) if rec.row is not None else None
        if guess:
            votes.setdefault(rec.where.source, Counter())[guess] += 1
    per_source = {src: c.most_common(1)[0][0] for src, c in votes.items()}  # ties: first seen wins
    found = list(dict.fromkeys(per_source.values()))
    if len(found) > 1:
        listing = ", ".join(f"{src} is '{f}'" for src, f in per_source.items())
        raise DataError(f"{split}: sources hold different formats ({listing}); a split takes one format")
    return (found[0] if found else None), True


def _validate(
    recs: list[_Rec], fmt: str, *, on_bad_row: str, split: str, accept: Collection[str] | None = None
) -> Validated:
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    resolved, inferred = _resolve_format(recs, fmt, split)
    if accept and resolved is not None and resolved not in accept:
        how = "inferred from the columns" if inferred else "data.format"
        hint = (
            "; set data.format=rl to use the rows' 'prompt' column"
            if "rl" in accept and resolved != "messages"
            else ""
        )
        raise DataError(
            f"{split}: rows are '{resolved}' ({how}), but this recipe takes {' or '.join(accept)}{hint}"
        )
    good, wheres, bad = [], [], []
    kinds: dict[str, tuple[str, Where]] = {}  # column -> (JSON type, first row that had it)
    for rec in recs:
        problem = rec.bad
        if problem is None:
            problem = _row_problem(rec, resolved, inferred, kinds)
        if problem is None:
            good.append(rec.row)
            wheres.append(rec.where)
            continue
        if on_bad_row == "error":
            raise DataError(
                f"{problem}\n(data.on_bad_row=skip skips bad rows and lists them in <output_dir>/{REJECTED_FILE})"
            )
        bad.append(problem)
    return Validated(resolved or "unknown", inferred, good, wheres, bad)


def _row_problem(rec: _Rec, fmt: str | None, inferred: bool, kinds: dict) -> BadRow | None:
    row = rec.row
    problem: tuple[str | None, str] | None = None
    guess = infer_format(row) if inferred else fmt
    if guess is None:
        cols = ", ".join(sorted(row)) or "none"
        problem = (
            None,
            f"no known columns (has: {cols}); expected messages, prompt+completion, "
            "prompt+chosen+rejected, prompt (rl) or prompt+completion+score/label",
        )
    elif guess != fmt:
        looks = f"this row looks like '{guess}', the rest of {rec.where.source} is '{fmt}'"
        problem = check_row(row, fmt)
        # a row with fewer columns than the file's format (e.g. a null completion) is incomplete
        if problem and problem[1] == "missing" and guess in ("rl", "prompt_completion") and fmt != "messages":
            problem = (problem[0], f"missing ({looks})")
        else:
            problem = (_key_column(row, guess), f"mixed formats: {looks}")
    else:
        problem = check_row(row, fmt)
    if problem is None:
        for col, value in row.items():
            kind = _kind(value)
            kind = "number" if kind == "integer" else kind  # ints and floats share a column
            if kind == "null":
                continue
            seen = kinds.get(col)
            if seen is None:
                kinds[col] = (kind, rec.where)
            elif seen[0] != kind:
                problem = (
                    col,
                    f"{kind} here, but {seen[0]} at {seen[1]} (a column holds one type in every row)",
                )
                break
    if problem is None:
        return None
    return BadRow(rec.where, problem[1], problem[0], row)


def validate_rows(
    rows: Iterable[Mapping[str, Any]],
    fmt: str = "auto",
    *,
    source: str = "<rows>",
    on_bad_row: str = "error",
) -> Validated:
    """Validate in-memory rows (0-based indices name them, under ``source``).

    ``on_bad_row="error"`` raises ``DataError`` on the first bad row; ``"skip"`` returns the bad ones
    in ``.bad`` (nothing is written). ``fmt="auto"`` infers the format as ``load_split`` does.
    """
    recs = []
    for i, row in enumerate(rows):
        where = Where(source, index=i)
        if isinstance(row, Mapping):
            recs.append(_Rec(where, dict(row)))
        else:
            recs.append(_Rec(where, bad=BadRow(where, f"expected an object, got {_kind(row)}", raw=row)))
    return _validate(recs, fmt, on_bad_row=on_bad_row, split=source)


# ----------------------------------------------------------------------------------------------
# Reading sources


def _has_lone_surrogate(obj: Any) -> bool:
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _jsonl_line(raw: bytes, where: Where) -> _Rec:
    if where.line == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    raw = raw.rstrip(b"\r\n")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        shown = raw.decode("utf-8", "backslashreplace")
        extra = {"raw_base64": base64.b64encode(raw).decode("ascii")}
        reason = f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
        return _Rec(where, bad=BadRow(where, reason, raw=shown, extra=extra))
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        return _Rec(where, bad=BadRow(where, f"invalid JSON: {e.msg} (column {e.colno})", raw=text))
    if not isinstance(row, dict):
        return _Rec(where, bad=BadRow(where, f"expected a JSON object, got {_kind(row)}", raw=text))
    if "\\ud" in text.lower() and _has_lone_surrogate(row):
        return _Rec(
            where, bad=BadRow(where, "a lone UTF-16 surrogate escape (\\udXXX) is not valid text", raw=text)
        )
    return _Rec(where, row)


def _read_jsonl(path: Path, name: str) -> list[_Rec]:
    recs = []
    with open(path, "rb") as f:
        lineno = 0
        while True:
            raw = f.readline(MAX_ROW_BYTES + 1)
            if not raw:
                break
            lineno += 1
            where = Where(name, line=lineno)
            if len(raw) > MAX_ROW_BYTES and not raw.endswith(b"\n"):
                size, head = len(raw), raw[:RAW_PREVIEW_BYTES]
                while raw and not raw.endswith(b"\n"):  # skip the rest of the line
                    raw = f.readline(1 << 20)
                    size += len(raw)
                shown = head.decode("utf-8", "backslashreplace")
                extra = {"raw_truncated": True, "raw_bytes": size}
                reason = f"row is {size:,} bytes, over the {MAX_ROW_BYTES:,}-byte limit"
                recs.append(_Rec(where, bad=BadRow(where, reason, raw=shown, extra=extra)))
                continue
            if not raw.strip():
                continue
            recs.append(_jsonl_line(raw, where))
    return recs


def _read_json(path: Path, name: str) -> list[_Rec]:
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head.startswith(b"["):
        return _read_jsonl(path, name)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{name}:{line}: not valid UTF-8 (byte 0x{data[e.start]:02x})") from None
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{name}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    check_size = len(data) > MAX_ROW_BYTES
    check_surrogates = "\\ud" in text.lower()
    recs = []
    for i, row in enumerate(rows):
        where = Where(name, index=i)
        reason = None
        if not isinstance(row, dict):
            reason = f"expected a JSON object, got {_kind(row)}"
        elif (
            check_size
            and (size := len(json.dumps(row, ensure_ascii=False).encode("utf-8", "replace"))) > MAX_ROW_BYTES
        ):
            reason = f"row is {size:,} bytes, over the {MAX_ROW_BYTES:,}-byte limit"
        elif check_surrogates and _has_lone_surrogate(row):
            reason = "a lone UTF-16 surrogate escape (\\udXXX) is not valid text"
        recs.append(_Rec(where, bad=BadRow(where, reason, raw=row)) if reason else _Rec(where, row))
    return recs


def _read_parquet(path: Path, name: str) -> list[_Rec]:
    # pyarrow directly (what datasets uses underneath): rows are checked as Python objects anyway,
    # and this leaves no copy in datasets' cache.
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{name}: cannot read Parquet: {e}") from None
    return [_Rec(Where(name, index=i), row) for i, row in enumerate(table.to_pylist())]


def _offline() -> bool:
    env = any(
        os.environ.get(k, "").upper() in ("1", "ON", "YES", "TRUE")
        for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )
    return env or bool(datasets.config.HF_HUB_OFFLINE)


def _read_hub(spec: str, split_name: str) -> list[_Rec]:
    rest, _, split = spec.partition("@")
    name, _, config = rest.partition(":")
    where = f"'{spec}' is not a local file or directory, and"
    if _offline() and not datasets.config.HF_HUB_OFFLINE:
        # HF_HUB_OFFLINE was set after datasets was imported: datasets would still try the network.
        raise DataError(f"{where} hub datasets need network access (HF_HUB_OFFLINE is set)")
    try:
        loaded = datasets.load_dataset(name, config or None, split=split or None)
    except Exception as e:  # noqa: BLE001 - any failure of the hub path becomes one clear message
        hint = (
            " (HF_HUB_OFFLINE is set: only datasets already in the local cache load)"
            if _offline()
            else " (check the name and the network; HF_HUB_OFFLINE=1 skips the network)"
        )
        raise DataError(f"{where} loading it from the hub failed{hint}: {type(e).__name__}: {e}") from None
    if isinstance(loaded, datasets.DatasetDict):
        wanted = [split_name] + (["validation", "test"] if split_name == "eval" else [])
        chosen = next((s for s in wanted if s in loaded), None)
        if chosen is None:
            raise DataError(
                f"{spec}: no split {' or '.join(wanted)} (has {', '.join(loaded)}); name one: {spec}@SPLIT"
            )
        loaded = loaded[chosen]
    return [_Rec(Where(spec, index=i), dict(row)) for i, row in enumerate(loaded)]


def _looks_local(src: str) -> bool:
    return (
        src.startswith((".", "/", "~"))
        or Path(src).suffix.lower() in SUFFIXES
        or src.count("/") > 1
        or not _HUB_NAME.match(src)
    )


def resolve_sources(sources: Iterable[str]) -> list[tuple[str, str]]:
    """``(kind, name)`` pairs, directories expanded; kind is jsonl, json, parquet or hub."""
    out = []
    for src in sources:
        path = Path(src).expanduser()
        if path.is_dir():
            files = sorted(
                p
                for p in path.iterdir()
                if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith(".")
            )
            if not files:
                raise DataError(f"{src}: no data files in this directory (expected {', '.join(SUFFIXES)})")
            out += [(SUFFIXES[p.suffix.lower()], str(p)) for p in files]
        elif path.is_file():
            kind = SUFFIXES.get(path.suffix.lower())
            if kind is None:
                raise DataError(
                    f"{src}: unsupported file type '{path.suffix}' (expected {', '.join(SUFFIXES)})"
                )
            out.append((kind, src))
        elif _looks_local(src):
            raise DataError(f"{src}: no such file or directory")
        else:
            out.append(("hub", src))
    return out


def _read_source(kind: str, name: str, split_name: str = "train") -> list[_Rec]:
    readers = {"jsonl": _read_jsonl, "json": _read_json, "parquet": _read_parquet}
    recs = _read_hub(name, split_name) if kind == "hub" else readers[kind](Path(name).expanduser(), name)
    if not recs:
        raise DataError(f"{name}: empty {'dataset' if kind == 'hub' else 'file'} (no rows)")
    return recs


# ----------------------------------------------------------------------------------------------
# Prompt lengths


def _prompt_value(row: Mapping, fmt: str) -> Any:
    return row["messages"][:-1] if fmt == "messages" else row["prompt"]


def _lengths(prompts: list, tokenizer: Any) -> tuple[list[int], str]:
    """Length of each prompt (a string or messages) in tokens, or in characters without a tokenizer."""
    if tokenizer is None:
        return [len(p) if isinstance(p, str) else sum(len(m["content"]) for m in p) for p in prompts], (
            "characters (no tokenizer given)"
        )
    unit = "tokens"
    has_template = getattr(tokenizer, "chat_template", None) is not None
    texts = []
    for p in prompts:
        if isinstance(p, str):
            texts.append(p)
        elif has_template:
            texts.append(tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True))
        else:
            texts.append("\n".join(m["content"] for m in p))
            unit = "tokens (tokenizer has no chat template: message contents only)"
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [len(x) for x in ids], unit


# ----------------------------------------------------------------------------------------------
# Rejected rows


def _write_rejected(path: Path, split: str, bad: list[BadRow]) -> Path | None:
    """Rewrite ``path`` with this split's bad rows, keeping other splits' records."""
    keep = []
    if path.exists():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                if json.loads(line).get("split") != split:
                    keep.append(line)
            except (json.JSONDecodeError, AttributeError):
                continue
    lines = keep + [_dump(b.record(split)) for b in bad]
    if not lines:
        path.unlink(missing_ok=True)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, path)
    return path


def _dump(obj: dict) -> str:
    try:
        text = json.dumps(obj, ensure_ascii=False, default=repr)
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # a lone surrogate: escaped output stays valid UTF-8
        return json.dumps(obj, ensure_ascii=True, default=repr)


# ----------------------------------------------------------------------------------------------
# Building the dataset


def _to_dataset(rows: list[dict], wheres: list[Where], split: str, provenance: bool) -> datasets.Dataset:
    names = list(dict.fromkeys(k for row in rows for k in row))  # union of columns, first-seen order
    data = {k: [row.get(k) for row in rows] for k in names}
    if provenance:
        clash = [c for c in PROVENANCE_COLUMNS if c in data]
        if clash:
            raise DataError(
                f"{split}: the data has column '{clash[0]}', which keep_provenance=True would overwrite"
            )
        data["_source"] = [w.source for w in wheres]
        data["_row"] = [w.row for w in wheres]
    try:
        return datasets.Dataset.from_dict(data)
    except (pa.ArrowException, TypeError, ValueError) as e:
        for k in names:  # name the column that arrow cannot type
            try:
                pa.array(data[k])
            except (pa.ArrowException, TypeError, ValueError):
                raise DataError(
                    f"{split}: column '{k}' holds values of different nested types across rows: {e}"
                ) from None
        raise DataError(f"{split}: cannot build a table from the rows: {e}") from None


def load_split(
    sources: list[str] | str,
    cfg: DataConfig,
    *,
    split_name: str = "train",
    output_dir: str | Path | None = None,
    tokenizer: Any = None,
    drop_too_long: bool = False,
    keep_provenance: bool = False,
    accept: Collection[str] | None = None,
) -> LoadedSplit:
    """Read, validate and assemble one split (e.g. ``cfg.train``) into a ``datasets.Dataset``.

    - Bad rows raise ``DataError`` (``cfg.on_bad_row="error"``), or (``"skip"``) go to
      ``<output_dir>/rejected_rows.jsonl`` and the run stops only when more than
      ``cfg.max_bad_fraction`` of the rows read are bad. Skip mode needs ``output_dir``.
    - ``cfg.max_rows`` keeps the first rows after validation (every row is still checked).
    - Prompts over ``cfg.max_prompt_tokens`` (measured with ``tokenizer``; the chat-template prompt
      for message lists; characters without a tokenizer) are counted in the report and kept, or
      dropped with ``drop_too_long=True``; never truncated.
    - ``keep_provenance=True`` adds ``_source`` and ``_row`` columns (1-based line for JSON Lines,
      0-based row index otherwise).
    - ``accept``: the formats the caller can train on; another format is a ``DataError``.
    """
    if isinstance(sources, (str, Path)):
        sources = [str(sources)]
    cfg.validate()
    if not sources:
        raise DataError(f"{split_name}: no data sources given (data.{split_name} is empty)")
    if cfg.on_bad_row == "skip" and output_dir is None:
        raise ValueError(f"data.on_bad_row=skip needs output_dir to write {REJECTED_FILE}")

    resolved = resolve_sources(sources)
    recs = [rec for kind, name in resolved for rec in _read_source(kind, name, split_name)]
    checked = _validate(recs, cfg.format, on_bad_row=cfg.on_bad_row, split=split_name, accept=accept)
    report = SplitReport(
        split=split_name,
        sources=[name for _, name in resolved],
        format=checked.format,
        format_inferred=checked.format_inferred,
        n_read=checked.n_read,
        n_bad=len(checked.bad),
        n_rows=0,
        max_rows=cfg.max_rows,
        max_prompt_tokens=cfg.max_prompt_tokens,
        first_bad=str(checked.bad[0]) if checked.bad else None,
    )

    if output_dir is not None and cfg.on_bad_row == "skip":
        written = _write_rejected(Path(output_dir) / REJECTED_FILE, split_name, checked.bad)
        report.rejected_path = str(written) if written and checked.bad else None
    if checked.bad and len(checked.bad) > cfg.max_bad_fraction * checked.n_read:
        raise DataError(
            f"{split_name}: {len(checked.bad)} of {checked.n_read} rows are bad "
            f"({len(checked.bad) / checked.n_read:.1%}), more than data.max_bad_fraction={cfg.max_bad_fraction} "
            f"allows; each is listed in {report.rejected_path}; first: {checked.bad[0]}"
        )
    if not checked.rows:
        raise DataError(f"{split_name}: no usable rows in {', '.join(report.sources)}")

    rows, wheres = _take(checked, cfg, report, tokenizer, drop_too_long)
    if not rows:
        raise DataError(
            f"{split_name}: every prompt is longer than data.max_prompt_tokens={cfg.max_prompt_tokens}"
        )
    dataset = _to_dataset(rows, wheres, split_name, keep_provenance)
    report.n_rows = len(dataset)
    log.log(logging.WARNING if report.n_bad or report.n_too_long else logging.INFO, report.summary())
    return LoadedSplit(dataset, report)


def _take(
    checked: Validated, cfg: DataConfig, report: SplitReport, tokenizer: Any, drop: bool
) -> tuple[list[dict], list[Where]]:
    """The first ``max_rows`` good rows, measuring prompts (and dropping long ones if asked) on the way."""
    limit = cfg.max_rows or len(checked.rows)
    if cfg.max_prompt_tokens <= 0:
        report.capped = limit < len(checked.rows)
        return checked.rows[:limit], checked.wheres[:limit]
    rows, wheres = [], []
    start = 0
    while start < len(checked.rows) and len(rows) < limit:
        stop = start + min(_BATCH, limit - len(rows))
        batch = checked.rows[start:stop]
        lengths, report.length_unit = _lengths([_prompt_value(r, checked.format) for r in batch], tokenizer)
        for row, where, n in zip(batch, checked.wheres[start:stop], lengths):
            report.n_measured += 1
            report.longest_prompt = max(report.longest_prompt, n)
            if n > cfg.max_prompt_tokens:
                report.n_too_long += 1
                if report.too_long_example is None:
                    report.too_long_example = f"{where} ({n} {report.length_unit.split()[0]})"
                if drop:
                    report.n_dropped_too_long += 1
                    continue
            rows.append(row)
            wheres.append(where)
        start = stop
    report.capped = start < len(checked.rows)
    return rows, wheres


def iter_bad_rows(path: str | Path) -> Iterator[dict]:
    """The records of a ``rejected_rows.jsonl`` (for reports and tests)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
