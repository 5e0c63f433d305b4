"""DynamicVRAM (comfy-aimdo), switched on where and as ComfyUI's ``main.py`` (0.33+) does.

``main.py`` initialises comfy-aimdo in two steps: ``control.init`` before
``comfy.model_management`` is imported, whenever ``enables_dynamic_vram()`` holds, and
``control.init_devices`` once the model code is loaded, on an NVIDIA (or new enough AMD)
GPU with torch >= 2.8 — then models load with ``ModelPatcherDynamic``. A worker that skipped
it would load models with the legacy patcher while a ``main.py`` worker gets DynamicVRAM, so
both steps are repeated here in the same order, under the same conditions and flags
(tests/test_comfy_contract.py fails when ``main.py`` changes them). Never on the CPU:
``enables_dynamic_vram()`` is false with ``--cpu``.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)


def init_early(args: Any) -> bool:
    """``main.py``'s first step; call before ``comfy.model_management`` is imported.
    False where this ComfyUI has no DynamicVRAM (before 0.33) or it does not apply."""
    from comfy import cli_args

    enables = getattr(cli_args, "enables_dynamic_vram", None)
    if enables is None or not enables():
        return False
    import comfy_aimdo.control as control

    headroom = None if args.reserve_vram is None else int(args.reserve_vram * 1024**3)
    try:
        control.init(simple_vram_headroom=headroom, nvml_pressure=not args.disable_nvml_pressure)
    except TypeError:  # comfy-aimdo 0.4.10
        try:
            control.init(simple_vram_headroom=headroom)
        except TypeError:  # comfy-aimdo 0.4.9
            control.init()
    return True


def init_devices(args: Any, model_management: ModuleType) -> str:
    """``main.py``'s second step, once ``comfy.model_patcher`` is imported. Returns which
    model patcher this process loads models with, for the boot log and ``make gpu-check``."""
    from comfy import cli_args

    enables = getattr(cli_args, "enables_dynamic_vram", None)
    if enables is None:
        return "ModelPatcher (this ComfyUI has no DynamicVRAM)"
    if not (args.enable_dynamic_vram or (enables() and _supported(model_management))):
        return "ModelPatcher (DynamicVRAM does not apply: CPU, a flag, or this GPU)"
    if not args.enable_dynamic_vram and model_management.torch_version_numeric < (2, 8):
        log.warning("DynamicVRAM needs torch 2.8 or later: models load with ModelPatcher")
        return "ModelPatcher (torch older than 2.8)"
    import comfy.memory_management
    import comfy.model_patcher
    import comfy_aimdo.control as control

    devices = model_management.get_all_torch_devices()
    try:
        ready = control.init_devices((d.index, int(args.vram_headroom * 1024**3)) for d in devices)
    except TypeError:  # comfy-aimdo 0.4.9
        ready = control.init_devices(d.index for d in devices)
    if not ready:
        log.warning("no working comfy-aimdo: DynamicVRAM off, models load with ModelPatcher")
        return "ModelPatcher (comfy-aimdo did not initialise)"
    _set_log_level(control, cli_args.get_console_log_level(args.verbose))
    comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
    comfy.memory_management.aimdo_enabled = True
    return "ModelPatcherDynamic (DynamicVRAM)"


def _supported(model_management: ModuleType) -> bool:
    if model_management.is_nvidia():
        return True
    return bool(model_management.is_amd() and model_management.rocm_version >= (7, 14))


def _set_log_level(control: ModuleType, level: str) -> None:
    setter = {
        "DEBUG": "set_log_debug",
        "DETAIL": "set_log_detail",
        "CRITICAL": "set_log_critical",
        "ERROR": "set_log_error",
        "WARNING": "set_log_warning",
    }.get(level, "set_log_info")
    getattr(control, setter, control.set_log_info)()
