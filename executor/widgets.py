"""The widgets the frontend builds for a node, in order: which saved ``widgets_values``
entry is which input.

A saved workflow stores widget values by position, and the frontend adds widgets of its
own among them (``control_after_generate`` after seeds, upload buttons, players), so the
position of an input's value is the frontend's layout, derived here from the input
definitions the booted ComfyUI has. ``tests/oracle/widgets.json`` pins it for every node
type against the real frontend (1.32); ComfyUI 0.33's dynamic combos, whose layout
depends on the values saved, are laid out by :func:`fill` as frontend 1.49 does, checked
against that frontend on the whole template library (tests/test_convert_library.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: INT inputs that get a ``control_after_generate`` widget without asking for one.
SEED_NAMES = frozenset({"seed", "noise_seed"})
_UPLOADS = ("image_upload", "video_upload", "audio_upload", "file_upload", "3d_upload")
_VALUE_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "MARKDOWN"})
#: Input types the frontend (1.49) draws as widgets of its own kinds whose value is saved
#: and sent like any other (a colour's hex string, a painted mask's file name, a curve).
_DRAWN_TYPES = frozenset(
    {
        "COLOR",
        "COLORS",
        "BOUNDING_BOX",
        "BOUNDING_BOXES",
        "CURVE",
        "PAINTER",
        "COMPOSITOR",
        "TEXTAREA",
        "CHART",
        "GALLERIA",
        "RANGE",
        "VIDEO_EDIT",
    }
)
#: Its widgets that only show something: sent (empty), never saved.
_SHOWN_TYPES = frozenset({"IMAGECOMPARE"})


#: :attr:`Widget.default` of a widget whose value a file must give.
NO_DEFAULT: Any = object()


@dataclass(frozen=True)
class Widget:
    """One widget as the frontend builds it from an input definition."""

    name: str
    #: Whether its value goes into the prompt (frontend-only widgets: False).
    in_prompt: bool = True
    #: Whether its value is saved in ``widgets_values``.
    saved: bool = True
    #: A dynamic combo's options (ComfyUI 0.33's ``COMFY_DYNAMICCOMBO_V3``): option →
    #: the inputs it adds, whose widgets the frontend puts right after this one, named
    #: ``<name>.<input>`` (see :func:`fill`). None for any other widget.
    choices: Mapping[str, Any] | None = field(default=None, compare=False)
    #: The value the frontend's widget keeps where a file has none for it (it was saved
    #: before the input existed), set only where that is safe: a hidden input (kept for
    #: old prompts, never shown) or a dynamic option's optional one, with a combo's
    #: default. ``NO_DEFAULT`` elsewhere: the file must give the value (see :func:`fill`).
    default: Any = field(default=NO_DEFAULT, compare=False)


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


#: ComfyUI 0.33's V3 dynamic combo: the option chosen adds widgets (``format`` adds
#: ``format.codec``).
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"


class Unfollowed(Exception):
    """The option chosen in a dynamic combo adds widgets this converter does not lay out
    (the converter's gap, not the file's): ``widget`` is the combo, ``option`` the value."""

    def __init__(self, widget: str, option: Any) -> None:
        super().__init__(f"{widget} = {option!r}")
        self.widget, self.option = widget, option


def widgets_from_inputs(
    inputs: Iterable[tuple[str, Any]], prefix: str = "", optional: frozenset[str] = frozenset()
) -> list[Widget]:
    """The widgets the frontend makes of input definitions (name, ``[type, options]``).

    Value inputs (INT, FLOAT, STRING, BOOLEAN, combos, dynamic combos) are widgets unless
    ``forceInput``; seed-like ones and those asking for it get a
    ``control_after_generate`` widget right after (and combos a ``control_filter_list``);
    upload options add an ``upload`` button after all others. ``prefix``: the dynamic
    combo whose option these inputs are (``"format."``), ``optional`` its optional ones.
    """
    widgets: list[Widget] = []
    trailing: list[Widget] = []
    for name, definition in inputs:
        kind, options = split_definition(definition)
        kind = options.get("widgetType") or kind  # the widget an input asks for, if any
        if isinstance(kind, str) and kind in _SHOWN_TYPES and not options.get("forceInput"):
            widgets.append(Widget(prefix + name, saved=False))
            continue
        may_default = bool(options.get("hidden")) or name in optional
        name = prefix + name
        if kind == DYNAMIC_COMBO and not options.get("forceInput"):
            choices = {o["key"]: o.get("inputs") or {} for o in options.get("options") or []}
            # The frontend's combo gets the option names only: its first is the default.
            first = next(iter(choices), NO_DEFAULT) if may_default else NO_DEFAULT
            widgets.append(Widget(name, choices=choices, default=first))
            continue
        if not is_widget(kind, options):
            continue
        default = _default(kind, options) if may_default else NO_DEFAULT
        widgets.append(Widget(name, default=default))
        combo = isinstance(kind, (list, tuple)) or kind == "COMBO"
        control = options.get("control_after_generate")
        seed_like = kind == "INT" and control is None and name in SEED_NAMES
        if control or seed_like:
            widgets.append(Widget("control_after_generate", in_prompt=False))
            if combo:  # which values to cycle
                widgets.append(Widget("control_filter_list", in_prompt=False))
        if options.get("audio_upload"):
            trailing.append(Widget("audioUI", in_prompt=False, saved=False))
        if combo and any(options.get(key) for key in _UPLOADS):  # a media file's combo
            trailing.append(Widget("upload", in_prompt=False))
    return widgets + trailing


def _default(kind: Any, options: Mapping[str, Any]) -> Any:
    """A combo's default as the frontend's combo widget takes it (its ``default``, else
    its first option); ``NO_DEFAULT`` for other widgets, which the converter never fills
    in (their defaults are the frontend's, not worth guessing)."""
    choices = kind if isinstance(kind, (list, tuple)) else options.get("options")
    if not (isinstance(kind, (list, tuple)) or kind == "COMBO") or not choices:
        return NO_DEFAULT
    return options.get("default") or choices[0]


def option_widgets(widget: Widget, value: Any) -> list[Widget]:
    """The widgets that option ``value`` of a dynamic combo adds, as the frontend lays
    them out (its required inputs, then its optional ones, named ``<combo>.<input>``).

    Raises :class:`Unfollowed` where the option adds widgets of other names (a seed's
    ``control_after_generate``): the frontend removes an option's widgets by their name's
    prefix when the value changes on load, so where those go is not followed here."""
    spec = (widget.choices or {}).get(value) if isinstance(value, str) else None
    if not isinstance(spec, Mapping):
        return []
    inputs = [
        (name, definition)
        for group in ("required", "optional")
        for name, definition in (spec.get(group) or {}).items()
    ]
    optional = frozenset(spec.get("optional") or ())
    added = widgets_from_inputs(inputs, prefix=f"{widget.name}.", optional=optional)
    if any(not w.name.startswith(f"{widget.name}.") for w in added):
        raise Unfollowed(widget.name, value)
    return added


def fill(widgets: Sequence[Widget], values: Sequence[Any]) -> list[tuple[Widget, Any]] | None:
    """Each widget with its saved value, where a node has dynamic combos: the frontend
    sets saved values in order over its live widget list, and a dynamic combo given its
    value puts that option's widgets right after itself, so they take the values that
    follow. None where the values do not fit (the file was saved with another version
    of the node): more than the widgets, or a widget left without a value that has no
    default the frontend would keep (:attr:`Widget.default`). Raises
    :class:`Unfollowed` (see :func:`option_widgets`)."""
    queue = list(reversed(widgets))
    filled: list[tuple[Widget, Any]] = []
    given = iter(values)
    left = len(values)
    while queue:
        widget = queue.pop()
        if not widget.saved:
            filled.append((widget, None))
            continue
        if left:
            value, left = next(given), left - 1
        elif widget.default is NO_DEFAULT:
            return None
        else:
            value = widget.default
        filled.append((widget, value))
        if widget.choices is not None:
            queue.extend(reversed(option_widgets(widget, value)))
    return None if left else filled


def custom_combo(values: Sequence[Any]) -> list[tuple[Widget, Any]] | None:
    """``CustomCombo``'s widgets with their values: the frontend's extension (1.49's
    customWidgets.ts) follows the ``choice`` combo with a hidden ``index`` and option
    text widgets, one more each time the last is given text, so a file's values are
    ``[choice, index, option1, ..., ""]``. ``index`` is sent as the frontend works it
    out when queueing (where ``choice`` is among the options, else -1), not as saved.
    None for values the frontend could not have saved (more after the empty last)."""
    if len(values) < 2:
        return None
    choice, given = values[0], list(values[2:])
    options: list[Any] = []
    for value in given:
        options.append(value)
        if not value:  # an empty one is the last: the frontend adds no other
            break
    else:
        options.append("")  # each text given adds an empty one after it
    if len(options) < len(given):
        return None
    index = next((i for i, v in enumerate(options) if type(v) is type(choice) and v == choice), -1)
    return [
        (Widget("choice"), choice),
        (Widget("index"), index),
        *((Widget(f"option{i}"), v) for i, v in enumerate(options, start=1)),
    ]


#: Nodes whose widgets a frontend extension makes by the values saved (not derivable
#: from their inputs): type → the widgets with their values, or None where they do not fit.
VALUE_LAYOUTS: dict[str, Callable[[Sequence[Any]], list[tuple[Widget, Any]] | None]] = {
    "CustomCombo": custom_combo
}


def is_widget(kind: Any, options: Mapping[str, Any]) -> bool:
    """Whether an input of this type and options is a widget (else only a socket)."""
    if isinstance(kind, (list, tuple)):
        return not options.get("forceInput")
    value_type = isinstance(kind, str) and (kind in _VALUE_TYPES or kind in _DRAWN_TYPES)
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
