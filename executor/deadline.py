"""A whole download's time limit.

Socket timeouts bound one operation, not their sum: a server that sends a byte every 29 s
keeps a 30 s timeout content for ever and holds one of the few I/O threads. A
:class:`Deadline` ends that: when it passes, a timer shuts down every socket the download
has opened (``urlguard`` reports each one; an S3 body is found through its stream), so
even a read blocked in the kernel returns at once. The download then sees a closed
connection and asks :attr:`Deadline.expired` what happened.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import TracebackType
from typing import Any

from .urlguard import watching_sockets

#: How a deadline set by the job names itself in errors.
JOB_TIMEOUT = "the job's policy.executionTimeout"


class Deadline:
    """``seconds`` from now; ``source`` says in errors what set it (a flag, or the job).

    Use it as a context manager around the download: sockets opened inside are watched.
    """

    def __init__(self, seconds: float, source: str) -> None:
        self.seconds, self.source = max(seconds, 0.0), source
        self.at = time.monotonic() + self.seconds
        self._sockets: list[socket.socket] = []  # duplicates: closing them closes nothing
        self._lock = threading.Lock()
        self._expired = False
        self._timer = threading.Timer(self.seconds, self._expire)
        self._timer.daemon = True
        self._watching = contextlib.ExitStack()

    @classmethod
    def within(cls, cap_s: float, cap_source: str, job_deadline: float | None) -> Deadline:
        """The cap, or what is left of the job's time (``time.monotonic()`` instant)
        when that is sooner."""
        left = None if job_deadline is None else job_deadline - time.monotonic()
        if left is not None and left < cap_s:
            return cls(left, JOB_TIMEOUT)
        return cls(cap_s, cap_source)

    @property
    def expired(self) -> bool:
        return self._expired or time.monotonic() >= self.at

    def timeout(self, per_operation_s: float) -> float:
        """A socket timeout that does not reach past the deadline."""
        return max(min(per_operation_s, self.at - time.monotonic()), 0.001)

    def describe(self) -> str:
        """The end of an error: "did not finish within 2 s (--model-download-timeout)"."""
        return f"did not finish within {round(self.seconds, 1):g} s ({self.source})"

    def watch(self, sock: socket.socket) -> None:
        """Shut ``sock`` down when the deadline passes (at once if it has)."""
        copy = sock.dup()  # the same connection under a descriptor of our own
        with self._lock:
            self._sockets.append(copy)
            if self._expired:
                _shut(copy)

    def watch_stream(self, stream: Any) -> None:
        """Watch the socket under a response body (http.client's, or botocore's through
        urllib3), where there is one to find."""
        for name in ("_raw_stream", "_fp", "fp", "raw", "_sock"):
            if isinstance(stream, socket.socket):
                break
            stream = getattr(stream, name, None)
        if isinstance(stream, socket.socket) and stream.fileno() >= 0:
            self.watch(stream)

    def __enter__(self) -> Deadline:
        self._watching.enter_context(watching_sockets(self.watch))
        self._timer.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._timer.cancel()
        self._watching.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()

    def _expire(self) -> None:
        with self._lock:
            self._expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
