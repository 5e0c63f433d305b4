"""What a remote job failed for lack of, in words for the desktop panel, and the models it
could fetch to run after all.

The endpoint's ``validation_failed`` says *what* it does not have: node types it does not
know (``details.unknown_node_types``), model files not in a loader's list (ComfyUI's
``value_not_in_list`` node errors, or ``details.missing_models``). The saved workflow the
desktop queued says *where they come from*, as ComfyUI's frontend saves it:
``properties.models`` (``[{"name", "url", "directory", "hash"?, "hash_type"?}]``) on
loaders and ``properties.cnr_id`` / ``aux_id`` / ``ver`` on custom nodes. The desktop
sends the endpoint an API-format prompt, which carries no properties, so the models to
fetch go along as ``input.models`` when the job is queued again.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

#: A folder's files, said as a person names them ("checkpoint X (checkpoints)").
_KINDS = {
    "checkpoints": "checkpoint",
    "loras": "LoRA",
    "vae": "VAE",
    "controlnet": "ControlNet",
    "upscale_models": "upscale model",
    "embeddings": "embedding",
    "clip": "text encoder",
    "text_encoders": "text encoder",
    "unet": "diffusion model",
    "diffusion_models": "diffusion model",
    "clip_vision": "CLIP vision model",
}
_MAX_LINES = 50
#: What a model file is named when the workflow does not say it is one.
_MODEL_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".onnx")


def lacking(
    output: Any, workflow: Mapping[str, Any] | None
) -> tuple[list[str], list[dict[str, str]]]:
    """(one line per thing the endpoint lacks, the ``input.models`` entries that fetch the
    missing models the workflow names with a URL); both empty for other failures."""
    if not isinstance(output, Mapping) or output.get("error_code") != "validation_failed":
        return [], []
    details = output.get("details") if isinstance(output.get("details"), Mapping) else {}
    packs, sources = _saved_sources(workflow or {})
    lines: list[str] = []
    by_pack: dict[str, list[str]] = {}
    unknown = details.get("unknown_node_types")
    for class_type in dict.fromkeys(unknown.values() if isinstance(unknown, Mapping) else ()):
        if not isinstance(class_type, str):
            continue
        pack = packs.get(class_type)
        if pack is None:
            lines.append(f"node type {class_type} — not on the endpoint (no pack named)")
        else:
            by_pack.setdefault(pack, []).append(class_type)
    for pack, types in by_pack.items():
        lines.append(f"node pack {pack} — not on the endpoint ({', '.join(types)})")
    fetch: list[dict[str, str]] = []
    for name, folder in dict.fromkeys(_missing_models(details)):
        source = sources.get(name, {})
        if folder is None and not source and not name.lower().endswith(_MODEL_SUFFIXES):
            continue  # a plain list (a sampler name …): the node error says it
        folder = source.get("directory") if isinstance(source.get("directory"), str) else folder
        what = f"{_KINDS.get(folder or '', 'model')} {name}" + (f" ({folder})" if folder else "")
        url = source.get("url")
        host = urlsplit(url).hostname if isinstance(url, str) else None
        if host and url.startswith(("https://", "http://")) and folder:
            lines.append(f"{what} — can be fetched from {host}")
            fetch.append(_model_entry(url, folder, name, source))
        else:
            lines.append(f"{what} — not on the endpoint, and the workflow names no URL for it")
    return lines[:_MAX_LINES], fetch


def _missing_models(details: Mapping[str, Any]) -> Iterator[tuple[str, str | None]]:
    """(file name, folder when known) of each model input the endpoint lacks."""
    listed = details.get("missing_models")
    for item in listed if isinstance(listed, list) else []:
        if isinstance(item, Mapping) and isinstance(item.get("name"), str):
            folder = item.get("folder")
            yield item["name"], folder if isinstance(folder, str) else None
    errors = details.get("node_errors")
    for info in errors.values() if isinstance(errors, Mapping) else []:
        for error in info.get("errors", []) if isinstance(info, Mapping) else []:
            extra = error.get("extra_info") if isinstance(error, Mapping) else None
            if error.get("type") == "value_not_in_list" and isinstance(extra, Mapping):
                value = extra.get("received_value")
                if isinstance(value, str):
                    yield value, None


def _model_entry(url: str, folder: str, name: str, source: Mapping[str, Any]) -> dict[str, str]:
    entry = {"url": url, "folder": folder, "name": name}
    digest = source.get("hash")
    if str(source.get("hash_type", "")).lower() == "sha256" and isinstance(digest, str):
        entry["sha256"] = digest
    return entry


def _saved_sources(
    workflow: Mapping[str, Any],
) -> tuple[dict[str, str], dict[str, Mapping[str, Any]]]:
    """node type -> "pack version", and model file name -> its ``properties.models``
    entry, from every node of a saved workflow (subgraph definitions included)."""
    packs: dict[str, str] = {}
    models: dict[str, Mapping[str, Any]] = {}
    top = workflow.get("models")
    for entry in top if isinstance(top, list) else []:
        if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
            models.setdefault(entry["name"], entry)
    definitions = workflow.get("definitions")
    subgraphs = definitions.get("subgraphs") if isinstance(definitions, Mapping) else None
    for graph in [workflow, *(subgraphs if isinstance(subgraphs, list) else [])]:
        nodes = graph.get("nodes") if isinstance(graph, Mapping) else None
        for node in nodes if isinstance(nodes, list) else []:
            props = node.get("properties") if isinstance(node, Mapping) else None
            if not isinstance(props, Mapping):
                continue
            pack, version = props.get("cnr_id") or props.get("aux_id"), props.get("ver")
            if isinstance(node.get("type"), str) and isinstance(pack, str):
                named = f"{pack} {version}" if isinstance(version, str) else pack
                packs.setdefault(node["type"], named)
            listed = props.get("models")
            for entry in listed if isinstance(listed, list) else []:
                if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
                    models.setdefault(entry["name"], entry)
    return packs, models
