"""The single controller of GRPO training: it holds the control flow and drives two worker groups
(FSDP2 trainer ranks, rollout engines) through a few coarse remote calls; one `GRPOBatch` crosses
the Ray boundary each way.

One step::

    prompts --generate--> completions --rewards--> advantages --GRPOBatch, sharded by length-->
    [old log-probs (ppo_epochs > 1)] [reference log-probs (beta > 0)] --update x ppo_epochs-->
    gather full weights from the FSDP2 shards --bucketed stream--> engines   (the layout swap)

With ``hybrid_engine.offload`` on GPU and colocated roles, the trainer state goes to CPU while the engines generate,
and the engines sleep while the trainer works (wake weights -> sync -> offload trainer -> wake KV
cache). On CPU there is no device memory to free: offload and sleep are skipped (``memory/*``
then reports the trainer ranks' peak RSS).
"""

from __future__ import annotations

import inspect
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from align.configs import GRPOConfig, GRPORecipeConfig, RayConfig, SandboxConfig, StageConfig
from align.models import render_prompt
from hybrid_engine.batch import GRPOBatch
from hybrid_engine.metrics import PhaseTimer, RunLog
from hybrid_engine.placement import Placement, make_placement
from hybrid_engine.trainer import TrainerGroup

log = logging.getLogger(__name__)


def configure_sandbox(cfg: SandboxConfig) -> None:
    """Apply the config's ``sandbox`` section to :mod:`rewards.sandbox` (the code reward's runner)."""
    from rewards import sandbox

    sandbox.configure(allow_unsafe=cfg.allow_unisolated, mode=cfg.mode)


def check_dashboard_exposure(cfg: RayConfig) -> None:
    """Refuse to start a dashboard (which accepts jobs, i.e. runs code) on a non-loopback address
    unless Ray's token authentication is on (``RAY_AUTH_MODE=token``)."""
    import ipaddress

    if cfg.address or os.environ.get("RAY_ADDRESS") or not cfg.include_dashboard:
        return  # no local dashboard is started
    host = cfg.dashboard_host.strip()
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        raise ValueError(
            f"ray.dashboard_host={host!r} would expose Ray's dashboard (and its job API, which runs "
            "code) beyond this machine without authentication; use 127.0.0.1, or set "
            "RAY_AUTH_MODE=token to turn on Ray's token authentication"
        )


def init_ray(cfg: RayConfig) -> None:
    """Connect to ``cfg.address`` (``auto``: the running local cluster), or to the cluster
    ``RAY_ADDRESS`` names (``ray job submit``), or start a new local Ray (never silently joining
    whatever cluster runs on the machine); nothing when Ray is already initialised (tests, notebooks)."""
    import ray

    if ray.is_initialized():
        return
    check_dashboard_exposure(cfg)
    if cfg.address:
        ray.init(address=cfg.address)
    elif os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        ray.init(
            address="local",
            num_cpus=cfg.num_cpus or None,
            include_dashboard=cfg.include_dashboard,
            dashboard_host=cfg.dashboard_host,
        )


def load_stage_data(stage: StageConfig, tokenizer: Any, output_dir: str | Path) -> Any:
    """A stage's prompts, read and validated (``align.data.load_split``: bad rows raise ``DataError``
    or, with ``on_bad_row: skip``, go to ``<output_dir>/rejected_rows.jsonl`` under the split name
    ``<stage>/train``, so the stages' records do not replace each other). A column that a reward's
    ``only_rows`` / ``skip_rows`` names and the data lacks raises ``DataError`` too."""
    from align.data import DataError, load_split

    split = load_split(
        stage.data.train,
        stage.data,
        split_name=f"{stage.name}/train",
        output_dir=output_dir,
        tokenizer=tokenizer,
        accept=("rl",),
    )
    columns = sorted(split.dataset.column_names)
    for name, spec in stage.rewards.items():
        missing = sorted({*spec.only_rows, *spec.skip_rows} - set(columns))
        if missing:
            raise DataError(
                f"{', '.join(stage.data.train)}: stage {stage.name!r}, reward {name!r}: only_rows/skip_rows "
                f"name the column(s) {missing}, which the data does not have (its columns: {columns})"
            )
    return split


@dataclass
class StageState:
    """What a stage trains on: its rows, their rendered prompts, the reward and the GRPO settings."""

    name: str
    rows: list[dict]
    prompt_ids: list[list[int]]
    reward: Callable
    grpo: GRPOConfig
    seed: int
    steps: int
    consumed: int = 0  # prompts drawn so far (the sampler is a function of this count)
    last_indices: list[int] | None = None  # the rows the last step trained on
    _order: tuple[int, list[int]] | None = None  # (epoch, its permutation)

    def next_indices(self, count: int) -> list[int]:
        """The next ``count`` prompts of a seeded shuffle, reshuffled every pass over the data.
        A function of ``consumed`` alone, so a resumed run draws what the original would have."""
        out = []
        for k in range(self.consumed, self.consumed + count):
            epoch, pos = divmod(k, len(self.rows))
            if self._order is None or self._order[0] != epoch:
                order = list(range(len(self.rows)))
                random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
                self._order = (epoch, order)
            out.append(self._order[1][pos])
        self.consumed += count
        return out


class GRPODriver:
    """Builds the worker groups from a :class:`align.configs.GRPORecipeConfig` and runs stages.

    Usage::

        driver = GRPODriver(cfg)
        driver.start()                         # Ray, placement group, engines, trainer ranks
        runlog = RunLog(cfg.output_dir)
        for stage in cfg.stages:
            driver.run_stage(stage, runlog)
        driver.save_pretrained(Path(cfg.output_dir) / "final")
        driver.shutdown()
    """

    def __init__(self, cfg: GRPORecipeConfig):
        self.cfg = cfg
        self.step = 0
        self.placement: Placement | None = None
        self.rollout: Any = None  # rollout.RolloutGroup
        self.trainer: TrainerGroup | None = None
        self.tokenizer: Any = None
        self.offload = False
        self.reward_actors: list[Any] = []  # hybrid_engine.reward_actor.ActorReward of the current stage

    # Setup --------------------------------------------------------------------------------------

    def start(self) -> dict[str, float]:
        """Start (or join) Ray, reserve the bundles, start engines and trainer ranks in parallel.
        Returns seconds per part (``setup/*``)."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
        from transformers import AutoTokenizer

        from rollout import RolloutGroup, RolloutWorker

        cfg, times = self.cfg, {}
        start = time.perf_counter()
        configure_sandbox(cfg.sandbox)
        init_ray(cfg.ray)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0
        # Offloading frees a device for the other role: only colocated roles share one.
        self.offload = cfg.hybrid_engine.offload and use_gpu and cfg.hybrid_engine.colocate
        self.placement = make_placement(
            cfg.hybrid_engine.colocate,
            cfg.trainer.num_workers,
            cfg.rollout.num_workers,
            trainer_cpus=cfg.trainer.cpus_per_worker,
            rollout_cpus=cfg.rollout.cpus_per_worker,
            use_gpu=use_gpu,
            tensor_parallel_size=cfg.rollout.tensor_parallel_size,
        )
        times["setup/ray_s"] = time.perf_counter() - start

        start = time.perf_counter()
        r = cfg.rollout
        backend_kwargs: dict[str, Any] = {"dtype": cfg.model.dtype}
        if r.backend == "vllm":
            backend_kwargs.update(
                seed=cfg.seed,
                max_model_len=r.max_model_len or None,
                tensor_parallel_size=r.tensor_parallel_size,
                kv_cache_gib=r.kv_cache_gib or None,
                gpu_memory_utilization=r.gpu_memory_utilization,
            )
        else:
            backend_kwargs["device"] = "cuda" if use_gpu else "cpu"
        engine = ray.remote(RolloutWorker)
        engines = [
            engine.options(
                max_restarts=r.max_restarts,  # a restarted engine starts from model.path: see _generate
                max_task_retries=0,
                num_cpus=r.cpus_per_worker,
                num_gpus=self.placement.rollout_gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self.placement.group, placement_group_bundle_index=bundle
                ),
            ).remote(cfg.model.path, r.backend, r.threads or None, True, **backend_kwargs)
            for bundle in self.placement.rollout_bundles
        ]
        self.rollout = RolloutGroup.from_workers(engines)  # before anything can fail: shutdown() kills them
        stages = [s.grpo.apply(cfg.grpo) for s in cfg.stages]
        self.trainer = TrainerGroup(  # builds while the engines build
            cfg.trainer.num_workers,
            cfg.model,
            cfg.trainer,
            stages[0] if stages else cfg.grpo,
            placement=(self.placement.group, self.placement.trainer_bundles),
            num_cpus=cfg.trainer.cpus_per_worker,
            num_gpus=self.placement.trainer_gpus,
            temperature=r.temperature,
            total_steps=sum(s.steps * g.ppo_epochs for s, g in zip(cfg.stages, stages)),
            use_ref=any(g.beta > 0 for g in stages),
            seed=cfg.seed,
        )
        ray.get([e.health.remote() for e in engines])
        if self.offload:
            self.trainer.offload()  # the first thing a step does is generate
        times["setup/workers_s"] = time.perf_counter() - start
        return times

    def prepare_stage(self, stage: StageConfig, split: Any = None) -> StageState:
        """Load and validate the stage's prompts (unless ``split``, what :func:`load_stage_data`
        returned for it, is given), render them, and build its reward."""
        import rewards

        if split is None:
            split = load_stage_data(stage, self.tokenizer, self.cfg.output_dir)
        rows = [dict(r) for r in split.dataset]
        self._stop_reward_actors()  # the previous stage's
        components = {}
        for name, spec in stage.rewards.items():
            if spec.ray_actor:
                from hybrid_engine.reward_actor import ActorReward

                fn = ActorReward(
                    spec.spec,
                    spec.options,
                    num_cpus=spec.num_cpus,
                    num_gpus=spec.num_gpus,
                    max_restarts=spec.max_restarts,
                    sandbox={
                        "allow_unsafe": self.cfg.sandbox.allow_unisolated,
                        "mode": self.cfg.sandbox.mode,
                    },
                    name=name,
                )
                self.reward_actors.append(fn)
            else:
                fn = rewards.load(spec.spec, **spec.options)
            if spec.only_rows or spec.skip_rows:
                fn = rewards.select_rows(fn, only=spec.only_rows, skip=spec.skip_rows)
            components[name] = (fn, spec.weight)
        for fn in self.reward_actors:
            fn.wait_ready()  # placed, loaded and answering (a spec that fails to load fails here)
        reward = rewards.combine(
            components,
            timeout_s=stage.reward_timeout_s,
            max_error_frac=stage.reward_max_error_frac,
        )
        return StageState(
            name=stage.name,
            rows=rows,
            prompt_ids=[render_prompt(self.tokenizer, r["prompt"]) for r in rows],
            reward=reward,
            grpo=stage.grpo.apply(self.cfg.grpo),
            seed=self.cfg.seed,
            steps=stage.steps,
        )

    # Training -----------------------------------------------------------------------------------

    def run_stage(
        self, stage: StageConfig | StageState, runlog: RunLog | None = None, steps: int | None = None
    ) -> list[dict[str, Any]]:
        """Run ``steps`` (default: the stage's) GRPO steps; one record per step (also to ``runlog``)."""
        state = stage if isinstance(stage, StageState) else self.prepare_stage(stage)
        count = steps if steps is not None else state.steps
        self.trainer.set_grpo(state.grpo)
        records = []
        for _ in range(count):
            metrics = self.train_step(state)
            self.step += 1
            record = (
                runlog.write(self.step, state.name, metrics) if runlog else {"step": self.step, **metrics}
            )
            records.append(record)
            print(summary_line(self.step, state.name, metrics), flush=True)
        return records

    def train_step(self, state: StageState) -> dict[str, float]:
        """One GRPO step (see the module doc); returns its metrics."""
        import torch

        from align.grpo import group_advantages, group_stats
        from rollout import SamplingParams

        cfg, g, timer = self.cfg, state.grpo, PhaseTimer()
        step_start = time.perf_counter()
        metrics: dict[str, float] = {}

        picked = state.next_indices(g.prompts_per_step)
        state.last_indices = picked
        rows = [state.rows[i] for i in picked]
        prompt_ids = [state.prompt_ids[i] for i in picked]
        params = SamplingParams(
            n=g.group_size,
            temperature=cfg.rollout.temperature,
            top_p=cfg.rollout.top_p,
            top_k=cfg.rollout.top_k,
            max_tokens=cfg.rollout.max_tokens,
            seed=(cfg.seed * 1_000_003 + self.step) * 4096,
        )
        with timer("gen"):
            groups, restarts = self._generate(prompt_ids, params)
        metrics["rollout/restarts"] = float(restarts)
        if self.offload:
            metrics.update(_prefixed("memory/rollout", self.trainer.memory()))
        completions = [c for cs in groups for c in cs]
        texts = self.tokenizer.batch_decode([c.token_ids for c in completions], skip_special_tokens=True)
        repeat = [i for i in range(len(rows)) for _ in range(g.group_size)]

        with timer("reward"):
            columns = {k: [rows[i][k] for i in repeat] for k in rows[0] if k != "prompt"}
            scores = state.reward.score([rows[i]["prompt"] for i in repeat], texts, **columns)
        rewards_B = torch.tensor([float("nan") if v is None else float(v) for v in scores.total])
        adv_B = group_advantages(rewards_B, g.group_size, eps=g.eps, scale=g.scale_rewards)
        metrics.update(scores.metrics)
        for name, (fn, _) in getattr(state.reward, "components", {}).items():
            fn = inspect.unwrap(fn)  # through rewards.select_rows (only_rows / skip_rows)
            if hasattr(fn, "restarts"):  # a reward hosted in a Ray actor: its retried calls so far
                metrics[f"reward/{name}/actor_restarts"] = float(fn.restarts)
        metrics.update({f"advantage/{k}": v for k, v in group_stats(rewards_B, g.group_size).items()})
        metrics.update({"advantage/mean": adv_B.mean().item(), "advantage/std": adv_B.std().item()})
        metrics["advantage/abs_mean"] = adv_B.abs().mean().item()

        lens = [len(c.token_ids) for c in completions]
        metrics["completion/length_mean"] = sum(lens) / len(lens)
        metrics["completion/length_max"] = float(max(lens))
        metrics["completion/truncated_frac"] = sum(c.finish_reason == "length" for c in completions) / len(
            lens
        )

        batch = GRPOBatch.build(
            [prompt_ids[i] for i in repeat],
            [c.token_ids for c in completions],
            adv_B,
            [c.logprobs for c in completions],
        )
        shards, _ = batch.shard(len(self.trainer), by_prompt=cfg.trainer.batching == "shared_prefix")
        if self.offload:
            with timer("sleep"):
                self.rollout.sleep()
            with timer("reload"):
                self.trainer.reload()
        if g.ppo_epochs > 1:
            with timer("old_logp"):
                for shard, logp in zip(shards, self.trainer.compute_logprobs(shards, "policy")):
                    shard.old_logp_BT = logp
        if g.beta > 0:
            with timer("ref"):
                for shard, logp in zip(shards, self.trainer.compute_logprobs(shards, "ref")):
                    shard.ref_logp_BT = logp
        with timer("update"):
            epochs = [self.trainer.update(shards) for _ in range(g.ppo_epochs)]
        for key in epochs[0]:
            metrics[f"train/{key}"] = sum(e[key] for e in epochs) / len(epochs)
        metrics["train/skipped_updates"] = epochs[-1]["skipped_updates"]
        if "rollout_logp_abs_diff" in epochs[0]:  # later epochs see a moved policy
            metrics["train/rollout_logp_abs_diff"] = epochs[0]["rollout_logp_abs_diff"]
        metrics.pop("train/skipped", None)
        metrics.update(_prefixed("memory/train", self.trainer.memory()))

        self.sync_weights(timer)

        metrics.update(timer.seconds)
        metrics["timing/step"] = time.perf_counter() - step_start
        gen_tokens = sum(lens)
        metrics["perf/gen_tokens_per_s"] = gen_tokens / max(timer.seconds["timing/gen"], 1e-9)
        total_tokens = int(batch.lengths_B.sum())
        metrics["perf/tokens_per_s"] = total_tokens / metrics["timing/step"]
        return metrics

    def _generate(self, prompt_ids: list[list[int]], params: Any) -> tuple[list, int]:
        """Generate; when an engine died (Ray restarts it, from ``model.path``), wait until every
        engine answers, send them the current weights, and retry, up to ``rollout.max_restarts``
        times. Returns the completions and the number of retries."""
        from ray.exceptions import RayActorError

        for attempt in range(self.cfg.rollout.max_restarts + 1):
            try:
                return self.rollout.generate(prompt_ids, params), attempt
            except RayActorError as e:
                if attempt == self.cfg.rollout.max_restarts:
                    raise
                log.warning("a rollout engine died during generation (%s); restarting it", e)
                print(f"grpo: a rollout engine died in step {self.step + 1}; retrying", flush=True)
                self._wait_for_engines()
                if self.offload:
                    self.rollout.sleep()
                    self.trainer.reload()
                self.sync_weights()
        raise AssertionError("unreachable")

    def _wait_for_engines(self, timeout_s: float = 600.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            report = self.rollout.health(timeout_s=max(1.0, min(60.0, deadline - time.monotonic())))
            if all(r.get("ok") for r in report):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"rollout engines did not come back within {timeout_s:.0f}s: {report}")
            time.sleep(2.0)

    # Weights, checkpoints and shutdown ---------------------------------------------------------

    def sync_weights(self, timer: PhaseTimer | None = None) -> None:
        """The layout swap: gather the trainer's shards and stream them to the engines (waking the
        engines' weights first and offloading the trainer after, when offloading)."""
        timer = timer or PhaseTimer()
        if self.offload:
            with timer("wake"):
                self.rollout.wake_up(["weights"])
        with timer("weight_sync"):
            shares = self.placement.shares()
            targets = [
                [self.rollout.workers[e] for e in shares.get(rank, [])] for rank in range(len(self.trainer))
            ]
            self.trainer.push_weights(targets, self.cfg.rollout.weight_bucket_mb << 20)
        if self.offload:
            with timer("offload"):
                self.trainer.offload()
            with timer("wake"):
                self.rollout.wake_up(["kv_cache"])

    def save_checkpoint(self, path: str | Path) -> None:
        """Write the policy (``path/policy``, HF format) and the trainer state (``path/trainer``)."""
        path = Path(path)
        self.trainer.save_pretrained(path / "policy")
        self.trainer.save_state(path / "trainer")

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore the trainer state of :meth:`save_checkpoint` and send its policy to the engines."""
        self.trainer.load_state(Path(path) / "trainer")
        if self.offload:  # the state of a training step's end: engines asleep, trainer on the device
            self.rollout.sleep()
            self.trainer.reload()
        self.sync_weights()

    def full_state_dict(self) -> dict[str, Any]:
        """The trainer's whole policy (gathered, CPU, base-model names)."""
        return self.trainer.full_state_dict()

    def save_pretrained(self, path: str | Path) -> str:
        """Write the policy as an HF model directory (loads with transformers and vLLM)."""
        return self.trainer.save_pretrained(path)

    def _stop_reward_actors(self) -> None:
        for fn in self.reward_actors:
            fn.shutdown()
        self.reward_actors = []

    def shutdown(self) -> None:
        import ray

        self._stop_reward_actors()
        if self.trainer is not None:
            self.trainer.shutdown()
            self.trainer = None
        if self.rollout is not None:
            self.rollout.shutdown()
            self.rollout = None
        if self.placement is not None:
            ray.util.remove_placement_group(self.placement.group)
            self.placement = None


def _prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}/{k}": v for k, v in values.items()}


def summary_line(step: int, stage: str, m: dict[str, float]) -> str:
    """One console line per step."""
    times = " ".join(
        f"{k.removeprefix('timing/')} {v:.2f}s"
        for k, v in m.items()
        if k.startswith("timing/") and k != "timing/step"
    )
    return (
        f"step {step} [{stage}] reward {m.get('reward/mean', float('nan')):.3f} "
        f"kl {m.get('train/kl', 0.0):.4f} len {m.get('completion/length_mean', 0.0):.1f} "
        f"grad {m.get('train/grad_norm', 0.0):.3f} | {times} | step {m.get('timing/step', 0.0):.2f}s"
    )


def stage_configs(cfg: GRPORecipeConfig, names: Sequence[str] | None = None) -> list[StageConfig]:
    """The stages to run, in config order (all when ``names`` is None)."""
    if names is None:
        return list(cfg.stages)
    known = {s.name: s for s in cfg.stages}
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(f"unknown stage(s) {missing}; the config has {list(known)}")
    return [known[n] for n in names]
