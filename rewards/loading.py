"""`load(spec)`: turn a reward spec (built-in name, entry point, file, dotted path) into a reward callable."""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

ENTRY_POINT_GROUP = "align.rewards"

# Built-in names -> factories ("module:function"), imported only when used. Each factory takes the
# options of `load(name, **options)` and returns the reward callable.
BUILTINS: dict[str, str] = {
    "math": "rewards.math_answer:math_reward",
    "code": "rewards.code_tests:code_reward",
    "format": "rewards.rules:format_reward",
    "length": "rewards.rules:length_reward",
    "repetition": "rewards.rules:repetition_reward",
    "language": "rewards.rules:language_reward",
    "lexicon": "rewards.rules:lexicon_reward",
    "entry_point": "rewards.rules:entry_point_reward",
    "rule": "rewards.rules:rule_reward",
}


class RewardSpecError(ValueError):
    """A reward spec that cannot be loaded; the message lists every spec kind tried and why it failed."""


def load(spec: str | Callable, **options: Any) -> Callable:
    """Return the reward callable `fn(prompts, completions, **columns) -> list[float | None]` for `spec`.

    Spec kinds, tried in this order:

    - a built-in name: ``math``, ``code``, ``format``, ``length``, ``repetition``, ``language``,
      ``lexicon``, ``entry_point``, ``rule``;
    - a name registered by an installed package in the entry-point group ``align.rewards``
      (built-in names cannot be overridden);
    - a file ``path/to/file.py:fn``;
    - a dotted path ``pkg.module:fn`` (or ``pkg.module.fn``).

    The object found is used like a torchtune component: with ``options`` it is called with them to
    build the reward (a factory or a class); without options a class is instantiated with no
    arguments and anything else is the reward itself.

    Two more kinds take options of their own:

    - a directory holding an HF sequence-classification reward model, or a run directory whose
      ``final/`` holds one (``rewards.reward_model.RewardModel``: ``device``, ``dtype``,
      ``batch_size``, ``max_length``);
    - an ``http(s)://host:port`` URL of a reward server (``python -m rewards.serve``), POSTed to at
      ``/score`` unless the URL names another path (``rewards.serve.RemoteReward``: ``timeout_s``).
    """
    if callable(spec):
        return _build(spec, options, str(spec))
    if not isinstance(spec, str) or not spec.strip():
        raise RewardSpecError(f"a reward spec is a non-empty string or a callable, not {spec!r}")
    spec = spec.strip()
    if spec.startswith(("http://", "https://")):
        from rewards.serve import RemoteReward  # stdlib only

        return _build(functools.partial(RemoteReward, spec), options, spec, factory=True)
    tried: list[tuple[str, str]] = []

    if spec in BUILTINS:
        return _build(import_object(BUILTINS[spec]), options, spec, factory=True)
    close = difflib.get_close_matches(spec, BUILTINS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    tried.append(("built-in name", f"not one of {', '.join(sorted(BUILTINS))}{hint}"))

    eps = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec]
    if eps:
        try:
            obj = eps[0].load()
        except Exception as e:
            raise RewardSpecError(
                f"reward {spec!r}: entry point {eps[0].value!r} (group {ENTRY_POINT_GROUP}) failed to "
                f"import: {type(e).__name__}: {e}"
            ) from e
        return _build(obj, options, spec)
    names = sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})
    close = difflib.get_close_matches(spec, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    why = f"none named {spec!r} (registered: {names or 'none'}){hint}"
    tried.append((f"entry point in group {ENTRY_POINT_GROUP}", why))

    path, _, attr = spec.rpartition(":")
    if path.endswith(".py"):
        if not os.path.isfile(path):
            tried.append(("file path/to/file.py:fn", f"no file {path!r} (cwd {os.getcwd()})"))
        else:
            try:
                return _build(import_object(spec), options, spec)
            except Exception as e:  # noqa: BLE001 - reported with the others
                tried.append(("file path/to/file.py:fn", f"{type(e).__name__}: {e}"))
    elif spec.endswith(".py"):
        tried.append(("file path/to/file.py:fn", "names no function: add ':fn' after the file"))
    else:
        tried.append(("file path/to/file.py:fn", "no '.py:' in the spec"))

    if os.path.isdir(spec):
        from rewards.reward_model import resolve_dir  # torch and transformers load when the model does

        try:
            model_dir = resolve_dir(spec)
        except ValueError as e:
            raise RewardSpecError(f"reward {spec!r}: {e}") from None
        from rewards.reward_model import RewardModel

        return _build(functools.partial(RewardModel, model_dir), options, spec, factory=True)
    tried.append(("reward-model directory", f"no directory {spec!r}"))
    tried.append(("http(s) reward server", "not a URL"))

    if not path.endswith(".py") and ("." in spec or ":" in spec):
        try:
            return _build(import_object(spec), options, spec)
        except Exception as e:  # noqa: BLE001
            tried.append(("dotted path pkg.module:fn", f"{type(e).__name__}: {e}"))
    else:
        tried.append(("dotted path pkg.module:fn", "no module part (expected pkg.module:fn)"))

    lines = "\n".join(f"  - {kind}: {why}" for kind, why in tried)
    raise RewardSpecError(f"cannot load reward {spec!r}; tried:\n{lines}")


def import_object(spec: str) -> Any:
    """Import ``pkg.module:name``, ``pkg.module.name`` or ``path/to/file.py:name``."""
    path, sep, attr = spec.rpartition(":")
    if not sep:
        path, _, attr = spec.rpartition(".")
    if not path or not attr:
        raise ValueError(f"{spec!r} is not 'module:name' or 'file.py:name'")
    if path.endswith(".py"):
        module = _import_file(path)
    else:
        module = importlib.import_module(path)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AttributeError(f"{path!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _import_file(path: str):
    """Import a .py file once per absolute path, under a private module name."""
    full = os.path.abspath(path)
    name = "_align_reward_" + hashlib.sha1(full.encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, full)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {full}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _build(obj: Any, options: dict, spec: str, factory: bool = False) -> Callable:
    """Apply the factory/class/reward convention of `load` and check the result is callable."""
    try:
        if factory or options or isinstance(obj, type):
            fn = obj(**options)
        else:
            fn = obj
    except TypeError as e:
        raise RewardSpecError(f"reward {spec!r}: bad options {sorted(options)}: {e}") from e
    if not callable(fn):
        raise RewardSpecError(f"reward {spec!r} resolved to {type(fn).__name__}, which is not callable")
    return fn
