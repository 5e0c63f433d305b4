"""ComfyUI IMAGE tensors ([H, W, C] floats in 0..1) to encoded files, for the nodes."""

from __future__ import annotations

import io
from typing import Any

FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def encode_image(image: Any, fmt: str = "png", quality: int = 95) -> bytes:
    import numpy as np
    from PIL import Image

    array = np.clip(image.cpu().numpy() * 255.0, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    options = {"quality": quality} if fmt in ("jpeg", "webp") else {"compress_level": 4}
    Image.fromarray(array).save(buffer, FORMATS[fmt], **options)
    return buffer.getvalue()
