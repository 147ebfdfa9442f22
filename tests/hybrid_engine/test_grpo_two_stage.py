"""recipes/grpo_two_stage.py for real: two stages (verifiers, then reward models + rules) on a local
Ray with a vLLM engine; killed with SIGKILL in the middle of stage 1 and resumed, matching an
uninterrupted run; and submitted with ``ray job submit`` to a ``ray start`` cluster."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "grpo_two_stage.py"
YAML = ROOT / "recipes" / "configs" / "tiny" / "grpo_two_stage.yaml"
STAGE1_STEPS, STAGE2_STEPS = 4, 2


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, untrained_rm) -> dict[str, Path]:
    """A tiny DeepSeek-V2, an (untrained) reward model made from it, and small synthetic tasks."""
    from align.models import make_tiny_model
    from recipes import make_data

    base = tmp_path_factory.mktemp("two_stage")
    model = Path(make_tiny_model("deepseek_v2", "tiny", base / "model", seed=0))
    untrained_rm(model, base / "rm")
    data = base / "data"
    sizes = {"math": (64, 4), "code": (16, 2), "helpful": (8, 2), "safety": (8, 4), "chat": (32, 4)}
    args = [f"output_dir={data}", "math.levels=[1]"]
    for task, (train, held_out) in sizes.items():
        args += [f"{task}.train_size={train}", f"{task}.eval_size={held_out}"]
    assert make_data.main(["--config", str(ROOT / "recipes/configs/tiny/data.yaml"), *args]) == 0
    return {"model": model, "rm": base / "rm", "data": data}


def write_config(inputs: dict[str, Path], out: Path, path: Path) -> Path:
    """The demo config, shrunk: CPU-sized actors, 4 + 2 steps of 4 prompts x 4, a checkpoint every
    2 steps, evaluation on 2 prompts per task."""
    cfg = yaml.safe_load(YAML.read_text())
    data = inputs["data"]
    cfg["output_dir"] = str(out)
    cfg["model"]["path"] = str(inputs["model"])
    cfg["rollout"].update(cpus_per_worker=0.25, kv_cache_gib=0.25, max_tokens=24)
    cfg["trainer"].update(cpus_per_worker=0.25, lr=1e-3)
    cfg["grpo"].update(prompts_per_step=4, group_size=4)
    s1, s2 = cfg["stages"]
    s1["data"]["train"] = [str(data / "math/train.jsonl"), str(data / "code/train.jsonl")]
    s1["steps"] = STAGE1_STEPS
    # A length rule as well, so that stage 1 trains even when the random model solves nothing. Its
    # random 24-token completions are ~50-100 chars (BPE tokens of 1-8 chars, EOS rare): over 64
    # chars the penalty grows with the length, so the rewards of a group differ.
    s1["rewards"]["rule"] = {
        "spec": "rule",
        "weight": 0.5,
        "options": {"weights": {"length": 1.0}, "length": {"min_chars": 1, "max_chars": 64}},
    }
    s2["data"]["train"] = [str(data / "chat/train.jsonl")]
    s2["rewards"]["helpful"]["spec"] = s2["rewards"]["safety"]["spec"] = str(inputs["rm"])
    s2["rewards"]["rule"]["options"]["lexicon"]["path"] = str(data / "lexicon.txt")
    s2["steps"] = STAGE2_STEPS
    s2["reset_reference"] = True  # the KL reference restarts from stage 1's policy (and is checkpointed)
    cfg["checkpoint"].update(every_steps=2, keep=2)
    cfg["eval"].update(
        data_dir=str(data), helpful_rm=str(inputs["rm"]), safety_rm=str(inputs["rm"]), limit=2, max_tokens=24
    )
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    return env


def run_recipe(config_path: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(RECIPE), "--config", str(config_path)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def check_finished_run(out: Path) -> None:
    """Both stages ran, the evaluations and the report exist, final/ loads."""
    recs = records(out)
    assert [r["step"] for r in recs] == list(range(1, STAGE1_STEPS + STAGE2_STEPS + 1))
    assert [r["stage"] for r in recs] == ["reasoning"] * STAGE1_STEPS + ["preference"] * STAGE2_STEPS
    # Stage 1 mixes math and code prompts: each verifier scores its own rows (None elsewhere).
    stage1, stage2 = recs[:STAGE1_STEPS], recs[STAGE1_STEPS:]
    assert all(f"reward/{k}/error_frac" in r for r in stage1 for k in ("math", "code"))
    assert any("reward/math/mean" in r for r in stage1) and any("reward/code/mean" in r for r in stage1)
    assert all(f"reward/{k}/mean" in r for r in stage2 for k in ("helpful", "safety", "rule"))
    # stage 2's math check scores the chat data's math prompts (None on the others); no code rewards
    assert all("reward/math/error_frac" in r for r in stage2)
    assert not any(f"reward/{k}/error_frac" in r for r in stage2 for k in ("code", "code_name"))
    # reset_reference: stage 2's KL restarts from its own start (stage 1 had moved away from the first)
    assert stage1[-1]["train/kl"] > 1e-5 and abs(stage2[0]["train/kl"]) < 1e-6, (stage1[-1], stage2[0])
    keys = {"math_acc", "code_pass", "helpful_rm", "safety_rm", "unsafe_refusal_rate", "benign_refusal_rate"}
    for label in ("sft", "stage1", "stage2"):
        assert keys <= set(json.loads((out / "eval" / f"{label}.json").read_text()))
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert {"sft", "stage1", "stage2"} <= set(summary)
    assert (out / "report" / "rewards.png").stat().st_size > 1000
    assert (out / "report" / "summary.md").is_file()
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    last = f"step_{STAGE1_STEPS + STAGE2_STEPS:06d}"
    assert ckpts == ["LATEST", f"step_{STAGE1_STEPS:06d}", last]  # keep: 2
    assert (out / "checkpoints" / "LATEST").read_text().strip() == last

    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out / "final")


@pytest.fixture(scope="module")
def uninterrupted(inputs, tmp_path_factory) -> Path:
    """The reference: the shrunk demo run, start to finish without a fault."""
    base = tmp_path_factory.mktemp("uninterrupted")
    proc = run_recipe(write_config(inputs, base / "run", base / "run.yaml"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "grpo: done" in proc.stdout
    check_finished_run(base / "run")
    return base / "run"


@pytest.mark.parametrize(
    ("kill_after", "latest", "where"),
    [
        ("step 3 [reasoning]", "step_000002", "mid stage 1: after the step-2 checkpoint"),
        ("step 5 [preference]", "step_000004", "mid stage 2: resumes from the stage-1 end"),
    ],
)
def test_sigkill_and_resume_matches_an_uninterrupted_run(
    inputs, uninterrupted, tmp_path, kill_after, latest, where
):
    out = tmp_path / "killed"
    cfg = write_config(inputs, out, tmp_path / "run.yaml")
    killed = _start(cfg)
    try:
        _read_until(killed, kill_after)
    finally:
        os.killpg(killed.pid, signal.SIGKILL)  # the driver and everything it started
        killed.wait(timeout=60)
    assert (out / "checkpoints" / "LATEST").read_text().strip() == latest, where
    _resume_and_compare(cfg, out, uninterrupted, latest)


def test_sigkill_at_a_random_moment_and_resume_matches_an_uninterrupted_run(inputs, uninterrupted, tmp_path):
    """The kill lands at a random step and a random moment inside it (generation, update, weight
    sync, evaluation or a checkpoint write). ALIGN_KILL_SEED=N replays a failure's draw."""
    seed = int(os.environ.get("ALIGN_KILL_SEED") or random.SystemRandom().randrange(2**31))
    rng = random.Random(seed)
    step = rng.randint(1, STAGE1_STEPS + STAGE2_STEPS - 1)
    stage = "reasoning" if step <= STAGE1_STEPS else "preference"
    delay = rng.uniform(0.0, 1.5)
    where = f"ALIGN_KILL_SEED={seed}: killed {delay:.2f} s after step {step} [{stage}]"
    print(where)
    out = tmp_path / "killed"
    cfg = write_config(inputs, out, tmp_path / "run.yaml")
    killed = _start(cfg)
    try:
        _read_until(killed, f"step {step} [{stage}]")
        time.sleep(delay)
        assert killed.poll() is None, f"{where}: the run ended before the kill"
    finally:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait(timeout=60)
    _resume_and_compare(cfg, out, uninterrupted, checkpoint_latest(out / "checkpoints"), where)


def _resume_and_compare(
    cfg: Path, out: Path, uninterrupted: Path, latest: str | None, where: str = ""
) -> None:
    """Run ``cfg`` again after a kill: it resumes from ``latest`` (or starts over when no checkpoint
    was published) and ends with the uninterrupted run's per-step figures and final weights."""
    proc = run_recipe(cfg)
    assert proc.returncode == 0, where + proc.stdout[-3000:] + proc.stderr[-5000:]
    if latest is None:
        assert "grpo: resuming" not in proc.stdout, where
        step = 0
    else:
        step = int(latest.removeprefix("step_"))
        assert f"grpo: resuming from {out / 'checkpoints' / latest} (step {step}," in proc.stdout, where
    check_finished_run(out)
    ref, got = records(uninterrupted), records(out)
    assert [r["data_indices"] for r in got] == [r["data_indices"] for r in ref], where
    assert [r["train/lr"] for r in got] == [r["train/lr"] for r in ref], where
    # Fixed seeds: sampling is seeded per step, and weights, AdamW moments and the schedule are
    # restored exactly, so the resumed run samples, scores and updates as the uninterrupted one.
    assert step == 0 or any(r["train/grad_norm"] > 0 for r in ref[:step]), (
        "the steps before the kill must train"
    )
    for key in ("reward/mean", "completion/length_mean", "train/grad_norm", "train/kl"):
        assert [g[key] for g in got] == [r[key] for r in ref], f"{where} {key}"

    from transformers import AutoModelForCausalLM

    want = AutoModelForCausalLM.from_pretrained(uninterrupted / "final").state_dict()
    have = AutoModelForCausalLM.from_pretrained(out / "final").state_dict()
    assert all(torch_equal(want[k], have[k]) for k in want), where


def test_sigkill_during_a_checkpoint_write_never_loads_the_half_written_one(inputs, uninterrupted, tmp_path):
    out = tmp_path / "killed"
    cfg = write_config(inputs, out, tmp_path / "run.yaml")
    proc = _start(cfg)
    ckpts = out / "checkpoints"
    caught = None
    try:
        deadline = time.monotonic() + 600
        while caught is None and proc.poll() is None and time.monotonic() < deadline:
            partial = [p for p in ckpts.glob("step_*.tmp")] if ckpts.is_dir() else []
            if partial:
                os.killpg(proc.pid, signal.SIGKILL)  # mid-write: the directory is still *.tmp
                caught = partial[0].name
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert caught is not None, "no checkpoint write was caught in progress"
    step = int(caught.removeprefix("step_").removesuffix(".tmp"))
    latest = checkpoint_latest(ckpts)
    assert latest is None or int(latest.removeprefix("step_")) < step  # the torn one is not published

    done = run_recipe(cfg)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    check_finished_run(out)
    assert not list(ckpts.glob("*.tmp"))
    ref, got = records(uninterrupted), records(out)
    for key in ("data_indices", "reward/mean", "train/grad_norm"):
        assert [g[key] for g in got] == [r[key] for r in ref], key


def checkpoint_latest(root: Path) -> str | None:
    marker = root / "LATEST"
    return marker.read_text().strip() if marker.is_file() else None


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


def _actor_pids(session: int, name: str) -> list[int]:
    """PIDs of the Ray actor processes ``ray::<name>...`` a recipe run (its own session) started."""
    import psutil

    pids = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if (p.info["cmdline"] or [""])[0].startswith(f"ray::{name}") and os.getsid(p.pid) == session:
                pids.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return pids


def _start(cfg: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(RECIPE), "--config", str(cfg)],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _read_until(proc: subprocess.Popen, prefix: str) -> list[str]:
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(prefix):
            return seen
    raise AssertionError(f"the run ended before {prefix!r}:\n" + "".join(seen[-50:]))


def test_a_killed_rollout_engine_is_restarted_and_the_step_retried(inputs, tmp_path):
    out = tmp_path / "run"
    proc = _start(write_config(inputs, out, tmp_path / "run.yaml"))
    try:
        _read_until(proc, "step 2 [reasoning]")
        engines = _actor_pids(proc.pid, "RolloutWorker")
        assert len(engines) == 1, engines
        os.kill(engines[0], signal.SIGKILL)
        rest = proc.stdout.read()
        assert proc.wait(timeout=600) == 0, rest[-5000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "a rollout engine died" in rest
    check_finished_run(out)
    assert sum(r["rollout/restarts"] for r in records(out)) >= 1
    # the retried step generated with the trained weights, not model.path's
    diffs = [r["train/rollout_logp_abs_diff"] for r in records(out) if "train/rollout_logp_abs_diff" in r]
    assert len(diffs) == STAGE1_STEPS + STAGE2_STEPS and max(diffs) < 1e-3, diffs


def test_a_killed_reward_model_actor_is_restarted_and_no_sample_is_lost(inputs, tmp_path):
    out = tmp_path / "run"
    proc = _start(write_config(inputs, out, tmp_path / "run.yaml"))
    try:
        _read_until(proc, f"step {STAGE1_STEPS + 1} [preference]")
        actors = _actor_pids(proc.pid, "RewardActor")
        assert len(actors) == 2, actors  # helpful and safety, each in its own actor
        os.kill(actors[0], signal.SIGKILL)
        deadline = time.monotonic() + 120
        while len(_actor_pids(proc.pid, "RewardActor")) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)  # Ray restarts it
        restarted = set(_actor_pids(proc.pid, "RewardActor"))
        rest = proc.stdout.read()
        assert proc.wait(timeout=600) == 0, rest[-5000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert len(restarted) == 2 and actors[0] not in restarted and actors[1] in restarted, (actors, restarted)
    check_finished_run(out)
    stage2 = records(out)[STAGE1_STEPS:]
    # every sample scored by both reward models: the retry lost nothing. The demo config scores the
    # safety RM on the safety-relevant rows only (skip_rows): None on exactly the skipped ones.
    skip = yaml.safe_load(YAML.read_text())["stages"][1]["rewards"]["safety"]["skip_rows"]
    chat = [json.loads(line) for line in (inputs["data"] / "chat/train.jsonl").read_text().splitlines()]
    for r in stage2:
        used = [chat[i] for i in r["data_indices"]]
        skipped = sum(any(row[c] in v for c, v in skip.items()) for row in used) / len(used)
        assert r["reward/safety/none_frac"] == pytest.approx(skipped), r
        assert r["reward/helpful/none_frac"] == 0, r
        assert r["reward/helpful/error_frac"] == 0 and r["reward/safety/error_frac"] == 0, r
    # the kill lands before or during step 6's scoring: a call in flight is retried (and counted)
    retried = max(
        r.get("reward/helpful/actor_restarts", 0) + r.get("reward/safety/actor_restarts", 0) for r in stage2
    )
    assert retried == ("grpo: reward actor" in rest), rest[-3000:]


def test_a_killed_trainer_rank_stops_the_run_cleanly_and_it_resumes(inputs, tmp_path):
    out = tmp_path / "run"
    cfg = write_config(inputs, out, tmp_path / "run.yaml")
    proc = _start(cfg)
    try:
        _read_until(proc, "step 3 [reasoning]")
        ranks = _actor_pids(proc.pid, "TrainerWorker")
        assert len(ranks) == 2, ranks
        os.kill(ranks[1], signal.SIGKILL)
        rest = proc.stdout.read()
        assert proc.wait(timeout=300) == 4, rest[-5000:]  # bounded: no hang in a collective
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "grpo: stopped: trainer rank" in rest and "died during" in rest
    assert f"run the same command to resume from {out / 'checkpoints' / 'step_000002'}" in rest
    done = run_recipe(cfg)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "grpo: resuming from" in done.stdout
    check_finished_run(out)


def test_lora_grpo_trains_only_the_adapters_and_the_engine_gets_merged_weights(inputs, tmp_path):
    out = tmp_path / "lora"
    path = write_config(inputs, out, tmp_path / "lora.yaml")
    cfg = yaml.safe_load(path.read_text())
    cfg["stages"] = cfg["stages"][:1]
    cfg["stages"][0]["steps"] = 3
    cfg["model"]["lora"] = {"r": 4, "alpha": 8}
    cfg["eval"]["enabled"] = False
    cfg["trainer"]["lr"] = 1e-2
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = run_recipe(path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    recs = records(out)
    assert [r["step"] for r in recs] == [1, 2, 3] and any(r["train/grad_norm"] > 0 for r in recs)
    # The engine samples from base + merged adapters: its log-probs are the trainer's.
    assert max(r["train/rollout_logp_abs_diff"] for r in recs) < 1e-3

    from transformers import AutoModelForCausalLM

    start = AutoModelForCausalLM.from_pretrained(inputs["model"]).state_dict()
    final = AutoModelForCausalLM.from_pretrained(out / "final").state_dict()
    assert set(final) == set(start)  # merged: plain base-model names, no lora_A/lora_B
    targets = ("q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")
    changed = {n for n in start if not torch_equal(start[n], final[n])}
    assert changed and all(n.split(".")[-2] in targets for n in changed), sorted(changed)


def test_sigterm_stops_the_run_and_leaves_no_ray_process_behind(inputs, tmp_path):
    import psutil

    proc = _start(write_config(inputs, tmp_path / "run", tmp_path / "run.yaml"))
    try:
        _read_until(proc, "step 1 [reasoning]")
        assert _actor_pids(proc.pid, "TrainerWorker")
        os.kill(proc.pid, signal.SIGTERM)  # the driver only, as `kill PID` does
        proc.stdout.read()
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 60
        while True:
            left = []
            for p in psutil.process_iter(["pid", "cmdline"]):
                try:
                    if os.getsid(p.pid) == proc.pid:
                        left.append(" ".join(p.info["cmdline"] or [])[:80])
                except (ProcessLookupError, psutil.Error):
                    continue
            if not left or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert not left, left
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


FAULTY = Path(__file__).with_name("_faulty_rewards.py")


def _one_reward_stage1(cfg_path: Path, fn: str, max_error_frac: float) -> None:
    cfg = yaml.safe_load(cfg_path.read_text())
    s1 = cfg["stages"][0]
    s1["rewards"] = {"faulty": {"spec": f"{FAULTY}:{fn}", "weight": 1.0}}
    s1.update(reward_timeout_s=2.0, reward_max_error_frac=max_error_frac)
    cfg["eval"]["enabled"] = False
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def test_reward_faults_are_counted_and_too_many_stop_the_run_after_a_checkpoint(inputs, tmp_path):
    # 10% raise, 5% NaN, 5% hang: the run completes and the metrics show the fractions.
    out = tmp_path / "flaky"
    cfg = write_config(inputs, out, tmp_path / "flaky.yaml")
    _one_reward_stage1(cfg, "flaky", max_error_frac=0.5)
    proc = run_recipe(cfg)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    stage1 = records(out)[:STAGE1_STEPS]
    n = 4 * 4 * STAGE1_STEPS
    errors = sum(r["reward/faulty/error_frac"] for r in stage1) * 16 / n
    timeouts = sum(r["reward/faulty/timeout_frac"] for r in stage1) * 16 / n
    assert 0.03 <= errors <= 0.35 and 0 < timeouts <= 0.15, (errors, timeouts)
    assert len(records(out)) == STAGE1_STEPS + STAGE2_STEPS

    # A reward failing past the threshold: a clear message, a checkpoint, exit status 3; resumable.
    out = tmp_path / "broken"
    cfg = write_config(inputs, out, tmp_path / "broken.yaml")
    _one_reward_stage1(cfg, "broken", max_error_frac=0.5)
    proc = run_recipe(cfg)
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "grpo: stopped in step 1 (stage 'reasoning'): reward 'faulty' failed on 16" in proc.stderr
    assert "broken reward: always fails" in proc.stderr
    assert f"the run is saved in {out / 'checkpoints' / 'step_000000'}" in proc.stderr
    state = json.loads((out / "checkpoints" / "step_000000" / "state.json").read_text())
    assert state["step"] == 0 and state["stage_step"] == 0 and state["consumed"] == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_job_submit_to_a_running_cluster(inputs, tmp_path):
    ray_bin = str(Path(sys.executable).parent / "ray")
    # `ray start` turns token authentication on (Ray 2.5x); the jobs CLI sends the token only when told.
    env = {**_env(), "RAY_AUTH_MODE": "token"}
    dashboard, gcs = _free_port(), _free_port()
    head = subprocess.Popen(
        [
            ray_bin,
            "start",
            "--head",
            "--block",
            f"--port={gcs}",
            "--num-cpus=2",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=5).read()
                break
            except urllib.error.HTTPError:  # 401 without the token: the server is up
                break
            except OSError:
                assert head.poll() is None, "ray start exited"
                assert time.monotonic() < deadline, "the Ray dashboard did not come up"
                time.sleep(2)
        out = tmp_path / "job"
        cfg = write_config(inputs, out, tmp_path / "job.yaml")
        proc = subprocess.run(
            [ray_bin, "job", "submit", "--address", address, "--working-dir", str(ROOT), "--"]
            + ["python", "recipes/grpo_two_stage.py", "--config", str(cfg)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0 and "succeeded" in proc.stdout, proc.stdout[-5000:] + proc.stderr[-3000:]
        assert "grpo: done" in proc.stdout
        check_finished_run(out)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        # `ray start` records the cluster for `ray.init()` to find; unlike `ray stop` (which would
        # stop every Ray on the machine), a signal leaves the record behind.
        current = Path("/tmp/ray/ray_current_cluster")
        if current.is_file() and current.read_text().strip().endswith(f":{gcs}"):
            current.unlink()
