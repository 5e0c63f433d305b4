# syntax=docker/dockerfile:1
# The serverless image: a pinned ComfyUI and this package, started as `comfyui-runpod worker`.
#   docker build -t comfyui-runpod .            (every build arg: docs/deploy.md)
#
# Stages: builder (venv, ComfyUI, custom nodes, this package; has git and compilers),
# models (optional downloads; has curl), final (Python, tcmalloc, the results of both).

# CUDA 13.0 to match the torch trio (requirements/torch.txt: PyPI's torch 2.11.0 is a CUDA 13
# build, which needs a driver for CUDA >= 13.0). The torch wheels carry their own CUDA libraries, so the small
# "base" flavour (cudart, the driver check) is enough: "runtime" and "cudnn-runtime" would
# add a second, unused copy of cuBLAS/cuDNN.
ARG BASE_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04

# ---------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

# The newest ComfyUI release CI tests (executor/locate.py PINNED_VERSION); any vX.Y.Z tag
# works, and CI also tests 0.3.75 (--build-arg COMFYUI_VERSION=0.3.75).
ARG COMFYUI_VERSION=0.33.0
ARG COMFYUI_REPO=https://github.com/comfyanonymous/ComfyUI.git
# The torch trio is requirements/torch.txt, as the Makefile installs it; TORCH_INDEX_URL picks
# another CUDA build of it (e.g. https://download.pytorch.org/whl/cu128; then change
# BASE_IMAGE to match).
ARG TORCH_INDEX_URL=
# Extra custom node packs, one "GIT_URL [REF]" a line (see docker/custom-nodes.txt).
ARG CUSTOM_NODES_FILE=docker/custom-nodes.txt
ARG DEBIAN_FRONTEND=noninteractive

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Build tools stay in this stage: some custom nodes' requirements compile.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential ca-certificates git python3 python3-dev python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# torch, torchvision and torchaudio as one pinned trio; the constraints file keeps every
# later install (ComfyUI's, ours, custom nodes') from moving them.
COPY requirements/torch.txt /tmp/torch.txt
COPY docker/constraints.txt /tmp/constraints.txt
RUN if [ -n "$TORCH_INDEX_URL" ]; then export PIP_INDEX_URL="$TORCH_INDEX_URL"; fi \
    && pip install --no-cache-dir -r /tmp/torch.txt \
    && cat /tmp/torch.txt /tmp/constraints.txt > /opt/venv/constraints.txt \
    && rm /tmp/torch.txt /tmp/constraints.txt

# ComfyUI at its release tag, and its requirements minus: the torch trio (above), and the
# web UI's frontend, templates and docs (a worker has no UI).
RUN git clone --quiet --depth 1 --branch "v${COMFYUI_VERSION}" "$COMFYUI_REPO" /comfyui \
    && grep -q "__version__ = \"${COMFYUI_VERSION}\"" /comfyui/comfyui_version.py \
    && rm -rf /comfyui/.git \
    && grep -v -E '^(torch|torchvision|torchaudio|comfyui-frontend-package|comfyui-workflow-templates[A-Za-z0-9_-]*|comfyui-embedded-docs)([^A-Za-z0-9_.-]|$)' \
        /comfyui/requirements.txt > /tmp/comfyui-requirements.txt \
    && pip install --no-cache-dir -c /opt/venv/constraints.txt -r /tmp/comfyui-requirements.txt \
    && rm /tmp/comfyui-requirements.txt

COPY --chmod=755 docker/install-custom-nodes.sh /usr/local/bin/install-custom-nodes
COPY ${CUSTOM_NODES_FILE} /tmp/custom-nodes.txt
RUN install-custom-nodes /tmp/custom-nodes.txt /comfyui/custom_nodes /opt/venv/constraints.txt \
    && rm /tmp/custom-nodes.txt

# This package, twice on purpose: pip-installed (the `comfyui-runpod` command) and as a
# node pack in custom_nodes/ (its __init__.py then shares the installed package's nodes).
COPY . /src/comfyui-runpod
RUN cp -a /src/comfyui-runpod /comfyui/custom_nodes/comfyui-runpod \
    && pip install --no-cache-dir -c /opt/venv/constraints.txt "/src/comfyui-runpod[worker,azure]" \
    && { python -m compileall -q /comfyui > /dev/null \
        || echo "compileall: some files did not compile; Python compiles them at import"; }

# What a worker never uses: tests of dependencies, static libraries, a second NVRTC, AMD
# kernels in a CUDA image, ComfyUI's tests (docs/deploy.md, "Image size").
COPY --chmod=755 docker/prune-image.sh /usr/local/bin/prune-image
RUN prune-image /opt/venv /comfyui

# ---------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS models

ARG DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --chmod=755 docker/fetch-models.sh /usr/local/bin/fetch-models

# Models baked into the image: "KIND/FILE=URL ..." (e.g. checkpoints/x.safetensors=https://...),
# saved as /comfyui/models/KIND/FILE. Gated Hugging Face files: --secret id=hf_token,src=FILE.
ARG MODEL_URLS=
RUN --mount=type=secret,id=hf_token fetch-models /models "$MODEL_URLS"

# ---------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS final

ARG DEBIAN_FRONTEND=noninteractive
# Runtime libraries some custom nodes need (e.g. "libgl1 libglib2.0-0" for OpenCV).
ARG EXTRA_APT_PACKAGES=
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# hadolint ignore=DL3008,SC2086
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates git libtcmalloc-minimal4t64 python3 $EXTRA_APT_PACKAGES \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s "$(find /usr/lib -name libtcmalloc_minimal.so.4 -print -quit)" \
        /usr/local/lib/libtcmalloc_minimal.so.4 \
    && test -e /usr/local/lib/libtcmalloc_minimal.so.4

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /comfyui /comfyui
COPY --from=models /models/ /comfyui/models/
# Network-volume model folders (/runpod-volume/models/...) and a model-free warmup workflow.
COPY docker/extra_model_paths.yaml docker/warmup.json /comfyui/

ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    COMFYUI_PATH=/comfyui \
    LD_PRELOAD=/usr/local/lib/libtcmalloc_minimal.so.4 \
    PYTHONUNBUFFERED=1

WORKDIR /comfyui
# The node index (which built-in module provides which node type), built here once so
# that every worker's first boot imports those modules on first use (README, "Boot").
RUN comfyui-runpod comfyui index --cpu
CMD ["comfyui-runpod", "worker", "--extra-model-paths", "/comfyui/extra_model_paths.yaml", \
     "--custom-nodes", "/runpod-volume/custom_nodes"]
