"""Helpers for ``tests/reliability/``: an in-process ``serve`` on a thread, a loopback web
server with hostile URLs, and the secret scan. (A module at the tests root because test
modules are imported in importlib mode and cannot import a sibling module.)"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import socket
import struct
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image
from s3server import TEST_ACCESS_ID, TEST_ACCESS_SECRET

#: The API key of every server these tests start: a secret like the bucket keys.
API_KEY = "rk-RELIABILITY-API-KEY-424242"
SECRETS = (TEST_ACCESS_SECRET, TEST_ACCESS_ID, API_KEY)

# -- images --------------------------------------------------------------------------------------


def png_bytes(color: tuple[int, int, int] = (1, 2, 3), size: int = 4) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, "PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def pixel(png: bytes) -> tuple[int, int, int]:
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        return image.convert("RGB").getpixel((0, 0))


def png_text(png: bytes) -> str:
    """Everything a saved PNG carries as text (ComfyUI writes the prompt there)."""
    with Image.open(io.BytesIO(png)) as image:
        image.load()
        return json.dumps(getattr(image, "text", {}) or image.info, default=str)


def gif_bytes(width: int, height: int, frames: int) -> bytes:
    """A GIF whose canvas is ``width`` x ``height`` and whose every frame draws one pixel:
    18 bytes a frame here, the whole canvas per frame once decoded."""
    screen = struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    delay = b"\x21\xf9\x04\x00\x01\x00\x00\x00"
    one_pixel = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return b"GIF89a" + screen + (delay + one_pixel) * frames + b"\x3b"


# -- raw TCP servers that misbehave -------------------------------------------------------------


class RawServer:
    """A loopback TCP server that runs ``_handle`` for each connection on a thread of its
    own: the base of servers that break HTTP on purpose. ``connections`` counts them."""

    def __init__(self) -> None:
        self.connections = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()


# -- a server that trickles -----------------------------------------------------------------


#: One byte this often: far inside any per-operation timeout of these tests (5 s).
EVERY_S = 0.2


class Trickle(RawServer):
    """Answers every request slowly, for ``limit_s`` at most: ``…/body…`` sends its headers
    (100 000 bytes promised) and then one body byte every ``EVERY_S``; ``/headers…`` sends
    the status line and then one header byte every ``EVERY_S``. ``hung_up`` is set when a
    client went away (a send failed)."""

    def __init__(self, limit_s: float = 8.0) -> None:
        self.limit_s = limit_s
        self.hung_up = threading.Event()
        super().__init__()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            path = conn.recv(65536).split(b" ", 2)[1]
            if b"/body" in path:
                head, drip = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", b"\0"
            else:
                head, drip = b"HTTP/1.1 200 OK\r\nX-Slow: ", b"x"
            end = time.monotonic() + self.limit_s
            try:
                conn.sendall(head)
                while time.monotonic() < end and not self._stop.is_set():
                    time.sleep(EVERY_S)
                    conn.sendall(drip)
            except OSError:
                self.hung_up.set()


# -- a loopback web server with hostile URLs -------------------------------------------------


class Web:
    """``/in.png`` a PNG; ``/huge.png`` declares 5 GB; ``/endless.png`` streams without a
    length (at most 8 MB); ``/tarpit.png`` never answers (for 3 s at most);
    ``/text.png`` is text. PUTs (an S3 client that found the wrong server) get a 501."""

    def __init__(self) -> None:
        body = png_bytes((1, 2, 3))

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/in.png":
                    self._send(200, body)
                elif self.path == "/text.png":
                    self._send(200, b"hello, not an image")
                elif self.path == "/huge.png":
                    self.send_response(200)
                    self.send_header("Content-Length", str(5 * 1024**3))
                    self.end_headers()
                    self.wfile.write(b"\x89PNG")
                elif self.path == "/endless.png":
                    self.send_response(200)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    try:
                        for _ in range(128):  # 8 MB, then give up
                            self.wfile.write(b"\0" * 65536)
                    except OSError:  # the client stopped reading: as it should
                        pass
                elif self.path == "/tarpit.png":
                    time.sleep(3)
                else:
                    self._send(404, b"not here")

            def _send(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- secrets ---------------------------------------------------------------------------------

#: Loggers whose records may carry the access key *id* (never the secret):
#: ``werkzeug`` is the moto test server's own access log (it prints presigned URLs, whose
#: ``X-Amz-Credential`` holds the id by S3's design) and ``botocore``'s DEBUG log prints
#: the signed request (SigV4's Authorization header holds the id). Neither is this
#: project's code, and neither reaches a customer; the access *secret* is checked there too.
THIRD_PARTY_WIRE_LOGS = ("werkzeug", "botocore")


def _record_text(record: logging.LogRecord) -> str:
    text = record.getMessage()
    if record.exc_info:
        text += "\n" + logging.Formatter().formatException(record.exc_info)
    return text


def leaks(text: str) -> list[str]:
    """The secrets in ``text``, ignoring the access key id inside presigned URLs."""
    text = re.sub(r"X-Amz-Credential=[^&\"'\s]*", "", text)
    return [secret for secret in SECRETS if secret in text]


def assert_no_secrets(records: Iterable[logging.LogRecord], *texts: Any) -> int:
    """No secret in our log records, nor in ``texts`` (results, errors, PNG metadata, any
    JSON-able value); returns how many characters were scanned."""
    records = list(records)
    ours = "\n".join(
        _record_text(r) for r in records if not r.name.startswith(THIRD_PARTY_WIRE_LOGS)
    )
    everything = "\n".join(_record_text(r) for r in records)
    values = "\n".join(t if isinstance(t, str) else json.dumps(t, default=str) for t in texts)
    assert leaks(ours) == [], "a secret is in our logs"
    assert leaks(values) == [], "a secret is in a result, an error or a file"
    assert TEST_ACCESS_SECRET not in everything, "the access secret is in a third-party log"
    return len(ours) + len(values)


# -- receivers and broken servers --------------------------------------------------------------


class Dropper(RawServer):
    """A TCP server that accepts, reads a little of each request, then resets the
    connection: an S3 endpoint (or webhook receiver) failing mid-request. ``hang=True``
    reads and then says nothing until the client gives up (at most 5 s)."""

    def __init__(self, hang: bool = False) -> None:
        self._hang = hang
        super().__init__()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                conn.recv(1024)  # the request line and some headers: then the line goes dead
                while self._hang and conn.recv(65536):  # until the client gives up, or 5 s
                    pass
                # Linger 0: close() sends a reset, not a polite end of stream.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
