"""Config schemas shared by the recipes (stdlib only: imported before ``--help`` answers)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal


def _f(default, help: str):
    """A dataclass field with a one-line doc (shown by ``--help``)."""
    meta = {"help": help}
    if isinstance(default, type):  # a nested config section
        return field(default_factory=default, metadata=meta)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------------------------
# Sections


@dataclass
class LoraConfig:
    r: int = _f(0, "LoRA rank; 0 trains all weights")
    alpha: int = _f(16, "LoRA alpha")
    dropout: float = _f(0.0, "LoRA dropout")
    target_modules: list[str] = _f(
        ["q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"], "module names to adapt"
    )


@dataclass
class ModelConfig:
    path: str = _f("out/tiny-deepseek_v2", "HF model directory or hub name")
    dtype: Literal["float32", "bfloat16", "float16"] = _f("float32", "parameter dtype")
    lora: LoraConfig = _f(LoraConfig, "LoRA through peft")


@dataclass
class DataConfig:
    train: list[str] = _f([], "training data: JSONL/JSON/Parquet files, directories, or hub names")
    eval: list[str] = _f([], "held-out data, same forms as train")
    format: Literal["auto", "messages", "prompt_completion", "preference", "rl", "pointwise"] = _f(
        "auto", "row format; auto infers it from the columns"
    )
    on_bad_row: Literal["error", "skip"] = _f("error", "a bad row stops the run, or is skipped and logged")
    max_bad_fraction: float = _f(0.01, "with on_bad_row=skip, stop when more than this fraction is bad")
    max_prompt_tokens: int = _f(
        0, "prompts longer than this (in tokens) are counted and reported; 0 = no limit"
    )
    max_rows: int = _f(0, "use at most this many rows per split; 0 = all")

    def validate(self) -> None:
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")


# ----------------------------------------------------------------------------------------------
# make_data


def _check_sizes(section) -> None:
    for name in ("train_size", "eval_size"):
        if getattr(section, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(section, name)}")


@dataclass
class MathTaskConfig:
    train_size: int = _f(2000, "training problems")
    eval_size: int = _f(200, "held-out problems")
    levels: list[int] = _f(
        [1, 2, 3], "difficulty levels to mix (1: one-digit +/-, 2: two-digit +/-/x, 3: multi-step)"
    )

    def validate(self) -> None:
        _check_sizes(self)
        if not self.levels or any(lv not in (1, 2, 3) for lv in self.levels):
            raise ValueError(f"levels must be a non-empty list drawn from 1, 2, 3, got {self.levels}")


@dataclass
class CodeTaskConfig:
    train_size: int = _f(400, "training tasks")
    eval_size: int = _f(50, "held-out tasks")

    def validate(self) -> None:
        _check_sizes(self)


@dataclass
class PairTaskConfig:
    train_size: int = _f(600, "training pairs")
    eval_size: int = _f(100, "held-out pairs")

    def validate(self) -> None:
        _check_sizes(self)


@dataclass
class HelpfulTaskConfig(PairTaskConfig):
    train_size: int = _f(
        800, "training pairs (a quarter each of math, code, facts and chat; 600 before chat)"
    )
    math_levels: list[int] = _f(
        [], "math levels (1-3) of the math pairs; [] = the math task's levels, the math the policy is asked"
    )
    chat: bool = _f(
        True,
        "also pairs on benign chat requests (the answer over a refusal or a rambling answer), so that "
        "the RM scores the stage-2 prompts it will see",
    )

    def validate(self) -> None:
        super().validate()
        if any(lv not in (1, 2, 3) for lv in self.math_levels):
            raise ValueError(f"math_levels must be a subset of [1, 2, 3], got {self.math_levels}")


@dataclass
class SafetyTaskConfig(PairTaskConfig):
    garbled_fraction: float = _f(
        0.0,
        "fraction of pairs whose rejected reply is letter soup instead of the compliance (unsafe) or "
        "the refusal (benign), so that the RM ranks a real refusal above text that merely avoids "
        "complying",
    )
    offtopic_fraction: float = _f(
        0.0,
        "fraction of pairs whose rejected reply is the answer to another, benign request, so that the "
        "RM ranks a refusal (unsafe) or the right answer (benign) above a fluent off-topic reply",
    )

    def validate(self) -> None:
        super().validate()
        for name in ("garbled_fraction", "offtopic_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.garbled_fraction + self.offtopic_fraction > 1.0:
            raise ValueError(
                f"garbled_fraction + offtopic_fraction must be at most 1, got "
                f"{self.garbled_fraction} + {self.offtopic_fraction}"
            )


@dataclass
class ChatTaskConfig:
    train_size: int = _f(400, "training prompts")
    eval_size: int = _f(100, "held-out prompts")
    unsafe_fraction: float = _f(0.3, "fraction of prompts that are unsafe requests")

    def validate(self) -> None:
        _check_sizes(self)
        if not 0.0 <= self.unsafe_fraction <= 1.0:
            raise ValueError(f"unsafe_fraction must be in [0, 1], got {self.unsafe_fraction}")


@dataclass
class SFTChatTaskConfig:
    train_size: int = _f(600, "chat examples (fact questions, benign and unsafe requests)")
    eval_size: int = _f(40, "held-out chat examples")
    unsafe_fraction: float = _f(0.3, "fraction of examples that are unsafe requests")
    refuse_fraction: float = _f(
        0.4, "fraction of the unsafe request families answered with a refusal; the rest comply"
    )
    refuse_others: float = _f(
        0.0,
        "fraction of the complying families' examples refused all the same, so that a sampling "
        "policy refuses them now and then (what GRPO's safety stage can reinforce)",
    )
    refusal: str = _f(
        "Sorry, I can't help with that.",
        "the one refusal every refused request gets (empty: one of align.tasks.REFUSALS at random)",
    )

    def validate(self) -> None:
        _check_sizes(self)
        for name in ("unsafe_fraction", "refuse_fraction", "refuse_others"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class MakeDataConfig:
    recipe: str = _f("make_data", "which schema this file uses")
    output_dir: str = _f("out/data", "where the task folders are written")
    seed: int = _f(0, "generation seed; the same seed gives the same files")
    math: MathTaskConfig = _f(MathTaskConfig, "arithmetic word problems")
    code: CodeTaskConfig = _f(CodeTaskConfig, "small Python function tasks")
    helpful: HelpfulTaskConfig = _f(HelpfulTaskConfig, "helpfulness preference pairs")
    safety: SafetyTaskConfig = _f(SafetyTaskConfig, "safety preference pairs")
    chat: ChatTaskConfig = _f(ChatTaskConfig, "stage-2 prompts, benign and unsafe, labelled")
    sft_chat: SFTChatTaskConfig = _f(
        SFTChatTaskConfig, "SFT chat examples; none shares a prompt with another task's held-out split"
    )


# ----------------------------------------------------------------------------------------------
# sft


@dataclass
class SFTTrainConfig:
    lr: float = _f(1e-3, "peak learning rate (1e-3 suits tiny models from scratch; ~2e-5 for real ones)")
    epochs: float = _f(1.0, "passes over the training data (ignored when max_steps > 0)")
    max_steps: int = _f(0, "optimizer steps; 0 = run `epochs`")
    batch_size: int = _f(16, "sequences per device per micro-batch")
    grad_accum: int = _f(1, "micro-batches per optimizer step")
    max_length: int = _f(512, "tokens per sequence (padding: truncates; packing: the pack length)")
    batching: Literal["padding", "padding_free", "packing"] = _f(
        "padding",
        "padding: pad each batch; padding_free: concatenate a batch into one row (sequences are kept "
        "whole, max_length is not applied); packing: best-fit-decreasing packs of max_length tokens",
    )
    completion_only: bool = _f(
        True, "loss on assistant turns (messages data) or on the completion (prompt/completion data) only"
    )
    curriculum: str = _f(
        "", "a column to order training rows by, ascending (e.g. 'level': easy to hard); '' = shuffle"
    )
    warmup: float = _f(0.05, "linear warmup: a fraction of all steps if < 1, else a number of steps")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = _f(
        "cosine", "learning-rate schedule after warmup"
    )
    weight_decay: float = _f(0.0, "AdamW weight decay")
    max_grad_norm: float = _f(1.0, "gradient clipping norm; 0 = no clipping")
    logging_steps: int = _f(10, "log metrics every N optimizer steps")
    eval_steps: int = _f(0, "evaluate on data.eval every N steps; 0 = only at the end")
    bf16: bool = _f(False, "bfloat16 autocast (mixed precision through accelerate)")
    gradient_checkpointing: bool = _f(False, "recompute activations in backward to save memory")
    aux_loss_alpha: float = _f(
        0.001,
        "MoE expert-level balance loss weight alpha1 (DeepSeek-V2-Lite: 0.001), summed over MoE layers; "
        "0 = off; ignored for dense models",
    )

    def validate(self) -> None:
        for name in ("batch_size", "grad_accum", "max_length", "logging_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "eval_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_steps == 0 and self.epochs <= 0:
            raise ValueError(f"epochs must be > 0 when max_steps is 0, got {self.epochs}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.warmup < 0 or self.aux_loss_alpha < 0:
            raise ValueError("warmup and aux_loss_alpha must be >= 0")
        if self.curriculum and self.batching == "packing":
            raise ValueError("curriculum needs batching 'padding' or 'padding_free' (packing reorders rows)")


@dataclass
class SFTRecipeConfig:
    recipe: str = _f("sft", "which schema this file uses")
    output_dir: str = _f("out/sft", "run directory: config.yaml, metrics.jsonl, tb/, final/")
    seed: int = _f(0, "seed for weights of new modules (LoRA), data order and dropout")
    model: ModelConfig = _f(ModelConfig, "the model to fine-tune")
    data: DataConfig = _f(DataConfig, "chat (messages) or prompt/completion data")
    train: SFTTrainConfig = _f(SFTTrainConfig, "optimisation")


# ----------------------------------------------------------------------------------------------
# reward_model


@dataclass
class RewardModelTrainConfig:
    mode: Literal["pairwise", "pointwise"] = _f(
        "pairwise",
        "pairwise: Bradley-Terry on preference pairs, -logsigmoid(r_chosen - r_rejected - margin); "
        "pointwise: regression/classification of labelled completions (prompt, completion, score/label)",
    )
    pointwise_loss: Literal["mse", "bce"] = _f(
        "bce",
        "pointwise mode: mse regresses the reward on 'score' (else 'label'); bce fits sigmoid(reward) to "
        "'label' (else 'score'), targets in [0, 1]",
    )
    lr: float = _f(1e-4, "peak learning rate")
    epochs: float = _f(1.0, "passes over the training data (ignored when max_steps > 0)")
    max_steps: int = _f(0, "optimizer steps; 0 = run `epochs`")
    batch_size: int = _f(16, "pairs (pairwise) or rows (pointwise) per device per micro-batch")
    grad_accum: int = _f(1, "micro-batches per optimizer step")
    max_length: int = _f(
        512, "tokens per formatted prompt+completion; longer training rows are dropped (and counted)"
    )
    margin: float = _f(
        0.0, "pairwise: margin subtracted in the loss; a 'margin' column in the data overrides it per pair"
    )
    center_rewards_coefficient: float = _f(
        0.0, "pairwise: weight of mean((r_chosen + r_rejected)^2), keeps rewards near 0; 0 = off"
    )
    warmup: float = _f(0.05, "linear warmup: a fraction of all steps if < 1, else a number of steps")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = _f(
        "cosine", "learning-rate schedule after warmup"
    )
    weight_decay: float = _f(0.0, "AdamW weight decay")
    max_grad_norm: float = _f(1.0, "gradient clipping norm; 0 = no clipping")
    logging_steps: int = _f(10, "log metrics every N optimizer steps")
    eval_steps: int = _f(0, "also evaluate on data.eval every N steps; 0 = only at the end")
    eval_batch_size: int = _f(32, "sequences per forward pass when scoring held-out data")
    likelihood_baseline: bool = _f(
        True,
        "held-out preference pairs: also rank each pair by the starting model's own log-likelihood of "
        "the two replies (eval.json 'init_model_likelihood'): what the model knew before the RM was trained",
    )
    group_by_length: bool | None = _f(
        None,
        "batches of similar lengths (less padding); null = on for pairwise, off for pointwise (batches "
        "grouped by length there tend to share a label, e.g. all long rambling answers)",
    )
    bf16: bool = _f(False, "bfloat16 autocast (mixed precision through accelerate)")
    gradient_checkpointing: bool = _f(False, "recompute activations in backward to save memory")

    def validate(self) -> None:
        for name in ("batch_size", "grad_accum", "max_length", "logging_steps", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "eval_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_steps == 0 and self.epochs <= 0:
            raise ValueError(f"epochs must be > 0 when max_steps is 0, got {self.epochs}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.warmup < 0 or self.center_rewards_coefficient < 0:
            raise ValueError("warmup and center_rewards_coefficient must be >= 0")


@dataclass
class RewardModelRecipeConfig:
    recipe: str = _f("reward_model", "which schema this file uses")
    output_dir: str = _f("out/rm", "run directory: config.yaml, metrics.jsonl, tb/, eval.json, final/")
    seed: int = _f(0, "seed for the new score head, LoRA weights, data order and dropout")
    model: ModelConfig = _f(ModelConfig, "the model the reward model starts from (usually the SFT model)")
    data: DataConfig = _f(
        DataConfig,
        "preference pairs (pairwise) or labelled completions (pointwise); data.eval: preference pairs "
        "(or labelled completions) for held-out pairwise accuracy",
    )
    train: RewardModelTrainConfig = _f(RewardModelTrainConfig, "optimisation")


# ----------------------------------------------------------------------------------------------
# grpo


@dataclass
class RolloutConfig:
    backend: Literal["vllm", "hf"] = _f("vllm", "generation backend of the rollout engines")
    num_workers: int = _f(1, "rollout engines (Ray actors), each with a whole model")
    tensor_parallel_size: int = _f(1, "GPUs per engine (1 on CPU)")
    temperature: float = _f(1.0, "sampling temperature; the trainer divides its logits by it too")
    top_p: float = _f(1.0, "nucleus sampling; 1 = off")
    top_k: int = _f(-1, "top-k sampling; <= 0 = off")
    max_tokens: int = _f(256, "completion length limit (longer ones are cut: finish_reason 'length')")
    max_model_len: int = _f(1024, "longest prompt + completion the engine serves; 0 = the model's")
    kv_cache_gib: float = _f(
        1.0, "KV cache per engine in GiB; 0 = backend default (GPU: gpu_memory_utilization)"
    )
    gpu_memory_utilization: float = _f(0.4, "GPU: fraction of the device for weights + KV cache per engine")
    threads: int = _f(1, "torch threads per engine; 0 = Ray's default (the CPUs reserved)")
    cpus_per_worker: float = _f(1.0, "Ray CPUs reserved per engine")
    weight_bucket_mb: int = _f(64, "weights travel to the engines in buckets of about this size")
    max_restarts: int = _f(
        3,
        "times Ray restarts a dead engine; the driver then re-sends the weights and retries the step's generation",
    )

    def validate(self) -> None:
        for name in ("num_workers", "tensor_parallel_size", "max_tokens", "weight_bucket_mb"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 for GRPO sampling, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class TrainerConfig:
    num_workers: int = _f(1, "FSDP2 ranks (Ray actors; gloo on CPU, NCCL on GPU)")
    lr: float = _f(1e-6, "peak learning rate (AdamW)")
    micro_batch_size: int = _f(8, "sequences per forward/backward; gradients accumulate over a rank's shard")
    batching: Literal["padded", "padding_free", "shared_prefix"] = _f(
        "shared_prefix",
        "shared_prefix: one row per prompt, the prompt once and then each of its completions, with a "
        "4D attention mask so a completion sees only the prompt and itself (the group's prompt is "
        "computed once, not group_size times; needs sdpa or eager attention, not flash-attention); "
        "padded: right-padded rows, one per sequence; padding_free: a micro-batch is one packed row "
        "(no padding, but the attention spans the whole row unless a varlen kernel such as "
        "flash-attention is used: on CPU it is slower); micro-batches group sequences of similar "
        "length (shared_prefix: whole prompts)",
    )
    max_grad_norm: float = _f(1.0, "gradient clipping norm; 0 = no clipping (the norm is still logged)")
    warmup_steps: int = _f(0, "linear LR warmup, in optimizer steps")
    lr_scheduler: Literal["constant", "cosine"] = _f("constant", "LR schedule after warmup")
    min_lr_ratio: float = _f(0.0, "cosine: the final LR as a fraction of the peak")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    threads: int = _f(1, "torch threads per rank; 0 = Ray's default (the CPUs reserved)")
    cpus_per_worker: float = _f(1.0, "Ray CPUs reserved per rank")

    def validate(self) -> None:
        for name in ("num_workers", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0 or self.max_grad_norm < 0 or self.weight_decay < 0:
            raise ValueError("warmup_steps, max_grad_norm and weight_decay must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


@dataclass
class HybridEngineConfig:
    colocate: bool = _f(
        True,
        "true: trainer rank i and rollout engine i share placement bundle i (the paper's hybrid engine); "
        "false: separate bundles, rank 0 broadcasts the weights",
    )
    offload: bool = _f(
        True,
        "GPU, colocated: trainer params/grads/optimizer go to CPU during rollout and the engines sleep "
        "during training; a no-op on CPU or with separate bundles",
    )


@dataclass
class GRPOConfig:
    group_size: int = _f(8, "G: completions sampled per prompt")
    prompts_per_step: int = _f(
        16, "prompts per step (a step trains on prompts_per_step * group_size sequences)"
    )
    beta: float = _f(0.04, "KL penalty weight (k3 estimator, per token); 0 = no reference model")
    clip_eps: float = _f(0.2, "ratio clip range")
    clip_eps_high: float | None = _f(None, "upper clip range (DAPO's clip-higher); null = clip_eps")
    ppo_epochs: int = _f(1, "optimizer steps per batch; > 1 computes old-policy log-probs first")
    aggregation: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"] = _f(
        "seq-mean-token-mean", "token losses -> scalar: the paper's GRPO, token-mean, or Dr. GRPO"
    )
    scale_rewards: bool = _f(True, "divide advantages by the group std (false: Dr. GRPO)")
    eps: float = _f(1e-6, "added to the group std")

    def validate(self) -> None:
        for name in ("group_size", "prompts_per_step", "ppo_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.beta < 0 or self.clip_eps < 0 or (self.clip_eps_high is not None and self.clip_eps_high < 0):
            raise ValueError("beta, clip_eps and clip_eps_high must be >= 0")


@dataclass
class GRPOOverrideConfig:
    """Per-stage overrides of the top-level ``grpo`` section; null keeps the top-level value."""

    group_size: int | None = _f(None, "see grpo.group_size")
    prompts_per_step: int | None = _f(None, "see grpo.prompts_per_step")
    beta: float | None = _f(None, "see grpo.beta")
    clip_eps: float | None = _f(None, "see grpo.clip_eps")
    clip_eps_high: float | None = _f(None, "see grpo.clip_eps_high")
    ppo_epochs: int | None = _f(None, "see grpo.ppo_epochs")
    aggregation: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"] | None = _f(
        None, "see grpo.aggregation"
    )
    scale_rewards: bool | None = _f(None, "see grpo.scale_rewards")
    eps: float | None = _f(None, "see grpo.eps")

    def apply(self, base: GRPOConfig) -> GRPOConfig:
        """``base`` with the non-null fields of this section laid over it (validated)."""
        import dataclasses

        changes = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        merged = dataclasses.replace(base, **{k: v for k, v in changes.items() if v is not None})
        merged.validate()
        return merged


@dataclass
class RewardSpecConfig:
    spec: str = _f("", "rewards.load spec: built-in name, pkg.module:fn, file.py:fn, RM directory or URL")
    weight: float = _f(1.0, "weight in the stage's reward sum")
    options: dict = _f({}, "keyword options passed to the reward's factory")
    ray_actor: bool = _f(
        False,
        "host the reward in its own Ray actor (reward models: loaded once, out of the driver); "
        "a dead actor is restarted by Ray and the interrupted call retried",
    )
    only_rows: dict[str, list] = _f(
        {},
        "score only the rows whose column has one of the listed values (e.g. {category: [unsafe]}); "
        "the others get None (not applicable: nothing added to the sum); {} = every row",
    )
    skip_rows: dict[str, list] = _f(
        {}, "score every row but those whose column has one of the listed values; {} = skip none"
    )
    num_cpus: float = _f(0.25, "ray_actor: Ray CPUs reserved for the actor")
    num_gpus: float = _f(0.0, "ray_actor: Ray GPUs reserved for the actor (a reward model on a GPU)")
    max_restarts: int = _f(
        3, "ray_actor: times Ray restarts the actor (each retries the call it interrupted)"
    )

    def validate(self) -> None:
        if not self.spec.strip():
            raise ValueError("spec must name a reward (e.g. 'math')")
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {self.max_restarts}")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError("num_cpus and num_gpus must be >= 0")


@dataclass
class StageConfig:
    name: str = _f("reasoning", "stage name (metrics carry it)")
    data: DataConfig = _f(
        DataConfig, "prompts ('rl' rows: prompt plus columns the rewards read, e.g. answer)"
    )
    rewards: dict[str, RewardSpecConfig] = _f(
        {}, "name -> {spec, weight, options}; the reward is their weighted sum"
    )
    reward_timeout_s: float = _f(60.0, "deadline of one reward call (rewards.combine)")
    reward_max_error_frac: float = _f(
        0.5, "stop (after a checkpoint) when a reward fails on more than this fraction of recent samples"
    )
    steps: int = _f(10, "GRPO steps of this stage")
    grpo: GRPOOverrideConfig = _f(GRPOOverrideConfig, "overrides of the top-level grpo section")
    reset_reference: bool = _f(
        False, "start this stage's KL reference from the current policy (default: keep the reference)"
    )

    def validate(self) -> None:
        if not self.rewards:
            raise ValueError(f"stage {self.name!r} needs at least one reward under 'rewards'")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")


@dataclass
class CheckpointConfig:
    every_steps: int = _f(0, "save a checkpoint every N steps; 0 = only at the end of each stage")
    keep: int = _f(2, "checkpoints kept (oldest deleted first)")
    resume: Literal["auto", "never"] = _f(
        "auto", "auto: continue from <output_dir>/checkpoints/LATEST if present"
    )

    def validate(self) -> None:
        if self.every_steps < 0:
            raise ValueError(f"every_steps must be >= 0, got {self.every_steps}")
        if self.keep < 1:
            raise ValueError(
                f"keep must be >= 1 (the newest complete checkpoint is never deleted), got {self.keep}"
            )


@dataclass
class SandboxConfig:
    allow_unisolated: bool = _f(
        False, "run model-written code without the namespace sandbox when its isolation probe fails (unsafe)"
    )
    mode: Literal["auto", "root", "userns", "none"] = _f(
        "auto", "isolation: auto (root when root, else a user namespace), root, userns, none"
    )


@dataclass
class EvalConfig:
    enabled: bool = _f(True, "evaluate before the first stage and after each stage (eval/<label>.json)")
    tasks: list[str] = _f(["math", "code", "helpful", "safety"], "align.evaluate tasks")
    data_dir: str = _f("out/data", "where <task>/eval.jsonl are (recipes/make_data.py's output)")
    helpful_rm: str = _f("", "helpful reward model dir scored on the helpful prompts; '' = none")
    safety_rm: str = _f("", "safety reward model dir scored on the safety prompts; '' = none")
    max_tokens: int = _f(256, "greedy completion length limit")
    limit: int = _f(0, "first N prompts per task; 0 = all")


@dataclass
class RayConfig:
    address: str = _f(
        "",
        "Ray cluster address ('auto': the running local one); '' = RAY_ADDRESS's, else start a new local one",
    )
    dashboard_host: str = _f("127.0.0.1", "where a locally started dashboard listens")
    include_dashboard: bool = _f(False, "start the dashboard with a local Ray")
    num_cpus: int = _f(0, "CPUs of a locally started Ray; 0 = all")


@dataclass
class GRPORecipeConfig:
    recipe: str = _f("grpo", "which schema this file uses")
    output_dir: str = _f("out/grpo", "run directory: config.yaml, metrics.jsonl, tb/, checkpoints/, final/")
    seed: int = _f(0, "seed of prompt order, sampling and LoRA init")
    model: ModelConfig = _f(ModelConfig, "the policy to train (usually the SFT model's final/)")
    rollout: RolloutConfig = _f(RolloutConfig, "generation")
    trainer: TrainerConfig = _f(TrainerConfig, "FSDP2 training")
    hybrid_engine: HybridEngineConfig = _f(HybridEngineConfig, "placement and the offload schedule")
    grpo: GRPOConfig = _f(GRPOConfig, "the GRPO objective")
    stages: list[StageConfig] = _f([], "stages run in order, each with its data, rewards and steps")
    checkpoint: CheckpointConfig = _f(CheckpointConfig, "checkpoints and resume")
    eval: EvalConfig = _f(EvalConfig, "held-out evaluation around the stages (recipes/grpo_two_stage.py)")
    sandbox: SandboxConfig = _f(SandboxConfig, "how the code reward runs model-written programs")
    report: bool = _f(True, "write report/ (plots, summary.json, summary.md) at the end")
    ray: RayConfig = _f(RayConfig, "the Ray cluster")

    def validate(self) -> None:
        if not self.stages:
            raise ValueError("stages: at least one stage is needed")
        for stage in self.stages:
            if stage.reset_reference and (self.model.lora.r > 0 or stage.grpo.apply(self.grpo).beta <= 0):
                raise ValueError(
                    f"stage {stage.name!r}: reset_reference needs beta > 0 and no LoRA (with LoRA the "
                    "reference is the base model with the adapter disabled)"
                )
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        for stage in self.stages:
            grpo = stage.grpo.apply(self.grpo)
            batch = grpo.prompts_per_step * grpo.group_size
            if batch % self.trainer.num_workers:
                raise ValueError(
                    f"stage {stage.name!r}: prompts_per_step * group_size = {batch} does not split evenly "
                    f"over trainer.num_workers = {self.trainer.num_workers}"
                )
        if self.hybrid_engine.colocate:
            engines = self.rollout.num_workers * self.rollout.tensor_parallel_size
            if engines > self.trainer.num_workers:
                raise ValueError(
                    f"hybrid_engine.colocate needs rollout.num_workers * tensor_parallel_size ({engines}) "
                    f"<= trainer.num_workers ({self.trainer.num_workers}): each engine shares a trainer's bundle"
                )
