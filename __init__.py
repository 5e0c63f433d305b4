"""ComfyUI RunPod — the node pack (ComfyUI imports this file from ``custom_nodes/``).

Installed with pip, the same folder is the package ``comfyui_runpod`` (executor, job
pipeline, CLI). Importing it must stay cheap and must not import ComfyUI.
"""

import sys as _sys

_installed = _sys.modules.get("comfyui_runpod")
if __name__ != "comfyui_runpod" and _installed is not None:
    # ComfyUI is loading a copy from custom_nodes/ inside a worker that already imported
    # the package: share its node classes, so both see the same running-job context.
    NODE_CLASS_MAPPINGS = _installed.NODE_CLASS_MAPPINGS
    NODE_DISPLAY_NAME_MAPPINGS = _installed.NODE_DISPLAY_NAME_MAPPINGS
else:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    if "server" in _sys.modules:  # inside a ComfyUI; only its desktop server gets routes
        from .nodes import desktop as _desktop

        _desktop.install()

#: The "Queue on RunPod" frontend extension (plain ES modules, served by ComfyUI under
#: /extensions/<this folder's name>/).
WEB_DIRECTORY = "./nodes/web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
