"""S3 Upload: put images, audio or files a workflow made into a bucket, return URLs.

Inside a RunPod job the bucket is the job's own (``tobucket`` > ``s3Config`` > env) and the
URLs join the job's ``files``; on the desktop it comes from ``BUCKET_*`` env or the user
config file. No credential is ever a widget.
"""

from __future__ import annotations

import io
import tempfile
import time
import uuid
import wave
from pathlib import Path
from typing import Any

from . import jobcontext, userconfig
from .imaging import FORMATS, encode_image
from .storage import UploadedFile, upload_files


class S3Upload:
    CATEGORY = "RunPod/storage"
    DESCRIPTION = (
        "Uploads images, audio or a file to S3-compatible storage and returns the URLs. In a "
        "RunPod job it uses the job's bucket and the URLs join the job's files; on the "
        "desktop it uses BUCKET_* environment variables or user/comfyui-runpod.json."
    )
    FUNCTION = "upload"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("urls",)
    OUTPUT_TOOLTIPS = ("The uploaded objects' URLs, one per line.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "name_prefix": (
                    "STRING",
                    {"default": "ComfyUI", "tooltip": "Start of each object's file name."},
                ),
                "format": (list(FORMATS), {"tooltip": "Image encoding for the images input."}),
                "quality": (
                    "INT",
                    {"default": 95, "min": 1, "max": 100, "tooltip": "JPEG/WebP quality."},
                ),
            },
            "optional": {
                "images": ("IMAGE", {"tooltip": "Images to upload, one object each."}),
                "audio": ("AUDIO", {"tooltip": "Audio to upload as a WAV file."}),
                "file_path": (
                    "STRING",
                    {
                        "default": "",
                        "tooltip": "A file another node wrote (video, mesh...), inside "
                        "ComfyUI's output folder.",
                    },
                ),
            },
        }

    def upload(
        self,
        name_prefix: str,
        format: str,
        quality: int,
        images: Any = None,
        audio: Any = None,
        file_path: str = "",
    ) -> dict[str, Any]:
        job = jobcontext.current()
        bucket = job.bucket if job is not None else userconfig.desktop_bucket()
        if bucket is None:
            raise RuntimeError(
                "no bucket configured: in a RunPod job send input.tobucket or s3Config (or set "
                "BUCKET_* on the worker); on the desktop set BUCKET_ENDPOINT_URL, "
                f"BUCKET_ACCESS_KEY_ID, BUCKET_SECRET_ACCESS_KEY or {userconfig.FILE_NAME}"
            )
        if images is None and audio is None and not file_path:
            raise ValueError("connect images or audio, or set file_path")
        key_dir = job.job_id if job is not None else time.strftime("comfyui/%Y-%m-%d")
        token = uuid.uuid4().hex[:8]  # the same prefix twice never overwrites an object
        stem = "".join(c for c in name_prefix if c.isalnum() or c in "-_") or "ComfyUI"
        with tempfile.TemporaryDirectory(prefix="s3upload-") as scratch:
            files, names = [], []
            for index, data in enumerate(_encode_images(images, format, quality)):
                names.append(f"{stem}_{token}_{index:05d}.{format}")
                files.append(_write(Path(scratch) / names[-1], data))
            for index, data in enumerate(_encode_audio(audio)):
                names.append(f"{stem}_{token}_audio_{index:05d}.wav")
                files.append(_write(Path(scratch) / names[-1], data))
            if file_path:
                path = _allowed_file(file_path, job)
                files.append(path)
                names.append(f"{stem}_{token}_{path.name}")
            uploaded: list[UploadedFile] = upload_files(bucket, files, key_dir, names=names)
        if job is not None:
            job.uploads.extend(uploaded)
        urls = [u.url for u in uploaded]
        return {"ui": {"urls": urls}, "result": ("\n".join(urls),)}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _encode_images(images: Any, fmt: str, quality: int) -> list[bytes]:
    return [] if images is None else [encode_image(image, fmt, quality) for image in images]


def _encode_audio(audio: Any) -> list[bytes]:
    """ComfyUI AUDIO (``waveform`` [batch, channels, samples], ``sample_rate``) → 16-bit WAV."""
    if audio is None:
        return []
    import numpy as np

    encoded = []
    for clip in audio["waveform"]:
        samples = np.clip(clip.cpu().float().numpy().T, -1.0, 1.0)
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as out:
            out.setnchannels(samples.shape[1])
            out.setsampwidth(2)
            out.setframerate(int(audio["sample_rate"]))
            out.writeframes((samples * 32767).astype("<i2").tobytes())
        encoded.append(buffer.getvalue())
    return encoded


def _allowed_file(file_path: str, job: jobcontext.JobContext | None) -> Path:
    """Only files the workflow wrote: the job's output folder, or ComfyUI's output folder.

    Otherwise a shared workflow could upload any file the worker can read.
    """
    import folder_paths

    root = Path(job.output_dir if job and job.output_dir else folder_paths.get_output_directory())
    root = root.resolve()
    path = Path(file_path)
    path = (path if path.is_absolute() else root / path).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise ValueError(f"file_path {file_path!r} is not a file in the output folder {root}")
    return path
