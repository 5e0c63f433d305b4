#!/usr/bin/env bash
# Install the custom node packs listed in LIST_FILE into CUSTOM_NODES_DIR (Docker build step).
#   install-custom-nodes.sh LIST_FILE CUSTOM_NODES_DIR [CONSTRAINTS_FILE]
# LIST_FILE: one pack a line, "GIT_URL [REF]"; blank lines and # comments are ignored.
# Each pack's requirements.txt is installed with "${PIP:-pip}" under CONSTRAINTS_FILE.
# install.py scripts are not run; .git folders are removed.
set -euo pipefail

list_file=$1
target=$2
constraints=${3:-}
pip_cmd=${PIP:-pip}

mkdir -p "$target"
while IFS= read -r line || [[ -n "$line" ]]; do
  line=${line//$'\r'/}
  line=${line%%#*}
  read -r url ref rest <<< "$line" || true
  [[ -z "${url:-}" ]] && continue
  if [[ -n "${rest:-}" ]]; then
    echo "install-custom-nodes: expected 'GIT_URL [REF]', got: $line" >&2
    exit 1
  fi
  name=$(basename "${url%/}" .git)
  dest="$target/$name"
  if [[ -e "$dest" ]]; then
    echo "install-custom-nodes: $dest already exists (listed twice?)" >&2
    exit 1
  fi
  echo "install-custom-nodes: $url ${ref:-(default branch)} -> $dest"
  if [[ -n "${ref:-}" ]]; then
    # fetch by name or commit id, shallow
    git init --quiet "$dest"
    git -C "$dest" remote add origin "$url"
    git -C "$dest" fetch --quiet --depth 1 origin "$ref"
    git -C "$dest" -c advice.detachedHead=false checkout --quiet FETCH_HEAD
  else
    git clone --quiet --depth 1 "$url" "$dest"
  fi
  if [[ -f "$dest/.gitmodules" ]]; then
    git -C "$dest" submodule update --quiet --init --recursive --depth 1
  fi
  rm -rf "$dest/.git"
  if [[ -f "$dest/requirements.txt" ]]; then
    args=(install --no-cache-dir -r "$dest/requirements.txt")
    [[ -n "$constraints" ]] && args+=(-c "$constraints")
    $pip_cmd "${args[@]}"
  fi
done < "$list_file"
