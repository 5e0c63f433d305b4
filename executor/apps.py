"""Workflow apps: workflows (API or saved UI format) served by name, with named, typed parameters.

An app is ``<apps folder>/<name>.json``. Its parameters are its ``RunPodInput*`` nodes
(``nodes/inputs.py``); their types, defaults, ranges and choices come from those nodes
plus the live ``INPUT_TYPES`` of the widgets they feed, so the contract (a JSON Schema per
app) always matches the ComfyUI that runs it. A job ``{"app": name, "params": {...}}`` is
checked against that schema before anything runs (every bad parameter named at once), and
becomes an ordinary workflow: the input nodes' ``value`` set from ``params``, images
written to the job's input folder like ``input.images``.

Nothing here imports ComfyUI: node classes are passed in (``NODE_CLASS_MAPPINGS``).
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..nodes.inputs import FLOAT_LIMIT, INT_LIMIT
from ..nodes.workflows import is_saved_format
from .errors import JobError
from .request import APP_NAME, InputMedia, parse_workflow

log = logging.getLogger(__name__)

#: class_type of each input node → the parameter's kind.
KINDS = {
    "RunPodInputString": "string",
    "RunPodInputInt": "integer",
    "RunPodInputFloat": "number",
    "RunPodInputBoolean": "boolean",
    "RunPodInputChoice": "choice",
    "RunPodInputImage": "image",
}
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")  # fullmatch: "$" allows "\n"
#: The "unset" values of the number nodes' own min/max/step widgets.
_UNSET = {
    "min": {-INT_LIMIT, -FLOAT_LIMIT},
    "max": {INT_LIMIT, FLOAT_LIMIT},
    "step": {0},
}
IMAGE_SOURCE = "base64, a data: URI or an http(s) URL"


class AppError(ValueError):
    """An app file that cannot be served (its message says why and how to fix it)."""


class SavedApp(AppError):
    """A saved (UI-format) app read before ComfyUI booted: converted once it has."""


@dataclass(frozen=True)
class InputNode:
    """One ``RunPodInput*`` node as written in the app file."""

    node_id: str
    kind: str
    name: str
    default: Any
    description: str
    #: min / max / step the node sets itself (unset ones are absent).
    limits: Mapping[str, float]
    #: ``(node id, input name)`` of each input its first output feeds.
    targets: tuple[tuple[str, str], ...]


def number_text(value: float) -> str:
    """A limit or value as people read it: whole numbers in full (``16777215``, a seed's
    ``18446744073709551615``), others to 10 significant digits (``0.05``), never ``1.6e+07``."""
    if isinstance(value, int) or (value.is_integer() and abs(value) < 1e21):
        return str(int(value))
    return f"{value:.10g}"


@dataclass(frozen=True)
class Param:
    """A parameter as the contract shows it, with the fed widgets' limits applied."""

    name: str
    kind: str
    node_id: str
    required: bool
    default: Any = None
    description: str = ""
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    enum: tuple[Any, ...] | None = None

    def kind_line(self, choices: int = 8) -> str:
        """Its type for people: ``integer 1..50``, ``choice one of [euler, ddim, ...]``
        (at most ``choices`` choices shown); the CLI and the docs page both show this."""
        kind = self.kind
        if self.minimum is not None or self.maximum is not None:
            low = "" if self.minimum is None else number_text(self.minimum)
            high = "" if self.maximum is None else number_text(self.maximum)
            kind += f" {low}..{high}"
        if self.enum is not None:
            more = ", ..." if len(self.enum) > choices else ""
            kind += f" one of [{', '.join(map(str, self.enum[:choices]))}{more}]"
        return kind

    def schema(self) -> dict[str, Any]:
        """This parameter as a JSON Schema (2020-12; ``x-step`` is the widget's step)."""
        schema: dict[str, Any] = {}
        if self.kind in ("string", "image"):
            schema["type"] = "string"
        elif self.kind in ("integer", "number", "boolean"):
            schema["type"] = self.kind
        elif self.enum is not None and all(isinstance(o, str) for o in self.enum):
            schema["type"] = "string"
        if self.kind == "image":
            schema["contentMediaType"] = "image/*"
        if self.enum is not None:
            schema["enum"] = list(self.enum)
        for key, value in (
            ("minimum", self.minimum),
            ("maximum", self.maximum),
            ("x-step", self.step),
        ):
            if value is not None:
                schema[key] = value
        description = self.description or ""
        if self.kind == "image":
            description = f"{description} ({IMAGE_SOURCE})".strip()
        if description:
            schema["description"] = description
        if not self.required:
            schema["default"] = self.default
        return schema

    def check(self, value: Any) -> tuple[Any, str | None]:
        """``(value as ComfyUI wants it, None)`` or ``(None, what is wrong)``."""
        kind = self.kind
        if kind in ("integer", "number"):
            number = (
                value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
            )
            if number is None or (isinstance(number, float) and not math.isfinite(number)):
                wanted = "an integer" if kind == "integer" else "a number"
                return None, f"expected {wanted}, got {_show(value)}"
            # Past the input nodes' own range (a huge int would overflow float() below).
            limit = INT_LIMIT if kind == "integer" else FLOAT_LIMIT
            if abs(number) > limit:
                shown = number_text(limit)
                return None, f"{_show(value)} is out of range (-{shown}..{shown})"
            if kind == "integer":
                if isinstance(number, float) and not number.is_integer():
                    return None, f"expected an integer, got {_show(value)}"
                number = int(number)
            else:
                number = float(number)
            if self.minimum is not None and number < self.minimum:
                low = number_text(self.minimum)
                return None, f"{number_text(number)} is below the minimum {low}"
            if self.maximum is not None and number > self.maximum:
                high = number_text(self.maximum)
                return None, f"{number_text(number)} is above the maximum {high}"
            return number, None
        if kind == "boolean":
            if isinstance(value, bool):
                return value, None
            return None, f"expected true or false, got {_show(value)}"
        if kind == "choice":
            if self.enum is not None and value not in self.enum:
                shown = ", ".join(map(str, self.enum[:10])) + (
                    ", ..." if len(self.enum) > 10 else ""
                )
                return None, f"{_show(value)} is not one of the choices ({shown})"
            if self.enum is None and not isinstance(value, (str, int, float)):
                return None, f"expected a string, got {_show(value)}"
            return value, None
        if not isinstance(value, str) or (kind == "image" and not value.strip()):
            wanted = f"an image as {IMAGE_SOURCE}" if kind == "image" else "a string"
            return None, f"expected {wanted}, got {_show(value)}"
        return value, None


def _show(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else None
    if text is None:
        text = f"{type(value).__name__}"
    return text if len(text) <= 40 else f"{text[:37]}..."


#: How long derived parameters are reused: deriving them is most of an app job's own cost
#: (~40 µs for three), and a model file added meanwhile shows up in the choices this soon.
PARAMS_TTL_S = 2.0


@dataclass
class App:
    name: str
    path: Path
    workflow: dict[str, Any]
    inputs: tuple[InputNode, ...]
    _cached: tuple[float, int, list[Param]] | None = field(default=None, repr=False)

    def params(self, node_classes: Mapping[str, Any]) -> list[Param]:
        """The parameters, with ranges and choices read from the live node definitions."""
        now, cached = time.monotonic(), self._cached
        if cached is not None and cached[1] == id(node_classes) and now - cached[0] < PARAMS_TTL_S:
            return cached[2]
        params = [self._param(node, node_classes) for node in self.inputs]
        self._cached = (now, id(node_classes), params)
        return params

    def _param(self, node: InputNode, node_classes: Mapping[str, Any]) -> Param:
        limits: dict[str, float | None] = {"min": None, "max": None, "step": None}
        enum: tuple[Any, ...] | None = None
        description = node.description
        if node.kind in ("integer", "number", "choice"):
            for spec_type, options in self._target_specs(node, node_classes):
                if node.kind == "choice":
                    choices = _combo_options(spec_type, options)
                    if choices is not None:
                        enum = choices if enum is None else tuple(c for c in enum if c in choices)
                    continue
                for key, pick in (("min", max), ("max", min)):
                    value = options.get(key)
                    if _finite(value):
                        limits[key] = value if limits[key] is None else pick(limits[key], value)
                if _finite(options.get("step")) and limits["step"] is None:
                    limits["step"] = options["step"]
                if not description and isinstance(options.get("tooltip"), str):
                    description = options["tooltip"]
        limits.update(node.limits)  # the node's own limits win
        param = Param(
            name=node.name,
            kind=node.kind,
            node_id=node.node_id,
            required=False,
            default=node.default,
            description=description,
            minimum=limits["min"],
            maximum=limits["max"],
            step=limits["step"],
            enum=enum,
        )
        # A default that the contract itself refuses (an image: a file of the author's
        # input folder) is no default: the parameter is required.
        if node.kind == "image" or param.check(node.default)[1] is not None:
            return Param(**{**param.__dict__, "required": True, "default": None})
        return param

    def _target_specs(
        self, node: InputNode, node_classes: Mapping[str, Any]
    ) -> list[tuple[Any, dict[str, Any]]]:
        specs = []
        for target_id, input_name in node.targets:
            cls = node_classes.get(self.workflow[target_id].get("class_type"))
            try:
                spec = cls.INPUT_TYPES() if cls is not None else {}
            except Exception:  # a broken node: ComfyUI's validation names it later
                continue
            for group in ("required", "optional"):
                entry = (spec.get(group) or {}).get(input_name)
                if isinstance(entry, (list, tuple)) and entry:
                    options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
                    specs.append((entry[0], options))
                    break
        return specs

    def schema(self, node_classes: Mapping[str, Any], *, dialect: bool = True) -> dict[str, Any]:
        """The app's ``params`` as one JSON Schema object."""
        return params_schema(self.name, self.params(node_classes), dialect=dialect)

    def bind(
        self, given: Mapping[str, Any], node_classes: Mapping[str, Any]
    ) -> tuple[dict[str, Any], list[InputMedia]]:
        """The workflow to run for ``given`` params, and the images they bring; every bad
        parameter is named in one ``invalid_input``."""
        params = self.params(node_classes)
        known = {p.name for p in params}
        problems = {name: "no such parameter" for name in given if name not in known}
        values: dict[str, Any] = {}
        for param in params:
            if param.name in given:
                value, problem = param.check(given[param.name])
            elif param.required:
                value, problem = None, "missing (required)"
            else:
                value, problem = param.default, None
            if problem is not None:
                problems[param.name] = problem
            values[param.name] = value
        if problems:
            listed = "; ".join(f"{name}: {problem}" for name, problem in problems.items())
            raise JobError(
                "invalid_input",
                f"app {self.name!r}: bad params: {listed} (known: {', '.join(sorted(known))})",
                {
                    "app": self.name,
                    "invalid_params": [{"name": n, "problem": p} for n, p in problems.items()],
                },
            )
        workflow = dict(self.workflow)
        media = []
        for param, node in zip(params, self.inputs, strict=True):
            value = values[param.name]
            if param.kind == "image":
                file_name = f"param-{param.name}.png"
                media.append(InputMedia(file_name, value, where=f"params.{param.name}"))
                workflow[param.node_id] = _with_input(workflow[param.node_id], "value", file_name)
                continue
            # A value node's output is its value: written straight into the widgets it
            # feeds, ComfyUI runs the very graph of a plain workflow (and validates the
            # value against each widget), and the value node itself is left out.
            for target_id, input_name in node.targets:
                workflow[target_id] = _with_input(workflow[target_id], input_name, value)
            del workflow[param.node_id]
        return workflow, media


def _with_input(node: dict[str, Any], name: str, value: Any) -> dict[str, Any]:
    return {**node, "inputs": {**node["inputs"], name: value}}


def params_schema(name: str, params: list[Param], *, dialect: bool = True) -> dict[str, Any]:
    schema: dict[str, Any] = {}
    if dialect:
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema.update(
        {
            "title": f"{name} params",
            "type": "object",
            "properties": {p.name: p.schema() for p in params},
            "additionalProperties": False,
        }
    )
    required = [p.name for p in params if p.required]
    if required:
        schema["required"] = required
    return schema


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _combo_options(spec_type: Any, options: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """A combo's options: V1 nodes give the list as the type, V3 ones ``COMBO`` + options."""
    if isinstance(spec_type, (list, tuple)):
        return tuple(spec_type)
    if spec_type == "COMBO" and isinstance(options.get("options"), (list, tuple)):
        return tuple(options["options"])
    return None


#: Turns a saved (UI-format) workflow into an API prompt (executor/convert.py, bound to
#: the booted ComfyUI); raises JobError when it cannot.
Converter = Callable[[Mapping[str, Any]], dict[str, Any]]


def load_app(path: Path, converter: Converter | None = None) -> App:
    """Read one app file; :class:`AppError` says what is wrong with it. A saved (UI-format)
    file needs ``converter``; without one it raises :class:`SavedApp` (converted later)."""
    name = path.stem
    if not APP_NAME.fullmatch(name):
        raise AppError(f"{path.name}: app names are letters, digits and '_.-' (rename the file)")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AppError(f"{path.name}: not readable JSON: {exc}") from None
    try:
        if is_saved_format(document):
            if converter is None:
                raise SavedApp(path.name)
            document = converter(document)
        workflow = parse_workflow(document)
    except JobError as exc:
        raise AppError(
            f"{path.name}: {exc.message.replace('input.workflow', 'the workflow')}"
        ) from None
    return App(name, path, workflow, tuple(_input_nodes(path.name, workflow)))


def _input_nodes(file_name: str, workflow: dict[str, Any]) -> list[InputNode]:
    feeds: dict[str, list[tuple[str, str]]] = {}
    for node_id, node in workflow.items():
        for input_name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and value[1] == 0:
                feeds.setdefault(str(value[0]), []).append((str(node_id), input_name))
    found: dict[str, InputNode] = {}
    for node_id, node in workflow.items():
        kind = KINDS.get(node["class_type"])
        if kind is None:
            continue
        inputs = node["inputs"]
        where = f"{file_name}: node {node_id} ({node['class_type']})"
        name = inputs.get("name")
        if not isinstance(name, str) or not _PARAM_NAME.fullmatch(name):
            raise AppError(
                f"{where}: name must be a parameter name (a letter or '_', then letters, "
                f"digits, '_.-'), not {name!r}"
            )
        if name in found:
            raise AppError(f"{where}: parameter {name!r} is also node {found[name].node_id}")
        if isinstance(inputs.get("value"), list):
            raise AppError(f"{where}: value must be a plain default, not a link")
        limits = {
            key: inputs[key]
            for key in ("min", "max", "step")
            if _finite(inputs.get(key)) and inputs[key] not in _UNSET[key]
        }
        description = inputs.get("description")
        found[name] = InputNode(
            node_id=str(node_id),
            kind=kind,
            name=name,
            default=inputs.get("value"),
            description=description if isinstance(description, str) else "",
            limits=limits,
            targets=tuple(feeds.get(str(node_id), ())),
        )
    return list(found.values())


class AppStore:
    """The apps folder, read once at start (``COMFYUI_RUNPOD_APPS`` / ``--apps``).

    Files that cannot be served are kept in ``refused`` with the reason, so a job for one
    gets that reason instead of "unknown app", and ``apps`` lists it.
    """

    def __init__(self, folder: Path, converter: Converter | None = None) -> None:
        if not folder.is_dir():
            raise AppError(f"apps folder {folder} does not exist")
        self.folder = folder
        self.apps: dict[str, App] = {}
        self.refused: dict[str, str] = {}
        #: Saved (UI-format) apps waiting for :meth:`convert_saved` (ComfyUI's nodes).
        self.saved: list[Path] = []
        self._converting = threading.Lock()
        for path in sorted(folder.glob("*.json")):
            self._load(path, converter)
        log.info("apps from %s: %s", folder, ", ".join(self.apps) or "none")

    def _load(self, path: Path, converter: Converter | None) -> None:
        try:
            self.apps[path.stem] = load_app(path, converter)
        except SavedApp:
            self.saved.append(path)
            self.refused[path.stem] = "a saved (UI-format) workflow, converted once ComfyUI boots"
        except AppError as exc:
            log.warning("app %s refused: %s", path.stem, exc)
            self.refused[path.stem] = str(exc)
        except Exception as exc:  # a bug one file runs into must not take the others down
            log.exception("app %s refused: %s cannot be read", path.stem, path.name)
            self.refused[path.stem] = f"{path.name}: cannot be read ({type(exc).__name__}: {exc})"

    def convert_saved(self, converter: Converter) -> None:
        """Convert the saved (UI-format) apps now that ComfyUI's node definitions exist
        (each on its own: a broken one is refused, the others served)."""
        with self._converting:  # two first app jobs at once: the second waits for it
            pending, self.saved = self.saved, []
            for path in pending:
                self._load(path, converter)  # refused meanwhile: "converted once ComfyUI boots"
                if path.stem in self.apps:
                    del self.refused[path.stem]
                    log.info("app %s: converted from the saved (UI) format", path.stem)

    def get(self, name: str) -> App:
        app = self.apps.get(name)
        if app is not None:
            return app
        if name in self.refused:
            raise JobError("invalid_input", f"app {name!r} cannot be served: {self.refused[name]}")
        known = ", ".join(self.apps) or "none"
        raise JobError(
            "invalid_input", f"no app {name!r} (apps: {known})", {"apps": list(self.apps)}
        )


def build_prompt(
    request: Any, store: AppStore | None, node_classes: Mapping[str, Any]
) -> tuple[dict[str, Any], list[InputMedia]]:
    """The workflow a parsed job runs and the media its params bring: the app bound to its
    params (or the plain workflow), then ``overrides``."""
    media: list[InputMedia] = []
    if request.app is None:
        workflow = request.workflow
    elif store is None:
        raise JobError(
            "invalid_input",
            "this worker serves no apps (set COMFYUI_RUNPOD_APPS or --apps); send input.workflow",
        )
    else:
        workflow, media = store.get(request.app).bind(request.params, node_classes)
        taken = {m.name for m in request.media} & {m.name for m in media}
        if taken:
            raise JobError("invalid_input", f"input.images names {sorted(taken)} are reserved")
    if request.overrides:
        workflow = apply_overrides(workflow, request.overrides)
    return workflow, media


def apply_overrides(
    workflow: dict[str, Any], overrides: Mapping[tuple[str, str], Any]
) -> dict[str, Any]:
    """``{(node id, input): value}`` set on a copy; unknown node ids are named together."""
    unknown = sorted({node_id for node_id, _ in overrides if node_id not in workflow})
    if unknown:
        raise JobError(
            "invalid_input",
            f"input.overrides name nodes the workflow does not have: {', '.join(unknown)}",
            {"unknown_nodes": unknown},
        )
    result = dict(workflow)
    for (node_id, name), value in overrides.items():
        node = result[node_id]
        result[node_id] = {**node, "inputs": {**node["inputs"], name: value}}
    return result
