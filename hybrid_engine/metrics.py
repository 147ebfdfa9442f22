"""Per-step run records: ``<output_dir>/metrics.jsonl`` (one JSON object a step) and TensorBoard
events under ``<output_dir>/tb/``; and a phase timer for ``timing/*``."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class RunLog:
    """Appends ``{"step", "stage", "time_s", <metrics>}`` records to ``metrics.jsonl`` and mirrors
        every number to TensorBoard. ``fresh=True`` starts a new file (a resumed run passes False and
    ``purge_step``, the first step it redoes)."""

    def __init__(
        self, run_dir: str | Path, fresh: bool = True, tensorboard: bool = True, purge_step: int | None = None
    ):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        if fresh:
            self.path.write_text("")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard hides the events a resumed run writes again
            self._tb = SummaryWriter(log_dir=str(self.dir / "tb"), purge_step=purge_step)
        self._start = time.monotonic()

    def write(
        self, step: int, stage: str, metrics: Mapping[str, Any], extra: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Append one record; ``extra`` holds non-numeric fields (JSON only, not TensorBoard)."""
        numbers = {
            k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(float(v))
        }
        record = {"step": step, "stage": stage, "time_s": round(time.monotonic() - self._start, 3), **numbers}
        record.update(extra or {})
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for name, value in numbers.items():
                self._tb.add_scalar(name, value, step)
            self._tb.flush()
        return record

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def truncate_metrics(run_dir: str | Path, last_step: int) -> int:
    """Drop the records after ``last_step`` from ``<run_dir>/metrics.jsonl`` (a resumed run redoes
    those steps), and a torn last line. Returns the records kept."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return 0
    kept = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):
                continue  # the line a killed run was writing
            raise ValueError(f"{path}:{number}: not a JSON record ({e}); not truncating it") from e
        if record.get("step", 0) <= last_step:
            kept.append(line)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    tmp.replace(path)
    return len(kept)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``<run_dir>/metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class PhaseTimer:
    """``with timer("gen"): ...`` adds the block's seconds to ``timing/gen``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            key = f"timing/{phase}"
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start
