"""Parse a RunPod job into a :class:`JobRequest`, or fail with a clear ``invalid_input``.

Accepts the contract in README.md ("The job contract"): ``input.workflow`` (object or
JSON string; API format, or saved UI format that the pipeline converts) or ``input.app`` +
``params``, ``overrides``, ``tobase64``, ``tobucket``, ``toUrls``, ``output_format``,
``toazure``, ``images``/``files``, request-level ``s3Config`` and ``policy``. Nothing here touches
ComfyUI, the network or the disk: an app's parameters are checked against its schema later,
by the pipeline, which has the booted ComfyUI's node definitions.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from ..nodes.netguard import redact
from ..nodes.storage import BucketConfig, StorageError, resolve_bucket
from ..nodes.workflows import is_saved_format
from .azureblob import AzureConfig, resolve_azure
from .errors import JobError
from .models import ModelSpec, parse_specs
from .reencode import OutputFormat, parse_output_format

log = logging.getLogger(__name__)

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}
#: Longest ``policy.executionTimeout`` and ``policy.ttl``: RunPod's own maximum, 7 days.
MAX_POLICY_MS = 7 * 24 * 3600 * 1000
#: The hosted API's default ``policy.ttl``.
DEFAULT_TTL_MS = 24 * 3600 * 1000
#: Deepest nesting of lists and objects in a node's inputs (real workflows use a few
#: levels; hundreds would exhaust the recursion limit of copying and validating them).
MAX_INPUT_DEPTH = 64
#: The same bound for a whole saved workflow (subgraph definitions add a few levels).
MAX_SAVED_DEPTH = 96
#: Names are checked with ``fullmatch``: ``$`` also matches before a final newline.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ -]{0,127}")
#: An app's name: its file name in the apps folder, without ``.json``.
APP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class InputMedia:
    """A file the job brings for ``LoadImage``, ``LoadAudio``, ``LoadVideo``…: a safe file
    name and where its bytes are."""

    name: str
    source: str  # base64, data: URI, http(s) or s3:// URL
    #: Whether it must be a readable image: ``input.images`` and plain ``input.files``
    #: strings are (their names say .png); ``input.files`` objects may be any file.
    image: bool = True
    #: How errors name it; empty: "input image <name>".
    where: str = ""

    @property
    def label(self) -> str:
        return self.where or f"input image {self.name}"


#: Where a job's files go, decided once when the job is parsed (see :func:`destination`).
Destination = Literal["bucket", "urls", "azure", "base64", "local"]
#: The ``input`` fields that name a destination, in the order errors list them; a job
#: names one (``tobucket`` with ``tobase64`` stays the original worker's: the bucket wins).
_DESTINATION_FIELDS = ("toUrls", "toazure", "tobucket", "tobase64")

#: Every top-level ``input`` field something reads; others are named in ``warnings``
#: (a typo such as ``toBase64`` would otherwise be ignored without a word).
KNOWN_INPUT_FIELDS = frozenset(
    {
        "workflow",
        "app",
        "params",
        "overrides",
        "tobase64",
        "tobucket",
        "toUrls",
        "toazure",
        "output_format",
        "images",
        "files",
        "models",
        "previews",
        "api_key_comfy_org",
        "comfy_org_api_key",
        "check",
        "fetch_models",
    }
)


@dataclass(frozen=True)
class Policy:
    """The request's ``policy``: ``executionTimeout`` (None: no limit) and ``ttl``."""

    timeout_s: float | None = None
    ttl_s: float = DEFAULT_TTL_MS / 1000


@dataclass
class JobRequest:
    job_id: str
    #: The API-format workflow, or a saved (UI-format) one the pipeline converts; None
    #: for an app job (the pipeline builds it from the app).
    workflow: dict[str, Any] | None
    tobase64: bool = False
    bucket: BucketConfig | None = None
    media: list[InputMedia] = field(default_factory=list)
    timeout_s: float | None = None
    #: ``input.api_key_comfy_org`` (worker-comfyui's name; env ``COMFY_ORG_API_KEY``):
    #: ComfyUI's API nodes bill to it. A secret, kept out of ``repr``.
    comfy_org_api_key: str | None = field(default=None, repr=False)
    #: ``input.models``: fetched into the model cache before the run.
    models: list[ModelSpec] = field(default_factory=list)
    #: ``input.app``: the name of a workflow in the apps folder, run with ``params``.
    app: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    #: ``input.overrides``: ``{(node id, input name): value}``, applied last.
    overrides: dict[tuple[str, str], Any] = field(default_factory=dict)
    #: ``input.previews``: progress events carry the samplers' latent previews.
    previews: bool = False
    #: ``input.toUrls``: one presigned PUT URL per output file, in output order. Secrets
    #: (their signatures) live in the query: kept out of ``repr``.
    to_urls: list[str] = field(default_factory=list, repr=False)
    #: Whether ``to_urls`` may name private addresses (``--allow-private-urls``).
    allow_private_urls: bool = False
    #: ``input.toazure``, or the operator's ``AZURE_STORAGE_*`` account when the job names
    #: no destination and no bucket applies.
    azure: AzureConfig | None = None
    #: ``input.output_format``: still images are re-encoded before delivery.
    output_format: OutputFormat | None = None
    #: Lines for the result's ``warnings`` (unknown ``input`` fields).
    warnings: list[str] = field(default_factory=list)
    #: ``input.check``: report what the workflow needs that the worker lacks; run nothing.
    check: bool = False
    #: ``input.fetch_models`` (env ``COMFYUI_RUNPOD_FETCH_MODELS``): fetch the missing
    #: models a saved workflow names with a URL (``properties.models``), then run.
    fetch_models: bool = False

    @property
    def destination(self) -> Destination:
        """The job's ``toUrls`` or ``toazure`` when given (parse_job refuses two
        destinations); else a bucket when one applies, or the operator's Azure account;
        base64 only when asked and neither applies; otherwise the local folder (the
        original worker's behaviour)."""
        if self.to_urls:
            return "urls"
        if self.azure is not None:
            return "azure"
        if self.bucket is not None:
            return "bucket"
        return "base64" if self.tobase64 else "local"


def job_from_document(document: Any) -> Any:
    """A file's JSON as a job: a whole job (``{"input": ...}``) stays as it is, anything
    else is taken as the workflow (``run FILE`` and the worker's warmup accept both)."""
    if isinstance(document, Mapping) and "input" in document:
        return document
    return {"input": {"workflow": document}}


def parse_job(
    job: Any, environ: Mapping[str, str] = os.environ, *, allow_private_urls: bool = False
) -> JobRequest:
    """``allow_private_urls``: the job's own bucket endpoint and ``toUrls`` may be private
    addresses."""
    if not isinstance(job, Mapping):
        raise JobError("invalid_input", "the request body must be a JSON object")
    job_id = str(job.get("id") or "local")
    raw = job.get("input")
    if not isinstance(raw, Mapping):
        raise JobError("invalid_input", 'the job has no "input" object: send {"input": {...}}')
    tobase64 = _parse_bool(raw.get("tobase64", False), "input.tobase64")
    to_urls = _parse_urls(raw.get("toUrls"))
    _one_destination(raw, tobase64)
    try:
        bucket = resolve_bucket(
            raw.get("tobucket"), job.get("s3Config"), environ, allow_private=allow_private_urls
        )
    except StorageError as exc:
        raise JobError("invalid_input", str(exc)) from None
    azure = resolve_azure(
        raw.get("toazure"),
        environ,
        use_env=not to_urls and bucket is None,
        allow_private=allow_private_urls,
    )
    app = _parse_app(raw.get("app"))
    if app is not None and raw.get("workflow") not in (None, "", {}):
        raise JobError("invalid_input", "send input.app or input.workflow, not both")
    if app is None and raw.get("params") is not None:
        raise JobError("invalid_input", "input.params needs input.app (the app they are for)")
    return JobRequest(
        job_id=job_id,
        workflow=None if app is not None else parse_workflow(raw.get("workflow")),
        app=app,
        params=_parse_object(raw.get("params"), "input.params"),
        overrides=parse_overrides(raw.get("overrides")),
        tobase64=tobase64,
        bucket=bucket,
        to_urls=to_urls,
        allow_private_urls=allow_private_urls,
        azure=azure,
        output_format=parse_output_format(raw.get("output_format")),
        warnings=_unknown_fields(raw, job_id),
        media=_parse_media(raw.get("images"), raw.get("files")),
        timeout_s=parse_policy(job.get("policy")).timeout_s,
        models=parse_specs(raw.get("models"), "input.models"),
        comfy_org_api_key=_comfy_org_key(raw, environ),
        previews=_parse_bool(raw.get("previews", False), "input.previews"),
        check=_parse_bool(raw.get("check", False), "input.check"),
        fetch_models=_parse_bool(
            raw.get("fetch_models", environ.get("COMFYUI_RUNPOD_FETCH_MODELS", False)),
            "input.fetch_models",
        ),
    )


def _one_destination(raw: Mapping[str, Any], tobase64: bool) -> None:
    """Refuse a job that names two destinations (``toUrls``, ``toazure``, ``tobucket``,
    ``tobase64``): which one was meant is the caller's to say."""
    given = [
        name
        for name in _DESTINATION_FIELDS
        if (tobase64 if name == "tobase64" else raw.get(name) is not None)
    ]
    if given[:1] in (["toUrls"], ["toazure"]) and len(given) > 1:
        raise JobError(
            "invalid_input",
            f"send one destination: input.{given[0]} or input.{given[1]}, not both "
            "(the operator's BUCKET_*/s3Config still serve inputs and S3 Upload nodes)",
        )


def _parse_urls(value: Any) -> list[str]:
    """``input.toUrls``: http(s) URLs; the address guard applies when they are used."""
    if value is None:
        return []
    if not isinstance(value, list) or not value:
        raise JobError("invalid_input", "input.toUrls must be a non-empty list of PUT URLs")
    for index, url in enumerate(value):
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            shown = redact(url) if isinstance(url, str) else type(url).__name__
            raise JobError(
                "invalid_input", f"input.toUrls[{index}] is not an http(s) URL: {shown:.80}"
            )
        if parts.username is not None:
            raise JobError(
                "invalid_input",
                f"input.toUrls[{index}] carries credentials (user@host): send a signed URL",
            )
    return list(value)


def _unknown_fields(raw: Mapping[str, Any], job_id: str) -> list[str]:
    """Log and return (as a result warning) the ``input`` fields nothing reads."""
    unknown = sorted(str(name) for name in raw if name not in KNOWN_INPUT_FIELDS)
    if not unknown:
        return []
    line = f"input fields ignored (unknown): {', '.join(unknown)}"
    log.warning("job %s: %s", job_id, line)
    return [line]


def _parse_app(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not APP_NAME.fullmatch(value):
        raise JobError(
            "invalid_input",
            f"input.app must be an app name (letters, digits, '_.-'), not {value!r}",
        )
    return value


def _parse_object(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise JobError("invalid_input", f"{where} must be an object, not {type(value).__name__}")
    return value


def parse_overrides(value: Any) -> dict[tuple[str, str], Any]:
    """``{"<node id>.<input>": value}``; the node ids are checked against the workflow later."""
    overrides = _parse_object(value, "input.overrides")
    parsed: dict[tuple[str, str], Any] = {}
    bad = []
    for key, item in overrides.items():
        node_id, _, name = key.partition(".")
        if not node_id or not name:
            bad.append(key)
        else:
            parsed[(node_id, name)] = item
    if bad:
        raise JobError(
            "invalid_input",
            f'input.overrides keys must be "<node id>.<input name>": {", ".join(map(repr, bad))}',
            {"bad_keys": bad},
        )
    return parsed


def parse_workflow(value: Any) -> dict[str, Any]:
    """An API-format workflow (``{node_id: {"class_type": ..., "inputs": {...}}}``), or a
    saved (UI-format) one, kept as it is: converting it needs the booted ComfyUI's node
    definitions (executor/convert.py)."""
    if value is None or value == "" or value == {}:
        raise JobError("invalid_input", "input.workflow is missing or empty")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise JobError(
                "invalid_input", f"input.workflow is a string but not valid JSON: {exc}"
            ) from None
        except RecursionError:  # "[[[[…" thousands deep: json gives up, not the worker
            raise JobError(
                "invalid_input", "input.workflow is a string nested too deeply to parse"
            ) from None
    if not isinstance(value, dict):
        kind = type(value).__name__
        raise JobError("invalid_input", f"input.workflow must be an object, not {kind}")
    if not value:  # "{}" sent as a string
        raise JobError("invalid_input", "input.workflow is missing or empty")
    if is_saved_format(value):
        if not isinstance(value.get("nodes"), list) or _deeper_than(value, MAX_SAVED_DEPTH):
            raise JobError(
                "invalid_input",
                "input.workflow is a saved (UI-format) workflow whose nodes are not a list "
                f"or that nests more than {MAX_SAVED_DEPTH} levels deep",
            )
        return value
    for node_id, node in value.items():
        if not isinstance(node, dict) or "class_type" not in node:
            raise JobError(
                "invalid_input",
                f"input.workflow node {node_id!r} is not a node object with a class_type "
                "(expected ComfyUI API format)",
            )
        if not isinstance(node.get("inputs", {}), dict):
            raise JobError(
                "invalid_input", f"input.workflow node {node_id!r}: inputs must be an object"
            )
        if _deeper_than(node.get("inputs"), MAX_INPUT_DEPTH):
            raise JobError(
                "invalid_input",
                f"input.workflow node {node_id!r}: inputs are nested more than "
                f"{MAX_INPUT_DEPTH} levels deep",
            )
    if not all("inputs" in node for node in value.values()):
        # ComfyUI indexes node["inputs"] of every node, even ones it will not run.
        value = {
            k: node if "inputs" in node else {**node, "inputs": {}} for k, node in value.items()
        }
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether lists/objects nest more than ``limit`` levels (iteratively: no recursion)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth >= limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def safe_file_name(name: Any, where: str) -> str:
    """A plain file name: no folders, no ``..``, no control characters."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or ".." in name:
        raise JobError(
            "invalid_input",
            f"{where}: {name!r} is not an allowed file name (letters, digits, '._- ', no "
            "folders, at most 128 characters)",
        )
    return name


def _parse_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise JobError("invalid_input", f"{where} must be true or false, not {value!r}")


def _parse_media(images: Any, files: Any) -> list[InputMedia]:
    media: list[InputMedia] = []
    if images is not None:
        if not isinstance(images, list):
            raise JobError("invalid_input", 'input.images must be a list of {"name", "image"}')
        for index, item in enumerate(images):
            where = f"input.images[{index}]"
            if not isinstance(item, Mapping) or not isinstance(item.get("image"), str):
                raise JobError("invalid_input", f'{where} must be {{"name": ..., "image": ...}}')
            media.append(InputMedia(safe_file_name(item.get("name"), where), item["image"]))
    if files is not None:
        if not isinstance(files, list):
            raise JobError(
                "invalid_input", 'input.files must be a list of base64 strings or {"name", "file"}'
            )
        media.extend(_parse_file(index, item) for index, item in enumerate(files))
    names = [m.name for m in media]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise JobError("invalid_input", f"input media names repeat: {', '.join(duplicates)}")
    return media


def _parse_file(index: int, item: Any) -> InputMedia:
    """``input.files[index]``: a plain base64 string is the original worker's image, saved as
    ``upload-<index>.png``; an object brings any file (audio, video…) under its own name."""
    where = f"input.files[{index}]"
    if isinstance(item, str):
        return InputMedia(f"upload-{index}.png", item)
    if not isinstance(item, Mapping) or not isinstance(item.get("file"), str):
        shape = '{"name": ..., "file": "<base64 | data URI | URL>"}'
        raise JobError("invalid_input", f"{where} must be a base64 string or {shape}")
    name = safe_file_name(item.get("name"), where)
    return InputMedia(name, item["file"], image=False, where=f"{where} ({name})")


def parse_policy(policy: Any) -> Policy:
    """``policy.executionTimeout`` (also lower-case, as RunPod's docs show it) and
    ``policy.ttl``, both milliseconds; ``serve`` and the pipeline read the same one."""
    if policy is None:
        return Policy()
    if not isinstance(policy, Mapping):
        raise JobError("invalid_input", "policy must be an object")
    timeout = _milliseconds(
        policy.get("executionTimeout", policy.get("executiontimeout")), "executionTimeout"
    )
    ttl = _milliseconds(policy.get("ttl"), "ttl")
    return Policy(
        timeout_s=None if timeout is None else timeout / 1000,
        ttl_s=(DEFAULT_TTL_MS if ttl is None else ttl) / 1000,
    )


def _milliseconds(value: Any, name: str) -> float | None:
    if value is None:
        return None
    valid = isinstance(value, (int, float)) and not isinstance(value, bool)
    # The range first: a 400-digit int overflows float() (and so math.isfinite); NaN fails it.
    if not valid or not 0 < value <= MAX_POLICY_MS:
        raise JobError(
            "invalid_input",
            f"policy.{name} must be milliseconds in 1..{MAX_POLICY_MS}, not {value!r:.40}",
        )
    return float(value)


def _comfy_org_key(raw: Mapping[str, Any], environ: Mapping[str, str]) -> str | None:
    """The job's Comfy.org key (worker-comfyui's ``api_key_comfy_org``, also accepted as
    ``comfy_org_api_key``), else the worker's ``COMFY_ORG_API_KEY``."""
    for name in ("api_key_comfy_org", "comfy_org_api_key"):
        value = raw.get(name)
        if value is not None:
            if not isinstance(value, str) or not value.strip():
                raise JobError("invalid_input", f"input.{name} must be a non-empty string")
            return value.strip()
    return environ.get("COMFY_ORG_API_KEY") or None
