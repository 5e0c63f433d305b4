"""Test-only ComfyUI nodes: failures and slow work that real nodes only do by accident."""

import time

import comfy.utils
import torch


class TestRaise:
    CATEGORY = "testing"
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "message": ("STRING", {"default": "boom"})}}

    def run(self, image, message):
        raise ValueError(message)


class TestOutOfMemory:
    """Raises torch's real out-of-memory error type, as a GPU allocation failure would."""

    CATEGORY = "testing"
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    def run(self, image):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


class TestSlowSteps:
    CATEGORY = "testing"
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE",),
                "steps": ("INT", {"default": 10, "min": 1, "max": 100000}),
                "delay": ("FLOAT", {"default": 0.05, "min": 0.0, "max": 10.0}),
            }
        }

    def run(self, image, steps, delay):
        bar = comfy.utils.ProgressBar(steps)
        for _ in range(steps):
            time.sleep(delay)
            bar.update(1)  # the progress hook raises here once ComfyUI is interrupted
        return (image,)


class TestSeedImage:
    """An 8x8 grey image whose level is ``seed % 256``: shows which seed a job ran with."""

    CATEGORY = "testing"
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31})}}

    def run(self, seed):
        return (torch.full((1, 8, 8, 3), (seed % 256) / 255.0),)


NODE_CLASS_MAPPINGS = {
    "TestSeedImage": TestSeedImage,
    "TestRaise": TestRaise,
    "TestOutOfMemory": TestOutOfMemory,
    "TestSlowSteps": TestSlowSteps,
}
