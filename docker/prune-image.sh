#!/usr/bin/env bash
# Remove what a worker never uses from the venv and ComfyUI (Docker build step, builder
# stage, after every install; docs/deploy.md "Image size" has the sizes).
#   prune-image.sh VENV COMFYUI
# Kept on purpose: bytecode caches (they make the boot faster), headers (with a compiler
# added through EXTRA_APT_PACKAGES, torch.compile needs them), pip (node installs).
set -euo pipefail

venv=$1
comfyui=$2
site=$(echo "$venv"/lib/python3*/site-packages)
[[ -d "$site" ]] || { echo "prune-image: no site-packages under $venv" >&2; exit 1; }
before=$(du -sm "$venv" "$comfyui" | awk '{s += $1} END {print s}')

# Test suites of dependencies (numpy, scipy, sympy, ...): folders named tests, never
# imported by the packages themselves (a tests.py module, as in jinja2, is kept).
find "$site" -type d -name tests -prune -exec rm -rf {} +
# Static libraries: link-time inputs only (triton's static CUPTI, CUDA's *_static.a).
find "$site" -type f -name '*.a' -delete
# protobuf's compiler, shipped twice in torch's wheel and never run.
rm -f "$site"/torch/bin/protoc "$site"/torch/bin/protoc-[0-9]*
# A second build of NVRTC (.alt) beside the one torch loads; nothing links it.
rm -f "$site"/nvidia/cu*/lib/libnvrtc.alt.so* "$site"/nvidia/cu*/lib/libnvrtc-builtins.alt.so*
# AMD GPU kernels, loaded only by a ROCm build of torch.
if ! grep -qs '^Version: .*rocm' "$site"/torch-*.dist-info/METADATA; then
  rm -rf "$site"/comfy_kitchen/backends/hip "$site"/triton/backends/amd
fi
# ComfyUI's own test suites.
rm -rf "$comfyui"/tests "$comfyui"/tests-unit

after=$(du -sm "$venv" "$comfyui" | awk '{s += $1} END {print s}')
echo "prune-image: $venv and $comfyui: ${before} MB -> ${after} MB"
