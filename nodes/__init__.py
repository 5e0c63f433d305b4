"""The pack's nodes. Type ids are public API: they are saved in every workflow."""

from .capture import CaptureData

NODE_CLASS_MAPPINGS = {
    "RunPodCaptureData": CaptureData,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "RunPodCaptureData": "Capture Data (RunPod)",
}
