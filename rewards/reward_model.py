"""Reward-model rewards: score (prompt, completion) pairs with an HF sequence-classification model dir.

    rm = rewards.load("out/rm_helpful")                  # the run dir or its final/; same as:
    rm = RewardModel("out/rm_helpful/final", batch_size=32, device="auto", dtype="float32")
    rm(prompts, completions)                             # -> list[float], one scalar per sample

The directory is what ``recipes/reward_model.py`` writes to ``<output_dir>/final/``: a model with
``num_labels == 1`` (``AutoModelForSequenceClassification``), its tokenizer, and ``reward_model.json``
saying how training formatted the inputs, so scoring formats them the same way:

- ``format: "chat"``: ``[user: prompt, assistant: completion]`` through the tokenizer's chat template
  (a prompt or completion that is already a message list is used as it is), tokenized as TRL's
  ``RewardTrainer`` tokenizes conversational data (``apply_chat_template(..., tokenize=True)``);
- ``format: "text"``: ``prompt + completion + eos`` tokenized as plain text (tokenizers without a
  chat template; TRL's non-conversational path).
- ``max_length``: longer inputs are cut from the side ``truncation_side`` says (default ``left``: the
  reward is read at the last token, so the end of the completion is kept). Truncations are counted
  (``n_truncated``) and logged as a warning.

A directory without ``reward_model.json`` (e.g. a hub reward model) gets ``chat`` when the tokenizer
has a chat template, else ``text``, and the tokenizer's ``model_max_length``.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rewards.text import completion_text, prompt_text

log = logging.getLogger(__name__)

CARD = "reward_model.json"  # written next to the model by recipes/reward_model.py
FORMATS = ("chat", "text")


def resolve_dir(path: str | Path) -> Path:
    """The model directory of a reward-model spec: ``path`` itself, or ``path/final`` for a run dir.

    Raises ``ValueError`` naming what is missing when neither holds a sequence-classification model.
    """
    path = Path(path).expanduser()
    for candidate in (path, path / "final"):
        if (candidate / "config.json").is_file():
            _check_seq_cls(candidate)
            return candidate
    if not path.is_dir():
        raise ValueError(f"no directory {str(path)!r}")
    raise ValueError(
        f"{str(path)!r} is a directory but not a reward model: no config.json in it or in its final/ "
        "(expected an HF sequence-classification model dir, e.g. the output_dir of recipes/reward_model.py)"
    )


def _check_seq_cls(path: Path) -> None:
    cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    archs = cfg.get("architectures") or []
    if archs and not any(a.endswith("ForSequenceClassification") for a in archs):
        raise ValueError(
            f"{str(path)!r} holds a {archs[0]}, not a sequence-classification reward model "
            "(train one with recipes/reward_model.py)"
        )
    n_labels = len(cfg.get("id2label") or {}) or cfg.get("num_labels", 1)
    if n_labels != 1:
        raise ValueError(
            f"{str(path)!r}: a reward model has one output (num_labels=1), this one has {n_labels}"
        )


def read_card(path: str | Path) -> dict:
    """``reward_model.json`` of a model dir, or {} when there is none."""
    card = Path(path) / CARD
    return json.loads(card.read_text(encoding="utf-8")) if card.is_file() else {}


def conversation(prompt: Any, completion: Any) -> list[dict]:
    """The chat a reward model scores: ``[user: prompt, assistant: completion]``.

    A prompt that is already a message list (TRL's conversational form) is kept as it is, and so is
    a completion that is a message list (``[{"role": "assistant", "content": ...}]``).
    """
    turns = list(prompt) if isinstance(prompt, list | tuple) else [{"role": "user", "content": str(prompt)}]
    if isinstance(completion, list | tuple):
        return turns + list(completion)
    return turns + [{"role": "assistant", "content": completion_text(completion)}]


def encode(tokenizer: Any, prompt: Any, completion: Any, fmt: str = "chat") -> list[int]:
    """Token ids of (prompt, completion) in ``fmt``, exactly as TRL's ``RewardTrainer`` builds them."""
    if fmt == "chat":
        return list(
            tokenizer.apply_chat_template(conversation(prompt, completion), tokenize=True, return_dict=True)[
                "input_ids"
            ]
        )
    if fmt == "text":
        text = completion_text(completion)
        eos = tokenizer.eos_token or ""
        if eos and not text.endswith(eos):
            text += eos
        return list(tokenizer(text=prompt_text(prompt) + text)["input_ids"])
    raise ValueError(f"unknown input format {fmt!r}; expected one of {', '.join(FORMATS)}")


def _resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class RewardModel:
    """A reward (TRL convention) backed by a sequence-classification reward model.

    ``path``: the model dir (``resolve_dir`` also accepts a run dir holding ``final/``). Or pass an
    already loaded ``model`` and ``tokenizer`` (the training recipe's held-out evaluation does).
    ``device``: ``auto`` (CUDA when available), ``cpu``, ``cuda:1``, ...; ``dtype``: ``auto`` (as
    saved), ``float32``, ``bfloat16`` or ``float16``; ``batch_size``: sequences per forward pass;
    ``max_length``, ``format``, ``truncation_side``: override ``reward_model.json``.

    Calls are serialised by a lock (one forward pass at a time), so threads may share an instance.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        model: Any = None,
        tokenizer: Any = None,
        device: str | None = "auto",
        dtype: str = "auto",
        batch_size: int = 16,
        max_length: int | None = None,
        format: str | None = None,  # noqa: A002 - the reward_model.json key
        truncation_side: str | None = None,
    ):
        import torch
        import transformers

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        card: dict = {}
        if model is None:
            if path is None:
                raise ValueError("RewardModel needs a path or a loaded model and tokenizer")
            path = resolve_dir(path)
            card = read_card(path)
            torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
            model = transformers.AutoModelForSequenceClassification.from_pretrained(path, dtype=torch_dtype)
            model.to(_resolve_device(device))
            if tokenizer is None:
                tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        elif tokenizer is None:
            raise ValueError("a loaded model needs its tokenizer")
        if model.config.num_labels != 1:
            raise ValueError(
                f"a reward model has one output (num_labels=1), this one has {model.config.num_labels}"
            )
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        # Sequence-classification heads read the last token that is not padding.
        model.config.pad_token_id = tokenizer.pad_token_id
        self.model, self.tokenizer, self.path = model, tokenizer, None if path is None else Path(path)
        self.batch_size = batch_size
        default_format = "chat" if getattr(tokenizer, "chat_template", None) else "text"
        self.format = format or card.get("format") or default_format
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.format == "chat" and not getattr(tokenizer, "chat_template", None):
            raise ValueError("format 'chat' needs a tokenizer with a chat template")
        self.max_length = int(max_length or card.get("max_length") or tokenizer.model_max_length)
        self.truncation_side = truncation_side or card.get("truncation_side", "left")
        if self.truncation_side not in ("left", "right"):
            raise ValueError(f"truncation_side must be 'left' or 'right', got {self.truncation_side!r}")
        self.n_scored = 0
        self.n_truncated = 0
        self._lock = threading.Lock()
        self.__name__ = "reward_model"

    def __repr__(self) -> str:
        where = self.path or type(self.model).__name__
        return f"RewardModel({where}, format={self.format!r}, max_length={self.max_length})"

    def __call__(self, prompts: list, completions: list, **columns: Any) -> list[float]:
        """One reward per sample: the model's scalar output on the formatted (prompt, completion)."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        ids = [encode(self.tokenizer, p, c, self.format) for p, c in zip(prompts, completions)]
        return self.score_ids(ids)

    def truncate(self, ids: list[int]) -> list[int]:
        if len(ids) <= self.max_length:
            return ids
        return ids[-self.max_length :] if self.truncation_side == "left" else ids[: self.max_length]

    def score_ids(self, ids: Sequence[Sequence[int]]) -> list[float]:
        """Scores of already tokenized inputs, batched (longest first, to waste little padding)."""
        import torch

        long = sum(len(x) > self.max_length for x in ids)
        ids = [self.truncate(list(x)) for x in ids]
        if long:
            log.warning(
                "reward model: %d of %d inputs longer than max_length=%d were truncated (%s side)",
                long,
                len(ids),
                self.max_length,
                self.truncation_side,
            )
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out = [math.nan] * len(ids)
        pad = self.tokenizer.pad_token_id
        device = next(self.model.parameters()).device
        with self._lock:
            was_training = self.model.training
            self.model.eval()
            try:
                with torch.no_grad():
                    for start in range(0, len(order), self.batch_size):
                        chunk = order[start : start + self.batch_size]
                        width = max(len(ids[i]) for i in chunk)
                        input_ids_BT = torch.full((len(chunk), width), pad, dtype=torch.long)
                        mask_BT = torch.zeros((len(chunk), width), dtype=torch.long)
                        for row, i in enumerate(chunk):
                            input_ids_BT[row, : len(ids[i])] = torch.tensor(ids[i])
                            mask_BT[row, : len(ids[i])] = 1
                        logits = self.model(
                            input_ids=input_ids_BT.to(device),
                            attention_mask=mask_BT.to(device),
                            use_cache=False,
                        ).logits
                        for row, i in enumerate(chunk):
                            out[i] = float(logits[row, 0].float())
            finally:
                self.model.train(was_training)
            self.n_scored += len(ids)
            self.n_truncated += long
        return out


def reward_model(path: str | Path, **options: Any) -> RewardModel:
    """Factory for ``rewards.load(DIR, **options)``: ``RewardModel(resolve_dir(DIR), **options)``."""
    return RewardModel(resolve_dir(path), **options)
