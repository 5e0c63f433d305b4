"""Deliver a job's output files to the destination its request resolved: a bucket, the
job's presigned PUT URLs, an Azure Blob container, base64, or a local folder (paths, the
original worker's behaviour). Still images are re-encoded first when the job asks
(``output_format``).

``file_info`` says for every file where it went (``delivered``), so nobody downstream has
to guess from the entry's text. A result too large for RunPod is refused with its size,
never truncated. When delivery fails, the files are kept in the local folder and the
error's ``details.kept_files`` says where: a paid-for output is never thrown away.
Everything here blocks (uploads, encodes, cross-filesystem moves): call it off the loop.
"""

from __future__ import annotations

import base64
import concurrent.futures
import errno
import os
import shutil
import time
import urllib.error
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..nodes.netguard import ALLOW_FLAG, PrivateAddress, URLRefused, redact
from ..nodes.storage import UploadedFile, UploadError, content_type_for, upload_files
from . import azureblob
from .errors import JobError, mib
from .outputs import OutputFile
from .reencode import reencode
from .request import JobRequest
from .runner import plain_name
from .urlguard import put_checked_url

#: RunPod's payload limits for a job's result.
RUN_LIMIT = 10 * 1024 * 1024
RUNSYNC_LIMIT = 20 * 1024 * 1024
#: ``input.toUrls``: tries per file, and the socket timeout of each.
PUT_ATTEMPTS = 3
PUT_TIMEOUT_S = 120.0


def payload_limit_for(job_id: str) -> int:
    """RunPod names ``/runsync`` jobs ``sync-…``; those may return 20 MiB, others 10 MiB."""
    return RUNSYNC_LIMIT if job_id.startswith("sync-") else RUN_LIMIT


@dataclass(frozen=True)
class DeliverySettings:
    #: Where files go when there is neither a bucket nor base64.
    local_dir: Path
    upload_workers: int = 8


def deliver(
    request: JobRequest,
    files: Sequence[OutputFile],
    *,
    settings: DeliverySettings,
    job_dir: Path,
    node_uploads: Sequence[UploadedFile] = (),
    payload_limit: int | None = None,
) -> dict[str, Any]:
    """Return ``{"files": [...], "file_info": [...]}`` for ``files`` (in their order).

    ``node_uploads`` are files S3 Upload nodes already put in the bucket; their URLs come
    after the executor's files. ``job_dir`` is the job's output folder as the executor
    named it (its paths are resolved at boot), used to name files uniquely (two save nodes
    may both write ``x_00001_.png`` in different subfolders).
    """
    folder = local_folder(settings, request.job_id)
    if request.output_format is not None:
        try:
            files = reencode(files, request.output_format)
        except JobError as exc:  # nothing was replaced: the originals are kept
            raise _keeping(exc, files, folder, job_dir) from None
    names = [_name_in_job(f, job_dir) for f in files]
    destination = request.destination
    warnings: list[str] = []
    info = [
        {
            "node_id": f.node_id,
            "kind": f.kind,
            "name": name,
            "content_type": content_type_for(name),
            "size": f.path.stat().st_size,
            "delivered": destination,
        }
        for f, name in zip(files, names, strict=True)
    ]
    try:
        if destination == "bucket":
            assert request.bucket is not None
            uploaded = upload_files(
                request.bucket,
                [f.path for f in files],
                request.job_id,
                names=names,
                max_workers=settings.upload_workers,
            )
            entries = [u.url for u in uploaded]
        elif destination == "urls":
            entries = _put_all(request, files, names, info, settings.upload_workers)
            unused = len(request.to_urls) - len(files)
            if unused:
                warnings.append(
                    f"input.toUrls[{len(files)}:] not used: {unused} of "
                    f"{len(request.to_urls)} URLs left over ({len(files)} output files)"
                )
        elif destination == "azure":
            assert request.azure is not None
            entries = azureblob.upload_files(
                request.azure,
                [f.path for f in files],
                names,
                [i["content_type"] for i in info],
                request.job_id,
                workers=settings.upload_workers,
            )
        elif destination == "base64":
            _check_payload(sum(4 * -(-i["size"] // 3) for i in info), payload_limit)
            entries = [base64.b64encode(f.path.read_bytes()).decode("ascii") for f in files]
        else:
            entries = _keep(files, names, folder, job_dir)
    except (UploadError, JobError) as exc:
        error = exc if isinstance(exc, JobError) else JobError(exc.code, _without_code(exc))
        raise _keeping(error, files, folder, job_dir) from None
    for upload in node_uploads:
        entries.append(upload.url)
        info.append(
            {
                "node_id": None,
                "kind": "upload",
                "name": upload.key.rsplit("/", 1)[-1],
                "content_type": upload.content_type,
                "size": upload.size,
                "delivered": "bucket",
            }
        )
    delivered: dict[str, Any] = {"files": entries, "file_info": info}
    if warnings:
        delivered["warnings"] = warnings
    return delivered


def _keeping(error: JobError, files: Sequence[OutputFile], folder: Path, job_dir: Path) -> JobError:
    """``error`` once the outputs are kept in ``folder`` (``details.kept_files``): they
    were paid for, so an operator can still pick them up."""
    names = [_name_in_job(f, job_dir) for f in files]
    error.detail["kept_files"] = _keep(files, names, folder, job_dir)
    return error


def _put_all(
    request: JobRequest,
    files: Sequence[OutputFile],
    names: Sequence[str],
    info: Sequence[dict[str, Any]],
    workers: int,
) -> list[str]:
    """PUT file ``i`` to ``input.toUrls[i]``; the entries are the URLs without their query
    (the signature: a secret, and expired soon anyway)."""
    urls = request.to_urls
    if len(files) > len(urls):
        raise JobError(
            "upload_failed",
            f"the job made {len(files)} output files but input.toUrls has {len(urls)} "
            "URLs: send one PUT URL per output file",
            {"files": len(files), "urls": len(urls)},
        )

    def put(index: int) -> None:
        _put_one(
            urls[index],
            files[index].path,
            names[index],
            info[index]["content_type"],
            request.allow_private_urls,
        )

    with concurrent.futures.ThreadPoolExecutor(max(1, workers), "comfyui-runpod-put") as pool:
        for future in [pool.submit(put, i) for i in range(len(files))]:
            future.result()
    return [_without_query(url) for url in urls[: len(files)]]


def _put_one(url: str, path: Path, name: str, content_type: str, allow_private: bool) -> None:
    """One PUT, retried on network errors and 5xx (a 4xx, such as an expired signature, or
    a refused address will not change)."""
    where = f"could not PUT {name} to {_without_query(url)}"
    for attempt in range(PUT_ATTEMPTS):
        try:
            with path.open("rb") as body:
                put_checked_url(
                    url,
                    body,
                    size=path.stat().st_size,
                    content_type=content_type,
                    timeout_s=PUT_TIMEOUT_S,
                    allow_private=allow_private,
                )
            return
        except URLRefused as exc:
            hint = (
                f" (private addresses need {ALLOW_FLAG})" if isinstance(exc, PrivateAddress) else ""
            )
            raise JobError("upload_failed", f"{where}: {redact(str(exc), url)}{hint}") from None
        except urllib.error.HTTPError as exc:
            error = f"{where}: HTTP {exc.code} {redact(str(exc.reason), url)}"
            if exc.code < 500:
                raise JobError("upload_failed", error) from None
        except OSError as exc:  # URLError, resets, timeouts
            error = f"{where}: {redact(str(exc), url)}"
        if attempt + 1 < PUT_ATTEMPTS:
            time.sleep(0.5 * 2**attempt)
    raise JobError("upload_failed", f"{error} (after {PUT_ATTEMPTS} attempts)")


def _without_query(url: str) -> str:
    """``url`` as results and errors show it: no query, fragment or credentials."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def local_folder(settings: DeliverySettings, job_id: str) -> Path:
    """The job's folder under ``local_dir``: a job id such as ``../x`` or ``/x`` (``run``
    takes ids from job files) must not place files elsewhere. RunPod's and ``serve``'s ids
    are already plain, so they map to themselves."""
    return settings.local_dir / (plain_name(job_id) or "job")


def moves_stay_on_one_filesystem(settings: DeliverySettings, work_dir: Path) -> bool:
    """Whether local delivery from ``work_dir`` is renames only (no copies): then it
    costs a syscall or two and may run on the caller's event loop."""
    folder = settings.local_dir
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder.stat().st_dev == work_dir.stat().st_dev


def _keep(
    files: Sequence[OutputFile], names: Sequence[str], target: Path, job_dir: Path
) -> list[str]:
    """Move the outputs into ``target``; return their paths.

    The usual case is one rename of the whole run folder (a new ``target``, every file
    inside ``job_dir``, one filesystem), which on slow disks saves a mkdir, an rmdir and a
    rename per file; otherwise files move one by one (copies across filesystems).
    """
    if files and all(f.path.is_relative_to(job_dir) for f in files):
        try:
            try:
                job_dir.rename(target)
            except FileNotFoundError:  # the first job: no local folder yet
                target.parent.mkdir(parents=True, exist_ok=True)
                job_dir.rename(target)
            return [str(target / name) for name in names]
        except OSError:  # the target exists (a retried id), or another filesystem
            pass
    kept, made = [], set()
    for output, name in zip(files, names, strict=True):
        destination = target / name
        if destination.parent not in made:
            destination.parent.mkdir(parents=True, exist_ok=True)
            made.add(destination.parent)
        try:
            os.replace(output.path, destination)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            shutil.move(output.path, destination)  # another filesystem: copy, then delete
        kept.append(str(destination))
    return kept


def _without_code(exc: UploadError) -> str:
    return str(exc).removeprefix(f"{exc.code}: ")


def _name_in_job(output: OutputFile, job_dir: Path) -> str:
    try:
        return output.path.relative_to(job_dir).as_posix()
    except ValueError:
        return output.filename


def _check_payload(size: int, limit: int | None) -> None:
    if limit is not None and size > limit:
        raise JobError(
            "payload_too_large",
            f"the base64 result would be {mib(size)}, over RunPod's {mib(limit)} limit "
            "for this request; configure a bucket "
            "(input.tobucket, s3Config or BUCKET_* env) or return fewer or smaller files",
            {"size": size, "limit": limit},
        )
