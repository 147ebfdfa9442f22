"""Tiny models built from a config, with no downloads: a character-level tokenizer and toy-scale
DeepSeek-V2 (MLA + DeepSeekMoE) and Qwen2 presets, saved as HF model dirs that transformers and
vLLM both load.

Usage::

    from align.models import make_tiny_model
    path = make_tiny_model("deepseek_v2", "tiny", "out/tiny-dsv2")
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    import transformers

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, *ROLE_TOKENS.values()]  # ids 0..6, in this order
BYTE_OFFSET = len(SPECIAL_TOKENS)  # byte b has id BYTE_OFFSET + b
VOCAB_SIZE = BYTE_OFFSET + 256  # 263
# The chars the demo's text is made of; each is one byte, so one token.
CHARS = [chr(c) for c in range(32, 127)] + ["\n", "\t"]


def _byte_symbols() -> list[str]:
    """GPT-2's byte-to-unicode table in byte order: the token strings of byte-level BPE vocabularies."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    symbols, extra = {}, 0
    for b in range(256):
        if b in printable:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


# Each assistant turn is `<|assistant|>content<eos>`; content + eos are the trained tokens.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}"
    "<|assistant|>{% generation %}{{ m['content'] }}{{ eos_token }}{% endgeneration %}"
    "{% elif m['role'] in ['system', 'user'] %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% else %}{{ raise_exception('unknown role: ' + m['role']) }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# Shared by every DeepSeek-V2 preset. vLLM's CPU MLA kernel needs kv_lora_rank + qk_rope_head_dim
# == 576 (the paper's 512 + 64). Routing is plain softmax top-k without renormalisation or scaling,
# the setting on which transformers' "greedy" router and vLLM's fused MoE compute the same thing.
_DSV2_COMMON: dict[str, Any] = {
    "kv_lora_rank": 512,
    "qk_rope_head_dim": 64,
    "q_lora_rank": None,  # as DeepSeek-V2-Lite: a plain q_proj (LoRA configs target it)
    "first_k_dense_replace": 1,
    "n_shared_experts": 2,
    "topk_method": "greedy",
    "n_group": 1,
    "topk_group": 1,
    "norm_topk_prob": False,
    "routed_scaling_factor": 1.0,
    "hidden_act": "silu",
}
_COMMON: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "max_position_embeddings": 2048,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    # vLLM's DeepSeek-V2 always has its own lm_head; untied everywhere keeps checkpoints uniform.
    "tie_word_embeddings": False,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "deepseek_v2": {
        # 0.37M params: tests.
        "tiny": {
            **_COMMON,
            **_DSV2_COMMON,
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "qk_nope_head_dim": 32,
            "v_head_dim": 32,
            "intermediate_size": 192,
            "moe_intermediate_size": 32,
            "n_routed_experts": 8,
            "num_experts_per_tok": 2,
        },
        # 13.2M params, 6.4M active per token: demo and benchmarks.
        "small": {
            **_COMMON,
            **_DSV2_COMMON,
            "hidden_size": 256,
            "num_hidden_layers": 6,
            "num_attention_heads": 4,
            "qk_nope_head_dim": 64,
            "v_head_dim": 64,
            "intermediate_size": 768,
            "moe_intermediate_size": 128,
            "n_routed_experts": 16,
            "num_experts_per_tok": 2,
        },
    },
    "qwen2": {
        # 0.46M params. vLLM's CPU attention supports head_dim in {32, 64, 80, ...}: here 32.
        "tiny": {
            **_COMMON,
            "hidden_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 384,
        },
        # 17.2M params, head_dim 64.
        "small": {
            **_COMMON,
            "hidden_size": 512,
            "num_hidden_layers": 6,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "intermediate_size": 1408,
        },
    },
}


def build_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A character-level tokenizer: one token per byte, so one per ASCII char (newline and tab too).

    Any other char becomes its UTF-8 bytes, one token each, so nothing is ever unknown (``<unk>``
    exists but is unused). ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>`` and the role markers
    ``<|system|>``, ``<|user|>``, ``<|assistant|>`` are single special tokens (ids 0-6). Plain
    tokenisation adds no BOS/EOS; the chat template starts with ``<bos>`` and ends each assistant
    turn with ``<eos>``, inside ``{% generation %}`` so ``return_assistant_tokens_mask=True`` works.

    The pipeline (NFC, byte-level, BPE without merges) is the one transformers 5 imposes on every
    ``qwen2`` model dir (``AutoTokenizer`` loads ``Qwen2Tokenizer`` there whatever
    ``tokenizer_config.json`` says), so both archs tokenise identically wherever they are loaded.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + _byte_symbols())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=list(ROLE_TOKENS.values()),
        clean_up_tokenization_spaces=False,
        model_max_length=_COMMON["max_position_embeddings"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_config(arch: str, size: str) -> transformers.PretrainedConfig:
    """The transformers config of preset ``PRESETS[arch][size]``."""
    from transformers import DeepseekV2Config, Qwen2Config

    if arch not in PRESETS or size not in PRESETS[arch]:
        raise ValueError(
            f"unknown preset {arch}/{size}; choose arch from {list(PRESETS)}, size from tiny/small"
        )
    config_cls = {"deepseek_v2": DeepseekV2Config, "qwen2": Qwen2Config}[arch]
    return config_cls(**PRESETS[arch][size])


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


def make_tiny_model(arch: str, size: str, out_dir: str | Path, seed: int = 0, dtype: str = "float32") -> Path:
    """Build preset ``arch``/``size`` with random weights (fixed ``seed``) and save it to ``out_dir``.

    The directory holds safetensors weights (MoE experts under per-expert names, as vLLM loads
    them), config, generation config and tokenizer; it loads with
    ``AutoModelForCausalLM.from_pretrained`` and with ``vllm.LLM`` (DeepSeek-V2 on vLLM's CPU build
    needs ``rollout.vllm_patches.patch_vllm_cpu_rope()`` to generate what transformers generates). Returns ``out_dir``.
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    config = build_config(arch, size)
    tokenizer = build_tokenizer()
    assert len(tokenizer) == config.vocab_size, (len(tokenizer), config.vocab_size)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # transformers 5 keeps experts fused in memory; save_pretrained writes them back per expert.
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def render_prompt(tokenizer: Any, prompt: str | list[dict]) -> list[int]:
    """Token ids of a prompt in chat form, ending with the assistant's turn marker (how GRPO and
    ``align.evaluate`` render prompts)."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return [int(t) for t in ids]
