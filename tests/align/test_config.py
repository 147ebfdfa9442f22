"""Config system: typed loading, dotted overrides, unknown-key suggestions, every shipped YAML."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from align import config
from align.config import ConfigError
from align.configs import MakeDataConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "recipes" / "configs"


@dataclass
class Inner:
    lr: float = 1e-3
    name: str = "a"


@dataclass
class Stage:
    name: str = "s"
    steps: int = 1
    weights: dict[str, float] = field(default_factory=dict)


@dataclass
class Outer:
    output_dir: str = "out/x"
    seed: int = 0
    mode: Literal["fast", "slow"] = "fast"
    maybe: int | None = None
    inner: Inner = field(default_factory=Inner)
    stages: list[Stage] = field(default_factory=lambda: [Stage("a"), Stage("b")])


def write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_defaults_and_types(tmp_path):
    cfg = config.load(Outer, write(tmp_path, {"seed": 3, "inner": {"lr": "1e-4"}}))
    assert cfg.seed == 3 and cfg.inner.lr == pytest.approx(1e-4) and cfg.inner.name == "a"
    assert [s.name for s in cfg.stages] == ["a", "b"]


def test_overrides_with_list_indices(tmp_path):
    path = write(tmp_path, {"stages": [{"name": "x", "steps": 2}, {"name": "y"}]})
    cfg = config.load(
        Outer, path, ["stages.0.steps=3", "inner.lr=0.5", "stages.1.weights.helpful=0.7", "maybe=4"]
    )
    assert cfg.stages[0].steps == 3 and cfg.stages[0].name == "x"
    assert cfg.stages[1].weights == {"helpful": 0.7}
    assert cfg.inner.lr == 0.5 and cfg.maybe == 4
    # overriding a whole list with YAML syntax
    cfg = config.load(Outer, path, ["stages=[{name: z}]"])
    assert [s.name for s in cfg.stages] == ["z"]


@pytest.mark.parametrize(
    ("overrides", "data", "fragment"),
    [
        (["inner.lrr=1"], {}, "unknown key 'inner.lrr'; did you mean 'lr'?"),
        ([], {"sede": 1}, "unknown key 'sede'; did you mean 'seed'?"),
        ([], {"stages": [{"stepz": 1}]}, "unknown key 'stages.0.stepz'; did you mean 'steps'?"),
        (["stages.5.steps=1"], {}, "index 5 out of range"),
        (["seed=abc"], {}, "seed: expected an integer"),
        (["mode=medium"], {}, "mode: 'medium' is not one of 'fast', 'slow'"),
        (["seed"], {}, "not of the form key=value"),
        (["inner.lr=[1]"], {}, "inner.lr: expected a number"),
    ],
)
def test_errors_name_the_key(tmp_path, overrides, data, fragment):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        config.load(Outer, path, overrides)
    assert fragment in str(e.value)
    assert str(path) in str(e.value)


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        config.load(Outer, bad)
    with pytest.raises(ConfigError, match="config file not found"):
        config.load(Outer, tmp_path / "nope.yaml")
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        config.load(Outer, lst)


def test_save_round_trip(tmp_path):
    cfg = config.load(Outer, None, ["stages.1.steps=7"])
    out = config.save(cfg, tmp_path / "run" / "config.yaml")
    assert config.load(Outer, out) == cfg


def test_schema_from_recipe_key(tmp_path):
    path = write(tmp_path, {"recipe": "make_data", "seed": 5})
    cfg = config.load(None, path)
    assert isinstance(cfg, MakeDataConfig) and cfg.seed == 5
    with pytest.raises(ConfigError, match="did you mean 'make_data'"):
        config.load(None, write(tmp_path, {"recipe": "make_dat"}))


def test_validate_hook_runs(tmp_path):
    with pytest.raises(ConfigError, match="unsafe_fraction must be in"):
        config.load(MakeDataConfig, None, ["chat.unsafe_fraction=2"])


def shipped_configs() -> list[Path]:
    return sorted(CONFIG_DIR.rglob("*.yaml")) + sorted(CONFIG_DIR.rglob("*.yml"))


def test_there_are_shipped_configs():
    assert shipped_configs(), f"no YAML under {CONFIG_DIR}"


@pytest.mark.parametrize("path", shipped_configs(), ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_shipped_config_loads(path):
    cfg = config.load(None, path)
    # the printed form loads back to the same config
    again = yaml.safe_load(config.dump(cfg))
    assert config.from_dict(type(cfg), again) == cfg


def test_cli_validates_and_prints(tmp_path):
    path = write(tmp_path, {"recipe": "make_data", "seed": 1})
    ok = subprocess.run(
        [sys.executable, "-m", "align.config", str(path), "math.train_size=7"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert ok.returncode == 0, ok.stderr
    assert yaml.safe_load(ok.stdout)["math"]["train_size"] == 7
    bad = subprocess.run(
        [sys.executable, "-m", "align.config", str(path), "math.train_sise=7"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert bad.returncode != 0
    assert "unknown key 'math.train_sise'; did you mean 'train_size'?" in bad.stderr


def recipe_scripts() -> list[Path]:
    return sorted((ROOT / "recipes").glob("*.py"))


HEAVY = ("torch", "transformers", "vllm", "ray", "datasets", "trl")
HELP_PROBE = """
import runpy, sys
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
    assert e.code in (0, None), e.code
heavy = [m for m in {heavy!r} if m in sys.modules]
print("HEAVY:", ",".join(heavy))
"""


@pytest.mark.parametrize("script", recipe_scripts(), ids=lambda p: p.name)
def test_recipe_help_imports_nothing_heavy(script):
    """``--help`` must answer before torch & co are imported (that is what makes it take < 2 s)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", HELP_PROBE.format(heavy=HEAVY), str(script)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout
    assert "HEAVY: \n" in proc.stdout, f"{script.name} --help imported {proc.stdout.split('HEAVY:')[-1]}"
    print(f"{script.name} --help: {elapsed:.2f}s")
