"""Config schemas shared by the recipes (stdlib only: imported before ``--help`` answers)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal


def _f(default, help: str):
    """A dataclass field with a one-line doc (shown by ``--help``)."""
    meta = {"help": help}
    if isinstance(default, type):  # a nested config section
        return field(default_factory=default, metadata=meta)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------------------------
# Sections


@dataclass
class LoraConfig:
    r: int = _f(0, "LoRA rank; 0 trains all weights")
    alpha: int = _f(16, "LoRA alpha")
    dropout: float = _f(0.0, "LoRA dropout")
    target_modules: list[str] = _f(
        ["q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"], "module names to adapt"
    )


@dataclass
class ModelConfig:
    path: str = _f("out/tiny-deepseek_v2", "HF model directory or hub name")
    dtype: Literal["float32", "bfloat16", "float16"] = _f("float32", "parameter dtype")
    lora: LoraConfig = _f(LoraConfig, "LoRA through peft")


@dataclass
class DataConfig:
    train: list[str] = _f([], "training data: JSONL/JSON/Parquet files, directories, or hub names")
    eval: list[str] = _f([], "held-out data, same forms as train")
    format: Literal["auto", "messages", "prompt_completion", "preference", "rl", "pointwise"] = _f(
        "auto", "row format; auto infers it from the columns"
    )
    on_bad_row: Literal["error", "skip"] = _f("error", "a bad row stops the run, or is skipped and logged")
    max_bad_fraction: float = _f(0.01, "with on_bad_row=skip, stop when more than this fraction is bad")
    max_prompt_tokens: int = _f(
        0, "prompts longer than this (in tokens) are counted and reported; 0 = no limit"
    )
    max_rows: int = _f(0, "use at most this many rows per split; 0 = all")

    def validate(self) -> None:
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")


# ----------------------------------------------------------------------------------------------
# make_data


def _check_sizes(section) -> None:
    for name in ("train_size", "eval_size"):
        if getattr(section, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(section, name)}")


@dataclass
class MathTaskConfig:
    train_size: int = _f(2000, "training problems")
    eval_size: int = _f(200, "held-out problems")
    levels: list[int] = _f(
        [1, 2, 3], "difficulty levels to mix (1: one-digit +/-, 2: two-digit +/-/x, 3: multi-step)"
    )

    def validate(self) -> None:
        _check_sizes(self)
        if not self.levels or any(lv not in (1, 2, 3) for lv in self.levels):
            raise ValueError(f"levels must be a non-empty list drawn from 1, 2, 3, got {self.levels}")


@dataclass
class CodeTaskConfig:
    train_size: int = _f(400, "training tasks")
    eval_size: int = _f(50, "held-out tasks")

    def validate(self) -> None:
        _check_sizes(self)


@dataclass
class PairTaskConfig:
    train_size: int = _f(600, "training pairs")
    eval_size: int = _f(100, "held-out pairs")

    def validate(self) -> None:
        _check_sizes(self)


@dataclass
class ChatTaskConfig:
    train_size: int = _f(400, "training prompts")
    eval_size: int = _f(100, "held-out prompts")
    unsafe_fraction: float = _f(0.3, "fraction of prompts that are unsafe requests")

    def validate(self) -> None:
        _check_sizes(self)
        if not 0.0 <= self.unsafe_fraction <= 1.0:
            raise ValueError(f"unsafe_fraction must be in [0, 1], got {self.unsafe_fraction}")


@dataclass
class MakeDataConfig:
    recipe: str = _f("make_data", "which schema this file uses")
    output_dir: str = _f("out/data", "where the task folders are written")
    seed: int = _f(0, "generation seed; the same seed gives the same files")
    math: MathTaskConfig = _f(MathTaskConfig, "arithmetic word problems")
    code: CodeTaskConfig = _f(CodeTaskConfig, "small Python function tasks")
    helpful: PairTaskConfig = _f(PairTaskConfig, "helpfulness preference pairs")
    safety: PairTaskConfig = _f(PairTaskConfig, "safety preference pairs")
    chat: ChatTaskConfig = _f(ChatTaskConfig, "stage-2 prompts, benign and unsafe, labelled")
