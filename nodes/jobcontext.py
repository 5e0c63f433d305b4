"""The running job, as the pack's nodes see it inside the worker.

The job pipeline hands a :class:`JobContext` to the executor, which makes it current for
the duration of the prompt (in the prompt's task, so async nodes and the tasks they start
see it too). Credentials travel here, never through workflow widgets (those are saved
into every PNG and shared workflow).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .storage import BucketConfig, UploadedFile


@dataclass
class JobContext:
    job_id: str
    bucket: BucketConfig | None = None
    #: The job's own output folder: the only place S3 Upload may read ``file_path`` from.
    output_dir: Path | None = None
    #: Files that nodes uploaded themselves (S3 Upload); they join the job's ``files``.
    uploads: list[UploadedFile] = field(default_factory=list)
    #: The Comfy.org key ComfyUI's API nodes bill to (``api_key_comfy_org``): a secret.
    comfy_org_api_key: str | None = field(default=None, repr=False)


#: ComfyUI's own pattern for "what is executing" (``comfy_execution.utils``): a context
#: variable, so the job is the one of this thread / task, never a process global.
_current: ContextVar[JobContext | None] = ContextVar("comfyui_runpod_job", default=None)


def current() -> JobContext | None:
    """The job being executed, or None on the desktop / outside a job."""
    return _current.get()


@contextmanager
def active(context: JobContext | None) -> Iterator[None]:
    token = _current.set(context)
    try:
        yield
    finally:
        _current.reset(token)
