#!/usr/bin/env bash
# Download models into the image at build time (Docker build step).
#   fetch-models.sh TARGET_DIR "KIND/FILE=URL KIND/FILE=URL ..."
# Each entry lands at TARGET_DIR/KIND/FILE, e.g. checkpoints/sd15.safetensors=https://...
# (KIND is a ComfyUI model folder: checkpoints, loras, vae, ...). Entries are separated by
# whitespace. A Hugging Face token, if the file HF_TOKEN_FILE exists (a BuildKit secret,
# default /run/secrets/hf_token), is sent to huggingface.co URLs only.
set -euo pipefail

target=$1
entries=${2:-}
token_file=${HF_TOKEN_FILE:-/run/secrets/hf_token}

mkdir -p "$target"
set -f  # URLs may hold ? and *: split on whitespace, never glob
for entry in $entries; do
  path=${entry%%=*}
  url=${entry#*=}
  if [[ "$entry" != *=* || -z "$path" || -z "$url" || "$path" != */* ]]; then
    echo "fetch-models: expected KIND/FILE=URL, got: $entry" >&2
    exit 1
  fi
  if [[ "$path" == /* || "/$path/" == */../* || "/$path/" == */./* ]]; then
    echo "fetch-models: $path must be a plain relative path" >&2
    exit 1
  fi
  headers=()
  if [[ -s "$token_file" && "$url" =~ ^https://huggingface\.co/ ]]; then
    headers=(-H "Authorization: Bearer $(cat "$token_file")")
  fi
  mkdir -p "$target/$(dirname "$path")"
  echo "fetch-models: $url -> $target/$path"
  curl --fail --silent --show-error --location --retry 3 "${headers[@]}" \
    --output "$target/$path.part" "$url"
  mv "$target/$path.part" "$target/$path"
done
