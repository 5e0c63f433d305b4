"""Test-only node that really allocates memory on ComfyUI's device (``make gpu-check``'s
out-of-memory job: ask for more than the GPU has and torch's allocator refuses)."""

import comfy.model_management
import torch


class TestAllocate:
    """Allocates ``gib`` GiB (uninitialised, never touched) on ComfyUI's torch device,
    frees it, and passes the image through."""

    CATEGORY = "testing"
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE",),
                "gib": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1e12}),
            }
        }

    def run(self, image, gib):
        device = comfy.model_management.get_torch_device()
        block = torch.empty(int(gib * 2**30), dtype=torch.uint8, device=device)
        del block
        return (image,)


NODE_CLASS_MAPPINGS = {"TestAllocate": TestAllocate}
