"""Every core output kind end to end: real ComfyUI nodes, model-free, through the pipeline.

One workflow makes every kind at once — PNG, animated WEBP and PNG, MP4 (h264 + AAC), WEBM
(VP9), FLAC, MP3, Opus and text — from inputs the test sends as ``input.files`` objects (a WAV and
a FLAC for ``LoadAudio``). It runs once per destination (base64, bucket, local), and every
file is decoded and checked each time: that is three jobs, cheaper than a kind × destination
matrix of single-kind jobs, and it proves each kind in each place.
"""

from __future__ import annotations

import base64
import io
import json
import math
import urllib.request
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image
from s3server import S3Server, bucket_contract

# The tone every audio input carries: 0.5 s, 16-bit, stereo, 24 kHz.
RATE, CHANNELS, SECONDS = 24_000, 2, 0.5
SAMPLES = int(RATE * SECONDS)
PITCHES = (440.0, 660.0)  # left, right: a swapped or merged channel shows
# Every image and video output: frames alternating between two colours (identical frames
# would not do: libwebp merges them into one longer frame).
WIDTH, HEIGHT, FRAMES, FPS = 64, 48, 8, 16.0
COLORS = ((0x33, 0x66, 0xCC), (0xCC, 0x99, 0x33))
TEXT = "a caption for the outputs test"
#: What a lossy audio encoder may add or trim (priming, padding to whole packets).
LOSSY_SLACK_S = 0.030
#: Opus decodes at 48 kHz whatever rate it was fed (RFC 7845); ComfyUI feeds it 24 kHz as is.
OPUS_RATE = 48_000

CONTENT_TYPES = {
    ".png": "image/png",
    ".webp": "image/webp",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".flac": "audio/flac",
    ".mp3": "audio/mpeg",
    ".opus": "audio/ogg",
}


# -- inputs the test makes ---------------------------------------------------------------------


def tone() -> np.ndarray:
    """[samples, channels] int16 at half scale: one pitch per channel."""
    t = np.arange(SAMPLES) / RATE
    waves = [np.sin(2 * math.pi * pitch * t) for pitch in PITCHES]
    return (np.stack(waves, axis=1) * 0.5 * 32767).astype("<i2")


def tone_wav() -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(CHANNELS)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(tone().tobytes())
    return buffer.getvalue()


def tone_flac() -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="flac") as container:
        stream = container.add_stream("flac", rate=RATE, layout="stereo")
        frame = av.AudioFrame.from_ndarray(tone().reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = RATE
        frame.pts = 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def clip_mp4() -> bytes:
    """An h264 clip of the alternating frames, for ``LoadVideo``."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("h264", rate=int(FPS))
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for index in range(FRAMES):
            pixels = np.full((HEIGHT, WIDTH, 3), COLORS[index % 2], dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def audio_inputs() -> list[dict[str, str]]:
    """The WAV as base64, the FLAC as a data URI: both ``input.files`` object forms."""
    return [
        {"name": "tone.wav", "file": b64(tone_wav())},
        {"name": "tone.flac", "file": "data:audio/flac;base64," + b64(tone_flac())},
    ]


def every_kind() -> dict[str, Any]:
    """One output node per kind. The video's sound comes from the FLAC input, the audio
    outputs from the WAV input."""

    def empty(color: tuple[int, int, int]) -> dict[str, Any]:
        rgb = color[0] << 16 | color[1] << 8 | color[2]
        size = {"width": WIDTH, "height": HEIGHT, "batch_size": 1, "color": rgb}
        return {"class_type": "EmptyImage", "inputs": size}

    def save(class_type: str, prefix: str, **inputs: Any) -> dict[str, Any]:
        return {"class_type": class_type, "inputs": {"filename_prefix": prefix, **inputs}}

    frames, sound = ["4", 0], ["5", 0]
    return {
        "1": empty(COLORS[0]),
        "2": empty(COLORS[1]),
        "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
        "4": {
            "class_type": "RepeatImageBatch",
            "inputs": {"image": ["3", 0], "amount": FRAMES // 2},
        },
        "5": {"class_type": "LoadAudio", "inputs": {"audio": "tone.wav"}},
        "6": {"class_type": "LoadAudio", "inputs": {"audio": "tone.flac"}},
        "7": {
            "class_type": "CreateVideo",
            "inputs": {"images": frames, "fps": FPS, "audio": ["6", 0]},
        },
        "10": save("SaveImage", "png", images=["1", 0]),
        "11": save(
            "SaveAnimatedWEBP",
            "webp",
            images=frames,
            fps=FPS,
            lossless=True,
            quality=80,
            method="fastest",
        ),
        "12": save("SaveAnimatedPNG", "apng", images=frames, fps=FPS, compress_level=1),
        "13": save("SaveVideo", "mp4", video=["7", 0], format="auto", codec="auto"),
        "14": save("SaveWEBM", "webm", images=frames, codec="vp9", fps=FPS, crf=32.0),
        "15": save("SaveAudio", "flac", audio=sound),
        "16": save("SaveAudioMP3", "mp3", audio=sound, quality="128k"),
        "17": save("SaveAudioOpus", "opus", audio=sound, quality="64k"),
        "20": {"class_type": "PrimitiveString", "inputs": {"value": TEXT}},
        "21": {"class_type": "PreviewAny", "inputs": {"source": ["20", 0]}},
        "22": {"class_type": "RunPodCaptureData", "inputs": {"value": ["20", 0], "key": "caption"}},
    }


# -- what came back ----------------------------------------------------------------------------


def near(measured: Any, expected: tuple[int, int, int], tolerance: float) -> bool:
    """A decoded colour against the colour sent: lossy video (yuv420) is off by a few."""
    return bool(np.all(np.abs(np.asarray(measured, dtype=float) - expected) <= tolerance))


def image_frames(data: bytes, image_format: str) -> list[np.ndarray]:
    """Every frame's mean RGB, after checking the format and size."""
    means = []
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == image_format and image.size == (WIDTH, HEIGHT)
        for index in range(getattr(image, "n_frames", 1)):
            image.seek(index)
            means.append(np.asarray(image.convert("RGB"), dtype=float).mean(axis=(0, 1)))
    return means


def video_frames(data: bytes, codec: str) -> list[np.ndarray]:
    """Every decoded frame's mean RGB, after checking the codec and size."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == codec
        assert (stream.codec_context.width, stream.codec_context.height) == (WIDTH, HEIGHT)
        return [
            frame.to_ndarray(format="rgb24").mean(axis=(0, 1)) for frame in container.decode(stream)
        ]


def decoded_audio(data: bytes) -> tuple[str, int, np.ndarray]:
    """(codec, sample rate, samples as float [channels, n]) of the first audio stream."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        chunks = []
        for frame in container.decode(stream):
            array = frame.to_ndarray()
            if not frame.format.is_planar:  # interleaved: [1, n * channels]
                array = array.reshape(-1, len(frame.layout.channels)).T
            if array.dtype.kind == "i":
                array = array / float(np.iinfo(array.dtype).max + 1)
            chunks.append(array.astype(float))
        return stream.codec_context.name, stream.codec_context.sample_rate, np.hstack(chunks)


def pitch(channel: np.ndarray, rate: int) -> float:
    """The strongest frequency in ``channel`` (Hz; 2 Hz resolution for 0.5 s)."""
    spectrum = np.abs(np.fft.rfft(channel))
    return float(np.argmax(spectrum) * rate / len(channel))


def check_tone(data: bytes, codec: str, rate: int, slack_s: float) -> np.ndarray:
    """The decoded file is the tone: ``codec``, ``rate``, both channels at their pitches,
    the duration within ``slack_s``. Returns the samples."""
    got_codec, got_rate, samples = decoded_audio(data)
    assert (got_codec, got_rate, samples.shape[0]) == (codec, rate, CHANNELS)
    assert abs(samples.shape[1] / rate - SECONDS) <= slack_s, samples.shape[1]
    for channel, expected in zip(samples, PITCHES, strict=True):
        assert abs(pitch(channel, rate) - expected) <= 5
    return samples


def alternates(means: list[np.ndarray], tolerance: float) -> None:
    assert len(means) == FRAMES
    for index, mean in enumerate(means):
        assert near(mean, COLORS[index % 2], tolerance), (index, mean)


def check_png(data: bytes) -> None:
    assert [tuple(m) for m in image_frames(data, "PNG")] == [COLORS[0]]


def check_webp(data: bytes) -> None:
    alternates(image_frames(data, "WEBP"), 0)  # lossless: exact


def check_mp4(data: bytes) -> None:
    alternates(video_frames(data, "h264"), 6)
    check_tone(data, "aac", RATE, LOSSY_SLACK_S)  # the FLAC input's sound track


def check_apng(data: bytes) -> None:
    alternates(image_frames(data, "PNG"), 0)


def check_webm(data: bytes) -> None:
    alternates(video_frames(data, "vp9"), 6)


def check_flac(data: bytes) -> None:
    samples = check_tone(data, "flac", RATE, 1 / RATE)  # lossless: ±1 frame
    assert np.abs(samples.T * 32768 - tone()).max() <= 1  # and the same samples


def check_mp3(data: bytes) -> None:
    # ComfyUI hands LAME the input's rate; 24 kHz is an MPEG-2 layer III rate, so it stays.
    check_tone(data, "mp3float", RATE, LOSSY_SLACK_S)


def check_opus(data: bytes) -> None:
    check_tone(data, "opus", OPUS_RATE, LOSSY_SLACK_S)


#: Output node id → the check of its file's bytes.
CHECKS: dict[str, Callable[[bytes], None]] = {
    "10": check_png,
    "11": check_webp,
    "12": check_apng,
    "13": check_mp4,
    "14": check_webm,
    "15": check_flac,
    "16": check_mp3,
    "17": check_opus,
}


def fetch(url: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(url) as response:
        return response.read(), response.headers["Content-Type"]


# -- the tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("destination", ["base64", "bucket", "local"])
def test_every_kind_in_every_destination(
    make_pipeline, s3_server: S3Server, tmp_path: Path, destination: str
) -> None:
    job_input: dict[str, Any] = {"workflow": every_kind(), "files": audio_inputs()}
    if destination == "base64":
        job_input["tobase64"] = True
    elif destination == "bucket":
        job_input["tobucket"] = bucket_contract(s3_server, s3_server.make_bucket("kinds"))
    result = make_pipeline().run_sync({"id": f"kinds-{destination}", "input": job_input})
    assert "error" not in result, result.get("error")
    result = json.loads(json.dumps(result))  # what a caller receives

    # Text: ComfyUI's ui lists (PreviewAny returns a tuple), one item per execution.
    assert result["datas"] == {"21": {"text": [TEXT]}, "22": {"caption": [TEXT]}}
    infos = result["file_info"]
    assert [info["node_id"] for info in infos] == list(CHECKS)  # one file each, in order
    assert {Path(info["name"]).suffix for info in infos} == set(CONTENT_TYPES)
    for info, entry in zip(infos, result["files"], strict=True):
        suffix = Path(info["name"]).suffix
        assert info["content_type"] == CONTENT_TYPES[suffix]
        assert info["delivered"] == destination
        # ComfyUI reports videos and animated images under "images" (with "animated").
        assert info["kind"] == ("audio" if CONTENT_TYPES[suffix].startswith("audio/") else "images")
        if destination == "base64":
            data = base64.b64decode(entry, validate=True)
        elif destination == "bucket":
            assert f"/generations/kinds-bucket/{info['name']}?" in entry
            data, stored_type = fetch(entry)
            assert stored_type == info["content_type"]
        else:
            path = Path(entry)
            assert path.parent == tmp_path / "out" / "kinds-local" / Path(info["name"]).parent
            data = path.read_bytes()
        assert len(data) == info["size"]
        CHECKS[info["node_id"]](data)


def test_s3_upload_node_uploads_loaded_audio_as_wav(make_pipeline, s3_server: S3Server) -> None:
    workflow = {
        "1": {"class_type": "LoadAudio", "inputs": {"audio": "tone.wav"}},
        "2": {
            "class_type": "RunPodS3Upload",
            "inputs": {"audio": ["1", 0], "name_prefix": "voice", "format": "png", "quality": 95},
        },
    }
    job = {
        "id": "node-audio",
        "input": {
            "workflow": workflow,
            "files": audio_inputs()[:1],
            "tobucket": bucket_contract(s3_server, s3_server.make_bucket("node-audio")),
        },
    }
    result = make_pipeline().run_sync(job)
    assert "error" not in result, result.get("error")
    [url] = result["files"]
    assert result["file_info"][0]["kind"] == "upload"
    data, content_type = fetch(url)
    assert content_type in ("audio/wav", "audio/x-wav")
    with wave.open(io.BytesIO(data)) as clip:
        assert (clip.getframerate(), clip.getnchannels(), clip.getnframes()) == (
            RATE,
            CHANNELS,
            SAMPLES,
        )
        samples = np.frombuffer(clip.readframes(SAMPLES), "<i2").reshape(-1, CHANNELS)
    assert np.abs(samples.astype(int) - tone()).max() <= 1  # float and back: at most 1 LSB


def test_load_video_from_an_input_file(make_pipeline) -> None:
    workflow = {
        "1": {"class_type": "LoadVideo", "inputs": {"file": "clip.mp4"}},
        "2": {
            "class_type": "SaveVideo",
            "inputs": {
                "video": ["1", 0],
                "filename_prefix": "again",
                "format": "auto",
                "codec": "auto",
            },
        },
    }
    clip = {"name": "clip.mp4", "file": "data:video/mp4;base64," + b64(clip_mp4())}
    job = {"id": "video-in", "input": {"workflow": workflow, "files": [clip], "tobase64": True}}
    result = make_pipeline().run_sync(job)
    assert "error" not in result, result.get("error")
    [encoded] = result["files"]
    assert result["file_info"][0]["content_type"] == "video/mp4"
    alternates(video_frames(base64.b64decode(encoded), "h264"), 6)
