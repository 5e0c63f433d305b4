"""Plain HTTP for the endpoint tests: JSON in, (status, JSON) out — error statuses too."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
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
