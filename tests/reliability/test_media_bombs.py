"""Media bombs: small input files that decode to far more pixels than their first frame
says. A GIF of 4.6 KB declaring 200 frames of 4096x4096 is ~50 GiB of float32 in
ComfyUI's ``LoadImage``; a video's every packet becomes a frame in ``LoadVideo``. Each is
refused before any node decodes it, naming the file, the limit and the flag; ordinary
animations and clips still load."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import time
from typing import Any

import av
import pytest
import workflows
from comfyui_runpod.executor.inputs import MediaSettings
from comfyui_runpod.executor.worker import make_handler
from PIL import Image
from reliability_kit import gif_bytes

LIMIT = MediaSettings().max_media_pixels
FLAG = "--max-media-pixels or COMFYUI_RUNPOD_MAX_MEDIA_PIXELS raises it"


def animation(fmt: str, frames: int, size: int = 16) -> bytes:
    """A real animation (or TIFF pages) in ``fmt``, each frame a different grey."""
    images = [Image.new("RGB", (size, size), (40 * i,) * 3) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, fmt, save_all=True, append_images=images[1:], duration=50)
    return buffer.getvalue()


def clip(frames: int, size: int = 64) -> bytes:
    """An MPEG-4 video of ``frames`` frames."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=24)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            image = Image.new("RGB", (size, size), (5 * i % 256, 90, 160))
            container.mux(stream.encode(av.VideoFrame.from_image(image)))
        container.mux(stream.encode())
    return buffer.getvalue()


def image_job(name: str, data: bytes) -> dict[str, Any]:
    encoded = base64.b64encode(data).decode()
    workflow = workflows.load_and_save(name)
    return {
        "id": "bomb",
        "input": {"workflow": workflow, "images": [{"name": name, "image": encoded}]},
    }


def file_job(name: str, data: bytes, workflow: dict[str, Any]) -> dict[str, Any]:
    entry = {"name": name, "file": base64.b64encode(data).decode()}
    return {"id": "bomb", "input": {"workflow": workflow, "files": [entry], "tobase64": True}}


def load_video(name: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadVideo", "inputs": {"file": name}},
        "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "v"}},
    }


def test_the_200_frame_4096px_gif_is_refused_at_the_default_limit(pipeline_for) -> None:
    """The issue's bomb, as an input image and through the worker's handler: refused in
    well under a second (nothing decoded), and the worker takes the next job."""
    bomb = gif_bytes(4096, 4096, 200)
    assert len(bomb) < 5000
    handler = make_handler(pipeline_for())
    began = time.perf_counter()
    result = asyncio.run(handler(image_job("anim.gif", bomb)))
    assert time.perf_counter() - began < 5
    assert result["error_code"] == "invalid_input"
    assert result["error"] == (
        "invalid_input: input image anim.gif has at least 9 frames of 4096x4096, "
        f"150994944 pixels in all once decoded, over the {LIMIT} pixel limit for an "
        f"input's frames ({FLAG})"
    )
    ok = asyncio.run(handler({"id": "ok", "input": {"workflow": workflows.invert(0)}}))
    assert "error" not in ok, ok


def test_a_gif_bomb_among_input_files_is_refused(pipeline_for) -> None:
    """``input.files`` objects may be any file, but a GIF is still a GIF to LoadImage."""
    result = pipeline_for().run_sync(
        file_job("clip.bin", gif_bytes(4096, 4096, 200), workflows.load_and_save("clip.bin"))
    )
    assert result["error_code"] == "invalid_input"
    assert result["error"].startswith("invalid_input: input.files[0] (clip.bin) has at least")
    assert FLAG in result["error"]


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP", "TIFF"])
def test_every_frame_counts_not_only_the_first(pipeline_for, fmt: str) -> None:
    """8 frames of 16x16 (each costs at least LoadImage's 64x64 mask): over a limit of
    3 frames' worth whatever the format's way of holding frames (GIF and APNG frames,
    WebP animation, TIFF pages)."""
    name = f"anim.{fmt.lower()}"
    limit = 3 * 64 * 64
    result = pipeline_for(max_media_pixels=limit).run_sync(
        image_job(name, animation(fmt, frames=8))
    )
    assert result["error_code"] == "invalid_input", result
    # PyAV's count stops past the limit; PIL's n_frames comes whole from the header.
    counted = re.search(rf"input image {name} has (at least 4|8) frames of 16x16", result["error"])
    assert counted, result["error"]
    assert f"over the {limit} pixel limit for an input's frames ({FLAG})" in result["error"]


def test_a_small_animated_gif_still_loads_every_frame(pipeline_for) -> None:
    job = image_job("anim.gif", animation("GIF", frames=4))
    job["input"]["tobase64"] = True
    result = pipeline_for().run_sync(job)
    assert "error" not in result, result
    greys = []
    for encoded in result["files"]:
        with Image.open(io.BytesIO(base64.b64decode(encoded))) as image:
            greys.append(image.convert("RGB").getpixel((0, 0))[0])
    # ComfyUI 0.33 decodes GIFs with PyAV, whose colour conversion may round a level down.
    assert [round(grey / 40) for grey in greys] == [0, 1, 2, 3], greys


def test_a_video_over_the_limit_is_refused_and_one_under_it_loads(pipeline_for) -> None:
    """Frames are counted from the container's packets (PyAV demuxes, nothing decodes):
    48 frames of 64x64 are over a limit of 20 such frames, and load under the default."""
    video = clip(48)
    limit = 20 * 64 * 64
    refused = pipeline_for(max_media_pixels=limit).run_sync(
        file_job("clip.mp4", video, load_video("clip.mp4"))
    )
    assert refused["error"] == (
        "invalid_input: input.files[0] (clip.mp4) has at least 21 frames of 64x64, "
        f"86016 pixels in all once decoded, over the {limit} pixel limit for an input's "
        f"frames ({FLAG})"
    )
    loaded = pipeline_for().run_sync(file_job("clip.mp4", video, load_video("clip.mp4")))
    assert "error" not in loaded, loaded
    assert len(loaded["files"]) == 48
