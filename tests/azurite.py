"""pytest plugin: Azurite, Microsoft's Azure Storage emulator, serving Blob on loopback.

Load with ``pytest_plugins = ["azurite"]``. Azurite is an npm package: the first session
installs it with ``npm install --prefix .venv/azurite`` (about 20 s, 190 MB, cached in the
venv after that), so a fresh machine needs nothing but Node.js and npm. It runs with its
telemetry off, in memory, on a free port, with an account whose key is new each session
(a test that looks for the key in logs and results cannot pass by luck).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

VERSION = "3.35.0"
PREFIX = Path(sys.prefix) / "azurite"
ACCOUNT = "testacct"
_LISTENING = re.compile(r"Blob service successfully listens on (http://\S+)")


@dataclass
class Azurite:
    """A running Azurite: its blob endpoint, account and key, and a service client."""

    endpoint: str  # http://127.0.0.1:<port>/<account>
    account: str
    key: str

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account};"
            f"AccountKey={self.key};BlobEndpoint={self.endpoint};"
        )

    def service(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)

    def make_container(self, name: str, public: bool = False) -> str:
        self.service().create_container(name, public_access="blob" if public else None)
        return name


def _installed() -> Path | None:
    """Azurite's blob server, installed into the venv on first use; None without npm."""
    binary = PREFIX / "node_modules" / ".bin" / "azurite-blob"
    if binary.exists():
        return binary
    npm = shutil.which("npm")
    if npm is None:
        return None
    subprocess.run(
        [npm, "install", "--prefix", str(PREFIX), "--no-audit", "--no-fund", f"azurite@{VERSION}"],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return binary


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    pytest.importorskip("azure.storage.blob", reason="the azure extra is not installed")
    binary = _installed()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("npm is missing: Azurite (the Azure tests' server) cannot be installed")
        pytest.skip("npm is missing: the Azure tests need Azurite (npm install azurite)")
    key = base64.b64encode(os.urandom(64)).decode()
    workdir = tempfile.mkdtemp(prefix="azurite-")
    process = subprocess.Popen(
        [
            str(binary),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            "0",
            "--inMemoryPersistence",
            "--disableTelemetry",
            "--skipApiVersionCheck",
        ],
        cwd=workdir,
        env={**os.environ, "AZURITE_ACCOUNTS": f"{ACCOUNT}:{key}"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    found: list[str] = []
    ready = threading.Event()

    def read() -> None:  # keeps draining the access log so Azurite never blocks on it
        assert process.stdout is not None
        for line in process.stdout:
            match = _LISTENING.search(line)
            if match and not found:
                found.append(match.group(1))
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        if not ready.wait(60) or not found:
            raise RuntimeError(f"Azurite did not start (exit code {process.wait(10)})")
        yield Azurite(f"{found[0]}/{ACCOUNT}", ACCOUNT, key)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(workdir, ignore_errors=True)
