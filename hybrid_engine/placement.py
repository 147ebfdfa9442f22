"""Where the workers go: one Ray placement group whose bundles hold trainer ranks and rollout
engines, together (``colocate``: the paper's hybrid engine) or apart."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Placement:
    """A placement group and the bundle of each trainer rank and each rollout engine.

    ``trainer_gpus`` / ``rollout_gpus``: the GPU share each actor asks for (fractions of one device
    when they share a bundle; 0 on CPU).
    """

    group: Any
    trainer_bundles: list[int]
    rollout_bundles: list[int]
    trainer_gpus: float
    rollout_gpus: float
    colocate: bool

    def shares(self) -> dict[int, list[int]]:
        """Trainer rank -> the engines on its bundle (colocated), or rank 0 -> every engine."""
        if self.colocate:
            return {
                rank: [e for e, b in enumerate(self.rollout_bundles) if b == bundle]
                for rank, bundle in enumerate(self.trainer_bundles)
            }
        return {
            rank: (list(range(len(self.rollout_bundles))) if rank == 0 else [])
            for rank in range(len(self.trainer_bundles))
        }


def bundles_for(
    colocate: bool,
    num_trainers: int,
    num_engines: int,
    *,
    trainer_cpus: float,
    rollout_cpus: float,
    use_gpu: bool,
    tensor_parallel_size: int = 1,
) -> tuple[list[dict[str, float]], list[int], list[int]]:
    """The bundles and the bundle index of each trainer rank and each engine.

    ``colocate``: bundle i holds trainer rank i and, for i < num_engines, engine i (one device each
    on GPU, shared). Otherwise trainer bundles come first, then one bundle per engine (with
    ``tensor_parallel_size`` GPUs).
    """
    if colocate:
        if num_engines > num_trainers:
            raise ValueError(f"colocate needs num_engines ({num_engines}) <= num_trainers ({num_trainers})")
        if use_gpu and tensor_parallel_size > 1:
            raise NotImplementedError("colocated engines with tensor_parallel_size > 1 are not supported yet")
        bundles = []
        for i in range(num_trainers):
            bundle: dict[str, float] = {"CPU": trainer_cpus + (rollout_cpus if i < num_engines else 0.0)}
            if use_gpu:
                bundle["GPU"] = 1.0
            bundles.append(bundle)
        return bundles, list(range(num_trainers)), list(range(num_engines))
    bundles = [{"CPU": trainer_cpus, **({"GPU": 1.0} if use_gpu else {})} for _ in range(num_trainers)]
    bundles += [
        {"CPU": rollout_cpus, **({"GPU": float(tensor_parallel_size)} if use_gpu else {})}
        for _ in range(num_engines)
    ]
    return bundles, list(range(num_trainers)), list(range(num_trainers, num_trainers + num_engines))


def make_placement(
    colocate: bool,
    num_trainers: int,
    num_engines: int,
    *,
    trainer_cpus: float = 1.0,
    rollout_cpus: float = 1.0,
    use_gpu: bool = False,
    tensor_parallel_size: int = 1,
    timeout_s: float = 120.0,
) -> Placement:
    """Reserve the bundles (strategy PACK: as few nodes as possible) and wait until they are ready."""
    import ray
    from ray.util.placement_group import placement_group

    bundles, trainer_bundles, rollout_bundles = bundles_for(
        colocate,
        num_trainers,
        num_engines,
        trainer_cpus=trainer_cpus,
        rollout_cpus=rollout_cpus,
        use_gpu=use_gpu,
        tensor_parallel_size=tensor_parallel_size,
    )
    group = placement_group(bundles, strategy="PACK")
    ready, _ = ray.wait([group.ready()], timeout=timeout_s)
    if not ready:
        ray.util.remove_placement_group(group)
        raise RuntimeError(
            f"Ray could not reserve {bundles} within {timeout_s:.0f} s (cluster resources: "
            f"{ray.cluster_resources()}); lower trainer/rollout cpus_per_worker or num_workers"
        )
    if use_gpu:
        # Two actors on one device: each asks for part of it so that Ray puts both on that GPU.
        trainer_gpus, rollout_gpus = (0.5, 0.5) if colocate else (1.0, float(tensor_parallel_size))
    else:
        trainer_gpus = rollout_gpus = 0.0
    return Placement(group, trainer_bundles, rollout_bundles, trainer_gpus, rollout_gpus, colocate)
