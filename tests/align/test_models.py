"""Tiny models: the BPE tokenizer and chat template, the presets, and vLLM agreeing with transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from align.models import (
    BYTE_OFFSET,
    CHARS,
    MERGES_OFFSET,
    PRESETS,
    SPECIAL_TOKENS,
    VOCAB_SIZE,
    build_tokenizer,
    count_parameters,
    make_tiny_model,
    read_merges,
    train_merges,
    write_merges,
)

REPO = Path(__file__).resolve().parents[2]
ARCH_SIZES = [(arch, size) for arch in ("deepseek_v2", "qwen2") for size in ("tiny", "small")]
PARAM_RANGE = {"tiny": (100_000, 2_000_000), "small": (10_000_000, 30_000_000)}


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """``model_dir(arch, size)``: the preset saved once per session."""
    built: dict[tuple[str, str], Path] = {}

    def get(arch: str, size: str) -> Path:
        if (arch, size) not in built:
            built[arch, size] = make_tiny_model(
                arch, size, tmp_path_factory.mktemp("models") / f"{arch}-{size}"
            )
        return built[arch, size]

    return get


def _chat(tok, messages: list[dict]) -> list[int]:
    """Token ids of a chat prompt that ends with the assistant header."""
    return tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]


# ----------------------------------------------------------------------------------------------
# Tokenizer and chat template


def test_tokenizer_is_byte_level_bpe_and_round_trips():
    tok = build_tokenizer()
    assert len(tok) == VOCAB_SIZE == MERGES_OFFSET + len(read_merges()) == 1024
    assert MERGES_OFFSET == len(SPECIAL_TOKENS) + 256
    # Every byte is a token of its own (id BYTE_OFFSET + b): nothing is unknown.
    assert tok.convert_ids_to_tokens([BYTE_OFFSET + ord(c) for c in "az{}"]) == list("az{}")
    text = "".join(CHARS) + "  x\n\t\t1+2=3 {}"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok("é€")["input_ids"] == [BYTE_OFFSET + b for b in "é€".encode()]  # unseen chars: their bytes
    assert tok.decode(tok("é\r€ ok")["input_ids"]) == "é\r€ ok"
    # Words of the tasks are whole tokens; digits are always one token each (arithmetic stays per digit).
    assert tok.tokenize("Sorry, I can't help with that.") == "Sorry , ĠI Ġcan 't Ġhelp Ġwith Ġthat .".split()
    assert tok("12+345=357")["input_ids"] == [BYTE_OFFSET + ord(c) for c in "12+345=357"]
    assert all(not any(c.isdigit() for c in a + b) for a, b in read_merges())
    # Special tokens are single tokens, and skipped on request.
    ids = tok("<bos><|user|>hi<eos>")["input_ids"]
    assert ids == [
        tok.bos_token_id,
        tok.convert_tokens_to_ids("<|user|>"),
        *tok("hi")["input_ids"],
        tok.eos_token_id,
    ]
    assert tok.decode(ids, skip_special_tokens=True) == "hi"
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)


def test_merges_are_fitted_deterministically_and_files_round_trip(tmp_path):
    merges = train_merges(40)
    assert merges == train_merges(40) and len(set(merges)) == 40
    assert ("Ġ", "t") in merges or ("Ġ", "a") in merges  # the commonest pairs: a space and a letter
    write_merges(merges, tmp_path / "merges.txt")
    assert read_merges(tmp_path / "merges.txt") == merges
    (tmp_path / "bad.txt").write_text("#version: 0.2\na b\nabc\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.txt:3: expected 'left right'"):
        read_merges(tmp_path / "bad.txt")


def test_chat_template_masks_assistant_content_and_eos():
    tok = build_tokenizer()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "6 ok"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == "<bos><|system|>Be brief.<|user|>2+2?<|assistant|>4<eos><|user|>3+3?<|assistant|>6 ok<eos>"
    out = tok.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask) == len(tok(text)["input_ids"])
    masked = [t for t, m in zip(ids, mask) if m]
    assert tok.decode(masked) == "4<eos>6 ok<eos>"
    # The mask is exactly the assistant content + eos after each assistant header.
    header = tok.convert_tokens_to_ids("<|assistant|>")
    expected = [0] * len(ids)
    for i, t in enumerate(ids):
        if t == header:
            j = i + 1
            while ids[j] != tok.eos_token_id:
                expected[j] = 1
                j += 1
            expected[j] = 1
    assert mask == expected


def test_chat_template_generation_prompt_and_unknown_role():
    tok = build_tokenizer()
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<bos><|user|>hi<|assistant|>"
    no_prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert no_prompt == "<bos><|user|>hi"
    with pytest.raises(Exception, match="unknown role"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


# ----------------------------------------------------------------------------------------------
# Presets and saved model dirs


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_deepseek_v2_presets_fit_vllm_cpu_and_the_paper(size):
    p = PRESETS["deepseek_v2"][size]
    assert p["kv_lora_rank"] + p["qk_rope_head_dim"] == 576  # vLLM CPU MLA kernel
    assert p["n_shared_experts"] >= 2 and p["n_routed_experts"] >= 8 and p["num_experts_per_tok"] >= 2
    assert p["first_k_dense_replace"] == 1 and p["num_hidden_layers"] >= 2
    assert p["max_position_embeddings"] >= 1024 and p["vocab_size"] == VOCAB_SIZE


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_qwen2_presets_fit_vllm_cpu(size):
    p = PRESETS["qwen2"][size]
    head_dim = p["hidden_size"] // p["num_attention_heads"]
    assert head_dim in (32, 64, 80, 96, 112, 128)  # vLLM CPU attention head sizes
    assert p["num_attention_heads"] % p["num_key_value_heads"] == 0


@pytest.mark.parametrize(("arch", "size"), ARCH_SIZES)
def test_model_dir_loads_with_transformers(model_dir, arch, size):
    path = model_dir(arch, size)
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    lo, hi = PARAM_RANGE[size]
    assert lo <= count_parameters(model) <= hi
    assert model.config.model_type == arch and model.config.vocab_size == len(tok)
    assert model.dtype == torch.float32
    gen = model.generation_config
    assert (gen.bos_token_id, gen.eos_token_id, gen.pad_token_id) == (1, 2, 0)
    assert tok.chat_template == build_tokenizer().chat_template
    # transformers 5 loads qwen2 dirs with Qwen2Tokenizer whatever the files say: same ids all the same.
    text = "<bos>a\tb\n  é.<eos>"
    assert tok(text)["input_ids"] == build_tokenizer()(text)["input_ids"]
    assert tok.decode(tok(text)["input_ids"]) == text
    ids = torch.tensor([_chat(tok, [{"role": "user", "content": "1+1="}])])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok)) and torch.isfinite(logits).all()


def test_deepseek_v2_checkpoint_has_per_expert_names(model_dir):
    from safetensors import safe_open

    path = model_dir("deepseek_v2", "tiny")
    with safe_open(path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    p = PRESETS["deepseek_v2"]["tiny"]
    for layer in range(p["first_k_dense_replace"], p["num_hidden_layers"]):
        for e in range(p["n_routed_experts"]):
            for proj in ("gate_proj", "up_proj", "down_proj"):
                assert f"model.layers.{layer}.mlp.experts.{e}.{proj}.weight" in keys
    assert not any("gate_up_proj" in k for k in keys)  # transformers' fused in-memory layout
    assert "lm_head.weight" in keys  # untied: vLLM's DeepSeek-V2 always loads its own lm_head


def test_seed_fixes_the_init(tmp_path):
    a = make_tiny_model("deepseek_v2", "tiny", tmp_path / "a", seed=0)
    b = make_tiny_model("deepseek_v2", "tiny", tmp_path / "b", seed=0)
    c = make_tiny_model("deepseek_v2", "tiny", tmp_path / "c", seed=1)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_recipe_builds_a_model(tmp_path):
    script = REPO / "recipes" / "make_tiny_model.py"
    out = tmp_path / "m"
    proc = subprocess.run(
        [sys.executable, str(script), "--arch", "qwen2", "--size", "tiny", "--out", str(out), "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "qwen2/tiny: 656,512 parameters" in proc.stdout and str(out) in proc.stdout
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()


# ----------------------------------------------------------------------------------------------
# vLLM against transformers. Each engine runs in its own subprocess, in-process there
# (VLLM_ENABLE_V1_MULTIPROCESSING=0), so engines never share the pytest process or each other.

_VLLM_GREEDY = r"""
import json, sys
from rollout.vllm_patches import patch_vllm_cpu_rope
from vllm import LLM, SamplingParams

model, prompts_file, out_file, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
TEXT = sys.argv[5]
patch_vllm_cpu_rope()  # else vLLM's CPU rope mis-rotates MLA's q_pe/k_pe (see its docstring)
llm = LLM(model=model, dtype="float32", enforce_eager=True, seed=0, max_model_len=256,
          kv_cache_memory_bytes=256 << 20)
# min_tokens masks eos as HF's min_new_tokens does; logprobs are the raw model's.
params = SamplingParams(temperature=0.0, max_tokens=n, min_tokens=n, logprobs=0)
outs = llm.generate([{"prompt_token_ids": p} for p in json.load(open(prompts_file))], params, use_tqdm=False)
tok = llm.get_tokenizer()
json.dump({
    "outputs": [{"ids": list(o.outputs[0].token_ids), "text": o.outputs[0].text,
                 "logprobs": [lp[t].logprob for lp, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)]}
                for o in outs],
    "tokenizer": {"class": type(tok).__name__, "ids": tok.encode(TEXT, add_special_tokens=False),
                  "decoded": tok.decode(tok.encode(TEXT, add_special_tokens=False))},
}, open(out_file, "w"))
"""

_ROPE_PATCH = r"""
import torch
from vllm.config import VllmConfig, set_current_vllm_config
from vllm.model_executor.layers.rotary_embedding import get_rope
from rollout.vllm_patches import patch_vllm_cpu_rope

patch_vllm_cpu_rope()
with set_current_vllm_config(VllmConfig()):
    rope = get_rope(64, max_position=2048, is_neox_style=False,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, dtype=torch.float32)
T, H = 9, 3
pos = torch.arange(T)
q = torch.randn(T, H, 32 + 64)  # MLA: rope on the last 64 dims of each head
kv = torch.randn(T, 512 + 64)  # k_pe is the last 64 dims of kv_a_proj_with_mqa's output
q_ref, k_ref = rope.forward_native(pos, q[..., 32:].clone(), kv[:, 512:].unsqueeze(1).clone())
q_out, k_out = rope.forward_cpu(pos, q[..., 32:], kv[:, 512:].unsqueeze(1))
torch.testing.assert_close(q_out, q_ref)
torch.testing.assert_close(k_out, k_ref)
print("ok")
"""


def _run_vllm(log: Path, code: str, *args: str, timeout: int = 600) -> str:
    """Run ``code`` in a fresh Python with an in-process vLLM engine; its output (also in ``log``)."""
    env = dict(os.environ)
    env.update(
        VLLM_ENABLE_V1_MULTIPROCESSING="0",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    with log.open("w") as out:  # a file, not a pipe: vLLM logs a lot
        proc = subprocess.run(
            [sys.executable, "-c", code, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
            timeout=timeout,
        )
    output = log.read_text()
    assert proc.returncode == 0, output[-8000:]
    return output


@pytest.mark.slow
def test_vllm_cpu_rope_patch_rotates_strided_3d_inputs(tmp_path):
    assert _run_vllm(tmp_path / "rope.log", _ROPE_PATCH).strip().endswith("ok")


NEW_TOKENS = 32
NEAR_TIE = 1e-4  # a logprob gap below this is a tie at float32 precision (measured diffs: <2e-6)


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "size"), ARCH_SIZES)
def test_vllm_greedy_matches_transformers(model_dir, tmp_path, arch, size):
    path = model_dir(arch, size)
    tok = AutoTokenizer.from_pretrained(path)
    prompts = [
        _chat(tok, [{"role": "user", "content": "What is 12+7?"}]),
        _chat(
            tok,
            [
                {"role": "system", "content": "Answer in words."},
                {"role": "user", "content": "Name a colour."},
            ],
        ),
        tok("The quick brown fox jumps over the lazy dog, twice.")["input_ids"],
        tok("def f(x):\n\treturn x * 2\n")["input_ids"],
        [tok.bos_token_id, *tok("#")["input_ids"]],
    ]
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    text = "<bos><|user|>a\tb\n  é.<eos>"
    _run_vllm(
        tmp_path / "vllm.log",
        _VLLM_GREEDY,
        str(path),
        str(tmp_path / "prompts.json"),
        str(tmp_path / "out.json"),
        str(NEW_TOKENS),
        text,
    )
    result = json.loads((tmp_path / "out.json").read_text())
    # vLLM loads a tokenizer that encodes and decodes as ours does.
    assert result["tokenizer"]["ids"] == tok(text)["input_ids"], result["tokenizer"]["class"]
    assert result["tokenizer"]["decoded"] == text

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ties = []
    for i, (prompt, v) in enumerate(zip(prompts, result["outputs"])):
        hf = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
        hf_ids = hf.sequences[0, len(prompt) :].tolist()
        hf_logp = torch.stack(hf.logits, 1)[0].float().log_softmax(-1)  # raw logits, [new_tokens, vocab]
        assert len(v["ids"]) == len(hf_ids) == NEW_TOKENS
        decoded = tok.decode(v["ids"], skip_special_tokens=True)
        if "\ufffd" not in decoded:  # random bytes are often invalid UTF-8, which streams differently
            assert v["text"] == decoded
        # Tokens agree up to the first difference; the logprobs of the agreeing tokens agree too.
        k = next((t for t, (a, b) in enumerate(zip(v["ids"], hf_ids)) if a != b), NEW_TOKENS)
        hf_lp = hf_logp[torch.arange(k), torch.tensor(hf_ids[:k], dtype=torch.long)]
        torch.testing.assert_close(torch.tensor(v["logprobs"][:k]), hf_lp, atol=1e-4, rtol=0)
        if k < NEW_TOKENS:
            # Greedy paths may only part where the two best tokens tie at float precision.
            gap = (hf_logp[k, hf_ids[k]] - hf_logp[k, v["ids"][k]]).item()
            assert gap < NEAR_TIE, f"prompt {i}: vLLM and HF differ at token {k} (HF logprob gap {gap:.2e})"
            ties.append((i, k, gap))
    print(f"{arch}/{size}: near-tie divergences (prompt, position, gap): {ties or 'none'}")
