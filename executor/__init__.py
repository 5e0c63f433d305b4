"""The in-process ComfyUI executor: boot once, run prompts on one dedicated thread."""

from .boot import BootSettings, Comfy
from .locate import PINNED_VERSION, ComfyLocation, ComfyUINotFound, find_comfyui
from .outputs import OutputFile
from .runner import Executor, RunHandle, RunResult, Workspace, plain_name

__all__ = [
    "PINNED_VERSION",
    "BootSettings",
    "Comfy",
    "ComfyLocation",
    "ComfyUINotFound",
    "Executor",
    "OutputFile",
    "RunHandle",
    "RunResult",
    "Workspace",
    "find_comfyui",
    "plain_name",
]
