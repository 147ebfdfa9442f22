"""`combine`: a weighted sum of rewards where every call is isolated, with per-component metrics.

Rewards are called with keywords, as TRL does: ``fn(prompts=..., completions=..., **columns)``.
Isolation of one reward on one batch:

1. The whole batch is scored in one call, in a worker thread, with a deadline of ``timeout_s``.
2. If that call raises, times out, or returns something that is not one value per sample, every
   sample is scored alone (``prompts=[p], completions=[c]``, list columns sliced the same way, other
   keyword arguments such as TRL's ``trainer_state`` passed as they are), concurrently, each with its
   own deadline.
3. A value that is None stays None (not applicable). An exception, a NaN/inf, a non-number or a
   time-out makes that sample's value None and is counted (``error_frac`` / ``timeout_frac``).
4. A ``RewardError`` is raised only when the failed fraction (errors + time-outs) of one reward over
   its last ``window`` samples exceeds ``max_error_frac`` (checked once ``min_samples`` were seen).

Hangs: Python cannot kill a thread. A sync reward that hangs is abandoned after its deadline and
its thread leaks (daemon, so it never blocks exit); after ``max_hung`` leaked threads the reward is
declared broken (``RewardError``). Built-ins that can hang (math verification, code) run their work
in processes that they kill themselves. ``async def`` rewards are awaited with ``asyncio.wait_for``,
so their time-outs cancel them for real, and their per-sample fallback runs concurrently.

Weighted sum: a None component contributes nothing; a sample whose components are all None gets a
total of None (TRL's ``nansum`` convention, without its silent 0 for all-NaN rows).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import inspect
import math
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rewards.loading import load

OK, NONE, ERROR, TIMEOUT = "ok", "none", "error", "timeout"


class RewardError(RuntimeError):
    """A reward failed on too many recent samples (or has too many hung calls)."""


@dataclasses.dataclass
class Scores:
    """One batch: the weighted totals, each component's values, and the metrics to log."""

    total: list[float | None]
    components: dict[str, list[float | None]]
    metrics: dict[str, float]


@dataclasses.dataclass
class Outcome:
    """One reward's result on one sample: ``status`` is ok, none, error or timeout."""

    value: float | None
    status: str
    error: str | None = None


class Combined:
    """A reward that is the weighted sum of named components; see `combine`."""

    def __init__(
        self,
        components: Mapping[str, tuple[Callable, float]],
        *,
        timeout_s: float,
        max_error_frac: float,
        window: int,
        min_samples: int,
        max_workers: int,
        max_hung: int,
    ):
        self.components = dict(components)
        self.timeout_s = timeout_s
        self.max_error_frac = max_error_frac
        self.min_samples = min_samples
        self.max_workers = max_workers
        self.max_hung = max_hung
        self._failed = {name: collections.deque(maxlen=window) for name in self.components}
        self._last_error: dict[str, str] = {}
        self._hung: dict[str, list[threading.Event]] = {name: [] for name in self.components}
        self._lock = threading.Lock()
        self.last: Scores | None = None
        self.__name__ = "combined"

    def __call__(self, prompts: list, completions: list, **columns: Any) -> list[float | None]:
        """The weighted total per sample; the full `Scores` of this call are kept in ``self.last``."""
        self.last = self.score(prompts, completions, **columns)
        return self.last.total

    def score(self, prompts: list, completions: list, **columns: Any) -> Scores:
        """Score a batch with every component; raise RewardError when one fails too often."""
        n = len(completions)
        if len(prompts) != n or any(len(v) != n for v in columns.values() if isinstance(v, list | tuple)):
            raise ValueError("prompts, completions and every list column must have one entry per sample")
        names = list(self.components)
        with ThreadPoolExecutor(max_workers=max(1, len(names)), thread_name_prefix="reward") as ex:
            futures = {
                name: ex.submit(
                    self._score_one, name, self.components[name][0], prompts, completions, columns
                )
                for name in names
            }
            outcomes = {name: f.result() for name, f in futures.items()}
        self._account(outcomes)
        values = {name: [o.value for o in outs] for name, outs in outcomes.items()}
        total: list[float | None] = []
        for i in range(n):
            parts = [self.components[k][1] * values[k][i] for k in names if values[k][i] is not None]
            total.append(sum(parts) if parts else None)
        metrics: dict[str, float] = {}
        for name, outs in outcomes.items():
            metrics.update(_stats(f"reward/{name}", [o.value for o in outs]))
            if n:
                metrics[f"reward/{name}/error_frac"] = sum(o.status == ERROR for o in outs) / n
                metrics[f"reward/{name}/timeout_frac"] = sum(o.status == TIMEOUT for o in outs) / n
        metrics.update(_stats("reward", total))
        return Scores(total=total, components=values, metrics=metrics)

    def _score_one(self, name, fn, prompts, completions, columns) -> list[Outcome]:
        outs, abandoned = score_isolated(
            fn, prompts, completions, columns, timeout_s=self.timeout_s, max_workers=self.max_workers
        )
        with self._lock:
            self._hung[name] = [e for e in self._hung[name] + abandoned if not e.is_set()]
        return outs

    def _account(self, outcomes: dict[str, list[Outcome]]) -> None:
        """Update the sliding windows and raise when a component crossed its error threshold."""
        problems = []
        with self._lock:
            for name, outs in outcomes.items():
                window = self._failed[name]
                for o in outs:
                    window.append(o.status in (ERROR, TIMEOUT))
                    if o.error:
                        self._last_error[name] = o.error
                failed = sum(window)
                if len(window) >= min(self.min_samples, window.maxlen) and failed > self.max_error_frac * len(
                    window
                ):
                    problems.append(
                        f"reward {name!r} failed on {failed} of its last {len(window)} samples "
                        f"(max_error_frac={self.max_error_frac}); last error: {self._last_error.get(name)}"
                    )
                if len(self._hung[name]) > self.max_hung:
                    problems.append(
                        f"reward {name!r} has {len(self._hung[name])} calls still hanging past timeout_s="
                        f"{self.timeout_s} (max_hung={self.max_hung}); it is not usable"
                    )
        if problems:
            raise RewardError("\n".join(problems))


def combine(
    components: Mapping[str, tuple[Callable | str, float] | Callable | str],
    *,
    timeout_s: float = 60.0,
    max_error_frac: float = 0.5,
    window: int = 256,
    min_samples: int = 16,
    max_workers: int = 8,
    max_hung: int = 32,
) -> Combined:
    """Combine rewards into one: ``{name: (reward, weight)}`` (a bare reward means weight 1.0; a
    string is passed to `rewards.load`).

    timeout_s: deadline of one reward call (the batch call, and each per-sample call of the fallback).
    max_error_frac, window, min_samples: raise RewardError when more than ``max_error_frac`` of a
        reward's last ``window`` samples failed, once it has seen ``min_samples`` samples.
    max_workers: per-sample fallback calls run at most this many at a time.
    max_hung: sync calls abandoned while hanging after which a reward is declared broken.

    The result is called like a reward and returns the weighted totals; ``.score(...)`` (or ``.last``
    after a call) also gives each component's values and the metrics ``reward/<name>/mean``, ``/std``,
    ``/none_frac``, ``/error_frac``, ``/timeout_frac`` and ``reward/mean``, ``reward/std``,
    ``reward/none_frac`` of the total. mean/std are over the non-None values and are left out when
    there are none.
    """
    if not components:
        raise ValueError("combine needs at least one reward")
    resolved = {}
    for name, entry in components.items():
        reward, weight = entry if isinstance(entry, tuple) else (entry, 1.0)
        if isinstance(reward, str):
            reward = load(reward)
        if not callable(reward):
            raise TypeError(f"reward {name!r} is not callable: {reward!r}")
        resolved[name] = (reward, float(weight))
    return Combined(
        resolved,
        timeout_s=timeout_s,
        max_error_frac=max_error_frac,
        window=window,
        min_samples=min_samples,
        max_workers=max_workers,
        max_hung=max_hung,
    )


def select_rows(
    fn: Callable,
    only: Mapping[str, Sequence] | None = None,
    skip: Mapping[str, Sequence] | None = None,
) -> Callable:
    """``fn`` applied to some rows only: a sample is scored when, for every column of ``only``, its
    value is one of those listed, and for no column of ``skip`` is it one of those listed; every
    other sample gets None (not applicable: it adds nothing to a weighted sum). ``fn`` is called
    once, on the selected samples (per-sample columns sliced to them), or not at all. The result's
    ``__wrapped__`` is ``fn`` (``inspect.unwrap`` reaches e.g. a Ray actor reward's restart count).

    Llama 2 style routing of a safety reward model to the safety prompts, veRL's reward per
    ``data_source``::

        safety = rewards.select_rows(rewards.load("out/rm_safety"), skip={"category": ["math", "code"]})
    """
    only, skip = dict(only or {}), dict(skip or {})
    for what, rule in (("only", only), ("skip", skip)):
        for col, values in rule.items():
            if isinstance(values, str | bytes) or not isinstance(values, Sequence | set | frozenset):
                raise ValueError(f"select_rows {what}[{col!r}]: a list of values, not {values!r}")
    if not only and not skip:
        raise ValueError("select_rows: give `only` or `skip` (column -> values)")
    needed = sorted({*only, *skip})

    def split(prompts, completions, columns):
        n = len(completions)
        missing = [c for c in needed if c not in columns or not _is_column(columns[c], n)]
        if missing:
            raise ValueError(
                f"select_rows: column(s) {missing} not passed with one value per sample "
                f"(got columns {sorted(columns)})"
            )
        keep = [
            i
            for i in range(n)
            if all(columns[c][i] in v for c, v in only.items())
            and not any(columns[c][i] in v for c, v in skip.items())
        ]
        return keep, _subset(keep, prompts, completions, columns)

    def merge(n, keep, values):
        values = list(values)
        if len(values) != len(keep):
            raise ValueError(f"select_rows: the reward returned {len(values)} values for {len(keep)} samples")
        out: list = [None] * n
        for i, v in zip(keep, values):
            out[i] = v
        return out

    if _is_async(fn):

        async def selected_async(prompts: list, completions: list, **columns: Any) -> list:
            keep, kwargs = split(prompts, completions, columns)
            values = await fn(**kwargs) if keep else []
            return merge(len(completions), keep, values)

        selected_async.__wrapped__ = fn  # type: ignore[attr-defined]
        return selected_async

    def selected(prompts: list, completions: list, **columns: Any) -> list:
        keep, kwargs = split(prompts, completions, columns)
        return merge(len(completions), keep, fn(**kwargs) if keep else [])

    selected.__wrapped__ = fn  # type: ignore[attr-defined]  (inspect.unwrap: the reward's own state)
    return selected


def score_isolated(
    fn: Callable,
    prompts: list,
    completions: list,
    columns: Mapping[str, Sequence],
    *,
    timeout_s: float,
    max_workers: int = 8,
) -> tuple[list[Outcome], list[threading.Event]]:
    """Score a batch with one reward under the isolation rules of this module.

    Returns one outcome per sample and, for each call abandoned while still running, an event that
    is set if it ever finishes.
    """
    n = len(completions)
    if n == 0:
        return [], []
    if _is_async(fn):
        return _score_async(fn, prompts, completions, columns, timeout_s), []
    box, done = _start(lambda: fn(prompts=prompts, completions=completions, **columns), timeout_s)
    abandoned = [] if done.wait(timeout_s) else [done]
    if done.is_set() and "value" in box:
        try:
            return _convert_batch(box["value"], n), []
        except (TypeError, ValueError):
            pass  # not one value per sample: score each sample alone
    outs: list[Outcome | None] = [None] * n
    for start in range(0, n, max_workers):
        calls = {
            i: _start(lambda i=i: _call_row(fn, i, prompts, completions, columns), timeout_s)
            for i in range(start, min(n, start + max_workers))
        }
        for i, (box, done) in calls.items():
            done.wait(max(0.0, box["deadline"] - time.monotonic()))
            if not done.is_set():
                outs[i] = Outcome(None, TIMEOUT, f"timed out after {timeout_s}s")
                abandoned.append(done)
            elif "error" in box:
                outs[i] = Outcome(None, ERROR, box["error"])
            else:
                try:
                    outs[i] = _convert_batch(box["value"], 1)[0]
                except (TypeError, ValueError) as e:
                    outs[i] = Outcome(None, ERROR, f"{type(e).__name__}: {e}")
    return outs, abandoned  # type: ignore[return-value]


# -- helpers ----------------------------------------------------------------------------------------


def _start(call: Callable, timeout_s: float) -> tuple[dict, threading.Event]:
    """Start `call` in a daemon thread; its result or error lands in the returned box."""
    box: dict = {"deadline": time.monotonic() + timeout_s}
    done = threading.Event()

    def target():
        try:
            box["value"] = call()
        except BaseException as e:  # noqa: BLE001 - a reward may raise anything, SystemExit included
            box["error"] = _describe(e)
        finally:
            done.set()

    threading.Thread(target=target, daemon=True, name="reward-call").start()
    return box, done


def _with_deadline(call: Callable, timeout_s: float) -> tuple[str, Any]:
    """Run `call` in a daemon thread; (OK, value), (ERROR, message) or (TIMEOUT, None)."""
    box, done = _start(call, timeout_s)
    if not done.wait(timeout_s):
        return TIMEOUT, None
    if "error" in box:
        return ERROR, box["error"]
    return OK, box["value"]


def _row(i: int, prompts, completions, columns) -> dict:
    """Keyword arguments that score sample `i` alone (see `_subset`)."""
    return _subset([i], prompts, completions, columns)


def _subset(keep: Sequence[int], prompts, completions, columns) -> dict:
    """Keyword arguments that score the samples `keep`. Per-sample columns are sliced; anything else
    (TRL also passes e.g. ``trainer_state``) is passed through as it is."""
    n = len(completions)
    per_sample = {k: [v[i] for i in keep] for k, v in columns.items() if _is_column(v, n)}
    return {
        **columns,
        **per_sample,
        "prompts": [prompts[i] for i in keep],
        "completions": [completions[i] for i in keep],
    }


def _is_column(v: Any, n: int) -> bool:
    return not isinstance(v, str | bytes | Mapping) and hasattr(v, "__getitem__") and _len(v) == n


def _len(v: Any) -> int | None:
    try:
        return len(v)
    except TypeError:
        return None


def _call_row(fn: Callable, i: int, prompts, completions, columns) -> Any:
    return fn(**_row(i, prompts, completions, columns))


def _describe(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    where = f" at {tb[-1].filename}:{tb[-1].lineno}" if tb else ""
    return f"{type(e).__name__}: {e}{where}"


def _convert_batch(result: Any, n: int) -> list[Outcome]:
    """Check a reward's return value (one entry per sample) and convert each entry."""
    if isinstance(result, str | bytes) or not isinstance(result, (Sequence, *_array_types())):
        raise TypeError(f"a reward returns a list, not {type(result).__name__}")
    values = list(result)
    if len(values) != n:
        raise ValueError(f"reward returned {len(values)} values for {n} samples")
    return [_convert(v) for v in values]


def _array_types() -> tuple[type, ...]:
    types: list[type] = []
    for mod, name in (("numpy", "ndarray"), ("torch", "Tensor")):
        module = sys.modules.get(mod)  # only if the caller already imported it
        if module is not None:
            types.append(getattr(module, name))
    return tuple(types)


def _convert(v: Any) -> Outcome:
    if v is None:
        return Outcome(None, NONE)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return Outcome(None, ERROR, f"not a number: {v!r}"[:200])
    if not math.isfinite(f):
        return Outcome(None, ERROR, f"non-finite value {f}")
    return Outcome(f, OK)


def _stats(prefix: str, values: list[float | None]) -> dict[str, float]:
    out: dict[str, float] = {}
    if not values:
        return out
    got = [v for v in values if v is not None]
    out[f"{prefix}/none_frac"] = 1 - len(got) / len(values)
    if got:
        mean = sum(got) / len(got)
        out[f"{prefix}/mean"] = mean
        out[f"{prefix}/std"] = math.sqrt(sum((v - mean) ** 2 for v in got) / len(got))
    return out


def _is_async(fn: Callable) -> bool:
    call = type(fn).__call__ if not inspect.isroutine(fn) and not isinstance(fn, type) else None
    return inspect.iscoroutinefunction(fn) or (call is not None and inspect.iscoroutinefunction(call))


def _score_async(fn, prompts, completions, columns, timeout_s) -> list[Outcome]:
    """Await an async reward on the batch, then per sample concurrently if the batch call failed."""
    n = len(completions)

    async def batch():
        return await asyncio.wait_for(fn(prompts=prompts, completions=completions, **columns), timeout_s)

    status, result = _with_deadline(lambda: asyncio.run(batch()), timeout_s + 1.0)
    if status == OK:
        try:
            return _convert_batch(result, n)
        except (TypeError, ValueError):
            pass

    async def one(i):
        kwargs = _row(i, prompts, completions, columns)
        try:
            return _convert_batch(await asyncio.wait_for(fn(**kwargs), timeout_s), 1)[0]
        except asyncio.TimeoutError:
            return Outcome(None, TIMEOUT, f"timed out after {timeout_s}s")
        except Exception as e:  # noqa: BLE001 - includes a return value that is not [number]
            return Outcome(None, ERROR, _describe(e))

    async def each():
        return await asyncio.gather(*(one(i) for i in range(n)))

    status, result = _with_deadline(lambda: asyncio.run(each()), timeout_s + 1.0)
    if status == OK:
        return result
    why = "event loop blocked past the deadline" if status == TIMEOUT else result
    return [Outcome(None, TIMEOUT if status == TIMEOUT else ERROR, why) for _ in range(n)]
