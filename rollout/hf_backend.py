"""The transformers rollout backend: batched ``model.generate`` with left padding, for comparison
with vLLM and for models or places vLLM cannot serve."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rollout.types import Completion, SamplingParams
from rollout.weights import WeightAssembly, WeightLayout

if TYPE_CHECKING:
    import torch
    import transformers


class HFBackend:
    """``transformers.generate`` behind :class:`rollout.types.RolloutBackend`.

    Logprobs are the log-softmax of the raw logits (``output_logits=True``: before temperature,
    top-k and top-p), the same quantity as vLLM's ``raw_logprobs``. Prompts are processed
    ``batch_size`` at a time, each repeated ``n`` times (so greedy ``n > 1`` works too), with one
    random stream per call (``SamplingParams.seed`` seeds it).

    Args:
        model_path: HF model directory, or pass a loaded ``model`` instead.
        dtype, device: where and how to load it.
        batch_size: prompts per ``generate`` call.
        num_threads: torch intra-op threads; ``None`` keeps the process's setting.
    """

    name = "hf"

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        model: transformers.PreTrainedModel | None = None,
        dtype: str = "float32",
        device: str = "cpu",
        batch_size: int = 64,
        num_threads: int | None = None,
    ):
        import torch
        from transformers import AutoModelForCausalLM

        if num_threads is not None:
            torch._C.set_num_threads(num_threads)  # the real one, even after vLLM replaced torch's
        if model is None:
            if model_path is None:
                raise ValueError("pass model_path or model")
            model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
        self.model = model.to(device).eval()
        self.model_path = str(model_path) if model_path is not None else None
        self.device = device
        self.batch_size = batch_size
        gen = self.model.generation_config
        eos = gen.eos_token_id
        self.eos_token_ids = [eos] if isinstance(eos, int) else list(eos or [])
        self.pad_token_id = (
            gen.pad_token_id if gen.pad_token_id is not None else (self.eos_token_ids or [0])[0]
        )
        self.layout = WeightLayout(self.model)
        self.asleep = False
        self.weights_ok = True
        self.weight_version = 0
        self._assembly: WeightAssembly | None = None
        self._stream_loaded = False
        self._params = self.model.state_dict(keep_vars=True)

    # ------------------------------------------------------------------------------------------
    # Generation

    def generate(
        self, prompt_token_ids: Sequence[Sequence[int]], params: SamplingParams
    ) -> list[list[Completion]]:
        """Per prompt, ``params.n`` completions (see :class:`rollout.types.Completion`)."""
        import torch

        if self.asleep:
            raise RuntimeError("the engine is asleep: call wake_up() before generate()")
        if self._assembly is not None or not self.weights_ok:
            raise RuntimeError("a weight update is open or failed part-way: complete an update first")
        if params.seed is not None:
            torch.manual_seed(params.seed)
        prompts = [[int(t) for t in p] for p in prompt_token_ids]
        result: list[list[Completion]] = [[] for _ in prompts]
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            for row, completion in enumerate(self._generate_chunk(chunk, params)):
                completion.prompt_index = start + row // params.n
                result[completion.prompt_index].append(completion)
        return result

    def _generate_chunk(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        import torch
        from transformers import GenerationConfig

        rows = [p for p in prompts for _ in range(params.n)]
        width = max(len(p) for p in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, p in enumerate(rows):  # left padding: every row's last prompt token is at the end
            input_ids[i, width - len(p) :] = torch.tensor(p)
            attention_mask[i, width - len(p) :] = 1
        stop = list(dict.fromkeys(self.eos_token_ids + list(params.stop_token_ids)))
        sampling = {}
        if not params.greedy:
            sampling = {
                "temperature": params.temperature,
                "top_p": params.top_p,
                "top_k": max(params.top_k, 0),
            }
        config = GenerationConfig(  # explicit, so none of the model's generation defaults apply
            do_sample=not params.greedy,
            max_new_tokens=params.max_tokens,
            min_new_tokens=params.min_tokens or None,
            eos_token_id=stop,
            pad_token_id=self.pad_token_id,
            output_logits=True,
            return_dict_in_generate=True,
            **sampling,
        )
        with torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                generation_config=config,
            )
        new_BT = out.sequences[:, width:].cpu()
        logp_BTV = torch.stack(out.logits, 1).float().log_softmax(-1).cpu()
        logp_BT = logp_BTV.gather(-1, new_BT.unsqueeze(-1)).squeeze(-1)
        stop_set = set(stop)
        completions = []
        for ids, logp in zip(new_BT.tolist(), logp_BT.tolist()):
            end = next((t + 1 for t, tok in enumerate(ids) if tok in stop_set), None)
            finish = "stop" if end is not None else "length"
            end = end if end is not None else len(ids)
            completions.append(Completion(-1, ids[:end], logp[:end], finish))
        return completions

    def warmup(self, num_prompts: int = 4, max_tokens: int = 8) -> float:
        start = time.perf_counter()
        prompts = [[1 + (i % 7)] * (4 + i) for i in range(num_prompts)]
        self.generate(prompts, SamplingParams(n=2, temperature=1.0, max_tokens=max_tokens, seed=0))
        return time.perf_counter() - start

    # ------------------------------------------------------------------------------------------
    # Weights (trainer names are this model's own names: no conversion)

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> float:
        start = time.perf_counter()
        named = dict(named_tensors)
        assembly = self.layout.assembly({n: tuple(t.shape) for n, t in named.items()})
        for layer in assembly.add(named.items()):
            self._copy(layer)
        assembly.finish()
        self.weights_ok = True
        self.weight_version += 1
        return time.perf_counter() - start

    def begin_weight_stream(self, spec: Mapping[str, Sequence[int]]) -> None:
        if self._assembly is not None:
            raise RuntimeError("a weight stream is already open")
        self._assembly, self._stream_loaded = self.layout.assembly(spec), False

    def load_weight_bucket(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        if self._assembly is None:
            raise RuntimeError("no weight stream is open: call begin_weight_stream(spec) first")
        try:
            for layer in self._assembly.add(named_tensors):
                self._stream_loaded = True
                self._copy(layer)
        except BaseException:
            self.abort_weight_stream()
            raise

    def end_weight_stream(self) -> None:
        if self._assembly is None:
            raise RuntimeError("no weight stream is open")
        try:
            self._assembly.finish()
        except BaseException:
            self.abort_weight_stream()
            raise
        self._assembly = None
        self.weights_ok = True
        self.weight_version += 1

    def abort_weight_stream(self) -> None:
        """Close an open stream; if layers were already copied the model is part old, part new
        and ``generate`` refuses until a complete update."""
        if self._assembly is not None:
            self._assembly = None
            self.weights_ok = self.weights_ok and not self._stream_loaded

    def check_weight_spec(self, spec: Mapping[str, Sequence[int]]) -> None:
        self.layout.validate(spec)

    def _copy(self, layer: Mapping[str, torch.Tensor]) -> None:
        import torch

        with torch.no_grad():
            for name, tensor in layer.items():
                self._params[name].copy_(tensor)

    # ------------------------------------------------------------------------------------------

    def sleep(self) -> None:
        """CUDA: move the model to host memory. CPU: nothing to release (generate refuses until wake_up)."""
        import torch

        if not self.asleep and self.device != "cpu":
            self.model.to("cpu")
            torch.cuda.empty_cache()
        self.asleep = True

    def wake_up(self, tags: list[str] | None = None) -> None:
        if self.asleep and self.device != "cpu":
            self.model.to(self.device)
        self.asleep = False

    def info(self) -> dict[str, Any]:
        import torch

        return {
            "backend": self.name,
            "device": self.device,
            "model_path": self.model_path,
            "asleep": self.asleep,
            "weights_ok": self.weights_ok,
            "weight_version": self.weight_version,
            "num_threads": torch.get_num_threads(),
        }

    def close(self) -> None:
        self.model = None
        self._params = {}
