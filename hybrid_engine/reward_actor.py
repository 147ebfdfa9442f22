"""Rewards hosted in Ray actors: a reward model (or any ``rewards.load`` spec) loaded once in its own
process, restarted by Ray when it dies, with the interrupted call retried.

    reward = ActorReward("out/rm_helpful", num_cpus=0.25, max_restarts=3)   # starts the actor
    reward(prompts, completions)                                            # -> list[float]
    reward.restarts                                                         # calls retried so far
    reward.shutdown()

In a GRPO stage, a reward spec with ``ray_actor: true`` is hosted this way (veRL's and OpenRLHF's
reward-model workers): the driver stays light, and a reward model that crashes (out of memory, a
killed process) costs a retry, not the run. A call that still fails after ``max_restarts`` retries
raises, and ``rewards.combine`` then counts the batch's samples as errors, like any failing reward.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

log = logging.getLogger(__name__)


def absolute_spec(spec: str) -> str:
    """A spec naming a local path (an RM directory, ``file.py:fn``) made absolute, so that it means
    the same in an actor whose working directory may differ; anything else is returned as it is."""
    if os.path.exists(spec):
        return os.path.abspath(spec)
    path, sep, attr = spec.rpartition(":")
    if sep and path.endswith(".py") and os.path.isfile(path):
        return f"{os.path.abspath(path)}:{attr}"
    return spec


class RewardActor:
    """The actor side: builds ``rewards.load(spec, **options)`` in its process and scores batches."""

    def __init__(self, spec: str, options: dict | None = None, sandbox: dict | None = None, threads: int = 1):
        import torch

        import rewards
        from rewards import sandbox as sandbox_module

        if threads > 0:
            torch.set_num_threads(threads)
        if sandbox:
            sandbox_module.configure(**sandbox)  # the code reward's isolation, as in the driver
        self.spec = spec
        self.fn = rewards.load(spec, **(options or {}))
        self.calls = 0

    def score(self, prompts: list, completions: list, columns: dict) -> list:
        self.calls += 1
        out = self.fn(prompts=prompts, completions=completions, **columns)
        return list(out) if not isinstance(out, list) else out

    def health(self) -> dict[str, Any]:
        import ray

        return {
            "ok": True,
            "pid": os.getpid(),
            "spec": self.spec,
            "calls": self.calls,
            "restarted": ray.get_runtime_context().was_current_actor_reconstructed,
        }


class ActorReward:
    """The driver side: a reward callable that forwards each call to a :class:`RewardActor`.

    ``spec``, ``options``: as for ``rewards.load`` (paths are made absolute first). ``num_cpus``,
    ``num_gpus``: Ray resources of the actor. ``max_restarts``: times Ray restarts a dead actor;
    each restart retries the interrupted call once. ``ready_timeout_s``: how long to wait for the
    actor to load (and, after a death, to come back). ``sandbox``: ``rewards.sandbox.configure``
    keywords applied in the actor. ``name``: for messages.
    """

    def __init__(
        self,
        spec: str,
        options: dict | None = None,
        *,
        num_cpus: float = 0.25,
        num_gpus: float = 0.0,
        max_restarts: int = 3,
        ready_timeout_s: float = 300.0,
        sandbox: dict | None = None,
        name: str = "",
    ):
        import ray

        if max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {max_restarts}")
        self.spec = absolute_spec(spec)
        self.name = name or spec
        self.max_restarts = max_restarts
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self.ready_timeout_s = ready_timeout_s
        self.restarts = 0
        self.gave_up = ""
        self.__name__ = f"actor:{self.name}"
        self.actor = (
            ray.remote(RewardActor)
            .options(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts, max_task_retries=0)
            .remote(self.spec, options or {}, sandbox, max(1, int(num_cpus)))
        )

    def __repr__(self) -> str:
        return f"ActorReward({self.spec!r}, restarts={self.restarts})"

    def health(self, timeout_s: float | None = None) -> dict[str, Any]:
        """The actor's ``health()`` (waits for it to be constructed: its first call loads the reward)."""
        import ray

        return ray.get(self.actor.health.remote(), timeout=timeout_s or self.ready_timeout_s)

    def wait_ready(self) -> dict[str, Any]:
        """Wait until the actor has loaded its reward; a clear error if it cannot be placed (not
        enough free Ray resources) or its reward fails to load."""
        import ray
        from ray.exceptions import GetTimeoutError

        try:
            return self.health()
        except GetTimeoutError as e:
            raise RuntimeError(
                f"reward actor {self.name!r} did not start within {self.ready_timeout_s:.0f}s; it needs "
                f"num_cpus={self.num_cpus}, num_gpus={self.num_gpus} and Ray has "
                f"{ray.available_resources()} free (lower the reward's num_cpus or give Ray more)"
            ) from e

    def __call__(self, prompts: list, completions: list, **columns: Any) -> list:
        import ray
        from ray.exceptions import RayActorError

        if self.gave_up:
            raise RuntimeError(self.gave_up)
        for attempt in range(self.max_restarts + 1):
            try:
                return ray.get(self.actor.score.remote(list(prompts), list(completions), columns))
            except RayActorError as e:
                if attempt == self.max_restarts:
                    # later calls (combine's per-sample fallback, later steps) fail at once
                    self.gave_up = f"reward actor {self.name!r} died {attempt + 1} times; giving up: {e}"
                    raise RuntimeError(self.gave_up) from e
                self.restarts += 1
                log.warning("reward actor %r died during a call (%s); retrying", self.name, e)
                print(f"grpo: reward actor {self.name!r} died; retrying its call", flush=True)
                start = time.monotonic()
                self._wait_until_back()
                log.info("reward actor %r back after %.1fs", self.name, time.monotonic() - start)
        raise AssertionError("unreachable")

    def _wait_until_back(self) -> None:
        """Block until Ray has restarted the actor (a call queued on a restarting actor runs once
        it is back; on a dead one it raises at once)."""
        from ray.exceptions import GetTimeoutError, RayActorError

        deadline = time.monotonic() + self.ready_timeout_s
        for tries in range(1, 21):
            try:
                self.health(timeout_s=max(1.0, deadline - time.monotonic()))
                return
            except RayActorError:
                if tries == 20 or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)  # the death notice can reach us before the restart begins
            except GetTimeoutError as e:
                raise RuntimeError(
                    f"reward actor {self.name!r} did not come back within {self.ready_timeout_s:.0f}s"
                ) from e

    def shutdown(self) -> None:
        import ray

        if self.actor is not None:
            ray.kill(self.actor, no_restart=True)
            self.actor = None
