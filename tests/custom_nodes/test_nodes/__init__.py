"""Test-only ComfyUI nodes: failures and slow work that real nodes only do by accident."""

import time
from typing import ClassVar

import comfy.utils
import folder_paths
import numpy as np
import torch
from PIL import Image


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


class TestLateSave:
    """Sleeps without checking for interrupts, then saves like SaveImage: a save node that
    is past its last interrupt check when its job is cancelled."""

    CATEGORY = "testing"
    FUNCTION = "run"
    OUTPUT_NODE = True
    RETURN_TYPES = ()
    #: Every file written, for the tests to check what became of it.
    written: ClassVar[list[str]] = []
    #: One entry per call, made when the node's own code starts: past ComfyUI's last
    #: interrupt check (its "executing" event comes earlier, before that check).
    started: ClassVar[list[str]] = []

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE",),
                "filename_prefix": ("STRING", {"default": "late"}),
                "delay": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0}),
            }
        }

    def run(self, images, filename_prefix, delay):
        self.started.append(filename_prefix)
        time.sleep(delay)
        output = folder_paths.get_output_directory()
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, output, images.shape[2], images.shape[1]
        )
        path = f"{folder}/{name}_{counter:05}_.png"
        Image.fromarray(np.uint8(images[0].numpy() * 255)).save(path)
        self.written.append(path)
        return {
            "ui": {
                "images": [
                    {"filename": path.rsplit("/", 1)[1], "subfolder": subfolder, "type": "output"}
                ]
            }
        }


NODE_CLASS_MAPPINGS = {
    "TestLateSave": TestLateSave,
    "TestSeedImage": TestSeedImage,
    "TestRaise": TestRaise,
    "TestOutOfMemory": TestOutOfMemory,
    "TestSlowSteps": TestSlowSteps,
}
