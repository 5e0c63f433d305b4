"""The widgets the frontend builds for a node, in order: which saved ``widgets_values``
entry is which input.

A saved workflow stores widget values by position, and the frontend adds widgets of its
own among them (``control_after_generate`` after seeds, upload buttons, players), so the
position of an input's value is the frontend's layout, derived here from the input
definitions the booted ComfyUI has. ``tests/oracle/widgets.json`` pins it for every node
type against the real frontend.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: INT inputs that get a ``control_after_generate`` widget without asking for one.
SEED_NAMES = frozenset({"seed", "noise_seed"})
_UPLOADS = ("image_upload", "video_upload", "audio_upload", "file_upload", "3d_upload")
_VALUE_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})


@dataclass(frozen=True)
class Widget:
    """One widget as the frontend builds it from an input definition."""

    name: str
    #: Whether its value goes into the prompt (frontend-only widgets: False).
    in_prompt: bool = True
    #: Whether its value is saved in ``widgets_values``.
    saved: bool = True


def widgets_of(node_class: Any, node_type: str = "") -> list[Widget]:
    """The widgets the frontend gives a node of this class, in order."""
    if node_type in EXTENSION_WIDGETS:
        return list(EXTENSION_WIDGETS[node_type])
    spec = node_class.INPUT_TYPES()
    return widgets_from_inputs(
        (name, definition)
        for group in ("required", "optional")
        for name, definition in (spec.get(group) or {}).items()
    )


#: How the input types whose widgets depend on the value chosen end (ComfyUI 0.33's V3
#: dynamic inputs: a combo whose option adds widgets such as ``format.codec``, a list that
#: grows). Not laid out here yet: a node with one is refused by its widget count, and the
#: error says why.
DYNAMIC_TYPES = ("_DYNAMICCOMBO_V3", "_AUTOGROW_V3")


def dynamic_inputs(node_class: Any) -> list[str]:
    """The inputs of this class whose widgets depend on the value chosen."""
    spec = node_class.INPUT_TYPES()
    return [
        name
        for group in ("required", "optional")
        for name, definition in (spec.get(group) or {}).items()
        if str(split_definition(definition)[0]).endswith(DYNAMIC_TYPES)
    ]


def widgets_from_inputs(inputs: Iterable[tuple[str, Any]]) -> list[Widget]:
    """The widgets the frontend makes of input definitions (name, ``[type, options]``).

    Value inputs (INT, FLOAT, STRING, BOOLEAN, combos) are widgets unless ``forceInput``;
    seed-like ones and those asking for it get a ``control_after_generate`` widget right
    after (and combos a ``control_filter_list``); upload options add an ``upload`` button
    after all others.
    """
    widgets: list[Widget] = []
    trailing: list[Widget] = []
    for name, definition in inputs:
        kind, options = split_definition(definition)
        if not is_widget(kind, options):
            continue
        widgets.append(Widget(name))
        control = options.get("control_after_generate")
        seed_like = kind == "INT" and control is None and name in SEED_NAMES
        if control or seed_like:
            widgets.append(Widget("control_after_generate", in_prompt=False))
            if isinstance(kind, (list, tuple)) or kind == "COMBO":  # which values to cycle
                widgets.append(Widget("control_filter_list", in_prompt=False))
        if options.get("audio_upload"):
            trailing.append(Widget("audioUI", in_prompt=False, saved=False))
        if any(options.get(key) for key in _UPLOADS):
            trailing.append(Widget("upload", in_prompt=False))
    return widgets + trailing


def is_widget(kind: Any, options: Mapping[str, Any]) -> bool:
    """Whether an input of this type and options is a widget (else only a socket)."""
    value_type = isinstance(kind, (list, tuple)) or kind in _VALUE_TYPES
    return value_type and not options.get("forceInput")


def _widgets(*rows: str) -> tuple[Widget, ...]:
    """``"name"``: a plain widget; ``"name|ui"``: frontend-only, saved; ``"name|view"``:
    in the prompt (as nothing: it holds no value) but not saved."""
    made = []
    for row in rows:
        name, _, kind = row.partition("|")
        made.append(Widget(name, in_prompt=kind != "ui", saved=kind != "view"))
    return tuple(made)


#: Core nodes whose widgets the frontend's own extensions make (audio players, 3D
#: viewers, the webcam, the output-folder loader): not derivable from their inputs.
EXTENSION_WIDGETS: dict[str, tuple[Widget, ...]] = {
    "LoadAudio": _widgets("audio", "audioUI|view", "upload|ui"),
    "PreviewAudio": _widgets("audioUI|view"),
    "SaveAudio": _widgets("filename_prefix", "audioUI|view"),
    "SaveAudioMP3": _widgets("filename_prefix", "quality", "audioUI|view"),
    "SaveAudioOpus": _widgets("filename_prefix", "quality", "audioUI|view"),
    "RecordAudio": _widgets("audio", "audio|ui"),
    "PreviewAny": _widgets("preview|view"),
    "LoadImageOutput": _widgets(
        "image", "Auto-refresh after generation|ui", "refresh", "upload|ui"
    ),
    "Load3D": _widgets(
        "model_file",
        "upload 3d model",
        "upload extra resources",
        "clear",
        "image",
        "width",
        "height",
    ),
    "Preview3D": _widgets("model_file", "image"),
    "SaveGLB": _widgets("filename_prefix", "image"),
    "WebcamCapture": _widgets(
        "image", "width", "height", "capture_on_queue", "waiting for camera..."
    ),
}


def split_definition(definition: Any) -> tuple[Any, dict[str, Any]]:
    if not isinstance(definition, (list, tuple)) or not definition:
        return definition, {}
    options = definition[1] if len(definition) > 1 and isinstance(definition[1], dict) else {}
    return definition[0], options
