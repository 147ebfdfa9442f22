"""Reward-model directories and reward servers: rewards.load(DIR), python -m rewards.serve, the client."""

from __future__ import annotations

import http.client
import json
import math
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import rewards
from rewards import RewardSpecError
from rewards.reward_model import CARD, RewardModel, encode
from rewards.serve import RemoteReward, RewardServerError, make_server

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["What is 2+3?", "Name a color.", "Spell 'cat' backwards.", "Hi", "How many legs does a cat have?"]
COMPLETIONS = [
    "2+3=5. \\boxed{5}",
    "Blue.",
    "'cat' backwards is 'tac'.",
    "Hello! How can I help you today?",
    "4",
]


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory) -> Path:
    """A run dir whose final/ holds a tiny random DeepSeek-V2 reward model, as the recipe writes it."""
    from transformers import AutoModelForSequenceClassification

    from align.models import build_config, build_tokenizer

    run = tmp_path_factory.mktemp("rm_run")
    final = run / "final"
    config = build_config("deepseek_v2", "tiny")
    config.num_labels = 1
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    with torch.no_grad():  # a visible spread of scores (the random head is near zero)
        model.score.weight.mul_(50)
    model.save_pretrained(final)
    build_tokenizer().save_pretrained(final)
    (final / CARD).write_text(json.dumps({"format": "chat", "max_length": 128, "truncation_side": "left"}))
    return run


@pytest.fixture(scope="module")
def reward(rm_dir) -> RewardModel:
    return rewards.load(str(rm_dir), batch_size=4)


# ----------------------------------------------------------------------------------------------
# Reward-model directories


def test_load_finds_final_and_formats_with_the_chat_template(rm_dir, reward):
    assert isinstance(reward, RewardModel) and reward.path == rm_dir / "final"
    assert (reward.format, reward.max_length, reward.batch_size) == ("chat", 128, 4)
    ids = encode(reward.tokenizer, "What is 2+3?", "5")
    assert reward.tokenizer.decode(ids) == "<bos><|user|>What is 2+3?<|assistant|>5<eos>"
    # A conversational prompt and completion (TRL's other form) give the same input.
    messages = encode(
        reward.tokenizer,
        [{"role": "user", "content": "What is 2+3?"}],
        [{"role": "assistant", "content": "5"}],
    )
    assert messages == ids
    direct = rewards.load(str(rm_dir / "final"))  # the model dir itself works too
    assert direct(["What is 2+3?"], ["5"]) == pytest.approx(reward(["What is 2+3?"], ["5"]), abs=1e-5)


def test_batched_scores_equal_one_by_one(reward):
    batched = reward(PROMPTS, COMPLETIONS)
    single = [reward([p], [c])[0] for p, c in zip(PROMPTS, COMPLETIONS)]
    assert len(batched) == len(PROMPTS) and all(isinstance(v, float) for v in batched)
    assert batched == pytest.approx(single, abs=1e-4)
    assert max(batched) - min(batched) > 1e-3  # not a constant
    # the score is the model's output on the formatted input, read at its last token
    ids = torch.tensor([encode(reward.tokenizer, PROMPTS[1], COMPLETIONS[1])])
    with torch.no_grad():
        direct = reward.model(input_ids=ids).logits[0, 0].item()
    assert batched[1] == pytest.approx(direct, abs=1e-4)


def test_long_inputs_are_truncated_from_the_left_and_counted(rm_dir):
    rm = rewards.load(str(rm_dir), max_length=16)
    before = rm.n_truncated
    long_completion = "x" * 40
    value = rm(["q"], [long_completion])[0]
    assert rm.n_truncated == before + 1
    ids = encode(rm.tokenizer, "q", long_completion)
    assert value == pytest.approx(rm.score_ids([ids[-16:]])[0], abs=1e-5)  # the end is what is scored
    assert rm(["q"], ["short"]) and rm.n_truncated == before + 1


def test_bad_reward_model_dirs_say_why(tmp_path, rm_dir):
    with pytest.raises(RewardSpecError, match="not a reward model: no config.json"):
        rewards.load(str(tmp_path))
    causal = tmp_path / "causal"
    causal.mkdir()
    cfg = json.loads((rm_dir / "final" / "config.json").read_text())
    cfg["architectures"] = ["DeepseekV2ForCausalLM"]
    (causal / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RewardSpecError, match="not a sequence-classification reward model"):
        rewards.load(str(causal))
    with pytest.raises(RewardSpecError, match="bad options"):
        rewards.load(str(rm_dir), batchsize=3)


# ----------------------------------------------------------------------------------------------
# The reward server and its client


@pytest.fixture(scope="module")
def server(reward):
    srv = make_server(reward, port=0, max_body_bytes=4096)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _post(server, body: bytes, path: str = "/score") -> tuple[int, dict]:
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_server_scores_equal_the_in_process_reward(server, reward):
    assert server.server_address[0] == "127.0.0.1"  # loopback by default
    url = f"http://127.0.0.1:{server.server_address[1]}"
    client = rewards.load(url)
    assert isinstance(client, RemoteReward) and client.score_url == url + "/score"
    assert client.health() == {"status": "ok", "reward": "reward_model"}
    assert client(PROMPTS, COMPLETIONS) == pytest.approx(reward(PROMPTS, COMPLETIONS), abs=1e-5)
    # TRL passes per-sample columns and other keywords (trainer_state): only the columns travel
    assert len(client(PROMPTS[:2], COMPLETIONS[:2], answer=["5", "x"], trainer_state=object())) == 2


def test_server_rejects_big_and_malformed_bodies(server):
    status, answer = _post(server, json.dumps({"prompts": ["p" * 5000], "completions": ["c"]}).encode())
    assert status == 413 and "over the limit of 4,096" in answer["error"]
    status, answer = _post(server, b'{"prompts": ["p"], "completions": ')
    assert status == 400 and answer["error"].startswith("malformed JSON")
    status, answer = _post(server, json.dumps({"prompts": ["p"], "completions": ["a", "b"]}).encode())
    assert status == 400 and "1 prompts for 2 completions" in answer["error"]
    status, answer = _post(
        server, json.dumps({"prompts": ["p"], "completions": ["a"], "columns": {"x": 1}}).encode()
    )
    assert status == 400 and "column 'x'" in answer["error"]
    status, _ = _post(server, b"{}", path="/other")
    assert status == 404
    assert (
        _post(server, json.dumps({"prompts": ["p"], "completions": ["a"]}).encode())[0] == 200
    )  # still serving


def test_client_errors_raise_and_combine_counts_them(server, tmp_path):
    url = f"http://127.0.0.1:{server.server_address[1]}"
    with pytest.raises(RewardServerError, match="HTTP 413"):
        rewards.load(url)(["p" * 5000], ["c"])
    down = rewards.load(f"http://127.0.0.1:{free_port()}", timeout_s=5)  # nothing listens there
    with pytest.raises(RewardServerError, match="cannot reach it"):
        down(["p"], ["c"])
    total = rewards.combine({"remote": (down, 1.0)}, timeout_s=10, min_samples=100)
    assert total(["p", "q"], ["a", "b"]) == [None, None]
    assert total.last.metrics["reward/remote/error_frac"] == 1.0
    with pytest.raises(ValueError, match="http"):
        RemoteReward("ftp://x")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_passes_columns_to_the_reward(tmp_path):
    src = tmp_path / "echo.py"
    src.write_text(
        "def echo(prompts, completions, answer, **kw):\n"
        "    return [float(a == c) if a is not None else None for a, c in zip(answer, completions)]\n"
    )
    srv = make_server(f"{src}:echo", port=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        client = rewards.load(f"http://127.0.0.1:{srv.server_address[1]}")
        assert client(["p", "q", "r"], ["1", "2", "3"], answer=["1", "5", None]) == [1.0, 0.0, None]
    finally:
        srv.shutdown()
        srv.server_close()


def test_non_loopback_bind_needs_allow_remote():
    with pytest.raises(PermissionError, match="--allow-remote"):
        make_server(lambda prompts, completions, **kw: [0.0] * len(completions), host="0.0.0.0")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "rewards.serve", "length", "--host", "0.0.0.0", "--port", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "refusing to bind" in proc.stderr


def test_serve_cli_in_a_subprocess(rm_dir, reward):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rewards.serve", str(rm_dir), "--port", "0", "-o", "batch_size=2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "serving" in line, line + (proc.stderr.read() if proc.poll() is not None else "")
        url = line.split(" on ")[-1].strip()
        assert url.startswith("http://127.0.0.1:")
        values = rewards.load(url, timeout_s=60)(PROMPTS, COMPLETIONS)
        assert values == pytest.approx(reward(PROMPTS, COMPLETIONS), abs=1e-4)
        assert all(math.isfinite(v) for v in values)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
