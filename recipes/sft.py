"""Supervised fine-tuning with TRL's SFTTrainer (chat or prompt/completion data, optional LoRA).

    python recipes/sft.py --config recipes/configs/tiny/sft.yaml [key=value ...]
    accelerate launch --multi_gpu --num_processes 2 recipes/sft.py --config ...   # DDP; gloo on CPU

Messages data trains on the assistant turns only, prompt/completion data on the completion only
(train.completion_only). MoE models add DeepSeek-V2's expert-level balance loss
(train.aux_loss_alpha). Writes <output_dir>/config.yaml, metrics.jsonl, tb/, final/ (HF model and
tokenizer; with LoRA the merged model, and the adapter in adapter/).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from align import config
from align.configs import SFTRecipeConfig


def main(argv: list[str] | None = None) -> int:
    cfg = config.parse_args(SFTRecipeConfig, argv, description=__doc__)

    # Heavy imports after parsing, so --help and config errors answer at once.
    import torch
    import transformers
    from accelerate import PartialState

    from align import sft
    from align.data import DataError, load_split

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    transformers.logging.set_verbosity_warning()
    state = PartialState()  # the process group (gloo on CPU) when launched by accelerate/torchrun
    out = Path(cfg.output_dir)
    if state.is_main_process:
        config.save(cfg, out / "config.yaml")

    transformers.set_seed(cfg.seed)
    tokenizer = transformers.AutoTokenizer.from_pretrained(cfg.model.path)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        cfg.model.path, dtype=getattr(torch, cfg.model.dtype)
    )

    try:
        train = load_split(
            cfg.data.train,
            cfg.data,
            split_name="train",
            output_dir=out,
            tokenizer=tokenizer,
            accept=sft.FORMATS,
        )
        train_ds = sft.sft_dataset(train.dataset, train.report.format, cfg.train.curriculum)
        eval_ds = None
        if cfg.data.eval:
            held_out = load_split(
                cfg.data.eval,
                cfg.data,
                split_name="eval",
                output_dir=out,
                tokenizer=tokenizer,
                accept=sft.FORMATS,
            )
            eval_ds = sft.sft_dataset(held_out.dataset, held_out.report.format)
    except DataError as e:
        print(f"sft: data error: {e}", file=sys.stderr)
        return 2

    metrics = sft.MetricsLogger(out)
    trainer = sft.BalancedSFTTrainer(
        model=model,
        args=sft.build_sft_args(cfg, train.report.format, has_eval=eval_ds is not None),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=sft.lora_config(cfg.model.lora),
        callbacks=[metrics],
        aux_loss_alpha=cfg.train.aux_loss_alpha,
    )
    if state.is_main_process:
        n_params = sum(p.numel() for p in model.parameters())
        n_train = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        moe = f", {len(trainer.gates)} MoE layers" if trainer.gates else ""
        print(f"sft: {n_params:,} params ({n_train:,} trained{moe}); {train.report.summary()}", flush=True)

    trainer.train()
    if eval_ds is not None:
        trainer.evaluate()
    final = sft.save_final(trainer, out)
    metrics.close()
    if state.is_main_process:
        print(f"sft: done; model in {final}, metrics in {out / 'metrics.jsonl'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
