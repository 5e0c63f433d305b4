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


#: A live preview's longest side, in pixels (``input.previews``).
PREVIEW_SIZE = 256
PREVIEW_PREFIX = "data:image/jpeg;base64,"


def preview_data_url(preview: Any, max_side: int = PREVIEW_SIZE) -> str | None:
    """ComfyUI's latent preview (``("JPEG", PIL.Image, max_size)``, as its progress hook
    gets it, or a bare PIL image) as a small JPEG ``data:`` URL; None for anything else."""
    import base64

    from PIL import Image

    image = preview[1] if isinstance(preview, (tuple, list)) and len(preview) > 1 else preview
    if not isinstance(image, Image.Image):
        return None
    limit = max_side
    if isinstance(preview, (tuple, list)) and len(preview) > 2 and isinstance(preview[2], int):
        limit = min(limit, max(preview[2], 1))
    image = image.convert("RGB")
    if max(image.size) > limit:
        image = image.copy()
        image.thumbnail((limit, limit), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return PREVIEW_PREFIX + base64.b64encode(buffer.getvalue()).decode("ascii")


def preview_image(data_url: Any, max_side: int = PREVIEW_SIZE) -> Any:
    """A preview ``data:`` URL from a job's progress back to a PIL image (None when it is not
    a small JPEG): what ComfyUI's ``ProgressBar`` shows on a node."""
    import base64
    import binascii

    from PIL import Image, UnidentifiedImageError

    if not isinstance(data_url, str) or not data_url.startswith(PREVIEW_PREFIX):
        return None
    if len(data_url) > 2 * 1024 * 1024:
        return None
    try:
        data = base64.b64decode(data_url[len(PREVIEW_PREFIX) :], validate=True)
        image = Image.open(io.BytesIO(data))
        if image.format != "JPEG" or max(image.size) > max_side:
            return None
        image.load()
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError):
        return None
    return image
