"""How many pixels an input file decodes to, read from its headers and packets without
decoding a frame.

ComfyUI's loaders turn every frame into float32 tensors (``LoadImage`` through PIL's
``ImageSequence`` or, on newer versions, PyAV; ``LoadVideo`` through PyAV): 12-16 bytes a
pixel. A 4 KB GIF may declare 200 frames of 4096x4096, ~50 GiB once decoded, so the size
of the file says nothing and its first frame says too little. Both readers are asked,
because both may decode the file: PIL's frame count (APNG, WebP, TIFF pages) and PyAV's
packets of the first video stream (GIF, APNG, any video). Counting stops once past the
limit, so a file of a million tiny frames costs milliseconds, not a decode.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

#: ``LoadImage`` adds a 64x64 mask to every frame without alpha: no frame costs less.
MIN_FRAME_PIXELS = 64 * 64


@dataclass(frozen=True)
class Frames:
    """What a file decodes to: ``count`` frames, the largest ``width`` x ``height``, and
    ``pixels`` in all. ``partial``: counting stopped past the limit (there are more)."""

    count: int
    width: int
    height: int
    pixels: int
    partial: bool = False

    def describe(self) -> str:
        more = "at least " if self.partial else ""
        noun = "frame" if self.count == 1 else "frames"
        return f"{more}{self.count} {noun} of {self.width}x{self.height}"


def measure(path: Path, limit: int) -> Frames | None:
    """The larger of what PyAV and PIL would decode ``path`` to; None when neither can
    read it (not an image or video: ComfyUI's loaders will say so). Counting stops once
    ``pixels`` passes ``limit``."""
    video = _by_pyav(path, limit)
    # PIL's GIF frame count walks the file in Python; PyAV's count of the same file is it.
    image = _by_pillow(path, limit, count_gif=video is None)
    found = [f for f in (video, image) if f is not None]
    return max(found, key=lambda f: f.pixels, default=None)


def _by_pyav(path: Path, limit: int) -> Frames | None:
    """Packets of the first video stream (each decodes to one frame), at the stream's
    size; ComfyUI's ``VideoFromFile`` decodes that stream whole."""
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError):
        return None
    with container:
        if not container.streams.video:
            return None
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        each = max(width * height, MIN_FRAME_PIXELS)
        count = 0
        try:
            for packet in container.demux(stream):
                count += packet.size > 0  # the last one only flushes the decoder
                if count * each > limit:
                    return Frames(count, width, height, count * each, partial=True)
        except (av.FFmpegError, OSError, ValueError):
            pass  # a broken tail: the decoder stops there too
    return Frames(count, width, height, count * each) if count else None


def _by_pillow(path: Path, limit: int, count_gif: bool) -> Frames | None:
    """PIL's frames: ``n_frames`` at the canvas size (GIF, APNG, WebP frames are the
    canvas), or page by page where pages differ in size and seeking reads only a
    header (TIFF)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.format == "TIFF":
                return _pages(image, limit)
            count = 1  # a broken frame table: the first frame is what a loader gets
            if image.format != "GIF" or count_gif:
                with contextlib.suppress(EOFError, OSError, SyntaxError, ValueError):
                    count = getattr(image, "n_frames", 1)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError):
        return None
    return Frames(count, width, height, count * max(width * height, MIN_FRAME_PIXELS))


def _pages(image: PILImage, limit: int) -> Frames:
    """A TIFF's pages one by one (seek reads a page's header, not its pixels)."""
    count = pixels = widest = tallest = 0
    for index in itertools.count():
        try:
            image.seek(index)
        except (EOFError, OSError, ValueError, SyntaxError):
            break
        width, height = image.size
        count, widest, tallest = count + 1, max(widest, width), max(tallest, height)
        pixels += max(width * height, MIN_FRAME_PIXELS)
        if pixels > limit:
            return Frames(count, widest, tallest, pixels, partial=True)
    return Frames(count, widest, tallest, pixels)
