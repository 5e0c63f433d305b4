"""The apps' contract for ``serve``: an OpenAPI 3.1 document and a plain HTML page.

Both are generated on request from the apps folder and the booted ComfyUI's node
definitions, so they cannot drift from what the endpoint accepts.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from typing import Any

from ..apps import AppStore

_ERROR = {
    "type": "object",
    "description": "A failed job: the error line starts with its code.",
    "properties": {
        "error": {"type": "string", "examples": ["invalid_input: app 'x': bad params: ..."]},
        "error_code": {"type": "string"},
        "details": {"type": "object"},
    },
    "required": ["error", "error_code"],
}
_RESULT = {
    "type": "object",
    "description": "A finished job's output.",
    "properties": {
        "files": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Every output file: a bucket URL, base64, or a URL of this server.",
        },
        "datas": {
            "type": "object",
            "description": "Each output node's non-file values, keyed by node id.",
            "additionalProperties": {"type": "object"},
        },
        "file_info": {"type": "array", "items": {"type": "object"}},
        "warnings": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Output nodes that did not validate and did not run (the rest did).",
        },
        "timings": {"type": "object"},
    },
    "required": ["files", "datas"],
}
_STATUS = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "status": {
            "type": "string",
            "enum": ["IN_QUEUE", "IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"],
        },
        "delayTime": {"type": "integer"},
        "executionTime": {"type": "integer"},
        "output": {
            "oneOf": [
                {"$ref": "#/components/schemas/Result"},
                {"$ref": "#/components/schemas/Error"},
                {"type": "object", "description": "progress while IN_PROGRESS"},
            ]
        },
        "error": {"type": "string"},
    },
    "required": ["id", "status"],
}


_BUCKET = {
    "type": "object",
    "description": "An S3-compatible bucket for the output files (presigned GET URLs back).",
    "properties": {
        name: {"type": "string"}
        for name in ("endpointUrl", "accessId", "accessSecret", "bucketName", "region", "publicUrl")
    }
    | {"keyPrefix": {"type": "string"}, "urlExpiry": {"type": "integer", "minimum": 1}},
    "required": ["endpointUrl", "accessId", "accessSecret"],
}
#: The job's output fields beyond the app's params (README.md, "The job contract"). One
#: destination per job: toUrls, toazure and tobucket/tobase64 exclude each other.
_OUTPUT_FIELDS: dict[str, Any] = {
    "tobase64": {"type": "boolean", "default": False},
    "tobucket": _BUCKET,
    "toUrls": {
        "type": "array",
        "minItems": 1,
        "items": {"type": "string", "format": "uri", "pattern": "^https?://"},
        "description": "One presigned PUT URL per output file, in the order of files; "
        "files[i] is the URL without its query.",
    },
    "toazure": {
        "type": "object",
        "description": "An Azure Blob container for the output files: connectionString, or "
        "accountUrl with sasToken. files are blob URLs (SAS-signed reads for a private "
        "container when the account key is given).",
        "properties": {
            "connectionString": {"type": "string"},
            "accountUrl": {"type": "string", "format": "uri"},
            "sasToken": {"type": "string"},
            "container": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$"},
            "prefix": {"type": "string", "default": "generations"},
            "urlExpiry": {"type": "integer", "minimum": 1},
        },
        "required": ["container"],
        "oneOf": [{"required": ["connectionString"]}, {"required": ["accountUrl", "sasToken"]}],
        "additionalProperties": False,
    },
    "output_format": {
        "type": "object",
        "description": "Re-encode still images before delivery (metadata kept).",
        "properties": {
            "format": {"enum": ["png", "webp", "jpeg"]},
            "quality": {"type": "integer", "minimum": 1, "maximum": 100, "default": 90},
        },
        "required": ["format"],
        "additionalProperties": False,
    },
    "check": {
        "type": "boolean",
        "default": False,
        "description": "Run nothing: report the missing node packs and models.",
    },
    "fetch_models": {
        "type": "boolean",
        "default": False,
        "description": "Fetch the missing models a saved workflow names by URL, then run.",
    },
}


def _request_schema(name: str, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "title": f"{name} request",
        "properties": {
            "input": {
                "type": "object",
                "properties": {
                    "app": {"const": name},
                    "params": params,
                    **_OUTPUT_FIELDS,
                    "previews": {"type": "boolean", "default": False},
                },
                "required": ["app"],
            },
            "webhook": {"type": "string", "format": "uri"},
            "policy": {"type": "object"},
            "s3Config": _BUCKET,
        },
        "required": ["input"],
    }


def _schema_names(apps: Mapping[str, Any]) -> dict[str, str]:
    """Each app's schema name: ``app_<name>`` with dots as ``_`` (code generators take
    schema names for class names), and ``_2``, ``_3``… where two names would meet (``a.b``
    and ``a_b``): one schema for both would leave no request valid for either."""
    names: dict[str, str] = {}
    taken = {"Result", "Error", "Status"}
    for name in apps:
        key = base = f"app_{name}".replace(".", "_")
        count = 1
        while key in taken:
            count += 1
            key = f"{base}_{count}"
        taken.add(key)
        names[name] = key
    return names


def openapi_document(
    store: AppStore | None, node_classes: Mapping[str, Any], *, server_url: str
) -> dict[str, Any]:
    """OpenAPI 3.1: ``/run`` and ``/runsync`` taking any app's request body."""
    apps = store.apps if store is not None else {}
    schemas: dict[str, Any] = {"Result": _RESULT, "Error": _ERROR, "Status": _STATUS}
    refs = []
    for name, key in _schema_names(apps).items():
        schemas[key] = _request_schema(name, apps[name].schema(node_classes, dialect=False))
        refs.append({"$ref": f"#/components/schemas/{key}"})
    body = {
        "required": True,
        "content": {"application/json": {"schema": {"oneOf": refs} if refs else {}}},
    }
    status = {
        "description": "The job's status object",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}},
    }

    def operation(summary: str, op_id: str) -> dict[str, Any]:
        return {
            "summary": summary,
            "operationId": op_id,
            "requestBody": body,
            "responses": {
                "200": status,
                "400": {"description": "The request is not a job"},
                "401": {"description": "Missing or wrong API key"},
            },
        }

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ComfyUI apps",
            "version": "1",
            "description": "Each app is a ComfyUI workflow with named, typed parameters; send "
            '{"input": {"app": NAME, "params": {...}}}. Apps: ' + (", ".join(apps) or "none"),
        },
        "servers": [{"url": server_url}],
        "paths": {
            "/run": {"post": operation("Queue an app job; poll /status/{id}", "run")},
            "/runsync": {"post": operation("Run an app job and wait for its output", "runsync")},
            "/status/{id}": {
                "get": {
                    "summary": "A job's status and, once finished, its output",
                    "operationId": "status",
                    "parameters": [
                        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {"200": status, "404": {"description": "Unknown job"}},
                }
            },
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def docs_page(store: AppStore | None, node_classes: Mapping[str, Any], *, server_url: str) -> str:
    """Plain HTML, no external assets: each app, its parameters and a curl example."""
    apps = store.apps if store is not None else {}
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>ComfyUI apps</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;"
        "text-align:left;vertical-align:top}pre{background:#f4f4f4;padding:1em;"
        "overflow-x:auto}</style></head><body>",
        "<h1>ComfyUI apps</h1>",
        f"<p>Endpoint: <code>{esc(server_url)}</code> · "
        "<a href='openapi.json'>OpenAPI document</a></p>",
    ]
    if not apps:
        parts.append("<p>This server serves no apps (start it with <code>--apps DIR</code>).</p>")
    for name, app in apps.items():
        params = app.params(node_classes)
        parts.append(f"<h2 id='{esc(name)}'>{esc(name)}</h2><table>")
        parts.append("<tr><th>parameter</th><th>type</th><th>default</th><th>description</th></tr>")
        example: dict[str, Any] = {}
        for param in params:
            kind = param.kind_line(choices=12)
            default = "required" if param.required else json.dumps(param.default)
            parts.append(
                f"<tr><td><code>{esc(param.name)}</code></td><td>{esc(kind)}</td>"
                f"<td>{esc(default)}</td><td>{esc(param.description)}</td></tr>"
            )
            example[param.name] = _example(param)
        parts.append("</table>")
        body = json.dumps({"input": {"app": name, "params": example}})
        curl = (
            f"curl -s -X POST {server_url}/runsync \\\n"
            '  -H "Content-Type: application/json" \\\n'
            f"  -d '{body}'"
        )
        parts.append(f"<pre>{esc(curl)}</pre>")
    if store is not None and store.refused:
        parts.append("<h2>Refused app files</h2><ul>")
        parts.extend(f"<li>{esc(n)}: {esc(r)}</li>" for n, r in store.refused.items())
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _example(param: Any) -> Any:
    if not param.required:
        return param.default
    if param.kind == "image":
        return "https://example.com/input.png"
    if param.enum:
        return param.enum[0]
    return {"integer": 0, "number": 0.0, "boolean": False}.get(param.kind, "")
