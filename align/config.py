"""Typed configs: dataclasses + YAML + dotted ``key=value`` overrides, validated at load.

Only the standard library and PyYAML are imported here, so a recipe's ``--help`` stays instant.

Usage from a recipe::

    cfg = config.parse_args(SFTConfig, description=__doc__)   # --config FILE key=value ...
    config.save(cfg, Path(cfg.output_dir) / "config.yaml")

Validate any shipped config from the shell::

    python -m align.config recipes/configs/tiny/sft.yaml trainer.lr=1e-4
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")

# Which dataclass a YAML file's top-level ``recipe:`` key selects. Dotted paths, imported lazily.
SCHEMAS: dict[str, str] = {
    "make_data": "align.configs:MakeDataConfig",
    "sft": "align.configs:SFTRecipeConfig",
    "reward_model": "align.configs:RewardModelRecipeConfig",
    "grpo": "align.configs:GRPORecipeConfig",
}


class ConfigError(ValueError):
    """A config that does not match its schema. The message names the file and the dotted key."""


# ----------------------------------------------------------------------------------------------
# Building dataclasses from plain data, with type checks


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _closest(key: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    return f"; did you mean '{match[0]}'?" if match else ""


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it (YAML data -> typed value)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {_type_name(tp)}"
        )
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"{where}: {value!r} is not one of {choices}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        return [_convert(v, item_tp, f"{where}.{i}") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        args = get_args(tp)
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): _convert(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported annotation {_type_name(tp)}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys name the closest valid one."""
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise ConfigError(f"unknown key '{path}'{_closest(str(key), list(fields))}")
        kwargs[key] = _convert(value, hints[key], path)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"missing required key '{prefix}{missing[0]}'")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if callable(check):
        try:
            check()
        except ValueError as e:
            raise ConfigError(f"{where or cls.__name__}: {e}") from None
    return obj


def to_dict(cfg: Any) -> Any:
    """Dataclass (nested) -> plain YAML-able data."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


# ----------------------------------------------------------------------------------------------
# Overrides


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def apply_override(data: dict, cls: type, dotted: str, value: Any) -> None:
    """Set ``dotted`` (``a.b.0.c``) in the raw mapping ``data``, checking each key against ``cls``."""
    parts = dotted.split(".")
    node: Any = data
    tp: Any = cls
    for i, part in enumerate(parts):
        path = ".".join(parts[: i + 1])
        last = i == len(parts) - 1
        tp = _strip_optional(tp)
        if dataclasses.is_dataclass(tp):
            names = [f.name for f in dataclasses.fields(tp) if f.init]
            if part not in names:
                raise ConfigError(f"unknown key '{path}'{_closest(part, names)}")
            child_tp = _hints(tp)[part]
            if last:
                node[part] = value
                return
            if node.get(part) is None:
                node[part] = _default_raw(tp, part)
            node, tp = node[part], child_tp
        elif get_origin(tp) in (list, tuple) or tp in (list, tuple):
            if not part.lstrip("-").isdigit():
                raise ConfigError(f"'{path}': '{part}' is not a list index")
            idx = int(part)
            if not isinstance(node, list) or not -len(node) <= idx < len(node):
                size = len(node) if isinstance(node, list) else 0
                raise ConfigError(f"'{path}': index {idx} out of range (list has {size} items)")
            args = get_args(tp)
            if last:
                node[idx] = value
                return
            node, tp = node[idx], (args[0] if args else Any)
        elif get_origin(tp) is dict or tp is dict or tp is Any:
            if last:
                node[part] = value
                return
            node = node.setdefault(part, {})
            args = get_args(tp)
            tp = args[1] if len(args) == 2 else Any
        else:
            raise ConfigError(f"'{path}': cannot index into a {_type_name(tp)}")


def _strip_optional(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        if len(options) == 1:
            return options[0]
    return tp


def _default_raw(cls: type, name: str) -> Any:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default_factory is not dataclasses.MISSING:
        return to_dict(f.default_factory())
    if f.default is not dataclasses.MISSING and f.default is not None:
        return to_dict(f.default)
    return {}


def _merge_defaults(cls: type, data: dict) -> dict:
    """The raw mapping of ``cls``'s defaults with ``data`` laid over it (so overrides can index lists)."""
    hints = _hints(cls)
    out: dict = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name in data:
            value = data[f.name]
            inner = _strip_optional(hints[f.name])
            if dataclasses.is_dataclass(inner) and isinstance(value, dict):
                value = _merge_defaults(inner, value)
            out[f.name] = value
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = to_dict(f.default_factory())
        elif f.default is not dataclasses.MISSING:
            out[f.name] = to_dict(f.default)
    for key, value in data.items():  # unknown keys are kept so from_dict reports them
        out.setdefault(key, value)
    return out


# ----------------------------------------------------------------------------------------------
# Files


def schema_for(path: str | Path) -> type:
    """The dataclass a YAML file asks for through its top-level ``recipe:`` key."""
    raw = read_yaml(path)
    name = raw.get("recipe")
    if name not in SCHEMAS:
        raise ConfigError(
            f"{path}: top-level key 'recipe' must be one of {sorted(SCHEMAS)} (got {name!r})"
            + (_closest(str(name), list(SCHEMAS)) if name else "")
        )
    module, _, attr = SCHEMAS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def load(cls: type[T] | None, path: str | Path | None, overrides: list[str] = ()) -> T:
    """Load ``path`` (optional) into ``cls`` and apply ``key=value`` overrides.

    ``cls=None`` picks the schema from the file's ``recipe:`` key. Errors are ``ConfigError`` naming
    the file and the dotted key.
    """
    if cls is None:
        if path is None:
            raise ConfigError("a config file is needed to know which schema to use")
        cls = schema_for(path)
    data = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "<defaults>"
    try:
        data = _merge_defaults(cls, data)
        for item in overrides:
            key, sep, text = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"override {item!r} is not of the form key=value")
            apply_override(data, cls, key.strip(), _parse_value(text))
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def dump(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


def save(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (creating parent directories)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump(cfg), encoding="utf-8")
    return path


def field_help(cls: type) -> str:
    """One line per field (recursively) with its default and ``metadata['help']``."""
    lines: list[str] = []

    def walk(c: type, prefix: str) -> None:
        hints = _hints(c)
        for f in dataclasses.fields(c):
            inner = _strip_optional(hints[f.name])
            if dataclasses.is_dataclass(inner):
                walk(inner, f"{prefix}{f.name}.")
                continue
            default = (
                f.default
                if f.default is not dataclasses.MISSING
                else (f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
            )
            doc = f.metadata.get("help", "")
            lines.append(f"  {prefix}{f.name} = {default!r}  {doc}".rstrip())

    walk(cls, "")
    return "\n".join(lines)


def parse_args(cls: type[T], argv: list[str] | None = None, description: str | None = None) -> T:
    """Recipe entry point: ``--config FILE`` plus ``key=value`` overrides; exits 2 on a bad config."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="overrides: dotted key=value pairs, e.g. trainer.lr=1e-4 stages.0.steps=3\n\nkeys:\n"
        + field_help(cls),
    )
    parser.add_argument("--config", help="YAML config file (see recipes/configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    try:
        cfg = load(cls, args.config, args.overrides)
        if args.config is not None:
            declared = read_yaml(args.config).get("recipe")
            expected = next((k for k, v in SCHEMAS.items() if v.endswith(":" + cls.__name__)), None)
            if declared is not None and expected is not None and declared != expected:
                raise ConfigError(
                    f"{args.config}: this recipe takes 'recipe: {expected}', the file says {declared!r}"
                )
    except ConfigError as e:
        parser.exit(2, f"config error: {e}\n")
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m align.config", description="Validate a config and print it resolved."
    )
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    try:
        cfg = load(None, args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(dump(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
