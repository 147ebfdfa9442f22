"""Train a reward model (pairwise Bradley-Terry or pointwise) from the SFT model, and evaluate it.

    python recipes/reward_model.py --config recipes/configs/tiny/rm_helpful.yaml [key=value ...]
    accelerate launch --multi_gpu --num_processes 2 recipes/reward_model.py --config ...   # DDP

train.mode=pairwise trains on preference pairs with TRL's RewardTrainer, loss
-logsigmoid(r_chosen - r_rejected - margin); train.mode=pointwise fits labelled completions
(prompt, completion, score/label) with MSE or BCE (RM_reasoning on verifier-labelled samples).
Inputs are [user: prompt, assistant: completion] through the tokenizer's chat template.

Writes <output_dir>/config.yaml, metrics.jsonl, tb/, eval.json (held-out pairwise accuracy and mean
margin on data.eval, scored through rewards.load on final/) and final/ (the sequence-classification
model, tokenizer and reward_model.json). The output dir is itself a reward spec:
rewards.load("<output_dir>") or python -m rewards.serve <output_dir>.
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import time
from pathlib import Path

from align import config
from align.configs import RewardModelRecipeConfig


def main(argv: list[str] | None = None) -> int:
    cfg = config.parse_args(RewardModelRecipeConfig, argv, description=__doc__)

    # Heavy imports after parsing, so --help and config errors answer at once.
    import torch
    import transformers
    from accelerate import PartialState
    from trl import RewardTrainer

    import rewards
    from align import reward_model as rm
    from align.data import DataError, load_split
    from align.sft import MetricsLogger

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    transformers.logging.set_verbosity_warning()
    state = PartialState()  # the process group (gloo on CPU) when launched by accelerate/torchrun
    out = Path(cfg.output_dir)
    if state.is_main_process:
        config.save(cfg, out / "config.yaml")
    t = cfg.train
    started = time.monotonic()

    transformers.set_seed(cfg.seed)  # before the model: the new score head is drawn here
    model, tokenizer = rm.load_model(cfg.model.path, cfg.model.dtype)
    fmt = rm.input_format(tokenizer)

    try:
        train = load_split(
            cfg.data.train,
            cfg.data,
            split_name="train",
            output_dir=out,
            tokenizer=tokenizer,
            accept=rm.TRAIN_FORMATS[t.mode],
            keep_provenance=True,  # file:line in errors about margins and targets
        )
        held_out = None
        if cfg.data.eval:
            held_out = load_split(
                cfg.data.eval,
                cfg.data,
                split_name="eval",
                output_dir=out,
                tokenizer=tokenizer,
                accept=rm.EVAL_FORMATS[t.mode],
                keep_provenance=True,
            )
        if t.mode == "pairwise":
            train_ds = rm.preference_dataset(train.dataset, tokenizer, fmt, t.margin)
            # TRL's periodic eval needs pairs; pointwise held-out rows are scored at the end only.
            eval_ds = None
            if held_out is not None and held_out.report.format == "preference" and t.eval_steps > 0:
                eval_ds = rm.preference_dataset(held_out.dataset, tokenizer, fmt, t.margin)
        else:
            train_ds, _ = rm.pointwise_dataset(train.dataset, tokenizer, fmt, t.pointwise_loss, t.max_length)
            eval_ds = None
            if held_out is not None and held_out.report.format == "pointwise" and t.eval_steps > 0:
                eval_ds, _ = rm.pointwise_dataset(
                    held_out.dataset, tokenizer, fmt, t.pointwise_loss, t.max_length
                )
        if held_out is not None and held_out.report.format == "pointwise":
            rm.pointwise_target(held_out.dataset, t.pointwise_loss)  # checked now, not after training
    except DataError as e:
        print(f"reward_model: data error: {e}", file=sys.stderr)
        return 2

    metrics = MetricsLogger(out, stage="reward_model")
    if t.mode == "pairwise":
        trainer = RewardTrainer(
            model=model,
            args=rm.build_reward_args(cfg, has_eval=eval_ds is not None),
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            processing_class=tokenizer,
            peft_config=rm.lora_config(cfg.model.lora),
            callbacks=[metrics],
        )
    else:
        peft_config = rm.lora_config(cfg.model.lora)
        if peft_config is not None:
            import peft

            model = peft.get_peft_model(model, peft_config)
        trainer = rm.PointwiseRewardTrainer(
            model=model,
            args=rm.build_pointwise_args(cfg, has_eval=eval_ds is not None),
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            processing_class=tokenizer,
            data_collator=rm.collate_pointwise(tokenizer.pad_token_id),
            callbacks=[metrics],
            loss_kind=t.pointwise_loss,
        )
    n_rows = len(train.dataset)
    n_dropped = n_rows - len(trainer.train_dataset)
    if state.is_main_process:
        n_params = sum(p.numel() for p in model.parameters())
        what = "pairs" if t.mode == "pairwise" else "rows"
        dropped = (
            f"; {n_dropped} of {n_rows} {what} over max_length={t.max_length} dropped" if n_dropped else ""
        )
        print(
            f"reward_model: {t.mode} ({t.pointwise_loss if t.mode == 'pointwise' else 'Bradley-Terry'}), "
            f"{n_params:,} params, input format '{fmt}'; {train.report.summary()}{dropped}",
            flush=True,
        )
    if not len(trainer.train_dataset):
        print(
            f"reward_model: data error: every training row is over max_length={t.max_length}", file=sys.stderr
        )
        return 2

    trainer.train()
    train_s = time.monotonic() - started
    card = {
        "format": fmt,
        "max_length": t.max_length,
        "truncation_side": "left",
        "output": "logit",
        "mode": t.mode,
        "pointwise_loss": t.pointwise_loss if t.mode == "pointwise" else None,
        "base_model": cfg.model.path,
        "trained_by": "recipes/reward_model.py",
    }
    final = rm.save_final(trainer, out, card)

    if held_out is not None and state.is_main_process:
        # Score through the reward API on the saved directory: exactly what GRPO will call.
        eval_start = time.monotonic()
        reward = rewards.load(str(out), batch_size=t.eval_batch_size, device="auto")
        result = rm.evaluate_held_out(reward, held_out.dataset, held_out.report.format, t.pointwise_loss)
        result.update(
            {
                "data": held_out.report.sources,
                "format": held_out.report.format,
                "n_truncated": reward.n_truncated,
                "model": str(final),
                "train_time_s": round(train_s, 1),
                "cpu_time_s": round(_cpu_s(), 1),
                "eval_time_s": round(time.monotonic() - eval_start, 1),
                "steps": trainer.state.global_step,
            }
        )
        if t.likelihood_baseline and held_out.report.format == "preference":
            base_start = time.monotonic()
            device = "cuda" if torch.cuda.is_available() else "cpu"
            try:  # a diagnostic: its failure is reported, never the run's
                base = rm.likelihood_baseline(
                    cfg.model.path, held_out.dataset, fmt, t.eval_batch_size, device
                )
            except Exception as e:  # noqa: BLE001
                base = {"error": f"{type(e).__name__}: {e}"}
                print(f"reward_model: the likelihood baseline failed ({base['error']}); skipped", flush=True)
            result["init_model_likelihood"] = {**base, "time_s": round(time.monotonic() - base_start, 1)}
        (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        bookkeeping = ("train_time_s", "cpu_time_s", "eval_time_s", "steps")
        logged = {
            f"eval_{k}": v
            for k, v in result.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k not in bookkeeping
        }
        logged.update({f"eval_accuracy/{g}": v for g, v in result.get("accuracy_by", {}).items()})
        metrics.on_log(trainer.args, trainer.state, trainer.control, logs=logged)
        acc, margin = result["pairwise_accuracy"], result["margin_mean"]
        shown = (
            "n/a (no pairs)"
            if acc is None
            else f"{acc:.3f} ({result['n_pairs']} pairs, 95% interval "
            f"{result['pairwise_accuracy_ci95'][0]:.2f}-{result['pairwise_accuracy_ci95'][1]:.2f}), "
            f"mean margin {margin:.3f}"
        )
        print(f"reward_model: held-out pairwise accuracy {shown}; wrote {out / 'eval.json'}", flush=True)
        base_acc = result.get("init_model_likelihood", {}).get("pairwise_accuracy")
        if base_acc is not None:
            print(
                f"reward_model: the starting model's own log-likelihood ranks {base_acc:.3f} of those pairs "
                "right (eval.json init_model_likelihood: a baseline, what the model predicted before training)",
                flush=True,
            )
    metrics.close()
    if state.is_main_process:
        wall = time.monotonic() - started
        print(
            f"reward_model: done in {wall:.0f}s ({_cpu_s():.0f} CPU-s); reward model in {final}", flush=True
        )
    return 0


def _cpu_s() -> float:
    """CPU seconds this process used (user + system): a measure that other load on the machine
    inflates less than wall-clock time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    sys.exit(main())
