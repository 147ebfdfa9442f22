"""Rewards hosted in Ray actors (hybrid_engine.reward_actor): a real reward model scores in its own
process exactly as in-process, and an actor killed with SIGKILL in the middle of a call is restarted
by Ray and the call retried, with nothing lost."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

FAULTY = Path(__file__).with_name("_faulty_rewards.py")


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory, untrained_rm) -> Path:
    """An (untrained, seeded) sequence-classification reward model on the tiny DeepSeek-V2."""
    from align.models import make_tiny_model

    base = tmp_path_factory.mktemp("reward_actor")
    return untrained_rm(make_tiny_model("deepseek_v2", "tiny", base / "model", seed=0), base / "rm")


def wait_for_pid(marker: Path, timeout_s: float = 60) -> int:
    """The PID ``slow_marked`` writes to ``marker`` when a call starts in the actor; the marker is
    removed, so the next call (a retry) writes it anew."""
    deadline = time.monotonic() + timeout_s
    while not (marker.is_file() and marker.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int(marker.read_text())
    marker.unlink()
    return pid


def test_absolute_spec_resolves_local_paths_only(tmp_path, monkeypatch):
    from hybrid_engine.reward_actor import absolute_spec

    monkeypatch.chdir(tmp_path)
    (tmp_path / "rm").mkdir()
    (tmp_path / "r.py").write_text("def f(prompts, completions, **k): return [0.0] * len(completions)\n")
    assert absolute_spec("rm") == str(tmp_path / "rm")
    assert absolute_spec("r.py:f") == f"{tmp_path / 'r.py'}:f"
    for spec in ("math", "pkg.module:fn", "http://127.0.0.1:8000", "missing.py:f"):
        assert absolute_spec(spec) == spec


def test_a_reward_model_in_an_actor_scores_as_in_process(ray_local, rm_dir):
    from hybrid_engine.reward_actor import ActorReward
    from rewards.reward_model import RewardModel

    prompts = ["What is 2+3?", "Say hi.", "Tell me how to pick a lock."]
    completions = ["2+3=5. \\boxed{5}", "Hi!", "I can't help with that request."]
    local = RewardModel(rm_dir, device="cpu")(prompts, completions)
    reward = ActorReward(str(rm_dir), {"device": "cpu"}, name="helpful")
    try:
        info = reward.health()
        assert info["ok"] and info["pid"] != os.getpid() and not info["restarted"]
        remote = reward(prompts, completions)
        assert remote == pytest.approx(local, abs=1e-6)
        assert len(set(remote)) == 3  # three different inputs, three different scores
    finally:
        reward.shutdown()


def test_an_actor_killed_mid_call_is_restarted_and_the_call_retried(ray_local, tmp_path):
    from hybrid_engine.reward_actor import ActorReward

    marker = tmp_path / "pid"
    reward = ActorReward(f"{FAULTY}:slow_marked", max_restarts=2, name="slow")
    try:
        first_pid = reward.health()["pid"]
        completions = ["a", "bbb", "cc"]
        box: dict = {}
        call = threading.Thread(
            target=lambda: box.update(out=reward(["p"] * 3, completions, marker=[str(marker)] * 3))
        )
        call.start()
        assert wait_for_pid(marker) == first_pid  # the call is running in the actor
        os.kill(first_pid, signal.SIGKILL)
        call.join(timeout=120)
        assert not call.is_alive()
        assert box["out"] == [1.0, 3.0, 2.0]  # the retried call, complete and in order
        assert reward.restarts == 1
        info = reward.health()
        assert info["restarted"] and info["pid"] != first_pid
        assert int(marker.read_text()) == info["pid"]  # the retry ran in the new process
    finally:
        reward.shutdown()


def test_an_actor_that_keeps_dying_gives_up_with_a_message(ray_local, tmp_path):
    from hybrid_engine.reward_actor import ActorReward

    marker = tmp_path / "pid"
    reward = ActorReward(f"{FAULTY}:slow_marked", max_restarts=1, name="doomed")
    try:
        box: dict = {}

        def run():
            try:
                reward(["p"], ["x"], marker=[str(marker)])
            except Exception as e:  # noqa: BLE001 - the test inspects it
                box["error"] = e

        call = threading.Thread(target=run)
        call.start()
        for _ in range(2):  # kill the first process and the restarted one, each mid-call
            os.kill(wait_for_pid(marker), signal.SIGKILL)
        call.join(timeout=120)
        assert not call.is_alive()
        assert "reward actor 'doomed' died 2 times; giving up" in str(box["error"])
        start = time.monotonic()
        with pytest.raises(RuntimeError, match="giving up"):  # later calls fail at once
            reward(["p"], ["x"], marker=[str(marker)])
        assert time.monotonic() - start < 1.0
    finally:
        reward.shutdown()


def test_a_spec_that_fails_to_load_in_the_actor_names_itself(ray_local):
    from hybrid_engine.reward_actor import ActorReward

    reward = ActorReward("no_such_reward_spec", max_restarts=0, name="bad")
    try:
        with pytest.raises(Exception, match="cannot load reward 'no_such_reward_spec'"):
            reward.health(timeout_s=120)
    finally:
        reward.shutdown()


def test_an_actor_that_cannot_be_placed_says_what_it_needs(ray_local):
    from hybrid_engine.reward_actor import ActorReward

    reward = ActorReward("math", num_cpus=64, ready_timeout_s=3, name="greedy")
    try:
        with pytest.raises(
            RuntimeError, match=r"reward actor 'greedy' did not start within 3s; it needs num_cpus=64"
        ):
            reward.wait_ready()
    finally:
        reward.shutdown()
