"""Parsing the job contract: every bad input gets an invalid_input error naming the culprit."""

from __future__ import annotations

import json

import pytest
import workflows
from comfyui_runpod.executor.errors import JobError
from comfyui_runpod.executor.request import parse_job
from s3server import TEST_ACCESS_SECRET, bucket_contract

WF = workflows.invert(0)


def job(**input_fields: object) -> dict:
    return {"id": "j1", "input": {"workflow": WF, **input_fields}}


def error_of(payload: object) -> str:
    with pytest.raises(JobError) as caught:
        parse_job(payload, {})
    assert caught.value.code == "invalid_input"
    return caught.value.line


def test_workflow_as_object_or_json_string() -> None:
    assert parse_job(job(), {}).workflow == WF
    assert parse_job(job(workflow=json.dumps(WF)), {}).workflow == WF


def test_a_saved_ui_format_workflow_is_kept_for_the_pipeline_to_convert() -> None:
    saved = {"nodes": [{"id": 1, "type": "SaveImage"}], "links": [], "version": 0.4}
    assert parse_job(job(workflow=saved), {}).workflow == saved
    assert parse_job(job(workflow=json.dumps(saved)), {}).workflow == saved


@pytest.mark.parametrize(
    ("payload", "culprit"),
    [
        ("not an object", "JSON object"),
        ({"id": "x"}, '"input"'),
        ({"input": "text"}, '"input"'),
        (job(workflow=None), "input.workflow is missing"),
        (job(workflow={}), "input.workflow is missing"),
        (job(workflow=[1, 2]), "not list"),
        (job(workflow=42), "not int"),
        (job(workflow="{not json"), "not valid JSON"),
        (job(workflow={"nodes": "x", "links": []}), "nodes are not a list"),
        (job(workflow={"1": {"inputs": {}}}), "node '1'"),
        (job(workflow={"1": {"class_type": "X", "inputs": []}}), "inputs must be an object"),
        (job(tobase64="maybe"), "input.tobase64"),
        (job(tobase64=3), "input.tobase64"),
        (job(images="x"), "input.images"),
        (job(images=[{"name": "a.png"}]), "input.images[0]"),
        (job(images=[{"name": "../a.png", "image": "AA=="}]), "'../a.png'"),
        (job(images=[{"name": "/etc/passwd", "image": "AA=="}]), "'/etc/passwd'"),
        (job(images=[{"name": "a\x00.png", "image": "AA=="}]), "not an allowed file name"),
        (job(images=[{"name": "a/b.png", "image": "AA=="}]), "'a/b.png'"),
        (
            job(images=[{"name": "a.png", "image": "AA=="}, {"name": "a.png", "image": "AA=="}]),
            "repeat: a.png",
        ),
        (job(files="x"), "input.files"),
        (job(files=[1]), "input.files[0] must be a base64 string or {"),
        (job(files=["AA==", {"file": "AA=="}]), "input.files[1]: None is not an allowed"),
        (job(files=[{"name": "a.wav"}]), "input.files[0] must be"),
        (job(files=[{"name": "a.wav", "file": 5}]), "input.files[0] must be"),
        (job(files=[{"name": "../a.wav", "file": "AA=="}]), "input.files[0]: '../a.wav'"),
        (job(files=["AA==", {"name": "upload-0.png", "file": "AA=="}]), "repeat: upload-0.png"),
        (
            job(images=[{"name": "a.wav", "image": "AA=="}], files=[{"name": "a.wav", "file": ""}]),
            "repeat: a.wav",
        ),
        (job(tobucket="s3://x"), "input.tobucket"),
        (job(tobucket={"endpointUrl": "http://127.0.0.1:1"}), "input.tobucket"),
        ({**job(), "s3Config": []}, "s3Config"),
        ({**job(), "policy": "fast"}, "policy must be an object"),
        ({**job(), "policy": {"executionTimeout": -1}}, "milliseconds in 1.."),
        ({**job(), "policy": {"executionTimeout": 10**12}}, "milliseconds in 1.."),
        ({**job(), "policy": {"executionTimeout": "5s"}}, "milliseconds"),
        ({**job(), "policy": {"executionTimeout": True}}, "milliseconds"),
        # Past float's range: an OverflowError (HTTP 500 from serve) before.
        ({**job(), "policy": {"executionTimeout": 10**400}}, "not 1000000000000000000000000"),
        ({**job(), "policy": {"ttl": 10**400}}, "policy.ttl must be milliseconds in 1.."),
        ({**job(), "policy": {"ttl": -(10**400)}}, "policy.ttl must be milliseconds in 1.."),
        ({**job(), "policy": {"ttl": float("nan")}}, "policy.ttl must be milliseconds in 1.."),
        # "$" matches before a final newline: names are full matches.
        (job(images=[{"name": "in.png\n", "image": "AA=="}]), "'in.png\\n' is not an allowed"),
        (job(files=[{"name": "a.wav\n", "file": "AA=="}]), "'a.wav\\n' is not an allowed"),
        ({"input": {"app": "color\n"}}, "input.app must be an app name"),
    ],
)
def test_bad_input_names_the_culprit(payload: object, culprit: str) -> None:
    line = error_of(payload)
    assert line.startswith("invalid_input: ")
    assert culprit in line
    assert "\n" not in line


@pytest.mark.parametrize(("value", "expected"), [(True, True), ("true", True), ("0", False)])
def test_tobase64_accepts_boolish(value: object, expected: bool) -> None:
    assert parse_job(job(tobase64=value), {}).tobase64 is expected


def test_policy_timeout_in_milliseconds_either_spelling() -> None:
    assert parse_job({**job(), "policy": {"executionTimeout": 5000}}, {}).timeout_s == 5.0
    assert parse_job({**job(), "policy": {"executiontimeout": 1500}}, {}).timeout_s == 1.5
    assert parse_job({**job(), "policy": {"ttl": 60000}}, {}).timeout_s is None


def test_media_from_images_and_original_files_list() -> None:
    request = parse_job(job(images=[{"name": "in.png", "image": "AA=="}], files=["BB=="]), {})
    assert [(m.name, m.source, m.image) for m in request.media] == [
        ("in.png", "AA==", True),
        ("upload-0.png", "BB==", True),
    ]


def test_files_objects_keep_their_names_and_skip_the_image_check() -> None:
    files = ["AA==", {"name": "voice.wav", "file": "data:audio/wav;base64,BB=="}]
    request = parse_job(job(files=files), {})
    assert [(m.name, m.image, m.label) for m in request.media] == [
        ("upload-0.png", True, "input image upload-0.png"),
        ("voice.wav", False, "input.files[1] (voice.wav)"),
    ]


def test_bucket_precedence_through_the_parser() -> None:
    tobucket = bucket_contract("http://127.0.0.1:9", "from-input")
    s3config = bucket_contract("http://127.0.0.1:9", "from-request")
    env = {
        "BUCKET_ENDPOINT_URL": "http://127.0.0.1:9",
        "BUCKET_ACCESS_KEY_ID": "id",
        "BUCKET_SECRET_ACCESS_KEY": "secret",
        "BUCKET_NAME": "from-env",
    }
    both = {**job(tobucket=tobucket), "s3Config": s3config}
    assert parse_job(both, env).bucket.bucket_name == "from-input"
    assert parse_job({**job(), "s3Config": s3config}, env).bucket.bucket_name == "from-request"
    assert parse_job(job(), env).bucket.bucket_name == "from-env"
    assert parse_job(job(), {}).bucket is None


def test_config_errors_never_echo_secrets() -> None:
    bad = bucket_contract("not-a-url", "b")
    line = error_of(job(tobucket=bad))
    assert TEST_ACCESS_SECRET not in line


def test_app_params_and_overrides() -> None:
    request = parse_job({"input": {"app": "txt2img", "params": {"seed": 7}}}, {})
    assert (request.app, request.params, request.workflow) == ("txt2img", {"seed": 7}, None)
    request = parse_job(job(overrides={"3.filename_prefix": "x", "1.color": 5}), {})
    assert request.overrides == {("3", "filename_prefix"): "x", ("1", "color"): 5}
    assert "not both" in error_of({"input": {"app": "a", "workflow": WF}})
    assert "input.params needs input.app" in error_of(job(params={"seed": 1}))
    assert "input.app must be an app name" in error_of({"input": {"app": "../x"}})
    assert "input.params must be an object, not list" in error_of(
        {"input": {"app": "a", "params": [1]}}
    )
    line = error_of(job(overrides={"3": 1, ".x": 2, "4.ok": 3}))
    assert (
        line == "invalid_input: input.overrides keys must be \"<node id>.<input name>\": '3', '.x'"
    )
