"""API-format workflows used across the tests (model-free unless named otherwise)."""

from __future__ import annotations

from typing import Any


def invert(color: int = 0, size: int = 8, batch: int = 1, prefix: str = "inv") -> dict[str, Any]:
    """EmptyImage(color) → ImageInvert → SaveImage: the saved pixels are 255 - color."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": size, "height": size, "batch_size": batch, "color": color},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def load_and_save(image_name: str, prefix: str = "loaded") -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image_name}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def slow(steps: int = 100, delay: float = 0.05) -> dict[str, Any]:
    """A node that reports progress each step and honours interrupts between steps."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
        },
        "2": {
            "class_type": "TestSlowSteps",
            "inputs": {"image": ["1", 0], "steps": steps, "delay": delay},
        },
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "slow"}},
    }


def tiny_sd(
    ckpt: str,
    seed: int = 1,
    steps: int = 2,
    prefix: str = "tiny",
    size: int = 64,
    negative: str = "",
    cfg: float = 7.0,
) -> dict[str, Any]:
    """An SD1.5 checkpoint (the tiny one by default): checkpoint → prompts → KSampler →
    VAEDecode → SaveImage, ``size``×``size`` pixels."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["4", 1]}},
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": size, "height": size, "batch_size": 1},
        },
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": seed,
                "steps": steps,
                "cfg": cfg,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["8", 0]}},
    }
