"""Write a job's input media into its own input folder, where ``LoadImage``, ``LoadAudio``
and ``LoadVideo`` find it.

Sources are base64, ``data:`` URIs or http(s) URLs. Everything is bounded: decoded size,
image dimensions (a small PNG can claim 100k x 100k pixels), the pixels of all frames of
an animation or video (``decodesize``), download time, and URLs may
not reach private or loopback addresses unless the operator allows it (``urlguard``).
Images are checked to be images; other files (``input.files`` objects) are written as
they come: ComfyUI's loaders are what can tell a broken clip.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import io
import urllib.error
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..nodes.netguard import redact
from ..nodes.storage import BucketConfig, StorageError, open_object
from .deadline import Deadline
from .decodesize import measure
from .errors import JobError, mib
from .request import InputMedia
from .urlguard import PrivateAddress, URLRefused, open_checked_url

#: The flag that sets ``download_timeout_s`` (named when a download runs out of time).
MEDIA_DOWNLOAD_FLAG = "--media-download-timeout"

#: How an operator raises ``max_media_pixels`` (named in its error).
MEDIA_PIXELS_FLAG = "--max-media-pixels or COMFYUI_RUNPOD_MAX_MEDIA_PIXELS raises it"


@dataclass(frozen=True)
class MediaSettings:
    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 8192 * 8192
    #: Pixels an input image or video decodes to, all frames together (``decodesize``):
    #: ComfyUI's loaders hold every frame as float32, ~16 bytes a pixel (~2 GiB here).
    max_media_pixels: int = 2 * 8192 * 8192
    #: Seconds without a byte before a URL download is given up.
    url_timeout_s: float = 30.0
    #: Seconds a URL download may take in all (less when the job's own time ends sooner):
    #: a server that trickles a byte now and then never trips ``url_timeout_s``.
    download_timeout_s: float = 120.0
    #: Let URLs reach loopback/private addresses (tests, trusted networks only).
    allow_private_urls: bool = False


def materialize(
    media: Iterable[InputMedia],
    folder: Path,
    settings: MediaSettings,
    bucket: BucketConfig | None = None,
    job_deadline: float | None = None,
) -> list[Path]:
    """Write ``media`` into ``folder``; ``bucket`` holds the job's keys for ``s3://``;
    ``job_deadline`` (a ``time.monotonic()`` instant) is when the job's own time ends."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for item in media:
        data = _read(item, settings, bucket, job_deadline)
        if item.image:
            _check_image(item.label, data, settings)
        path = folder / item.name
        path.write_bytes(data)
        _check_frames(item.label, path, settings)
        written.append(path)
    return written


def _read(
    item: InputMedia,
    settings: MediaSettings,
    bucket: BucketConfig | None,
    job_deadline: float | None,
) -> bytes:
    source = item.source.strip()
    if source.startswith(("http://", "https://")):
        return _download(item.label, source, settings, job_deadline)
    if source.startswith("s3://"):
        return _read_object(item.label, source, settings, bucket)
    if source.startswith("data:"):
        header, _, source = source.partition(",")
        if ";base64" not in header:
            raise JobError("invalid_input", f"{item.label}: data URI is not base64")
    if len(source) * 3 // 4 > settings.max_bytes:
        raise JobError("invalid_input", f"{item.label} is larger than {mib(settings.max_bytes)}")
    try:
        return base64.b64decode("".join(source.split()), validate=True)
    except (binascii.Error, ValueError):
        raise JobError(
            "invalid_input", f"{item.label} is not valid base64, a data URI or a URL"
        ) from None


def _read_object(
    label: str, url: str, settings: MediaSettings, bucket: BucketConfig | None
) -> bytes:
    """``s3://bucket/key`` with the job's bucket keys (``tobucket`` > ``s3Config`` > env)."""
    if bucket is None:
        raise JobError(
            "invalid_input",
            f"{label}: s3:// needs bucket credentials (input.tobucket, s3Config or BUCKET_* env)",
        )
    name, _, key = url[len("s3://") :].partition("/")
    try:
        body, size, _ = open_object(bucket, name, key)
    except StorageError as exc:
        raise JobError("invalid_input", f"{label}: could not read {url}: {exc}") from None
    with body:
        if size > settings.max_bytes:
            raise JobError("invalid_input", f"{label} is larger than {mib(settings.max_bytes)}")
        return body.read(settings.max_bytes + 1)


def _download(
    label: str, url: str, settings: MediaSettings, job_deadline: float | None = None
) -> bytes:
    """``label``: how errors name the file ("input image x.png", "input.files[0] (a.wav)").
    The whole download ends at its deadline, however slowly the server keeps sending."""
    deadline = Deadline.within(settings.download_timeout_s, MEDIA_DOWNLOAD_FLAG, job_deadline)
    try:
        with (
            deadline,
            open_checked_url(
                url,
                timeout_s=deadline.timeout(settings.url_timeout_s),
                allow_private=settings.allow_private_urls,
            ) as response,
        ):
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > settings.max_bytes:
                raise JobError(
                    "invalid_input",
                    f"{label} at {_host(url)} is {mib(int(declared))}, "
                    f"over the {mib(settings.max_bytes)} limit",
                )
            data = response.read(settings.max_bytes + 1)
        if deadline.expired:  # the connection was cut: what came is not the file
            raise _too_slow(label, url, deadline)
    except JobError:
        raise
    except PrivateAddress as exc:
        raise JobError("invalid_input", f"{label}: {exc}, which job URLs may not reach") from None
    except URLRefused as exc:
        raise JobError("invalid_input", f"{label}: {exc}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        if deadline.expired:
            raise _too_slow(label, url, deadline) from None
        reason = redact(str(getattr(exc, "reason", exc)), url)  # InvalidURL quotes the query
        raise JobError(
            "invalid_input", f"{label}: could not download from {_host(url)}: {reason}"
        ) from None
    if len(data) > settings.max_bytes:
        raise JobError(
            "invalid_input",
            f"{label} at {_host(url)} is over the {mib(settings.max_bytes)} limit",
        )
    return data


def _too_slow(label: str, url: str, deadline: Deadline) -> JobError:
    return JobError(
        "invalid_input", f"{label}: the download from {_host(url)} {deadline.describe()}"
    )


def _check_image(label: str, data: bytes, settings: MediaSettings) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > settings.max_pixels:
                raise JobError(
                    "invalid_input",
                    f"{label} is {width}x{height}, over the {settings.max_pixels} pixel limit",
                )
            image.verify()
    except JobError:
        raise
    except Image.DecompressionBombError:
        raise JobError(
            "invalid_input", f"{label} is over the {settings.max_pixels} pixel limit"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise JobError("invalid_input", f"{label} is not a readable image") from None


def _check_frames(label: str, path: Path, settings: MediaSettings) -> None:
    """Refuse (and remove) a file that decodes to more pixels than ComfyUI's loaders
    should hold: every frame of an animation or video counts, not only the first."""
    found = measure(path, settings.max_media_pixels)
    if found is None:
        return
    if found.pixels > settings.max_media_pixels:
        path.unlink()
        raise JobError(
            "invalid_input",
            f"{label} has {found.describe()}, {found.pixels} pixels in all once decoded, "
            f"over the {settings.max_media_pixels} pixel limit for an input's frames "
            f"({MEDIA_PIXELS_FLAG})",
        )
    if found.width * found.height > settings.max_pixels:
        path.unlink()
        raise JobError(
            "invalid_input",
            f"{label} has frames of {found.width}x{found.height}, "
            f"over the {settings.max_pixels} pixel limit",
        )


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).hostname or "?"
