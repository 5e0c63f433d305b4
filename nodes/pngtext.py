"""Put ComfyUI's ``prompt``/``workflow`` text chunks into a PNG without re-encoding it.

A result of a desktop "Queue on RunPod" job must reload its graph when dropped onto the
canvas, like a local SaveImage result. The remote job never receives the UI graph (the
worker's SaveImage embeds only its own copy of the API prompt), so the desktop writes both
chunks itself when it saves the file. Pixels stay byte-identical: only text chunks move.
"""

from __future__ import annotations

import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TEXT_KINDS = {b"tEXt", b"iTXt", b"zTXt"}


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    if not data.startswith(SIGNATURE):
        raise ValueError("not a PNG")
    chunks, offset = [], len(SIGNATURE)
    while offset + 12 <= len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        chunks.append((kind, data[offset + 8 : offset + 8 + length]))
        offset += 12 + length
        if kind == b"IEND":
            break
    return chunks


def _keyword(kind: bytes, body: bytes) -> bytes | None:
    return body.split(b"\0", 1)[0] if kind in _TEXT_KINDS else None


def _pack(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def with_text(data: bytes, texts: dict[str, str]) -> bytes:
    """``data`` with ``texts`` as tEXt chunks before the first IDAT, replacing any text
    chunk of the same keyword. Values must be Latin-1 (``json.dumps`` output is ASCII)."""
    keys = {name.encode("latin-1") for name in texts}
    out = [SIGNATURE]
    written = False
    for kind, body in _chunks(data):
        if _keyword(kind, body) in keys:
            continue
        if kind == b"IDAT" and not written:
            for name, value in texts.items():
                out.append(_pack(b"tEXt", name.encode("latin-1") + b"\0" + value.encode("latin-1")))
            written = True
        out.append(_pack(kind, body))
    return b"".join(out)


def read_text(data: bytes) -> dict[str, str]:
    """The PNG's tEXt chunks (what ComfyUI's loader reads for ``workflow``)."""
    found = {}
    for kind, body in _chunks(data):
        if kind == b"tEXt":
            name, _, value = body.partition(b"\0")
            found[name.decode("latin-1")] = value.decode("latin-1")
    return found
