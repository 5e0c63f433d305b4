# Set-up is part of `run` and `test`: a fresh machine needs only `make run` / `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
# The torch trio (torch, torchvision, torchaudio) is pinned in requirements/torch.txt and
# constrains every later install: a torchvision or torchaudio built for another torch fails
# to import ("operator torchvision::nms does not exist").
TORCH := requirements/torch.txt
HOST ?= 127.0.0.1
PORT ?= 8000

# The device machine has no .venv and no network: gpu-check uses its python3 (with torch).
GPU_PYTHON := $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)

.PHONY: setup run test lint bench gpu-check gpu-bundle clean chromium

$(STAMP): pyproject.toml requirements/comfyui-headless.txt $(TORCH)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r $(TORCH)
	$(BIN)/pip install --quiet -c $(TORCH) -r requirements/comfyui-headless.txt
	$(BIN)/pip install --quiet -c $(TORCH) -e '.[worker,test]'
	$(BIN)/comfyui-runpod comfyui install
	$(MAKE) --no-print-directory chromium
	touch $@

setup: $(STAMP)

# The desktop browser tests drive Debian's chromium (playwright cannot download browsers
# here). CI runs as root on a fresh Debian machine; elsewhere, say what to run.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y chromium; \
	  else echo "chromium is missing: sudo apt-get install -y chromium (the desktop browser tests need it)"; fi; }

run: setup
	$(BIN)/comfyui-runpod serve --host $(HOST) --port $(PORT)

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile
	$(BIN)/python -m pytest

# P1-P6 (see docs/performance.md); BENCH_ARGS=--quick for a smoke run, --only overhead,soak.
bench: setup
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# One prepared run on a CUDA machine, ~4 min, report in $$OUT (docs/performance.md, "GPU
# check"). Without CUDA: one line, exit 0. GPU_CHECK_ARGS=--cpu: the same steps on the CPU.
# No `setup` prerequisite: it must run where nothing can be installed.
gpu-check:
	PYTHONUNBUFFERED=1 $(GPU_PYTHON) bench/gpu_check.py $(GPU_CHECK_ARGS)

# What gpu-check needs on the device machine and its image lacks (.gpu-check/, ~56 MiB).
gpu-bundle: setup
	$(BIN)/python bench/gpu_bundle.py

clean:
	rm -rf $(VENV) runpod-output .gpu-check
