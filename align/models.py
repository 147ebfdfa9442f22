"""Tiny models built from a config, with no downloads: a small byte-level BPE tokenizer and toy-scale
DeepSeek-V2 (MLA + DeepSeekMoE) and Qwen2 presets, saved as HF model dirs that transformers and
vLLM both load.

Usage::

    from align.models import make_tiny_model
    path = make_tiny_model("deepseek_v2", "tiny", "out/tiny-dsv2")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    import transformers

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, *ROLE_TOKENS.values()]  # ids 0..6, in this order
BYTE_OFFSET = len(SPECIAL_TOKENS)  # byte b has id BYTE_OFFSET + b
# The BPE merges fitted to the synthetic tasks' text (`python -m align.models` rewrites them): merge i
# makes token id MERGES_OFFSET + i. 1024 ids in all: the tasks' text is ~3.5 bytes a token (chat),
# ~2.5 (math: digits are never merged), against one byte a token without merges.
MERGES_FILE = Path(__file__).with_name("tokenizer_merges.txt")
MERGES_OFFSET = BYTE_OFFSET + 256
VOCAB_SIZE = 1024
# Qwen2's pre-tokenizer split: words with their leading space, single digits, punctuation runs. It is
# the split transformers 5 imposes on qwen2 model dirs, so both archs must use it to agree.
PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
# The chars the demo's text is made of; each is one byte.
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
        # 0.47M params: tests.
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
        # 13.6M params, 6.8M active per token: demo and benchmarks.
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
        # 0.66M params. vLLM's CPU attention supports head_dim in {32, 64, 80, ...}: here 32.
        "tiny": {
            **_COMMON,
            "hidden_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 384,
        },
        # 18.0M params, head_dim 64.
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


def _pre_tokenizer():
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def train_merges(n: int = VOCAB_SIZE - MERGES_OFFSET) -> list[tuple[str, str]]:
    """Fit ``n`` BPE merges (tokenizers' ``BpeTrainer``) to the text of every task that
    ``align.tasks.generate`` makes with the default ``MakeDataConfig`` (the training splits' prompts,
    replies, solutions and code; not the soup of rejected replies nor code tests' random strings).
    The same text gives the same merges (checked in one process by the tests, and across three
    processes by hand when the file was written)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from align.configs import MakeDataConfig
    from align.tasks import generate, trusted_texts

    corpus = [
        text
        for train, _ in generate(MakeDataConfig()).values()
        for row in train
        for text in trusted_texts(row)
    ]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = _pre_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=256 + n, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator(corpus, trainer)
    merges = [tuple(m) for m in json.loads(backend.to_str())["model"]["merges"]]
    if len(merges) != n:
        raise ValueError(f"the tasks' text gives {len(merges)} BPE merges, {n} asked")
    return merges


def read_merges(path: str | Path = MERGES_FILE) -> list[tuple[str, str]]:
    """The merges of a ``merges.txt`` file (a ``#version`` line, then one "left right" pair a line)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    merges = []
    for i, line in enumerate(lines, 1):
        if not line or line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{path}:{i}: expected 'left right', got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def write_merges(merges: list[tuple[str, str]], path: str | Path = MERGES_FILE) -> None:
    Path(path).write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")


def build_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer of ``VOCAB_SIZE`` ids: the special tokens (ids 0-6), the 256 bytes
    (byte b has id ``BYTE_OFFSET + b``), then the merges of ``MERGES_FILE`` in order.

    Text is split as Qwen2 splits it (digits one by one, words with their leading space), so numbers
    are always one token a digit and no merge crosses a word. Nothing is ever unknown (``<unk>``
    exists but is unused): any char is at worst its UTF-8 bytes. ``<pad>``, ``<bos>``, ``<eos>``,
    ``<unk>`` and the role markers ``<|system|>``, ``<|user|>``, ``<|assistant|>`` are single special
    tokens. Plain tokenisation adds no BOS/EOS; the chat template starts with ``<bos>`` and ends each
    assistant turn with ``<eos>``, inside ``{% generation %}`` so ``return_assistant_tokens_mask=True``
    works.

    The pipeline (NFC, the Qwen2 split, byte-level BPE) is the one transformers 5 imposes on every
    ``qwen2`` model dir (``AutoTokenizer`` loads ``Qwen2Tokenizer`` there whatever
    ``tokenizer_config.json`` says), so both archs tokenise identically wherever they are loaded.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    merges = read_merges()
    tokens = SPECIAL_TOKENS + _byte_symbols() + [a + b for a, b in merges]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE or len(tokens) != VOCAB_SIZE:
        raise ValueError(
            f"{MERGES_FILE}: {len(merges)} merges make {len(vocab)} distinct ids, not {VOCAB_SIZE}"
        )
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = _pre_tokenizer()
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


if __name__ == "__main__":  # rewrite MERGES_FILE from the current tasks: python -m align.models
    write_merges(train_merges())
    print(f"wrote {VOCAB_SIZE - MERGES_OFFSET} merges to {MERGES_FILE}")
