"""Run the built image as RunPod starts it, on jobs it must complete (`make image-test`).

Each job is one run of the image's own CMD with RunPod's ``--test_input``, in a fresh
container without network:

- a model-free job whose PNG (written to a mounted output folder) must hold the inverted
  colour;
- a tiny random SD1.5 checkpoint in a folder mounted at
  ``/runpod-volume/models/checkpoints/``, the network-volume layout the image documents;
- every case of the Hub's ``.runpod/tests.json``.

Every boot must report no node module that failed to import. Printed: the image size, the
size of each layer, the boot time inside the image and each job's time. The tiny checkpoint
is the tests' own (tests/tinymodel.py, cached where the tests cache it); where it is not
cached yet the image's own Python builds it, so no venv is needed here.

Standard library only, like image/build.py.
"""

from __future__ import annotations

import argparse
import ast
import base64
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(Path(__file__).resolve().parent)]
# tests/workflows.py: the tests' own graphs; build.py: the same engine choice as `make image`
import workflows  # noqa: E402
from build import docker_answers  # noqa: E402

CHECKPOINT = "tiny-sd15-v1.safetensors"  # tests/tinymodel.py CACHE_FILE
VOLUME_CHECKPOINTS = "/runpod-volume/models/checkpoints"
OUTPUT = "/comfyui/runpod-output"  # COMFYUI_RUNPOD_OUTPUT's default under WORKDIR /comfyui
COLOR = 0x123456
PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()[:10]


class CheckFailed(Exception):
    """One line: what the image got wrong."""


# -- pure helpers (tests/test_image_build.py) ---------------------------------------------


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows) of an 8-bit RGB or RGBA, non-interlaced PNG (what SaveImage
    writes), rows unfiltered to raw pixel bytes."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise CheckFailed("not a PNG file")
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    if header is None:
        raise CheckFailed("PNG without IHDR")
    width, height, depth, color_type, _, _, interlace = header
    if depth != 8 or color_type not in (2, 6) or interlace:
        raise CheckFailed(f"unexpected PNG format (depth {depth}, colour type {color_type})")
    bpp = 3 if color_type == 2 else 4
    raw, stride, rows = zlib.decompress(idat), width * bpp, []
    prev = bytes(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for x in range(stride):
            left = line[x - bpp] if x >= bpp else 0
            up, corner = prev[x], prev[x - bpp] if x >= bpp else 0
            line[x] = (line[x] + _predict(kind, left, up, corner)) & 255
        rows.append(bytes(line))
        prev = rows[-1]
    return width, height, rows


def _predict(kind: int, left: int, up: int, corner: int) -> int:
    """PNG filter types 0-4 (None, Sub, Up, Average, Paeth)."""
    if kind == 4:
        p = left + up - corner
        pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
        return left if pa <= pb and pa <= pc else up if pb <= pc else corner
    return (0, left, up, (left + up) // 2)[kind]


@dataclass
class Run:
    """What one worker run printed, read."""

    boot_s: float | None
    failed_modules: list[str]
    result: dict | None
    error: str | None
    #: The boot found the image's node index and left built-in node modules for first use.
    lazy: bool = False


def read_run(output: str) -> Run:
    """The boot time, failed node modules and job result from a worker's ``--test_input``
    output (runpod 1.12 logs the result as a Python literal after ``Job result:``)."""
    ready = re.search(r"ComfyUI \S+ ready on \S+ in ([\d.]+)s: [^\n]*", output)
    failed = re.findall(r"node module failed to import: (\S+?):", output)
    if ready and "failed to import" in ready.group(0) and not failed:
        failed = [ready.group(0)]
    result = error = None
    found = re.search(r"Job result: (\{.*\})\s*$", output, re.MULTILINE)
    if found:
        try:
            result = ast.literal_eval(found.group(1))
        except (ValueError, SyntaxError):  # over 4096 characters: the SDK truncates the line
            result = {"truncated": found.group(1)}
    failure = re.search(r"Job \S+ failed with error: (.*)$", output, re.MULTILINE)
    if failure:
        error = failure.group(1)
    lazy = bool(ready and "imported on first use" in ready.group(0))
    return Run(float(ready.group(1)) if ready else None, failed, result, error, lazy)


def human(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError


# -- the engine ----------------------------------------------------------------------------


class Engine:
    """Docker where an engine answers, else buildah on its local storage."""

    def __init__(self, tag: str) -> None:
        self.docker = docker_answers()
        self.tag = tag if self.docker or "/" in tag else f"localhost/{tag}"

    def inspect(self) -> dict:
        if self.docker:
            out = _run(["docker", "image", "inspect", self.tag])
            return json.loads(out)[0]
        return json.loads(_run(["buildah", "inspect", "--type", "image", self.tag]))

    def cmd(self) -> list[str]:
        info = self.inspect()
        config = info["Config"] if self.docker else info["Docker"]["config"]
        return [*(config.get("Entrypoint") or []), *config["Cmd"]]

    def layers(self) -> list[tuple[int, str]]:
        """(size in bytes, the instruction that made it) per layer, base first."""
        if self.docker:
            out = _run(["docker", "history", "--no-trunc", "--format", "{{json .}}", self.tag])
            rows = [json.loads(line) for line in out.splitlines()][::-1]
            return [(_bytes(r["Size"]), r["CreatedBy"]) for r in rows]
        info = self.inspect()
        sizes = [layer["size"] for layer in json.loads(info["Manifest"])["layers"]]
        history = info["Docker"]["history"]
        made = [h.get("created_by", "") for h in history if not h.get("empty_layer")]
        made = [""] * (len(sizes) - len(made)) + made
        return list(zip(sizes, made[-len(sizes) :], strict=True))

    def run(
        self, args: list[str], mounts: list[tuple[Path, str, str]], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """Run ``args`` in a fresh container of the image, no network."""
        volumes = [x for src, dst, mode in mounts for x in ("-v", f"{src}:{dst}:{mode}")]
        if self.docker:
            command = ["docker", "run", "--rm", "--network", "none", *volumes, self.tag, *args]
            return _output(command, timeout)
        ctr = _run(["buildah", "from", "--pull=false", "--quiet", self.tag]).strip()
        try:
            command = ["buildah", "run", "--runtime", "runc", "--network", "none", *volumes]
            return _output([*command, ctr, "--", *args], timeout)
        finally:
            subprocess.run(["buildah", "rm", ctr], capture_output=True)


def _bytes(size: str) -> int:
    number, unit = re.match(r"([\d.]+)\s*([kMG]?B)", size).groups()
    return int(float(number) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[unit])


def _run(args: Sequence[str]) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True)
    if done.returncode != 0:
        raise CheckFailed(f"{' '.join(args[:3])}: {done.stderr.strip()[-300:]}")
    return done.stdout


def _output(args: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise CheckFailed(f"no result within {timeout:.0f}s") from exc


# -- the checks ----------------------------------------------------------------------------


def tiny_checkpoint(engine: Engine) -> Path:
    """The tests' cached tiny SD1.5 checkpoint, built with the image's Python if missing."""
    cache = Path(
        os.environ.get("COMFYUI_RUNPOD_TEST_CACHE")
        or Path.home() / ".cache" / "comfyui-runpod-tests"
    )
    path = cache / CHECKPOINT
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    print(f"image-test: building the tiny SD1.5 checkpoint into {cache} (the image's Python)")
    script = (
        "import sys; from pathlib import Path; sys.path[:0] = ['/comfyui', '/tests']; "
        f"import tinymodel; tinymodel.build_tiny_sd15(Path('/cache/{CHECKPOINT}'))"
    )
    mounts = [(ROOT / "tests", "/tests", "ro"), (cache, "/cache", "rw")]
    done = engine.run(["python", "-c", script], mounts, timeout=600)
    if not path.is_file():
        raise CheckFailed(f"the tiny checkpoint was not built: {done.stderr.strip()[-300:]}")
    return path


def job(engine: Engine, name: str, job: dict, mounts: list, timeout: float) -> tuple[Run, float]:
    started = time.monotonic()
    done = engine.run([*engine.cmd(), "--test_input", json.dumps(job)], mounts, timeout)
    output = done.stdout + done.stderr
    took = time.monotonic() - started
    run = read_run(output)
    tail = "\n".join(output.strip().splitlines()[-15:])
    if run.boot_s is None:
        raise CheckFailed(f"{name}: the worker never reported ComfyUI ready:\n{tail}")
    if run.failed_modules:
        raise CheckFailed(f"{name}: node modules failed to import: {', '.join(run.failed_modules)}")
    if not run.lazy:
        raise CheckFailed(f"{name}: the boot found no node index (comfyui index at build)")
    if run.error or run.result is None:
        raise CheckFailed(f"{name}: the job did not complete: {run.error or tail}")
    print(f"image-test: {name}: completed in {took:.1f}s (boot {run.boot_s:.1f}s)", flush=True)
    return run, took


def saved_png(out: Path, prefix: str) -> tuple[int, int, list[bytes]]:
    files = sorted(out.rglob(f"{prefix}_*.png"))
    if len(files) != 1:
        raise CheckFailed(f"expected one {prefix}_*.png in the output folder, found {files}")
    return png_pixels(files[0].read_bytes())


def check(tag: str) -> None:
    engine = Engine(tag)
    layers = engine.layers()
    print(f"image-test: {engine.tag}: {human(sum(s for s, _ in layers))} in {len(layers)} layers")
    for size, made in layers:
        print(f"  {human(size):>9}  {' '.join(made.split())[:110]}")
    with tempfile.TemporaryDirectory(prefix="image-test-") as tmp:
        out = Path(tmp) / "out"
        out.mkdir()
        os.chmod(out, 0o777)
        free, _ = job(
            engine,
            "model-free job",
            {"input": {"workflow": workflows.invert(COLOR, size=16, prefix="free")}},
            [(out, OUTPUT, "rw")],
            timeout=600,
        )
        width, height, rows = saved_png(out, "free")
        want = bytes(255 - ((COLOR >> shift) & 255) for shift in (16, 8, 0))
        if (width, height) != (16, 16) or rows[0][:3] != want or len(set(rows)) != 1:
            raise CheckFailed(f"model-free job: PNG {width}x{height}, first pixel {rows[0][:3]!r}")

        checkpoint = tiny_checkpoint(engine)
        volume = [(checkpoint.parent, VOLUME_CHECKPOINTS, "ro"), (out, OUTPUT, "rw")]
        sd = {"input": {"workflow": workflows.tiny_sd(CHECKPOINT, prefix="sd15")}}
        job(engine, "tiny SD1.5 job, checkpoint on the volume", sd, volume, timeout=900)
        width, height, rows = saved_png(out, "sd15")
        if (width, height) != (64, 64) or len(set(b"".join(rows))) < 16:
            raise CheckFailed(f"SD1.5 job: a {width}x{height} PNG that is (nearly) flat")

        cases = json.loads((ROOT / ".runpod" / "tests.json").read_text(encoding="utf-8"))
        for case in cases["tests"]:
            name = f"Hub test {case['name']}"
            run, _ = job(engine, name, {"input": case["input"]}, [], case["timeout"] / 1000)
            text = repr(run.result)
            if case["input"].get("tobase64") and PNG_B64 not in text:
                raise CheckFailed(f"{name}: no base64 PNG in the result: {text[:300]}")

    # Every node module, ComfyUI's and the packs', imported (also any deferred at boot).
    done = engine.run(["comfyui-runpod", "comfyui", "nodes", "--strict", "--json"], [], 600)
    try:
        nodes = json.loads(done.stdout)
    except ValueError:
        raise CheckFailed(f"comfyui nodes: {done.stderr.strip()[-300:]}") from None
    if done.returncode != 0 or nodes["failed"]:
        failed = ", ".join(f"{f['module']} ({f['error']})" for f in nodes["failed"])
        raise CheckFailed(f"node modules failed to import in the image: {failed}")
    print(f"image-test: {nodes['nodeTypes']} node types, no node module failed to import")
    print(f"image-test: passed; boot time inside the image {free.boot_s:.1f}s (CPU)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", default="comfyui-runpod:dev")
    args = parser.parse_args(argv)
    if shutil.which("docker") is None and shutil.which("buildah") is None:
        print("image-test: failed: neither docker nor buildah is installed (make image)")
        return 1
    try:
        check(args.tag)
    except CheckFailed as exc:
        print(f"image-test: failed: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
