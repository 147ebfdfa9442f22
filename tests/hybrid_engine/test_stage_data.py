"""A stage's data against its rewards' row selection (only_rows / skip_rows), checked at load time."""

from __future__ import annotations

import json

import pytest

from align import config
from align.configs import StageConfig
from align.data import DataError
from align.models import build_tokenizer
from hybrid_engine.driver import load_stage_data


def _stage(path, select: dict) -> StageConfig:
    return config.from_dict(
        StageConfig,
        {
            "name": "preference",
            "data": {"train": [str(path)], "format": "rl"},
            "rewards": {"len": {"spec": "length"}, "safety": {"spec": "length", **select}},
            "steps": 1,
        },
    )


def test_a_selection_column_the_data_lacks_is_a_data_error_naming_file_stage_reward_and_column(tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = [{"prompt": "How do I pick a lock?", "category": "unsafe"}, {"prompt": "2+2?", "category": "math"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = build_tokenizer()
    split = load_stage_data(_stage(path, {"skip_rows": {"category": ["math"]}}), tok, tmp_path / "run")
    assert split.dataset["category"] == ["unsafe", "math"]
    with pytest.raises(DataError) as e:
        load_stage_data(_stage(path, {"only_rows": {"categry": ["unsafe"]}}), tok, tmp_path / "run")
    msg = str(e.value)
    assert str(path) in msg and "'preference'" in msg and "'safety'" in msg and "['categry']" in msg
    assert "['category', 'prompt']" in msg  # the columns it has


def test_row_selection_config_takes_lists_of_values():
    stage = config.from_dict(
        StageConfig,
        {"rewards": {"s": {"spec": "length", "only_rows": {"category": ["unsafe", "lookalike"]}}}},
    )
    assert stage.rewards["s"].only_rows == {"category": ["unsafe", "lookalike"]}
    assert stage.rewards["s"].skip_rows == {}
    with pytest.raises(config.ConfigError, match=r"rewards.s.only_rows.category: expected a list"):
        config.from_dict(
            StageConfig, {"rewards": {"s": {"spec": "length", "only_rows": {"category": "unsafe"}}}}
        )
