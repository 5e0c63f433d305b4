"""What a workflow needs that this worker lacks: node types and model files.

The desktop runs graphs whose packs and models the endpoint may never have seen. A saved
workflow says where they come from — ComfyUI's frontend writes ``properties.cnr_id`` /
``aux_id`` / ``ver`` on custom nodes and ``properties.models`` (``[{"name", "url",
"directory"}]``) on loaders — so a check job can say what is missing in words, and
``fetch_models`` can fetch the models through the model cache instead of failing with
ComfyUI's ``value_not_in_list``. API-format prompts carry no properties: pack and URL are
unknown there.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import checks
from .errors import JobError
from .models import (
    MODEL_URL_SCHEMES,
    ModelSpec,
    _choices,
    _folder_of,
    check_name,
    check_sha256,
)

#: Model folders that are never a loader's files.
_NOT_MODELS = ("custom_nodes", "configs")


@dataclass(frozen=True)
class Sources:
    """Where a saved workflow says its node types and model files come from."""

    #: node type -> {"pack", "version"}
    packs: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: model file name -> its ``properties.models`` entry
    models: dict[str, Mapping[str, Any]] = field(default_factory=dict)


def sources(document: Mapping[str, Any]) -> Sources:
    """Packs and model URLs from a saved workflow's nodes, subgraph definitions included
    (keyed by type and by file name: ids change when subgraphs are flattened)."""
    found = Sources()
    top = document.get("models")
    for entry in top if isinstance(top, list) else []:
        _add_model(found, entry)
    for node in _saved_nodes(document):
        props = node.get("properties")
        if not isinstance(props, Mapping):
            continue
        pack = props.get("cnr_id") or props.get("aux_id")
        node_type = node.get("type")
        if isinstance(node_type, str) and isinstance(pack, str):
            version = props.get("ver")
            found.packs.setdefault(
                node_type, {"pack": pack, "version": version if isinstance(version, str) else None}
            )
        listed = props.get("models")
        for entry in listed if isinstance(listed, list) else []:
            _add_model(found, entry)
    return found


def _add_model(found: Sources, entry: Any) -> None:
    if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
        found.models.setdefault(entry["name"], entry)


def _saved_nodes(document: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every node object, read leniently: a malformed file is the converter's to refuse."""
    definitions = document.get("definitions")
    subgraphs = definitions.get("subgraphs") if isinstance(definitions, Mapping) else None
    for graph in [document, *(subgraphs if isinstance(subgraphs, list) else [])]:
        nodes = graph.get("nodes") if isinstance(graph, Mapping) else None
        yield from (n for n in nodes if isinstance(n, Mapping)) if isinstance(nodes, list) else ()


def missing_nodes(
    prompt: Mapping[str, Any], known: Mapping[str, Any], found: Sources
) -> list[dict[str, Any]]:
    missing = []
    for node_id, node in prompt.items():
        class_type = node.get("class_type")
        if class_type not in known:
            pack = found.packs.get(class_type) or {"pack": None, "version": None}
            missing.append({"node": str(node_id), "class_type": class_type, **pack})
    return missing


def missing_models(
    prompt: Mapping[str, Any], node_classes: Mapping[str, Any], folder_paths: Any, found: Sources
) -> list[dict[str, Any]]:
    """Model-file inputs (as :func:`models.plan` decides them) whose value is not among
    the installed files; a URL value is fetched by the run itself, so not missing."""
    missing = []
    for node_id, node in prompt.items():
        inputs = node.get("inputs")
        class_type = node.get("class_type")
        for name, value in (inputs if isinstance(inputs, dict) else {}).items():
            if not isinstance(value, str) or value.startswith(MODEL_URL_SCHEMES):
                continue
            options = _choices(node_classes, class_type, name)
            if options is None or value in options:
                continue
            folder = _folder_of(class_type, name, options, folder_paths)
            if folder is None:
                continue  # a plain combo: ComfyUI's validation names it
            source = found.models.get(value) or {}
            url = source.get("url")
            missing.append(
                {
                    "node": str(node_id),
                    "input": name,
                    "folder": folder,
                    "name": value,
                    "url": url if isinstance(url, str) and url else None,
                }
            )
    return missing


def report(
    prompt: Mapping[str, Any],
    node_classes: Mapping[str, Any],
    folder_paths: Any,
    found: Sources,
    errors: list[JobError],
) -> dict[str, Any]:
    """A check job's ``output.check``; ``errors`` are what converting already found."""
    more = (
        checks.escaping_files(prompt, node_classes),
        checks.unsafe_file_names(prompt),
        checks.cycle_error(prompt),
    )
    errors = [*errors, *(e for e in more if e is not None)]
    nodes = missing_nodes(prompt, node_classes, found)
    models = missing_models(prompt, node_classes, folder_paths, found)
    return {
        "ok": not (nodes or models or errors),
        "missing_nodes": nodes,
        "missing_models": models,
        "errors": [{"code": e.code, "message": e.message} for e in errors],
    }


def fetchable(
    missing: list[dict[str, Any]], found: Sources, folders: Mapping[str, Any]
) -> list[ModelSpec]:
    """The cache specs for missing models the workflow names with a URL: into the folder
    ``directory`` says when it is a model folder, else the one the input lists."""
    specs = []
    for item in missing:
        if item["url"] is None:
            continue
        source = found.models[item["name"]]
        where = f"node {item['node']} input {item['input']}: properties.models"
        directory = source.get("directory")
        named = isinstance(directory, str) and directory in folders
        folder = directory if named and directory not in _NOT_MODELS else None
        sha256 = None
        if str(source.get("hash_type", "")).lower() == "sha256":
            sha256 = check_sha256(source.get("hash"), where)
        if not item["url"].startswith(MODEL_URL_SCHEMES):
            raise JobError("invalid_input", f"{where} url must be an http(s):// or s3:// URL")
        name = check_name(item["name"], where)
        specs.append(ModelSpec(item["url"], folder or item["folder"], name, sha256))
    return specs


def not_fetched(missing: list[dict[str, Any]]) -> JobError:
    """ComfyUI's ``value_not_in_list``, said as what is missing and how to get it."""
    listed = ", ".join(
        f"{m['folder']}/{m['name']} (node {m['node']} {m['input']})" for m in missing
    )
    return JobError(
        "validation_failed",
        f"models not on the worker: {listed}; the workflow names where to get them: send "
        "input.fetch_models: true (or set COMFYUI_RUNPOD_FETCH_MODELS=1 on the worker) to "
        "fetch them",
        {"missing_models": missing},
    )
