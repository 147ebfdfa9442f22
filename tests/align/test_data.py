"""Data loading and validation: every malformed row named by file, line and field; skip mode; formats."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from align import data
from align.configs import DataConfig
from align.data import DataError, load_split, validate_rows

MSG = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
PC = {"prompt": "2+2?", "completion": "4"}
PREF = {"prompt": "2+2?", "chosen": "4", "rejected": "5"}
RL = {"prompt": "2+2?", "answer": "4", "tests": ["assert f() == 4"]}
POINT = {"prompt": "2+2?", "completion": "4", "score": 1.0}

GOOD = {"messages": MSG, "prompt_completion": PC, "preference": PREF, "rl": RL, "pointwise": POINT}


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows are dicts (dumped as JSON), str (written as the line) or bytes (written raw)."""
    out = b""
    for row in rows:
        if isinstance(row, bytes):
            out += row + b"\n"
        elif isinstance(row, str):
            out += row.encode("utf-8") + b"\n"
        else:
            out += json.dumps(row).encode("utf-8") + b"\n"
    path.write_bytes(out)
    return path


def cfg(**kw) -> DataConfig:
    return DataConfig(**kw)


def load_error(path: Path, **kw) -> str:
    with pytest.raises(DataError) as info:
        load_split([str(path)], cfg(**kw))
    return str(info.value)


# ----------------------------------------------------------------------------------------------
# Malformed rows: each names the file, the line and the field


@pytest.mark.parametrize(
    "bad_line, expected",
    [
        (
            "{not json",
            "bad.jsonl:2: invalid JSON: Expecting property name enclosed in double quotes (column 2)",
        ),
        ('["a list"]', "bad.jsonl:2: expected a JSON object, got list"),
        ({"prompt": 5, "completion": "4"}, "bad.jsonl:2: field 'prompt': expected a string, got integer 5"),
        ({"prompt": "  ", "completion": "4"}, "bad.jsonl:2: field 'prompt': empty string"),
        ({"prompt": "x", "completion": ""}, "bad.jsonl:2: field 'completion': empty string"),
        ({"completion": "4"}, "bad.jsonl:2: field 'prompt': missing"),
        (
            {"prompt": "x", "completion": None},
            "bad.jsonl:2: field 'completion': missing (this row looks like 'rl'",
        ),
        (
            {"prompt": "x", "completion": ["a"]},
            "bad.jsonl:2: field 'completion': expected a string like 'prompt'",
        ),
        (
            b'{"prompt": "caf\xe9", "completion": "4"}',
            "bad.jsonl:2: not valid UTF-8 (byte 0xe9 at column 16)",
        ),
        (MSG, "bad.jsonl:2: field 'messages': mixed formats: this row looks like 'messages'"),
        ({"text": "hello"}, "bad.jsonl:2: no known columns (has: text)"),
        (
            {"prompt": "x", "completion": 4},
            "bad.jsonl:2: field 'completion': expected a string, got integer 4",
        ),
        ({"prompt": "x", "completion": "y", "extra": 1}, None),  # extra columns are fine
    ],
)
def test_bad_jsonl_line_named(tmp_path, bad_line, expected):
    path = write_jsonl(tmp_path / "bad.jsonl", [PC, bad_line, PC, PC])
    if expected is None:
        assert len(load_split([str(path)], cfg()).dataset) == 4
        return
    assert load_error(path).startswith(f"{path}:2: " + expected.removeprefix("bad.jsonl:2: "))


def test_chosen_equal_rejected_message_is_exact(tmp_path):
    path = write_jsonl(
        tmp_path / "train.jsonl", [PREF, PREF, {"prompt": "a", "chosen": "b ", "rejected": "b"}]
    )
    assert load_error(path).splitlines()[0] == f"{path}:3: field 'chosen': equal to 'rejected'"


@pytest.mark.parametrize(
    "messages, field, reason",
    [
        (
            [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}],
            "messages[0].role",
            "expected 'user'",
        ),
        (
            [
                {"role": "user", "content": "a"},
                {"role": "user", "content": "b"},
                {"role": "assistant", "content": "c"},
            ],
            "messages[1].role",
            "expected 'assistant', got 'user'",
        ),
        ([{"role": "user", "content": "a"}], "messages[0].role", "the last turn must be 'assistant'"),
        (
            [
                {"role": "user", "content": "a"},
                {"role": "system", "content": "s"},
                {"role": "assistant", "content": "c"},
            ],
            "messages[1].role",
            "only as the first turn",
        ),
        (
            [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}],
            "messages[1].role",
            "unknown role 'bot'",
        ),
        (
            [{"role": "user", "content": ""}, {"role": "assistant", "content": "b"}],
            "messages[0].content",
            "empty string",
        ),
        ([{"role": "user"}, {"role": "assistant", "content": "b"}], "messages[0].content", "missing"),
        (
            [{"role": "user", "content": 3}, {"role": "assistant", "content": "b"}],
            "messages[0].content",
            "integer 3",
        ),
        ("hi", "messages", "expected a list of {role, content} messages"),
        ([], "messages", "empty list"),
        (["hi", "there"], "messages[0]", "expected an object with 'role' and 'content'"),
    ],
)
def test_chat_turns_checked(tmp_path, messages, field, reason):
    path = write_jsonl(tmp_path / "chat.jsonl", [MSG, MSG, {"messages": messages}])
    message = load_error(path)
    assert message.startswith(f"{path}:3: field '{field}': ")
    assert reason in message


def test_system_turn_first_is_allowed(tmp_path):
    row = {"messages": [{"role": "system", "content": "s"}] + MSG["messages"] * 2}
    path = write_jsonl(tmp_path / "chat.jsonl", [row])
    assert load_split([str(path)], cfg()).dataset[0] == row


@pytest.mark.parametrize(
    "row, field, reason",
    [
        (
            {"prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b"},
            "chosen",
            "message list",
        ),
        (
            {
                "prompt": [{"role": "user", "content": "q"}],
                "chosen": [{"role": "user", "content": "a"}],
                "rejected": [],
            },
            "chosen[0].role",
            "expected 'assistant', got 'user'",
        ),
        (
            {
                "prompt": [{"role": "user", "content": "q"}],
                "chosen": [{"role": "assistant", "content": "a"}],
                "rejected": [{"role": "assistant", "content": " a "}],
            },
            "chosen",
            "equal to 'rejected'",
        ),
        ({"prompt": "q", "chosen": "a"}, "rejected", "missing"),
        (
            {"prompt": [{"role": "assistant", "content": "q"}], "chosen": "a", "rejected": "b"},
            "prompt[0].role",
            "'user'",
        ),
    ],
)
def test_preference_rows_checked(tmp_path, row, field, reason):
    path = write_jsonl(tmp_path / "pref.jsonl", [row])
    message = load_error(path, format="preference")
    assert message.startswith(f"{path}:1: field '{field}': ")
    assert reason in message


@pytest.mark.parametrize(
    "row, field, reason",
    [
        ({**PC, "score": "high"}, "score", "expected a number, got string"),
        ({**PC, "score": True}, "score", "expected a number, got boolean"),
        ({**PC, "score": float("nan")}, "score", "not a finite number"),
        ({**PC, "label": "yes"}, "label", "expected a number or a boolean"),
        (PC, "score", "missing"),
    ],
)
def test_pointwise_rows_checked(tmp_path, row, field, reason):
    path = write_jsonl(tmp_path / "pw.jsonl", [row])
    message = load_error(path, format="pointwise")
    assert message.startswith(f"{path}:1: field '{field}': ")
    assert reason in message


def test_missing_column_with_explicit_format(tmp_path):
    path = write_jsonl(tmp_path / "rl.jsonl", [RL, {"question": "2+2?", "answer": "4"}])
    assert load_error(path, format="rl").startswith(f"{path}:2: field 'prompt': missing")


def test_column_with_two_types_is_a_bad_row(tmp_path):
    path = write_jsonl(tmp_path / "rl.jsonl", [RL, {"prompt": "p", "answer": 4}])
    message = load_error(path)
    assert message.startswith(f"{path}:2: field 'answer': number here, but string at {path}:1")


def test_ints_and_floats_share_a_column(tmp_path):
    path = write_jsonl(tmp_path / "pw.jsonl", [{**PC, "score": 1}, {**PC, "score": 0.5}])
    assert load_split([str(path)], cfg()).dataset["score"] == [1.0, 0.5]


def test_nested_type_clash_names_the_column(tmp_path):
    path = write_jsonl(
        tmp_path / "rl.jsonl", [{"prompt": "p", "tests": [1]}, {"prompt": "q", "tests": ["a"]}]
    )
    assert "column 'tests'" in load_error(path)


def test_empty_files(tmp_path):
    for name, content in [("empty.jsonl", b""), ("blank.jsonl", b"\n  \n\r\n"), ("empty.json", b"[]")]:
        path = tmp_path / name
        path.write_bytes(content)
        assert load_error(path) == f"{path}: empty file (no rows)"


def test_blank_lines_skipped_and_counted_in_line_numbers(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [PC, "", "   ", {"prompt": ""}])
    assert load_error(path).startswith(f"{path}:4: field 'prompt'")


def test_huge_row(tmp_path):
    big = {"prompt": "x" * (data.MAX_ROW_BYTES + 10), "completion": "y"}
    path = write_jsonl(tmp_path / "big.jsonl", [PC, big, PC])
    message = load_error(path)
    assert message.startswith(f"{path}:2: row is 1,000,0")
    assert "over the 1,000,000-byte limit" in message
    # skip mode: the line count goes on after the huge line; the record keeps a preview and the size
    res = load_split([str(path)], cfg(on_bad_row="skip", max_bad_fraction=0.5), output_dir=tmp_path / "run")
    assert len(res.dataset) == 2
    (rec,) = data.iter_bad_rows(tmp_path / "run" / "rejected_rows.jsonl")
    assert rec["line"] == 2 and rec["raw_truncated"] and rec["raw_bytes"] == len(json.dumps(big)) + 1
    assert rec["raw"] == json.dumps(big)[: data.RAW_PREVIEW_BYTES]


def test_lone_surrogate_is_a_bad_row(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [PC, '{"prompt": "\\ud800", "completion": "x"}'])
    assert load_error(path).startswith(f"{path}:2: a lone UTF-16 surrogate")


def test_mixed_formats_take_the_majority(tmp_path):
    path = write_jsonl(tmp_path / "mix.jsonl", [PREF, PC, PC, PC])
    message = load_error(path)
    assert message.startswith(f"{path}:1: field 'chosen': mixed formats: this row looks like 'preference'")
    assert "is 'prompt_completion'" in message


def test_sources_with_different_formats(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [PC])
    b = write_jsonl(tmp_path / "b.jsonl", [MSG])
    with pytest.raises(DataError, match="sources hold different formats"):
        load_split([str(a), str(b)], cfg())


def test_error_mode_stops_at_the_first_bad_row(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [PC, {"prompt": ""}, "{bad"])
    assert load_error(path).startswith(f"{path}:2:")


# ----------------------------------------------------------------------------------------------
# Skip mode


def test_skip_writes_every_bad_row_and_loads_the_good(tmp_path):
    good = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(20)]
    bad_lines = [
        "{oops",
        b'{"prompt": "\xff", "completion": "a"}',
        {"prompt": 5, "completion": "a"},
        {"prompt": "x"},
    ]
    lines = good[:5] + bad_lines[:2] + good[5:15] + bad_lines[2:] + good[15:]
    path = write_jsonl(tmp_path / "train.jsonl", lines)
    out = tmp_path / "run"
    res = load_split([str(path)], cfg(on_bad_row="skip", max_bad_fraction=0.2), output_dir=out)
    assert res.dataset.to_list() == good
    assert (res.report.n_read, res.report.n_bad, res.report.n_rows) == (24, 4, 20)
    recs = list(data.iter_bad_rows(out / "rejected_rows.jsonl"))
    assert [(r["source"], r["line"], r["field"]) for r in recs] == [
        (str(path), 6, None),
        (str(path), 7, None),
        (str(path), 18, "prompt"),
        (str(path), 19, "completion"),  # {"prompt": "x"}: an incomplete row, not another format
    ]
    assert recs[0]["raw"] == "{oops" and "invalid JSON" in recs[0]["reason"]
    assert base64.b64decode(recs[1]["raw_base64"]) == b'{"prompt": "\xff", "completion": "a"}'
    assert recs[2]["raw"] == {"prompt": 5, "completion": "a"}  # parsed rows are kept as objects
    assert all(r["split"] == "train" and r["error"].startswith(f"{path}:") for r in recs)
    assert "4 of 24 rows bad" in res.report.summary()


def test_too_many_bad_rows(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [PC, PC, PC, {"prompt": ""}])
    out = tmp_path / "run"
    with pytest.raises(DataError) as info:
        load_split([str(path)], cfg(on_bad_row="skip", max_bad_fraction=0.2), output_dir=out)
    message = str(info.value)
    assert "1 of 4 rows are bad (25.0%)" in message and "max_bad_fraction=0.2" in message
    assert str(out / "rejected_rows.jsonl") in message and f"{path}:4: field 'prompt'" in message
    assert len(list(data.iter_bad_rows(out / "rejected_rows.jsonl"))) == 1


def test_skip_needs_output_dir(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [PC])
    with pytest.raises(ValueError, match="output_dir"):
        load_split([str(path)], cfg(on_bad_row="skip"))


def test_rejected_file_keeps_other_splits_and_is_rewritten(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [PC, {"prompt": ""}])
    ev = write_jsonl(tmp_path / "eval.jsonl", [PC, "{"])
    out, c = tmp_path / "run", cfg(on_bad_row="skip", max_bad_fraction=0.5)
    load_split([str(train)], c, output_dir=out)
    load_split([str(ev)], c, split_name="eval", output_dir=out)
    load_split([str(train)], c, output_dir=out)  # a rerun replaces its own split's records
    recs = list(data.iter_bad_rows(out / "rejected_rows.jsonl"))
    assert sorted((r["split"], r["line"]) for r in recs) == [("eval", 2), ("train", 2)]


# ----------------------------------------------------------------------------------------------
# JSON arrays, Parquet, directories, hub names


def test_json_array_rows_named_by_index(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([PC, PC, {"prompt": "q", "completion": 3}, "text"], indent=1))
    assert load_error(path).startswith(f"{path}: row 2: field 'completion': expected a string")
    res = load_split([str(path)], cfg(on_bad_row="skip", max_bad_fraction=0.5), output_dir=tmp_path / "run")
    assert res.dataset.to_list() == [PC, PC]
    recs = list(data.iter_bad_rows(tmp_path / "run" / "rejected_rows.jsonl"))
    assert [(r["row"], r["line"], r["raw"]) for r in recs] == [
        (2, None, {"prompt": "q", "completion": 3}),
        (3, None, "text"),
    ]


def test_json_array_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('[\n {"prompt": "a", "completion": "b"},\n {"prompt": }\n]')
    assert load_error(path).startswith(f"{path}:3: invalid JSON: Expecting value")


def test_json_file_holding_json_lines(tmp_path):
    path = write_jsonl(tmp_path / "train.json", [PC, {"prompt": ""}])
    assert load_error(path).startswith(f"{path}:2: field 'prompt'")


def test_parquet_rows_named_by_index(tmp_path):
    path = tmp_path / "train.parquet"
    rows = [PREF, PREF, {"prompt": "a", "chosen": "b", "rejected": "b"}]
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert load_error(path).startswith(f"{path}: row 2: field 'chosen': equal to 'rejected'")
    pq.write_table(pa.Table.from_pylist([PREF, PREF]), path)
    res = load_split([str(path)], cfg())
    assert res.dataset.to_list() == [PREF, PREF] and res.report.format == "preference"


def test_parquet_null_columns_do_not_count_for_inference(tmp_path):
    path = tmp_path / "mixed.parquet"
    columns = {"prompt": ["a", "b", "p"], "completion": ["1", "2", None], "chosen": [None, None, "a"]}
    pq.write_table(pa.table({**columns, "rejected": [None, None, "b"]}), path)
    message = load_error(path)
    assert message.startswith(f"{path}: row 2: field 'chosen': mixed formats")


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet at all")
    assert load_error(path).startswith(f"{path}: cannot read Parquet")


def test_directory_source(tmp_path):
    d = tmp_path / "train"
    d.mkdir()
    write_jsonl(d / "b.jsonl", [{"prompt": "b", "completion": "1"}])
    (d / "a.json").write_text(json.dumps([{"prompt": "a", "completion": "0"}]))
    pq.write_table(pa.Table.from_pylist([{"prompt": "c", "completion": "2"}]), d / "c.parquet")
    (d / "notes.txt").write_text("ignored")
    (d / "sub").mkdir()
    write_jsonl(d / "sub" / "x.jsonl", [{"prompt": ""}])  # sub-folders are not read
    res = load_split([str(d)], cfg(), keep_provenance=True)
    assert res.dataset["prompt"] == ["a", "b", "c"]
    assert res.dataset["_source"] == [str(d / "a.json"), str(d / "b.jsonl"), str(d / "c.parquet")]
    assert res.dataset["_row"] == [0, 1, 0]
    assert res.report.sources == res.dataset["_source"]
    assert "_source" not in load_split([str(d)], cfg()).dataset.column_names


def test_directory_without_data(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no data files in this directory"):
        load_split([str(tmp_path)], cfg())


def test_missing_and_unsupported_paths(tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        load_split([str(tmp_path / "nope.jsonl")], cfg())
    (tmp_path / "t.csv").write_text("a,b")
    with pytest.raises(DataError, match="unsupported file type '.csv'"):
        load_split([str(tmp_path / "t.csv")], cfg())
    with pytest.raises(DataError, match="no data sources given"):
        load_split([], cfg())


def test_hub_name_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as info:
        load_split(["someone/no-such-dataset-xyz"], cfg())
    message = str(info.value)
    assert "'someone/no-such-dataset-xyz' is not a local file or directory" in message
    assert "HF_HUB_OFFLINE" in message


# ----------------------------------------------------------------------------------------------
# Formats, round trips, caps


@pytest.mark.parametrize("fmt", list(GOOD))
def test_format_inferred_and_round_trip(tmp_path, fmt):
    rows = [GOOD[fmt], GOOD[fmt]]
    path = write_jsonl(tmp_path / f"{fmt}.jsonl", rows)
    res = load_split([str(path)], cfg())
    assert (res.report.format, res.report.format_inferred) == (fmt, True)
    assert "inferred from the columns" in res.report.summary()
    assert res.dataset.to_list() == rows
    res = load_split([str(path)], cfg(format=fmt))
    assert (res.report.format, res.report.format_inferred) == (fmt, False)


def test_conversational_round_trip(tmp_path):
    user = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q"}]
    rows = [
        {
            "prompt": user,
            "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}],
        },
    ] * 2
    path = write_jsonl(tmp_path / "pref.jsonl", rows)
    assert load_split([str(path)], cfg()).dataset.to_list() == rows
    rows = [{"prompt": user, "answer": "4"}]
    path = write_jsonl(tmp_path / "rl.jsonl", rows)
    assert load_split([str(path)], cfg()).dataset.to_list() == rows


def test_explicit_format_wins_over_inference(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [PC, PC])
    res = load_split([str(path)], cfg(format="rl"))
    assert res.report.format == "rl" and res.dataset.column_names == ["prompt", "completion"]


def test_accept(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [PC])
    with pytest.raises(DataError, match="rows are 'prompt_completion'.*takes rl; set data.format=rl"):
        load_split([str(path)], cfg(), accept=("rl",))
    assert load_split([str(path)], cfg(), accept=("messages", "prompt_completion")).report.n_rows == 1


def test_max_rows_caps_after_validation(tmp_path):
    rows = [{"prompt": f"q{i}", "completion": "a"} for i in range(10)]
    path = write_jsonl(tmp_path / "t.jsonl", rows + [{"prompt": ""}])
    assert load_error(path, max_rows=3).startswith(f"{path}:11:")  # rows past the cap are still checked
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    res = load_split([str(path)], cfg(max_rows=3))
    assert res.dataset.to_list() == rows[:3] and "capped at data.max_rows=3" in res.report.summary()


def test_too_long_prompts_counted_without_tokenizer(tmp_path):
    rows = [{"prompt": "x" * n, "completion": "a"} for n in (5, 50, 8, 60)]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    res = load_split([str(path)], cfg(max_prompt_tokens=10))
    r = res.report
    assert (r.n_too_long, r.n_measured, r.longest_prompt, r.n_rows) == (2, 4, 60, 4)
    assert r.length_unit == "characters (no tokenizer given)"
    assert r.too_long_example == f"{path}:2 (50 characters)"
    assert (
        f"2 of 4 prompts longer than 10 characters (no tokenizer given) (kept, not truncated); first: {path}:2"
        in (r.summary())
    )
    assert res.dataset["prompt"] == [row["prompt"] for row in rows]  # not truncated
    res = load_split([str(path)], cfg(max_prompt_tokens=10, max_rows=2), drop_too_long=True)
    assert res.dataset["prompt"] == ["x" * 5, "x" * 8] and res.report.n_dropped_too_long == 1


def _char_tokenizer():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(["<unk>", *map(chr, range(32, 127))])}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE(vocab, [], unk_token="<unk>")))
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    return tok


def test_too_long_prompts_with_a_tokenizer_and_chat_template(tmp_path):
    tok = _char_tokenizer()
    short = {"messages": [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "x" * 100}]}
    long = {"messages": [{"role": "user", "content": "a" * 30}, {"role": "assistant", "content": "x"}]}
    path = write_jsonl(tmp_path / "chat.jsonl", [short, long])
    res = load_split([str(path)], cfg(max_prompt_tokens=20), tokenizer=tok)
    # the prompt is the rendered conversation without its last assistant turn: "<user>ab<assistant>"
    assert res.report.length_unit == "tokens" and res.report.n_too_long == 1
    assert res.report.too_long_example == f"{path}:2 ({len('<user>' + 'a' * 30 + '<assistant>')} tokens)"
    tok.chat_template = None
    res = load_split([str(path)], cfg(max_prompt_tokens=20), tokenizer=tok)
    assert res.report.length_unit.startswith("tokens (tokenizer has no chat template")
    assert res.report.too_long_example == f"{path}:2 (30 tokens)"


def test_validate_rows_on_its_own():
    v = validate_rows([PC, PC, {"prompt": "q"}, 7], on_bad_row="skip", source="mem")
    assert (v.format, v.format_inferred, v.rows) == ("prompt_completion", True, [PC, PC])
    assert [str(b) for b in v.bad] == [
        "mem: row 2: field 'completion': missing (this row looks like 'rl', the rest of mem is 'prompt_completion')",
        "mem: row 3: expected an object, got integer",
    ]
    with pytest.raises(DataError, match=r"^mem: row 1: field 'rejected': missing"):
        validate_rows([PREF, {"prompt": "q", "chosen": "a"}], "preference", source="mem")
    assert data.check_row(PREF, "preference") is None
    assert data.check_row({**PREF, "rejected": "4"}, "preference") == ("chosen", "equal to 'rejected'")
    assert [data.infer_format(r) for r in GOOD.values()] == list(GOOD)


def test_hub_dataset_split_choice(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        splits = {"train": [PC, PC], "test": [{"prompt": "t", "completion": "x"}]}
        if split:
            return datasets.Dataset.from_list(splits[split])
        return datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_split(["org/set"], cfg()).dataset.to_list() == [PC, PC]
    assert load_split(["org/set"], cfg(), split_name="eval").dataset["prompt"] == ["t"]
    assert load_split(["org/set:main@test"], cfg()).report.sources == ["org/set:main@test"]
    assert calls[-1] == ("org/set", "main", "test")
    with pytest.raises(DataError, match=r"no split dev \(has train, test\); name one: org/set@SPLIT"):
        load_split(["org/set"], cfg(), split_name="dev")
    bad = validate_rows([PC, {"prompt": "", "completion": "c"}], source="org/set", on_bad_row="skip").bad
    assert str(bad[0]) == "org/set: row 1: field 'prompt': empty string"
