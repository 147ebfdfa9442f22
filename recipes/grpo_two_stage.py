"""GRPO in stages (DeepSeek-V2: reasoning rewards first, then c1*helpful + c2*safety + c3*rule),
with checkpoints, resume, held-out evaluation around the stages, and a report.

    python recipes/grpo_two_stage.py --config recipes/configs/tiny/grpo_two_stage.yaml [key=value ...]

    # against a running cluster (the dashboard stays on loopback):
    ray start --head --dashboard-host 127.0.0.1
    ray job submit --working-dir . -- python recipes/grpo_two_stage.py --config ...

Each entry of ``stages`` has its own data, rewards (spec + weight), steps and GRPO overrides; a stage
starts from the previous stage's policy and keeps the same KL reference unless it sets
``reset_reference``. A checkpoint (policy in HF format, optimizer, LR schedule, RNG states, data
position, stage and step) is written every ``checkpoint.every_steps`` and at each stage end;
``checkpoint.resume: auto`` continues from ``checkpoints/LATEST`` after a crash, mid-stage or
between stages. Writes <output_dir>/config.yaml, metrics.jsonl, tb/, checkpoints/, eval/<label>.json
(``sft`` before the first stage, ``stage<N>`` after stage N), final/ and report/.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

# `ray job submit --working-dir .` runs this file from an uploaded copy of the repository: import
# the toolkit from that copy (as Ray's workers do), not from wherever it was installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align import config  # noqa: E402
from align.configs import GRPORecipeConfig  # noqa: E402

# Sections that may change between a run and its resumption (where and how it runs, not what).
RESUMABLE_CHANGES = ("checkpoint", "ray", "eval", "report", "rollout", "hybrid_engine", "sandbox")


def fingerprint(cfg: GRPORecipeConfig) -> dict:
    """What must not change for a checkpoint to be resumed."""
    data = config.to_dict(cfg)
    return {k: v for k, v in data.items() if k not in RESUMABLE_CHANGES and k != "output_dir"}


def start_fresh(out: Path) -> list[str]:
    """A run that does not resume owns ``out`` anew: earlier evaluations (which would otherwise be
    taken as this run's) are removed, and earlier checkpoints are set aside, not deleted, so that
    none of them is mistaken for this run's. Returns what it did, for the console."""
    done = []
    for old in sorted((out / "eval").glob("*.json")):
        old.unlink()
        done.append(f"removed the earlier {old}")
    ckpts = out / "checkpoints"
    if ckpts.is_dir() and any(ckpts.iterdir()):
        aside = out / f"checkpoints.old-{time.strftime('%Y%m%d-%H%M%S')}"
        ckpts.rename(aside)
        done.append(f"moved the earlier checkpoints to {aside}")
    return done


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM (``kill``, ``ray job stop``) unwinds like Ctrl-C: the ``finally`` below stops the
    actors and Ray's exit hook stops the local cluster, leaving no orphaned Ray processes."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    cfg = config.parse_args(GRPORecipeConfig, argv, description=__doc__)
    signal.signal(signal.SIGTERM, _terminate)

    # Heavy imports after parsing, so --help and config errors answer at once.
    from tqdm import tqdm
    from transformers import AutoTokenizer

    from align.data import DataError
    from align.evaluate import evaluate
    from hybrid_engine import checkpoint
    from hybrid_engine.driver import GRPODriver, load_stage_data, summary_line
    from hybrid_engine.metrics import RunLog, truncate_metrics
    from hybrid_engine.trainer import TrainerFailure
    from rewards import RewardError

    out = Path(cfg.output_dir)
    ckpt_root, eval_dir = out / "checkpoints", out / "eval"

    # Resume: everything below is a function of the checkpoint's state and the config.
    resume_dir = checkpoint.latest(ckpt_root) if cfg.checkpoint.resume == "auto" else None
    resumed = checkpoint.read_state(resume_dir) if resume_dir else None
    if resumed is not None and resumed["fingerprint"] != fingerprint(cfg):
        changed = sorted(k for k in fingerprint(cfg) if fingerprint(cfg)[k] != resumed["fingerprint"].get(k))
        print(
            f"grpo: {resume_dir} was written with a different config (sections {changed} differ); "
            f"set checkpoint.resume=never or a new output_dir to start over",
            file=sys.stderr,
        )
        return 2
    # Every stage's data is read and checked before any worker starts: a bad row in stage 2's
    # prompts stops the run now, not after stage 1 has trained.
    splits = []  # kept for the stages, so that no file is read and checked twice
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
        for stage_cfg in cfg.stages:
            splits.append(load_stage_data(stage_cfg, tokenizer, out))
            print(f"grpo: stage {stage_cfg.name!r}: {splits[-1].report.summary()}", flush=True)
    except DataError as e:
        print(f"grpo: data error: {e}", file=sys.stderr)
        return 2

    if resumed is None:
        for line in start_fresh(out):
            print(f"grpo: {line}")
    config.save(cfg, out / "config.yaml")
    if resumed is not None:
        truncate_metrics(out, resumed["step"])
        print(f"grpo: resuming from {resume_dir} (step {resumed['step']}, stage {resumed['stage_name']})")
    runlog = RunLog(out, fresh=resumed is None, purge_step=resumed["step"] + 1 if resumed else None)

    driver = GRPODriver(cfg)
    try:
        setup = driver.start()
        signal.signal(signal.SIGTERM, _terminate)  # again: ray.init installs its own (which aborts)
        print("grpo: workers up " + " ".join(f"{k} {v:.1f}" for k, v in setup.items()), flush=True)
        if resumed is not None:
            driver.load_checkpoint(resume_dir)
            driver.step = resumed["step"]

        def run_eval(label: str) -> None:
            """Greedy held-out evaluation through the rollout engines (they hold the policy)."""
            e = cfg.eval
            if not e.enabled or (eval_dir / f"{label}.json").is_file():
                return
            result = evaluate(
                driver.rollout,
                driver.tokenizer,
                tasks=e.tasks,
                data_dir=e.data_dir,
                helpful_rm=e.helpful_rm or None,
                safety_rm=e.safety_rm or None,
                max_tokens=e.max_tokens,
                limit=e.limit or None,
            )
            eval_dir.mkdir(parents=True, exist_ok=True)
            tmp = eval_dir / f"{label}.json.partial"
            tmp.write_text(json.dumps(result, indent=1) + "\n")
            tmp.replace(eval_dir / f"{label}.json")
            shown = ", ".join(f"{k} {v:.3f}" for k, v in result.items() if isinstance(v, float))
            print(f"grpo: eval {label}: {shown}", flush=True)

        def save(index: int, stage, stage_step: int) -> Path:
            """Checkpoint after ``stage_step`` steps of stage ``index``; LATEST names it."""
            state = {
                "step": driver.step,
                "stage_index": index,
                "stage_name": stage.name,
                "stage_step": stage_step,
                "stage_done": stage_step == stage.steps,
                "consumed": stage.consumed,
                "time": time.time(),
                "fingerprint": fingerprint(cfg),
            }
            start = time.perf_counter()
            path = checkpoint.save(ckpt_root, driver.step, driver.save_checkpoint, state, cfg.checkpoint.keep)
            tqdm.write(f"grpo: checkpoint {path} ({time.perf_counter() - start:.1f}s)")
            return path

        if resumed is None:
            run_eval("sft")
        for index, stage_cfg in enumerate(cfg.stages):
            if resumed is not None and index < resumed["stage_index"]:
                continue
            stage = driver.prepare_stage(stage_cfg, splits[index])
            done = 0
            if resumed is not None and index == resumed["stage_index"]:
                done, stage.consumed = resumed["stage_step"], resumed["consumed"]
            elif stage_cfg.reset_reference:
                driver.trainer.reset_reference()
            driver.trainer.set_grpo(stage.grpo)
            bar = tqdm(
                total=stage.steps,
                initial=done,
                desc=f"stage {index + 1}/{len(cfg.stages)} {stage.name}",
                unit="step",
                dynamic_ncols=True,
            )

            for stage_step in range(done + 1, stage.steps + 1):
                try:
                    metrics = driver.train_step(stage)
                except RewardError as e:  # raised while scoring: the trainer has not moved
                    stage.consumed -= stage.grpo.prompts_per_step  # this step is redone on resume
                    bar.close()
                    latest = checkpoint.latest(ckpt_root)
                    if latest is None or checkpoint.read_state(latest)["step"] != driver.step:
                        latest = save(index, stage, stage_step - 1)
                    print(
                        f"grpo: stopped in step {driver.step + 1} (stage {stage.name!r}): {e}\n"
                        f"grpo: the run is saved in {latest}; fix the reward and run the same command "
                        "to resume",
                        file=sys.stderr,
                    )
                    return 3
                driver.step += 1
                runlog.write(driver.step, stage.name, metrics, extra={"data_indices": stage.last_indices})
                bar.update(1)
                bar.set_postfix(reward=f"{metrics.get('reward/mean', float('nan')):.3f}", step=driver.step)
                tqdm.write(summary_line(driver.step, stage.name, metrics))
                every = cfg.checkpoint.every_steps
                if stage_step == stage.steps or (every > 0 and driver.step % every == 0):
                    save(index, stage, stage_step)
            bar.close()
            run_eval(f"stage{index + 1}")

        final = driver.save_pretrained(out / "final")
        print(f"grpo: done; model in {final}, metrics in {runlog.path}", flush=True)
    except TrainerFailure as e:
        latest = checkpoint.latest(ckpt_root)
        print(
            f"grpo: stopped: {e}\ngrpo: "
            + (
                f"run the same command to resume from {latest}"
                if latest
                else "no checkpoint was written yet: the run starts over"
            ),
            file=sys.stderr,
        )
        return 4
    finally:
        runlog.close()
        driver.shutdown()

    if cfg.report:
        from align.report import summary_table, write_report

        summary = write_report(out)
        print(f"grpo: report in {out / 'report'}\n{summary_table(summary)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
