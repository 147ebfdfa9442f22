"""The checkpoint directory protocol (temporary name, rename, LATEST last, pruning), the metrics
truncation a resumed run does, the refusal to resume with a changed config, and the dashboard
exposure check; no Ray cluster, no models."""

from __future__ import annotations

import json

import pytest

from hybrid_engine import checkpoint
from hybrid_engine.metrics import RunLog, read_metrics, truncate_metrics


def _writer(payload: str):
    def write(tmp):
        tmp.mkdir(parents=True)
        (tmp / "policy.bin").write_text(payload)

    return write


def test_save_publishes_latest_last_and_prunes(tmp_path):
    root = tmp_path / "checkpoints"
    assert checkpoint.latest(root) is None
    for step in (2, 4, 6):
        path = checkpoint.save(root, step, _writer(f"w{step}"), {"step": step}, keep=2)
        assert path.name == f"step_{step:06d}"
        assert checkpoint.latest(root) == path
        assert checkpoint.read_state(path) == {"step": step}
    assert sorted(p.name for p in root.iterdir()) == ["LATEST", "step_000004", "step_000006"]
    assert (root / "step_000006" / "policy.bin").read_text() == "w6"


def test_a_save_that_dies_leaves_the_previous_checkpoint_latest(tmp_path):
    root = tmp_path / "checkpoints"
    checkpoint.save(root, 1, _writer("ok"), {"step": 1}, keep=1)

    def dies(tmp):
        tmp.mkdir(parents=True)
        (tmp / "half").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(root, 2, dies, {"step": 2}, keep=1)
    assert checkpoint.latest(root).name == "step_000001"  # the only complete one survives
    assert (root / "step_000002.tmp").is_dir()
    checkpoint.save(root, 3, _writer("ok3"), {"step": 3}, keep=1)  # the next save cleans up
    assert sorted(p.name for p in root.iterdir()) == ["LATEST", "step_000003"]


def test_prune_never_deletes_the_checkpoint_latest_names(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        checkpoint.save(root, step, _writer("w"), {"step": step}, keep=5)
    (root / "LATEST").write_text("step_000001\n")  # e.g. a resumed run re-saving older steps
    deleted = checkpoint.prune(root, keep=1)
    assert [p.name for p in deleted] == ["step_000002"]
    assert sorted(p.name for p in root.iterdir()) == ["LATEST", "step_000001", "step_000003"]


def test_latest_naming_a_missing_checkpoint_is_an_error(tmp_path):
    root = tmp_path / "checkpoints"
    root.mkdir()
    (root / "LATEST").write_text("step_000009\n")
    with pytest.raises(FileNotFoundError, match="step_000009"):
        checkpoint.latest(root)


def test_truncate_metrics_drops_later_steps_and_a_torn_line(tmp_path):
    log = RunLog(tmp_path, tensorboard=False)
    for step in range(1, 6):
        log.write(step, "reasoning", {"reward/mean": step / 10}, extra={"data_indices": [step, step + 1]})
    log.close()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "stage": "reas')  # killed mid-write
    assert truncate_metrics(tmp_path, 3) == 3
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[2]["data_indices"] == [3, 4] and records[2]["reward/mean"] == 0.3

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    lines.insert(1, "{broken")
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON record"):
        truncate_metrics(tmp_path, 3)
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1


def test_resuming_with_a_changed_config_is_refused(tmp_path, capsys):
    """The recipe compares the checkpoint's config fingerprint before it starts anything."""
    from align import config
    from align.configs import GRPORecipeConfig
    from recipes import grpo_two_stage as recipe

    yaml_path = "recipes/configs/tiny/grpo_two_stage.yaml"
    cfg = config.load(GRPORecipeConfig, yaml_path, [f"output_dir={tmp_path}"])
    state = {"step": 3, "stage_index": 0, "stage_name": "reasoning", "fingerprint": recipe.fingerprint(cfg)}
    checkpoint.save(tmp_path / "checkpoints", 3, lambda tmp: tmp.mkdir(), state, keep=2)

    changed = ["--config", yaml_path, f"output_dir={tmp_path}", "stages.0.steps=7"]
    assert recipe.main(changed) == 2
    err = capsys.readouterr().err
    assert "different config" in err and "stages" in err and "checkpoint.resume=never" in err
    # where and how it runs may change: the fingerprint ignores those sections
    moved = config.load(
        GRPORecipeConfig,
        yaml_path,
        [f"output_dir={tmp_path}/x", "rollout.num_workers=2", "sandbox.mode=userns"],
    )
    assert recipe.fingerprint(moved) == recipe.fingerprint(cfg)


def test_the_dashboard_stays_on_loopback_unless_token_auth_is_on(monkeypatch):
    from align.configs import RayConfig
    from hybrid_engine.driver import check_dashboard_exposure

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert RayConfig().dashboard_host == "127.0.0.1" and RayConfig().include_dashboard is False
    for host in ("127.0.0.1", "localhost", "::1"):
        check_dashboard_exposure(RayConfig(include_dashboard=True, dashboard_host=host))
    check_dashboard_exposure(RayConfig(include_dashboard=False, dashboard_host="0.0.0.0"))  # none started
    with pytest.raises(ValueError, match=r"dashboard_host='0.0.0.0'.*RAY_AUTH_MODE=token"):
        check_dashboard_exposure(RayConfig(include_dashboard=True, dashboard_host="0.0.0.0"))
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    check_dashboard_exposure(RayConfig(include_dashboard=True, dashboard_host="0.0.0.0"))


def test_the_sandbox_section_configures_the_code_reward_runner():
    from align import config
    from align.configs import GRPORecipeConfig
    from hybrid_engine.driver import configure_sandbox
    from rewards import sandbox

    yaml_path = "recipes/configs/tiny/grpo_two_stage.yaml"
    try:
        cfg = config.load(
            GRPORecipeConfig, yaml_path, ["sandbox.allow_unisolated=true", "sandbox.mode=userns"]
        )
        configure_sandbox(cfg.sandbox)
        assert sandbox._settings.allow_unsafe is True and sandbox._settings.mode == "userns"
        configure_sandbox(config.load(GRPORecipeConfig, yaml_path).sandbox)
        assert sandbox._settings.allow_unsafe is False and sandbox._settings.mode == "auto"
    finally:
        sandbox.configure(allow_unsafe=False, mode="auto")


def test_a_fresh_run_drops_earlier_evaluations_and_sets_earlier_checkpoints_aside(tmp_path):
    from recipes.grpo_two_stage import start_fresh

    assert start_fresh(tmp_path) == []  # an empty or new output_dir: nothing to do
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "sft.json").write_text("{}")
    checkpoint.save(tmp_path / "checkpoints", 30, _writer("old"), {"step": 30}, keep=2)
    done = start_fresh(tmp_path)
    assert len(done) == 2 and not (tmp_path / "eval" / "sft.json").exists()
    assert checkpoint.latest(tmp_path / "checkpoints") is None
    (aside,) = tmp_path.glob("checkpoints.old-*")
    assert (aside / "step_000030" / "policy.bin").read_text() == "old"  # kept, not deleted
