"""Model download progress as an operator sees it (#28 item 7): a bar on a terminal; in
logs, at most a line per 5 % or 10 s with percent, rate and ETA; a per-job download is
no longer silent until it ends."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import pytest
from comfyui_runpod.executor.models import DownloadDisplay, ModelCache, ModelSettings, ModelSpec
from httpkit import QuietHandler, start_http, stop_http

LINE = re.compile(
    r"downloading model checkpoints/big\.safetensors: (\d+)% of 10240\.0 MiB, "
    r"([\d.]+) MiB/s, (ETA \w+|done)$"
)


class Clock:
    """Stands in for time: the test moves it, so a 10 GiB download takes no real time."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_multi_gb_download_logs_about_twenty_lines(caplog: pytest.LogCaptureFixture) -> None:
    """10 GiB in 1 MiB chunks at 100 MiB/s: 10 240 updates, ~20 lines (one per 5 %)."""
    clock, total = Clock(), 10 * 1024**3
    display = DownloadDisplay(
        "checkpoints/big.safetensors", total, stream=io.StringIO(), clock=clock
    )
    with caplog.at_level(logging.INFO, logger="comfyui_runpod.executor.models"):
        for chunk in range(1, 10241):
            clock.now += 0.01
            display.update(chunk * 1024**2)
    lines = [r.getMessage() for r in caplog.records]
    assert 20 <= len(lines) <= 21, lines
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [int(m.group(1)) for m in parsed][:3] == [5, 10, 15]
    assert float(parsed[0].group(2)) == pytest.approx(100.0, rel=0.01)
    assert parsed[0].group(3) == "ETA 1m37s" and parsed[-1].group(3) == "done"


def test_a_slow_download_logs_every_ten_seconds(caplog: pytest.LogCaptureFixture) -> None:
    """At 1 MiB/s no 5 % step is crossed for minutes: a line each 10 s says it is alive."""
    clock = Clock()
    display = DownloadDisplay(
        "checkpoints/big.safetensors", 10 * 1024**3, stream=io.StringIO(), clock=clock
    )
    with caplog.at_level(logging.INFO, logger="comfyui_runpod.executor.models"):
        for chunk in range(1, 61):  # a minute, a chunk a second
            clock.now += 1.0
            display.update(chunk * 1024**2)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 6, lines
    assert lines[0] == (
        "downloading model checkpoints/big.safetensors: 0% of 10240.0 MiB, 1.0 MiB/s, ETA 2h50m"
    )


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_and_no_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    screen = Terminal()
    display = DownloadDisplay("loras/x.safetensors", 8 * 1024**2, stream=screen)
    with caplog.at_level(logging.INFO, logger="comfyui_runpod.executor.models"):
        for chunk in range(1, 9):
            display.update(chunk * 1024**2)
        display.close()
    assert caplog.records == []
    shown = screen.getvalue()
    assert "\r" in shown and "loras/x.safetensors: 100%" in shown and "8.00M/8.00M" in shown


def test_a_job_download_shows_progress_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real download over loopback HTTP, as a job's ``models`` entry runs it: the log
    has its progress lines, not only the line at the end."""
    body = bytes(range(256)) * 16384  # 4 MiB: four 1 MiB chunks

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = start_http(Handler)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/big.safetensors"
        cache = ModelCache(ModelSettings(tmp_path, allow_private_urls=True))
        with caplog.at_level(logging.INFO, logger="comfyui_runpod.executor.models"):
            assert cache.ensure(ModelSpec(url, "checkpoints", "big.safetensors"))
    finally:
        stop_http(server)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("downloading")]
    assert lines[0].startswith("downloading model checkpoints/big.safetensors: 25% of 4.0 MiB, ")
    assert lines[-1].startswith("downloading model checkpoints/big.safetensors: 100% of 4.0 MiB")
    assert lines[-1].endswith(", done") and len(lines) == 4
