"""Workflow apps: a folder of API workflows served by name with typed ``params``, their
JSON Schema / OpenAPI contract, through ``serve`` (real HTTP, the runpod SDK), the worker
handler, ``run``/``worker``/``apps`` processes, and the same workflows run as they are."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from comfyui_runpod.executor.apps import AppStore
from comfyui_runpod.executor.delivery import DeliverySettings
from comfyui_runpod.executor.inputs import MediaSettings
from comfyui_runpod.executor.pipeline import Pipeline, PipelineSettings
from comfyui_runpod.executor.worker import make_handler
from httpkit import fetch
from PIL import Image
from servekit import ServeThread
from test_serve import inverted, pixel, sdk_endpoint

TESTS = Path(__file__).resolve().parent
APPS = TESTS / "apps"


def png(rgb: tuple[int, int, int], size: int = 4) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def store() -> AppStore:
    return AppStore(APPS)


@pytest.fixture
def app_pipeline(executor, store: AppStore, tmp_path: Path) -> Pipeline:
    settings = PipelineSettings(
        delivery=DeliverySettings(local_dir=tmp_path / "out"),
        media=MediaSettings(allow_private_urls=True),
        apps=store,
        environ={},
    )
    return Pipeline(executor, settings)


@pytest.fixture
def served(app_pipeline: Pipeline) -> Iterator[ServeThread]:
    running = ServeThread(app_pipeline)
    yield running
    running.stop()


def nodes(executor) -> Any:
    return executor.comfy.nodes.NODE_CLASS_MAPPINGS


def app_job(app: str, **params: Any) -> dict[str, Any]:
    return {"input": {"app": app, "params": params}}


# -- the schema ------------------------------------------------------------------------------


def test_schema_comes_from_the_input_nodes_and_live_input_types(
    executor, store: AppStore, tiny_checkpoint: str
) -> None:
    from jsonschema import Draft202012Validator

    color = store.apps["color"].schema(nodes(executor))
    Draft202012Validator.check_schema(color)
    props = color["properties"]
    # EmptyImage.color's own range, the node's default and description:
    assert props["color"] == {
        "type": "integer",
        "minimum": 0,
        "maximum": 0xFFFFFF,
        "x-step": 1,
        "description": "Fill colour as 0xRRGGBB",
        "default": 0x204060,
    }
    assert props["size"]["minimum"] == 1 and props["size"]["maximum"] == 64  # the node's own
    assert props["prefix"] == {
        "type": "string",
        "description": "Output file name prefix",
        "default": "color",
    }
    assert color["additionalProperties"] is False and "required" not in color

    txt2img = store.apps["txt2img"].schema(nodes(executor))
    props = txt2img["properties"]
    assert "euler" in props["sampler"]["enum"] and props["sampler"]["default"] == "euler"
    assert tiny_checkpoint in props["checkpoint"]["enum"]
    assert props["steps"]["minimum"] == 1 and props["steps"]["maximum"] == 50
    assert props["seed"]["maximum"] == 0xFFFFFFFFFFFFFFFF

    echo = store.apps["echo"].schema(nodes(executor))
    assert echo["required"] == ["picture"]  # an image has no usable default
    assert echo["properties"]["strength"]["maximum"] == 1.0
    assert echo["properties"]["invert"] == {
        "type": "boolean",
        "description": "Unused flag",
        "default": False,
    }


def test_a_saved_ui_format_app_is_converted_once_comfyui_is_up(
    app_pipeline: Pipeline, tmp_path: Path
) -> None:
    folder = tmp_path / "apps"
    folder.mkdir()
    oracle = Path(__file__).parent / "oracle" / "cases"
    saved = json.loads((oracle / "primitive_node.json").read_text())["workflow"]
    (folder / "ui.json").write_text(json.dumps(saved))
    (folder / "empty.json").write_text(json.dumps({"nodes": [], "links": []}))
    store = AppStore(folder)
    assert [p.name for p in store.saved] == ["empty.json", "ui.json"]
    app_pipeline.settings.apps = store
    result = app_pipeline.run_sync(app_job("ui"))  # the first app job converts them
    assert "error" not in result, result
    assert Path(result["files"][0]).name == "from_primitive_00001_.png"
    assert "no nodes to run" in store.refused["empty"] and not store.saved
    result = app_pipeline.run_sync(app_job("empty"))
    assert result["error"].startswith("invalid_input: app 'empty' cannot be served")


def test_a_broken_saved_app_is_refused_alone(app_pipeline: Pipeline, tmp_path: Path) -> None:
    """A saved app whose ``definitions`` is a list, next to a good one: jobs for the good
    one run, jobs for the broken one get ``invalid_input`` naming it and its file."""
    folder = tmp_path / "apps"
    folder.mkdir()
    oracle = Path(__file__).parent / "oracle" / "cases"
    saved = json.loads((oracle / "primitive_node.json").read_text())["workflow"]
    (folder / "broken.json").write_text(json.dumps({**saved, "definitions": ["x"]}))
    (folder / "ui.json").write_text(json.dumps(saved))
    store = AppStore(folder)
    app_pipeline.settings.apps = store
    broken = app_pipeline.run_sync(app_job("broken"))
    assert broken["error"].startswith("invalid_input: app 'broken' cannot be served: broken.json")
    assert "definitions: must be an object" in broken["error"]
    result = app_pipeline.run_sync(app_job("ui"))
    assert "error" not in result, result


def test_a_converter_bug_in_one_saved_app_spares_the_others(tmp_path: Path) -> None:
    """Whatever a converter raises for one file, the others are converted."""
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.json").write_text(json.dumps({"nodes": [], "links": [], "n": name}))
    store = AppStore(tmp_path)

    def convert(document: dict) -> dict:
        if document["n"] == "b":
            raise KeyError("surprise")
        return {"1": {"class_type": "SaveImage", "inputs": {}}}

    store.convert_saved(convert)
    assert sorted(store.apps) == ["a", "c"] and not store.saved
    assert store.refused == {"b": "b.json: cannot be read (KeyError: 'surprise')"}


def test_numbers_past_any_range_are_bad_params(app_pipeline: Pipeline) -> None:
    """A 400-digit integer overflowed float(): an internal_error instead of a named param."""
    result = app_pipeline.run_sync(app_job("color", color=10**400, size=-(10**400)))
    assert result["error"].startswith("invalid_input: app 'color': bad params: ")
    assert "color: 1000000000000000000000000000000000000... is out of range" in result["error"]
    assert "size: -100000000000000000000000000000000000... is out of range" in result["error"]
    echo = app_pipeline.run_sync(app_job("echo", picture=png((1, 2, 3)), strength=10**400))
    assert "strength: 1000000000000000000000000000000000000... is out of range" in echo["error"]


def test_names_with_a_trailing_newline_are_refused(tmp_path: Path) -> None:
    """``$`` matches before a final newline: app and parameter names are full matches."""
    (tmp_path / "bad\n.json").write_text(json.dumps({"nodes": [], "links": []}))
    param = json.loads((APPS / "color.json").read_text())
    param["11"]["inputs"]["name"] = "prefix\n"
    (tmp_path / "param.json").write_text(json.dumps(param))
    store = AppStore(tmp_path)
    assert not store.apps
    assert "app names are letters" in store.refused["bad\n"]
    assert "name must be a parameter name" in store.refused["param"]


def test_apps_whose_names_meet_get_a_schema_each(executor, tmp_path: Path, store: AppStore) -> None:
    """``a.b`` and ``a_b`` were both ``app_a_b``: a ``oneOf`` of two equal schemas, which
    no request can satisfy. Each app gets its own; each request validates."""
    from jsonschema import Draft202012Validator
    from openapi_spec_validator import validate

    for name in ("a.b", "a_b", "a_b_2"):
        (tmp_path / f"{name}.json").write_text((APPS / "color.json").read_text())
    pipeline = Pipeline(
        executor,
        PipelineSettings(delivery=DeliverySettings(local_dir=tmp_path), apps=AppStore(tmp_path)),
    )
    running = ServeThread(pipeline)
    try:
        code, document = running.call("GET", "openapi.json")
    finally:
        running.stop()
    assert code == 200
    validate(document)
    schemas = document["components"]["schemas"]
    body = document["paths"]["/run"]["post"]["requestBody"]["content"]["application/json"]
    keys = [ref["$ref"].rsplit("/", 1)[1] for ref in body["schema"]["oneOf"]]
    assert keys == ["app_a_b", "app_a_b_2", "app_a_b_2_2"]
    validator = Draft202012Validator({**body["schema"], "components": {"schemas": schemas}})
    for name in ("a.b", "a_b", "a_b_2"):
        validator.validate({"input": {"app": name, "params": {"color": 5}}})
    assert not validator.is_valid({"input": {"app": "a-b", "params": {}}})


# -- jobs ------------------------------------------------------------------------------------


def test_app_job_through_serve(served: ServeThread) -> None:
    code, body = served.call("POST", "runsync", app_job("color", color=0x102030, prefix="c"))
    assert code == 200 and body["status"] == "COMPLETED", body
    url = body["output"]["files"][0]
    assert url.split("/")[-1] == "c_00001_.png"  # the prefix param, isolated per job
    assert pixel(fetch(url)[1]) == inverted(0x102030)
    # Defaults fill what is not sent.
    body = served.call("POST", "runsync", app_job("color"))[1]
    assert pixel(fetch(body["output"]["files"][0])[1]) == inverted(0x204060)


def test_image_param_takes_base64_data_uri_and_url(served: ServeThread) -> None:
    for source in (png((10, 20, 30)), f"data:image/png;base64,{png((10, 20, 30))}"):
        body = served.call("POST", "runsync", app_job("echo", picture=source))[1]
        assert body["status"] == "COMPLETED", body
        assert pixel(fetch(body["output"]["files"][0])[1]) == (10, 20, 30)
    # A URL: this server's own output file of the first job.
    first = served.call("POST", "runsync", app_job("echo", picture=png((5, 6, 7))))[1]
    body = served.call("POST", "runsync", app_job("echo", picture=first["output"]["files"][0]))[1]
    assert pixel(fetch(body["output"]["files"][0])[1]) == (5, 6, 7)
    broken = served.call("POST", "runsync", app_job("echo", picture="bm90IGFuIGltYWdl"))[1]
    assert broken["error"] == "invalid_input: params.picture is not a readable image"


def test_every_bad_param_is_named_in_one_invalid_input(
    served: ServeThread, tiny_checkpoint: str
) -> None:
    bad = app_job(
        "txt2img",
        seed="seven",  # wrong type
        steps=500,  # out of range
        sampler="nope",  # not one of the choices
        colour=1,  # unknown
    )
    body = served.call("POST", "runsync", bad)[1]
    assert body["status"] == "FAILED"
    error, output = body["error"], body["output"]
    assert error.startswith("invalid_input: app 'txt2img': bad params: ")
    for part in (
        'seed: expected an integer, got "seven"',
        "steps: 500 is above the maximum 50",
        'sampler: "nope" is not one of the choices (euler,',
        "colour: no such parameter",
    ):
        assert part in error
    assert {p["name"] for p in output["details"]["invalid_params"]} == {
        "seed",
        "steps",
        "sampler",
        "colour",
    }
    missing = served.call("POST", "runsync", app_job("echo", strength=2))[1]["error"]
    assert "picture: missing (required)" in missing and "strength: 2 is above" in missing
    wrong = {
        ("no_such_app", None): "invalid_input: no app 'no_such_app' (apps: color, echo, txt2img)",
        ("color", True): "invalid_input: app 'color': bad params: color: expected an integer",
    }
    for (app, value), start in wrong.items():
        params = {} if value is None else {"color": value}
        assert served.call("POST", "runsync", app_job(app, **params))[1]["error"].startswith(start)


def test_tiny_sd_app_through_serve(served: ServeThread, tiny_checkpoint: str) -> None:
    job = app_job("txt2img", prompt="a dog", seed=7, steps=2, sampler="euler")
    job["input"]["params"]["checkpoint"] = tiny_checkpoint
    body = served.call("POST", "runsync", job)[1]
    assert body["status"] == "COMPLETED", body
    with Image.open(io.BytesIO(fetch(body["output"]["files"][0])[1])) as image:
        assert image.size == (64, 64)


def test_overrides_apply_to_workflow_and_app_jobs(served: ServeThread) -> None:
    workflow = json.loads((APPS / "color.json").read_text())
    job = {"input": {"workflow": workflow, "overrides": {"1.color": 0x0A0B0C, "3.x": 1}}}
    body = served.call("POST", "runsync", job)[1]
    assert body["status"] == "COMPLETED", body
    assert pixel(fetch(body["output"]["files"][0])[1]) == inverted(0x0A0B0C)
    job = app_job("color", color=1)
    job["input"]["overrides"] = {"2.image": ["1", 0], "42.color": 3, "x.y": 1}
    body = served.call("POST", "runsync", job)[1]
    assert body["error"] == (
        "invalid_input: input.overrides name nodes the workflow does not have: 42, x"
    )
    assert body["output"]["details"]["unknown_nodes"] == ["42", "x"]
    bad_key = served.call(
        "POST", "runsync", {"input": {"workflow": workflow, "overrides": {"7": 1}}}
    )
    assert bad_key[1]["error"].startswith('invalid_input: input.overrides keys must be "<node id>')


def test_worker_handler_runs_an_app(app_pipeline: Pipeline) -> None:
    handler = make_handler(app_pipeline)
    result = asyncio.run(handler({"id": "w1", **app_job("color", color=0x000000, size=4)}))
    assert "error" not in result, result
    with Image.open(result["files"][0]) as image:
        assert image.size == (4, 4) and image.getpixel((0, 0)) == (255, 255, 255)


def test_the_app_workflows_run_as_they_are(executor, tiny_checkpoint: str) -> None:
    """The desktop case: input nodes are plain value nodes, their values the defaults."""
    color = json.loads((APPS / "color.json").read_text())
    result = executor.run(color, executor.workspace("desktop-color"))
    assert result.error is None, result.error
    with Image.open(result.files[0].path) as image:
        assert image.getpixel((0, 0)) == inverted(0x204060)
    assert result.files[0].filename.startswith("color_")
    txt2img = json.loads((APPS / "txt2img.json").read_text())
    result = executor.run(txt2img, executor.workspace("desktop-txt2img"))
    assert result.error is None, result.error
    assert len(result.files) == 1


# -- the contract ----------------------------------------------------------------------------


def test_openapi_document_validates_and_the_sdk_sends_its_body(
    served: ServeThread, monkeypatch: pytest.MonkeyPatch, tiny_checkpoint: str
) -> None:
    from jsonschema import Draft202012Validator
    from openapi_spec_validator import validate

    code, document = served.call("GET", "openapi.json")
    assert code == 200
    validate(document)
    assert document["openapi"] == "3.1.0"
    assert document["servers"] == [{"url": served.base}]
    schemas = document["components"]["schemas"]
    run_body = document["paths"]["/run"]["post"]["requestBody"]["content"]["application/json"]
    assert run_body["schema"]["oneOf"] == [
        {"$ref": f"#/components/schemas/app_{name}"} for name in ("color", "echo", "txt2img")
    ]
    assert schemas["Result"]["required"] == ["files", "datas"]

    body = {"input": {"app": "color", "params": {"color": 0x405060, "size": 2}}}
    validator = Draft202012Validator({**schemas["app_color"], "components": {"schemas": schemas}})
    validator.validate(body)
    assert not validator.is_valid({"input": {"app": "color", "params": {"nope": 1}}})
    assert not validator.is_valid({"input": {"app": "echo"}})

    endpoint = sdk_endpoint(served, monkeypatch)
    output = endpoint.run_sync(body["input"], timeout=30)  # the SDK wraps it in "input"
    assert pixel(fetch(output["files"][0])[1]) == inverted(0x405060)


def test_docs_page_lists_apps_params_and_a_curl_example(served: ServeThread) -> None:
    code, page = fetch(f"{served.base}/docs")
    assert code == 200
    text = page.decode()
    assert text.startswith("<!doctype html>") and "http" not in text.split("<body>")[0]
    for needle in ("<h2 id='color'>color</h2>", "<code>prefix</code>", "Fill colour as 0xRRGGBB"):
        assert needle in text
    assert f"curl -s -X POST {served.base}/runsync" in text
    assert "&quot;app&quot;: &quot;echo&quot;" in text and "required" in text


# -- the processes: worker, apps ------------------------------------------------------------


def cli(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "comfyui_runpod", *args]
    env = {**os.environ, "COMFYUI_RUNPOD_OUTPUT": str(tmp_path / "out"), **(env or {})}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path
    )


@pytest.mark.slow
def test_worker_and_apps_commands(tmp_path: Path) -> None:
    job = json.dumps({"input": {"app": "color", "params": {"prefix": "w", "color": 255}}})
    done = cli(
        tmp_path,
        "worker",
        "--cpu",
        "--work-dir",
        str(tmp_path / "work"),
        "--test_input",
        job,
        env={"COMFYUI_RUNPOD_APPS": str(APPS)},
    )
    logs = done.stdout + done.stderr
    assert done.returncode == 0, logs[-3000:]
    assert len(list((tmp_path / "out" / "local_test").glob("w_*.png"))) == 1

    done = cli(tmp_path, "apps", str(APPS), "--cpu", "--work-dir", str(tmp_path / "w2"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "color\n  color: integer 0..16777215 (default 2113632): Fill colour" in done.stdout
    assert "  picture: image (required): Any image" in done.stdout
    done = cli(
        tmp_path,
        "apps",
        "--schema",
        "echo",
        "--cpu",
        "--work-dir",
        str(tmp_path / "w3"),
        env={"COMFYUI_RUNPOD_APPS": str(APPS)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["required"] == ["picture"]
