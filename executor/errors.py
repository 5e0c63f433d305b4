"""Job errors: one stable code, one human line, optional machine detail.

Every failure a caller can see is a :class:`JobError`. The code is the first word of the
``error`` line so that clients can branch on it without parsing prose.
"""

from __future__ import annotations

from typing import Any

#: Stable codes, the public vocabulary of ``error``.
CODES = frozenset(
    {
        "invalid_input",
        "validation_failed",
        "execution_failed",
        "out_of_memory",
        "timeout",
        "cancelled",
        "upload_failed",
        "payload_too_large",
        "model_download_failed",
        "model_checksum_mismatch",
        "model_too_large",
        "internal_error",
    }
)


def mib(size: int) -> str:
    """A byte count for a message, in the unit the limits are set in (MiB, not MB)."""
    return f"{size / 1_048_576:.1f} MiB"


class JobError(Exception):
    """A failure reported to the caller as ``{"error": "<code>: <message>", ...}``."""

    def __init__(self, code: str, message: str, detail: dict[str, Any] | None = None) -> None:
        if code not in CODES:
            raise ValueError(f"unknown error code {code!r}")
        # One line: callers show it as-is, and RunPod's dashboard truncates at newlines.
        self.code = code
        self.message = " ".join(message.split())
        self.detail = detail or {}
        super().__init__(self.line)

    @property
    def line(self) -> str:
        return f"{self.code}: {self.message}"

    def to_result(self) -> dict[str, Any]:
        result: dict[str, Any] = {"error": self.line, "error_code": self.code}
        if self.detail:
            result["details"] = self.detail
        return result
