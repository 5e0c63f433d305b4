"""Capture Data: hand any value back to the API caller as ``datas[<node id>][<key>]``."""

from __future__ import annotations

from typing import Any


class AnyType(str):
    """ComfyUI socket type that connects to every other type."""

    def __ne__(self, other: object) -> bool:
        return False


ANY = AnyType("*")
_MAX_ITEMS = 1000


def to_json_safe(value: Any, depth: int = 0) -> Any:
    """JSON-safe form of ``value``: plain data as is, tensors as a small description.

    A caller wants to know *what* an IMAGE or LATENT was, not receive megabytes of floats.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if depth > 8:
        return repr(value)[:200]
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):
        return {"type": type(value).__name__, "shape": list(shape), "dtype": str(value.dtype)}
    if isinstance(value, dict):
        items = list(value.items())[:_MAX_ITEMS]
        return {str(k): to_json_safe(v, depth + 1) for k, v in items}
    if isinstance(value, (list, tuple, set)):
        return [to_json_safe(v, depth + 1) for v in list(value)[:_MAX_ITEMS]]
    return repr(value)[:200]


class CaptureData:
    """Output node: its value comes back in the job result, and passes through unchanged."""

    CATEGORY = "RunPod/data"
    DESCRIPTION = (
        "Returns the connected value to the RunPod caller as datas[<this node's id>][<key>] "
        "(a list: one item per execution). Tensors are described by type, shape and dtype."
    )
    FUNCTION = "capture"
    OUTPUT_NODE = True
    RETURN_TYPES = (ANY,)
    RETURN_NAMES = ("value",)
    OUTPUT_TOOLTIPS = ("The input value, unchanged, so the node can sit inline.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "value": (ANY, {"tooltip": "Any value: text, number, JSON, image, latent..."}),
                "key": (
                    "STRING",
                    {"default": "value", "tooltip": "Name of the value inside datas[node id]."},
                ),
            }
        }

    def capture(self, value: Any, key: str) -> dict[str, Any]:
        return {"ui": {key or "value": [to_json_safe(value)]}, "result": (value,)}
