"""A tiny, randomly initialised SD1.5 checkpoint for end-to-end tests (and, with
``full=True``, one of the real SD1.5 sizes for ``make gpu-check``).

Tests that run a real ComfyUI graph (load checkpoint -> encode text -> sample -> decode ->
save) need a checkpoint that ComfyUI's ``CheckpointLoaderSimple`` detects as SD1.5. A real
one is ~2-4 GB to download, and committing weights to the repository is not an option, so
this module *builds* one: the layouts come from ComfyUI's own classes and config files (so
the keys and shapes are exactly what ComfyUI expects), the weights are random.

- UNet: the SD1.5 UNet (``model_channels=320``, ``context_dim=768``, conv attention
  projections) cut to one level, one res block, transformer depth 1 (~26 M params).
- VAE: the full SD1.x ``AutoencoderKL`` layout (~84 M); random weights still give a
  non-flat image.
- Text encoder: CLIP-L as fixed by ``comfy/sd1_clip_config.json`` (~123 M), under
  ``cond_stage_model.transformer.text_model.*`` like real SD1.5 checkpoints.

Weights: norm weights 1, biases 0, everything else N(0, 0.02), deterministic from ``seed``;
saved as fp16 safetensors (~465 MB, ~2 s to build on 2 CPU cores). ComfyUI modules are
imported inside the functions only: ComfyUI must already be importable (the project's
executor puts it on ``sys.path`` at boot).

``full=True`` keeps the whole SD1.5 UNet (four levels, two res blocks each, ~860 M
params): a checkpoint of the real SD1.5 sizes (~2.1 GB fp16, ~1.07 G params), so that
per-job time and VRAM on a GPU are those of a real SD1.5 job. It is never cached: only
``make gpu-check`` builds it, into its own work folder.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

CACHE_ENV = "COMFYUI_RUNPOD_TEST_CACHE"
# Bump the version whenever the recipe below changes, so stale caches are not reused.
CACHE_FILE = "tiny-sd15-v1.safetensors"

# The UNet config ComfyUI's model detection derives from such a state dict (see
# comfy/model_detection.py detect_unet_config), plus SD15's unet_extra_config.
_UNET_CONFIG: dict[str, object] = {
    "use_checkpoint": False,
    "image_size": 32,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,  # SD15 requires 320 ...
    "context_dim": 768,  # ... and CLIP-L's width
    "use_linear_in_transformer": False,  # SD1.x: conv proj_in/proj_out
    "channel_mult": [1],  # one level instead of four
    "num_res_blocks": [1],
    "transformer_depth": [1],
    "transformer_depth_output": [1, 1],  # num_res_blocks + 1 output blocks per level
    "transformer_depth_middle": 1,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
    "num_heads": 8,
    "num_head_channels": -1,
}

# The whole SD1.5 UNet: what detect_unet_config derives from a real SD1.5 checkpoint.
_UNET_CONFIG_FULL: dict[str, object] = {
    **_UNET_CONFIG,
    "channel_mult": [1, 2, 4, 4],
    "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],  # per input res block; none at 1/8
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
}

# The default SD1.x/SD2.x VAE config (comfy/sd.py VAE.__init__ picks it for this layout).
_VAE_DDCONFIG: dict[str, object] = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [],
    "dropout": 0.0,
}

_NORMS = (torch.nn.GroupNorm, torch.nn.LayerNorm)


def _layout(full: bool = False) -> dict[str, tuple[torch.Size, bool]]:
    """Checkpoint key -> (shape, is a norm weight), from ComfyUI's own modules on ``meta``."""
    import json

    import comfy.clip_model
    import comfy.ops
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    ops = comfy.ops.disable_weight_init  # no init work: shapes are all we need
    clip_config = json.loads(
        Path(comfy.clip_model.__file__).with_name("sd1_clip_config.json").read_text()
    )
    with torch.device("meta"):
        parts = {
            "model.diffusion_model.": UNetModel(
                **(_UNET_CONFIG_FULL if full else _UNET_CONFIG), operations=ops
            ),
            "first_stage_model.": AutoencoderKL(ddconfig=_VAE_DDCONFIG, embed_dim=4),
            # SD1.5 checkpoints hold only text_model.* (no text_projection / logit_scale).
            "cond_stage_model.transformer.text_model.": comfy.clip_model.CLIPTextModel(
                clip_config, torch.float32, None, ops
            ).text_model,
        }

    layout: dict[str, tuple[torch.Size, bool]] = {}
    for prefix, module in parts.items():
        norm_weights = {
            f"{name}.weight" if name else "weight"
            for name, m in module.named_modules()
            if isinstance(m, _NORMS)
        }
        for key, tensor in module.state_dict().items():
            layout[prefix + key] = (tensor.shape, key in norm_weights)
    return layout


def parameter_count(full: bool = False) -> dict[str, int]:
    """Parameters per part (``unet``, ``vae``, ``clip``) of the tiny or the full layout."""
    prefixes = {
        "unet": "model.diffusion_model.",
        "vae": "first_stage_model.",
        "clip": "cond_stage_model.",
    }
    counts = dict.fromkeys(prefixes, 0)
    for key, (shape, _) in _layout(full).items():
        part = next(name for name, prefix in prefixes.items() if key.startswith(prefix))
        counts[part] += shape.numel()
    return counts


def check_detected_as_sd15(full: bool = False) -> None:
    """Run ComfyUI's model detection on the layout alone (``meta`` tensors, no weights)."""
    _check_detected_as_sd15(
        {key: torch.empty(shape, device="meta") for key, (shape, _) in _layout(full).items()}
    )


def _check_detected_as_sd15(state_dict: dict[str, torch.Tensor]) -> None:
    """Fail early if ComfyUI's model detection would not pick SD15 for this state dict."""
    import comfy.model_detection

    config = comfy.model_detection.model_config_from_unet(state_dict, "model.diffusion_model.")
    name = type(config).__name__ if config is not None else None
    if name != "SD15":
        raise RuntimeError(f"tiny checkpoint detected as {name}, expected SD15")


def build_tiny_sd15(path: Path, *, seed: int = 0, full: bool = False) -> Path:
    """Build the tiny (or, ``full``, the full-size) random SD1.5 checkpoint and save it
    (fp16 safetensors) at ``path``.

    Written to a temporary file in the same folder, then ``os.replace``d into place, so a
    half-written file is never visible at ``path``. Returns ``path``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    generator = torch.Generator().manual_seed(seed)
    state_dict: dict[str, torch.Tensor] = {}
    # Sorted keys: the random stream does not depend on module construction order.
    for key, (shape, is_norm) in sorted(_layout(full).items()):
        if is_norm:
            tensor = torch.ones(shape, dtype=torch.float16)
        elif key.endswith("bias"):
            tensor = torch.zeros(shape, dtype=torch.float16)
        else:
            tensor = torch.empty(shape, dtype=torch.float16).normal_(0.0, 0.02, generator=generator)
        state_dict[key] = tensor
    _check_detected_as_sd15(state_dict)

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        # One metadata key only: safetensors orders several at random (not byte-stable).
        recipe = f"v1 seed={seed}" + (" full" if full else "")
        save_file(state_dict, tmp, metadata={"comfyui_runpod_tiny_sd15": recipe})
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def cache_folder() -> Path:
    """Where the tiny checkpoint is cached (a ComfyUI ``checkpoints`` folder of its own)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "comfyui-runpod-tests")


def tiny_sd15_path() -> Path:
    """The cached tiny SD1.5 checkpoint (built on first use), outside the repository.

    Folder: ``$COMFYUI_RUNPOD_TEST_CACHE`` or ``~/.cache/comfyui-runpod-tests/``. Concurrent
    builders each write their own temporary file and atomically replace; the last one wins
    with identical content (same seed).
    """
    path = cache_folder() / CACHE_FILE
    if not path.is_file():
        build_tiny_sd15(path)
    return path
