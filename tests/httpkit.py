"""Plain HTTP for the endpoint tests: requests (JSON in, status and JSON out, error
statuses too) and a loopback webhook receiver."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def http(
    method: str,
    url: str,
    body: Any = None,
    *,
    raw: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60,
) -> tuple[int, Any]:
    """One request; (status, parsed JSON body), for error statuses too."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """GET raw bytes; (status, body), for error statuses too."""
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


class QuietHandler(BaseHTTPRequestHandler):
    """A test server's request handler: no access-log line per request on stderr."""

    def log_message(self, *args: Any) -> None:
        pass


def start_http(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """``handler`` on a free loopback port, a daemon thread per request; ``stop_http``
    ends it. One place for what every test server here starts the same way."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


def stop_http(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()


@dataclass
class Hook:
    """Loopback webhook receiver; answers 500 to the first ``fail_first`` POSTs."""

    fail_first: int = 0
    attempts: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook?token=abc"

    def start(self) -> Hook:
        hook = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with hook._cond:
                    hook.attempts += 1
                    ok = hook.attempts > hook.fail_first
                    if ok:
                        hook.received.append(json.loads(body))
                    hook._cond.notify_all()
                self.send_response(200 if ok else 500)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = start_http(Handler)
        return self

    def wait(self, count: int = 1, timeout: float = 15.0) -> list[dict[str, Any]]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.received) >= count, timeout), (
                f"{len(self.received)} webhooks, wanted {count}"
            )
            return list(self.received)

    def stop(self) -> None:
        if self._server is not None:
            stop_http(self._server)
