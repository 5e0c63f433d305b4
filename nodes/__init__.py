"""The pack's nodes. Type ids are public API: they are saved in every workflow."""

from .capture import CaptureData
from .inputs import INPUT_DISPLAY_NAMES, INPUT_NODES
from .remote import RemoteSubmit
from .s3_upload import S3Upload

NODE_CLASS_MAPPINGS = {
    "RunPodRemoteSubmit": RemoteSubmit,
    "RunPodS3Upload": S3Upload,
    "RunPodCaptureData": CaptureData,
    **INPUT_NODES,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "RunPodRemoteSubmit": "RunPod Remote Submit",
    "RunPodS3Upload": "S3 Upload (RunPod)",
    "RunPodCaptureData": "Capture Data (RunPod)",
    **INPUT_DISPLAY_NAMES,
}
