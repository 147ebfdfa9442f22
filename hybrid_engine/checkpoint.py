"""Checkpoint directories of a GRPO run: written under a temporary name, published by renaming and
then by rewriting ``LATEST`` last, pruned to the newest ``keep``.

    <output_dir>/checkpoints/
        step_000012/        policy/ (HF model dir), trainer/ (DCP shards + per-rank state), state.json
        step_000016/
        LATEST              "step_000016": written (atomically) only once that directory is complete

A crash at any moment leaves ``LATEST`` naming a complete checkpoint (or no ``LATEST`` at all):
a half-written one is still ``*.tmp`` and is removed by the next save. Pruning never deletes the
checkpoint ``LATEST`` names.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

LATEST = "LATEST"
STATE = "state.json"
PREFIX = "step_"


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:06d}"


def latest(root: str | Path) -> Path | None:
    """The checkpoint ``root/LATEST`` names, or None. A LATEST naming a missing or incomplete
    directory is an error (something other than this module changed the directory)."""
    root = Path(root)
    marker = root / LATEST
    if not marker.is_file():
        return None
    name = marker.read_text(encoding="utf-8").strip()
    path = root / name
    if not (path / STATE).is_file():
        raise FileNotFoundError(f"{marker} names {name!r}, but {path / STATE} does not exist")
    return path


def read_state(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / STATE).read_text(encoding="utf-8"))


def save(
    root: str | Path, step: int, write: Callable[[Path], None], state: dict[str, Any], keep: int
) -> Path:
    """Write checkpoint ``step``: ``write(tmp_dir)`` fills a temporary directory, ``state`` goes
    to its ``state.json`` last; then the directory is renamed into place, ``LATEST`` is replaced
    atomically, and older checkpoints beyond ``keep`` are deleted. Returns the checkpoint's path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob("*.tmp"):  # a save that died half-way
        shutil.rmtree(stale, ignore_errors=True)
    name = checkpoint_name(step)
    final, tmp = root / name, root / f"{name}.tmp"
    write(tmp)
    _write_atomic(tmp / STATE, json.dumps(state, indent=1, sort_keys=True))
    if final.exists():  # the same step saved before a crash (e.g. a stage end re-run on resume)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    _write_atomic(root / LATEST, name + "\n")
    prune(root, keep)
    return final


def prune(root: str | Path, keep: int) -> list[Path]:
    """Delete the oldest complete checkpoints beyond the newest ``keep`` (at least 1); never the
    one ``LATEST`` names. Returns what was deleted."""
    root = Path(root)
    current = latest(root)
    complete = sorted(
        p
        for p in root.glob(f"{PREFIX}*")
        if p.is_dir() and not p.name.endswith(".tmp") and (p / STATE).is_file()
    )
    doomed = [p for p in complete[: max(len(complete) - max(keep, 1), 0)] if p != current]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
