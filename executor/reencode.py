"""Re-encode a job's still images before delivery (``input.output_format``).

A PNG from SaveImage is often ten times the size of a good WebP or JPEG; converting on the
worker saves the upload and the client's download. Only still images change: animations
(SaveAnimatedWEBP/PNG report under ``images`` too), video, audio and text pass untouched.

The ``prompt``/``workflow`` metadata moves with the pixels: PNG text chunks stay text
chunks; WebP and JPEG get EXIF tags the way ComfyUI's SaveAnimatedWEBP writes them
(0x0110 ``prompt:<json>``, then 0x010F, 0x010E… ``<key>:<json>``). JPEG caps EXIF at 64 KiB:
a larger workflow is dropped from a JPEG (docs/reliability.md says so).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import JobError
from .outputs import OutputFile

FORMATS = {"png": ".png", "webp": ".webp", "jpeg": ".jpg"}
DEFAULT_QUALITY = 90
#: Still-image files the re-encoder reads; anything else (or anything animated) is left.
_STILL = {".png", ".webp", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
#: Where ComfyUI's savers put the prompt in EXIF, and the tag below it for the next key.
_PROMPT_TAG, _FIRST_EXTRA_TAG = 0x0110, 0x010F
#: JPEG's APP1 segment holds at most this many bytes of EXIF.
_JPEG_EXIF_LIMIT = 65533


@dataclass(frozen=True)
class OutputFormat:
    format: str  # a key of FORMATS
    quality: int = DEFAULT_QUALITY


def parse_output_format(value: Any) -> OutputFormat | None:
    """``input.output_format``: ``{"format": "png"|"webp"|"jpeg", "quality": 1..100}``."""
    if value is None:
        return None
    where = "input.output_format"
    if not isinstance(value, dict):
        raise JobError("invalid_input", f'{where} must be {{"format": ..., "quality": ...}}')
    extra = sorted(set(value) - {"format", "quality"})
    if extra:
        raise JobError("invalid_input", f"{where} has unknown fields: {', '.join(extra)}")
    fmt = value.get("format")
    if fmt not in FORMATS:
        raise JobError(
            "invalid_input", f"{where}.format must be one of {', '.join(FORMATS)}, not {fmt!r}"
        )
    quality = value.get("quality", DEFAULT_QUALITY)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise JobError(
            "invalid_input", f"{where}.quality must be an integer in 1..100, not {quality!r:.40}"
        )
    return OutputFormat(fmt, quality)


def reencode(files: Sequence[OutputFile], target: OutputFormat) -> list[OutputFile]:
    """``files`` with every still image rewritten in ``target``'s format (the new file has
    the format's extension, the old one is removed); the rest as they are.

    All or nothing: every image is encoded beside its original first, and only then do
    the new files replace the old, so a failure leaves ``files`` as they were (delivery
    keeps them).
    """
    pending: list[tuple[Path, OutputFile]] = []
    try:
        for output in files:
            if _is_still_image(output):
                pending.append((_encode(output, target), output))
    except BaseException:
        for partial, _ in pending:
            partial.unlink(missing_ok=True)
        raise
    done = {id(output): _replace(partial, output) for partial, output in pending}
    return [done.get(id(f), f) for f in files]


def _is_still_image(output: OutputFile) -> bool:
    if output.kind != "images" or output.path.suffix.lower() not in _STILL:
        return False
    from PIL import Image

    try:
        with Image.open(output.path) as image:
            return not getattr(image, "is_animated", False)
    except OSError:  # not an image PIL reads: delivered as it is
        return False


def _partial(output: OutputFile, target: OutputFormat) -> Path:
    return output.path.with_name(output.path.stem + FORMATS[target.format] + ".part")


def _encode(output: OutputFile, target: OutputFormat) -> Path:
    """Write ``output`` in ``target``'s format to a ``.part`` file beside it."""
    from PIL import Image

    partial = _partial(output, target)
    try:
        with Image.open(output.path) as image:
            image.load()
            _save(image, partial, target, _metadata(image))
    except (OSError, ValueError) as exc:
        partial.unlink(missing_ok=True)
        raise JobError(
            "internal_error", f"could not re-encode {output.filename} as {target.format}: {exc}"
        ) from None
    return partial


def _replace(partial: Path, output: OutputFile) -> OutputFile:
    destination = partial.with_suffix("")  # drop ".part"
    os.replace(partial, destination)
    if destination != output.path:
        output.path.unlink()
    return dataclasses.replace(
        output, path=destination, filename=Path(output.filename).stem + destination.suffix
    )


def _metadata(image: Any) -> dict[str, str]:
    """The text metadata ComfyUI wrote: PNG text chunks, or its EXIF ``key:value`` tags."""
    texts = {k: v for k, v in getattr(image, "text", {}).items() if isinstance(v, str)}
    if texts:
        return texts
    exif = image.getexif()
    for tag in range(_PROMPT_TAG, _PROMPT_TAG - 16, -1):
        value = exif.get(tag)
        if isinstance(value, str) and ":" in value:
            key, _, text = value.partition(":")
            texts[key] = text
    return texts


def _save(image: Any, path: Path, target: OutputFormat, texts: dict[str, str]) -> None:
    from PIL import Image, PngImagePlugin

    if target.format == "png":
        info = PngImagePlugin.PngInfo()
        for key, text in texts.items():
            info.add_text(key, text)
        image.save(path, format="PNG", pnginfo=info, compress_level=4)
        return
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    if target.format == "jpeg":
        mode = "L" if image.mode == "L" else "RGB"
    else:
        mode = "RGBA" if has_alpha else "RGB"
    if image.mode != mode:
        image = image.convert(mode)
    exif = Image.Exif()
    for tag, (key, text) in zip(_exif_tags(texts), texts.items(), strict=False):
        exif[tag] = f"{key}:{text}"
    data = exif.tobytes() if texts else b""
    if target.format == "jpeg" and len(data) > _JPEG_EXIF_LIMIT:
        data = b""  # JPEG cannot hold it; the pixels still go out
    kind = "JPEG" if target.format == "jpeg" else "WEBP"
    image.save(path, format=kind, quality=target.quality, exif=data)


def _exif_tags(texts: dict[str, str]) -> list[int]:
    """ComfyUI's order: ``prompt`` at 0x0110, every other key from 0x010F downwards."""
    extra = iter(range(_FIRST_EXTRA_TAG, 0, -1))
    return [_PROMPT_TAG if key == "prompt" else next(extra) for key in texts]
