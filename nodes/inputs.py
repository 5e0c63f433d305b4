"""App input nodes: a workflow's named, typed parameters (``RunPod/inputs``).

On the desktop each is a plain value node (its ``value`` widget is what flows out), so an
app workflow runs there unchanged. Served as an app (``{"app": ..., "params": ...}``), the
executor sets ``value`` from the job's parameter ``name``; its JSON Schema comes from these
nodes plus the live ``INPUT_TYPES`` of the widgets they feed (ranges, combo options).

``min``/``max``/``step`` on the number nodes are optional: left at their "unset" defaults,
the fed widget's own limits apply.
"""

from __future__ import annotations

from typing import Any

from .capture import ANY

CATEGORY = "RunPod/inputs"
#: Widest INT a ComfyUI widget takes; also the "unset" value of the INT node's min/max.
INT_LIMIT = 0xFFFFFFFFFFFFFFFF
#: The FLOAT node's "unset" min/max.
FLOAT_LIMIT = 1e18

_NAME_TIP = "Parameter name in the API request's params (letters, digits, '_', '-', '.')."
_DESCRIPTION_TIP = "Shown in the generated API schema and docs page."


def _common(kind: str, value: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": ("STRING", {"default": kind, "tooltip": _NAME_TIP}),
        "value": value,
        "description": ("STRING", {"default": "", "tooltip": _DESCRIPTION_TIP}),
    }


class _ValueNode:
    """The shared shape: three widgets in, the value out unchanged."""

    CATEGORY = CATEGORY
    FUNCTION = "emit"
    OUTPUT_TOOLTIPS = ("The parameter's value: the request's, else this node's default.",)

    def emit(self, value: Any, **_: Any) -> tuple[Any]:
        return (value,)


class InputString(_ValueNode):
    DESCRIPTION = "An app's text parameter (a prompt, a file name prefix ...)."
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("value",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        value = ("STRING", {"default": "", "multiline": True, "tooltip": "The default text."})
        return {"required": _common("prompt", value)}


class InputInt(_ValueNode):
    DESCRIPTION = (
        "An app's integer parameter. min/max/step left unset take the limits of the widget "
        "it feeds (KSampler steps: 1..10000 ...)."
    )
    RETURN_TYPES = ("INT",)
    RETURN_NAMES = ("value",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        wide = {"min": -INT_LIMIT, "max": INT_LIMIT}
        value = ("INT", {"default": 0, **wide, "tooltip": "The default value."})
        return {
            "required": _common("seed", value),
            "optional": {
                "min": (
                    "INT",
                    {"default": -INT_LIMIT, **wide, "tooltip": "Lowest; unset: the fed widget's."},
                ),
                "max": (
                    "INT",
                    {"default": INT_LIMIT, **wide, "tooltip": "Highest; unset: the fed widget's."},
                ),
                "step": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": INT_LIMIT,
                        "tooltip": "UI step; 0: the fed widget's.",
                    },
                ),
            },
        }


class InputFloat(_ValueNode):
    DESCRIPTION = (
        "An app's number parameter. min/max/step left unset take the limits of the widget "
        "it feeds (KSampler cfg: 0..100 ...)."
    )
    RETURN_TYPES = ("FLOAT",)
    RETURN_NAMES = ("value",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        wide = {"min": -FLOAT_LIMIT, "max": FLOAT_LIMIT, "step": 0.01}
        value = ("FLOAT", {"default": 0.0, **wide, "tooltip": "The default value."})
        return {
            "required": _common("cfg", value),
            "optional": {
                "min": (
                    "FLOAT",
                    {
                        "default": -FLOAT_LIMIT,
                        **wide,
                        "tooltip": "Lowest; unset: the fed widget's.",
                    },
                ),
                "max": (
                    "FLOAT",
                    {
                        "default": FLOAT_LIMIT,
                        **wide,
                        "tooltip": "Highest; unset: the fed widget's.",
                    },
                ),
                "step": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": 0.0,
                        "max": FLOAT_LIMIT,
                        "step": 0.01,
                        "tooltip": "UI step; 0: the fed widget's.",
                    },
                ),
            },
        }


class InputBoolean(_ValueNode):
    DESCRIPTION = "An app's true/false parameter."
    RETURN_TYPES = ("BOOLEAN",)
    RETURN_NAMES = ("value",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        value = ("BOOLEAN", {"default": False, "tooltip": "The default value."})
        return {"required": _common("enabled", value)}


class InputChoice(_ValueNode):
    DESCRIPTION = (
        "An app's choice parameter: connect it to a combo (checkpoint, sampler ...); the "
        "choices are that combo's options. value is the default choice."
    )
    RETURN_TYPES = (ANY,)
    RETURN_NAMES = ("value",)
    OUTPUT_TOOLTIPS = ("The chosen option; connects to any combo input.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        value = ("STRING", {"default": "", "tooltip": "The default choice (one of the options)."})
        return {"required": _common("choice", value)}


class InputImage:
    """Like ``LoadImage`` (a file of the input folder), named as an app parameter."""

    CATEGORY = CATEGORY
    DESCRIPTION = (
        "An app's image parameter. On the desktop it loads a file of the input folder like "
        "Load Image; served as an app, the request's image (base64, data URI or URL)."
    )
    FUNCTION = "load"
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask")
    OUTPUT_TOOLTIPS = ("The image.", "Its alpha channel as a mask (LoadImage's).")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        from nodes import LoadImage

        (files, options) = LoadImage.INPUT_TYPES()["required"]["image"]
        value = (files, {**options, "tooltip": "The default image (from the input folder)."})
        return {"required": _common("image", value)}

    def load(self, value: str, **_: Any) -> tuple[Any, Any]:
        from nodes import LoadImage

        return LoadImage().load_image(value)

    @classmethod
    def IS_CHANGED(cls, value: str, **_: Any) -> Any:
        from nodes import LoadImage

        return LoadImage.IS_CHANGED(value)

    @classmethod
    def VALIDATE_INPUTS(cls, value: str) -> bool | str:
        # Named arguments only: ComfyUI skips its own checks of every input a **kwargs takes.
        from nodes import LoadImage

        return LoadImage.VALIDATE_INPUTS(value)


#: class_type → node class; also what the executor recognises as app parameters.
INPUT_NODES: dict[str, type] = {
    "RunPodInputString": InputString,
    "RunPodInputInt": InputInt,
    "RunPodInputFloat": InputFloat,
    "RunPodInputBoolean": InputBoolean,
    "RunPodInputChoice": InputChoice,
    "RunPodInputImage": InputImage,
}
INPUT_DISPLAY_NAMES = {
    "RunPodInputString": "Input: Text (RunPod app)",
    "RunPodInputInt": "Input: Integer (RunPod app)",
    "RunPodInputFloat": "Input: Number (RunPod app)",
    "RunPodInputBoolean": "Input: Boolean (RunPod app)",
    "RunPodInputChoice": "Input: Choice (RunPod app)",
    "RunPodInputImage": "Input: Image (RunPod app)",
}
