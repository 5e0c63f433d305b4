"""Checks ComfyUI's validation lacks, and validation errors as one readable line.

ComfyUI stops at the first unknown node type, resolves file names outside the input
folder, and reports a cycle without naming a node; these name every culprit instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import JobError
from .node_imports import FailedModule, provider_of

#: At most this many nodes are named in an error line; ``details`` has them all.
_MAX_NAMED = 10


def _listing(items: list[str], sep: str = ", ") -> str:
    more = len(items) - _MAX_NAMED
    shown = sep.join(items[:_MAX_NAMED])
    return f"{shown}{sep}and {more} more (see details)" if more > 0 else shown


def unknown_node_types(
    prompt: Mapping[str, Any],
    known: Mapping[str, Any],
    failed_modules: Sequence[FailedModule] = (),
) -> JobError | None:
    """Name every unknown node type at once (ComfyUI stops at the first), and the module
    that would have provided it when that module failed to import at boot."""
    missing = {}
    for node_id, node in prompt.items():
        class_type = node.get("class_type") if isinstance(node, dict) else None
        if not isinstance(class_type, str) or class_type not in known:
            missing[str(node_id)] = class_type
    if not missing:
        return None
    broken = {
        class_type: module
        for class_type in {ct for ct in missing.values() if isinstance(ct, str)}
        if (module := provider_of(class_type, failed_modules)) is not None
    }
    listed = _listing([f"node {node_id} ({ct!r})" for node_id, ct in missing.items()])
    detail: dict[str, Any] = {"unknown_node_types": missing}
    if broken:
        causes = "; ".join(
            f"{ct} comes from {module.name}, which failed to import at boot ({module.error})"
            for ct, module in sorted(broken.items())
        )
        detail["failed_modules"] = {ct: module.line for ct, module in broken.items()}
        return JobError(
            "validation_failed",
            f"unknown node type in {listed}: {causes}; fix that module's dependencies on "
            "the worker",
            detail,
        )
    return JobError(
        "validation_failed",
        f"unknown node type in {listed}: install the custom nodes that provide "
        "them on the worker, or fix class_type",
        detail,
    )


def escaping_files(prompt: Mapping[str, Any], known: Mapping[str, Any]) -> JobError | None:
    """Refuse file inputs (``LoadImage.image`` & co) that point outside the job's inputs.

    ComfyUI resolves ``../x``, absolute paths and ``x [output]`` annotations, which would let
    one job read another job's inputs or outputs.
    """
    for node_id, node in prompt.items():
        try:
            spec = known[node["class_type"]].INPUT_TYPES()
        except Exception:  # ComfyUI's validation reports broken nodes properly
            continue
        for group in ("required", "optional"):
            for name, definition in (spec.get(group) or {}).items():
                is_pair = isinstance(definition, (list, tuple)) and len(definition) > 1
                options = definition[1] if is_pair else None
                if not isinstance(options, dict) or not any(
                    key == "upload" or key.endswith("_upload") for key in options
                ):
                    continue
                value = node.get("inputs", {}).get(name)
                if isinstance(value, str) and _outside_inputs(value):
                    return JobError(
                        "validation_failed",
                        f"node {node_id} ({node['class_type']}): {name} {value!r} is outside "
                        "the job's input files; use the plain name of a file sent in "
                        "input.images or input.files",
                    )
    return None


#: String inputs ComfyUI's save nodes turn into file paths under the output folder.
FILE_NAME_INPUTS = frozenset({"filename_prefix"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def unsafe_file_names(prompt: Mapping[str, Any]) -> JobError | None:
    """Refuse file-name inputs with a control character (a NUL reaches the OS as "embedded
    null byte" mid-run) or a path leaving the output folder (``..``, absolute, a drive)."""
    for node_id, node in prompt.items():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict):
            continue
        for name in FILE_NAME_INPUTS & inputs.keys():
            value = inputs[name]
            if not isinstance(value, str):
                continue
            if _CONTROL.search(value):
                problem = "has a control character"
            elif _leaves_folder(value):
                problem = "leaves the output folder"
            else:
                continue
            return JobError(
                "validation_failed",
                f"node {node_id} ({node.get('class_type')}): {name} {value!r} {problem}; use "
                "a plain name, optionally under sub/folders",
                {"node_id": str(node_id), "class_type": node.get("class_type"), "input": name},
            )
    return None


def cycle_error(prompt: Mapping[str, Any]) -> JobError | None:
    """Name the nodes of a link cycle (``node 2 → node 4 → node 2``), if there is one."""

    def links(node_id: str) -> list[str]:
        node = prompt.get(node_id)
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict):
            return []
        return [
            v[0]
            for v in inputs.values()
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and v[0] in prompt
        ]

    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in prompt:
        if root in state:
            continue
        path, stack = [root], [iter(links(root))]
        state[root] = 1
        while stack:  # iterative: a 10 000-node chain must not exhaust the stack
            child = next(stack[-1], None)
            if child is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(child) == 1:
                cycle = [*path[path.index(child) :], child]
                named = [f"node {n} ({prompt[n].get('class_type')})" for n in cycle]
                return JobError(
                    "validation_failed",
                    f"the workflow has a cycle: {' -> '.join(named)}; a node cannot "
                    "depend on its own output",
                    {"cycle": cycle},
                )
            elif child not in state:
                state[child] = 1
                path.append(child)
                stack.append(iter(links(child)))
    return None


def _leaves_folder(name: str) -> bool:
    path = name.replace("\\", "/")
    return path.startswith("/") or ".." in path.split("/") or bool(re.match(r"^[A-Za-z]:", path))


def only_cycles(node_errors: Mapping[str, Any]) -> bool:
    """True when ComfyUI's node errors name no problem but a link cycle (or none at all),
    so that :func:`cycle_error` says it better."""
    return all(
        item.get("type") == "dependency_cycle"
        for info in (node_errors or {}).values()
        for item in info.get("errors", [])
    )


def _outside_inputs(name: str) -> bool:
    path = name.replace("\\", "/")
    return (
        path.startswith("/")
        or ".." in path.split("/")
        or bool(re.search(r"\[(output|temp)\]\s*$", path))
        or bool(re.match(r"^[A-Za-z]:", path))
    )


def validation_error(
    error: Mapping[str, Any], node_errors: Mapping[str, Any], prompt: Mapping[str, Any]
) -> JobError:
    problems = []
    detail: dict[str, Any] = {"node_errors": {}}
    for node_id, info in (node_errors or {}).items():
        class_type = _class_type(node_id, info, prompt)
        detail["node_errors"][node_id] = {"class_type": class_type, "errors": info.get("errors")}
        problems.append(_node_problem(node_id, info, prompt))
    if not problems:
        message = error.get("message", "invalid workflow")
        if error.get("details"):
            message = f"{message}: {error['details']}"
        problems.append(message)
    detail["error"] = dict(error or {})
    return JobError("validation_failed", _listing(problems, "; "), detail)


def skipped_outputs(node_errors: Mapping[str, Any], prompt: Mapping[str, Any]) -> list[str]:
    """What ComfyUI left out of a run that validated in part: it runs the outputs whose
    nodes are valid and drops the rest, naming them only in its log. Each line names the
    node at fault, why, and the outputs that did not run."""
    lines = []
    for node_id, info in (node_errors or {}).items():
        outputs = [
            f"{output} ({_class_type(output, {}, prompt)})"
            for output in info.get("dependent_outputs") or [node_id]
        ]
        lines.append(
            f"{_node_problem(node_id, info, prompt)}; not run: output {', '.join(outputs)}"
        )
    return lines


def _class_type(node_id: str, info: Mapping[str, Any], prompt: Mapping[str, Any]) -> Any:
    return info.get("class_type") or (prompt.get(node_id) or {}).get("class_type")


def _node_problem(node_id: str, info: Mapping[str, Any], prompt: Mapping[str, Any]) -> str:
    messages = []
    for item in info.get("errors", []):
        text = item.get("message", "")
        if item.get("details"):
            text = f"{text}: {item['details']}"
        missing = _MISSING_IMAGE.search(text)
        if missing:  # the job's input folder holds only what the request sent
            name = missing.group(1)
            text += (
                f" (send it as input.images [{{'name': '{name}', 'image': <base64 or URL>}}]; "
                f"with `comfyui-runpod run`: --image {name}=PATH)"
            )
        messages.append(text)
    return f"node {node_id} ({_class_type(node_id, info, prompt)}): {'; '.join(messages)}"


#: ComfyUI's ``LoadImage`` (and friends) on a file the input folder lacks.
_MISSING_IMAGE = re.compile(r"Invalid image file: (.+)$")
