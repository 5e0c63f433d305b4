"""The bad-input corpus: one table, run through ``serve`` over real HTTP and through the
RunPod handler. Each case asserts the error code (or the HTTP status where ``serve``
refuses the request itself) and that the text names the culprit; after every case a good
job succeeds on the same server or worker, and no secret shows up anywhere."""

from __future__ import annotations

import asyncio
import base64
import copy
import functools
import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import workflows
from comfyui_runpod.executor.worker import make_handler
from httpkit import fetch
from PIL import Image
from reliability_kit import API_KEY, assert_no_secrets, b64, pixel, png_bytes, png_text
from s3server import TEST_ACCESS_ID, TEST_ACCESS_SECRET, bucket_contract

MiB = 1024 * 1024


@dataclass(frozen=True)
class Case:
    id: str
    #: The request body: a job (``{"input": …}``), raw bytes, or a function of the Env.
    body: Any
    #: The error code the job gets (from the handler, and from ``serve`` unless ``http``);
    #: None: the job must succeed (``check`` may look at its output).
    code: str | None
    #: Text the error must contain: what names the culprit.
    culprit: tuple[str, ...] = ()
    #: ``serve`` answers the request itself with this status and text (no job is made).
    http: tuple[int, str] | None = None
    #: False: the case only exists over HTTP (RunPod hands the worker parsed JSON).
    handler: bool = True
    route: str = "runsync?wait=60000"
    #: Media settings for this case (production's by default: no private URLs).
    media: dict[str, Any] = field(default_factory=dict)
    #: Looks at a successful job's output: raises, or returns False, when it is wrong.
    check: Callable[[dict[str, Any]], Any] | None = None
    #: At most this many seconds per run (the 10 000-node cases).
    bound_s: float | None = None


def job(workflow: Any = None, **fields: Any) -> dict[str, Any]:
    return {"input": {"workflow": workflow if workflow is not None else GOOD, **fields}}


def changed(change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    """GOOD after ``change`` (which edits it in place)."""
    prompt = copy.deepcopy(GOOD)
    change(prompt)
    return prompt


def feeding_the_inverter(class_type: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """GOOD with a node 4 added, and node 2 (ImageInvert) taking its image from it."""
    prompt = copy.deepcopy(GOOD)
    prompt["4"] = {"class_type": class_type, "inputs": inputs}
    prompt["2"]["inputs"]["image"] = ["4", 0]
    return prompt


def with_image(source: Any, name: str = "in.png") -> dict[str, Any]:
    """A LoadImage job that brings its image as ``source`` under ``name``."""
    return job(workflows.load_and_save(name), images=[{"name": name, "image": source}])


def bucket(**overrides: Any) -> Callable[[Any], dict[str, Any]]:
    """A job whose tobucket is the moto server's, with ``overrides`` (None drops a key)."""
    return lambda env: job(tobucket=bucket_contract(env.s3, env.bucket, **overrides))


def sized_body(size: int) -> bytes:
    """A valid job body of exactly ``size`` bytes (padded with an ignored input key)."""
    body = job(junk="")
    body["input"]["junk"] = "x" * (size - len(json.dumps(body)))
    return json.dumps(body).encode()


@functools.cache
def image_bomb() -> str:
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, "PNG")  # a few kB that claim 400 MP
    return b64(buffer.getvalue())


def wide_outputs(n: int) -> dict[str, Any]:
    prompt = {
        str(i): {"class_type": "PreviewImage", "inputs": {"images": ["x", 0]}} for i in range(n)
    }
    prompt["x"] = GOOD["1"]
    return prompt


def deep_chain(n: int) -> dict[str, Any]:
    prompt: dict[str, Any] = {"0": GOOD["1"]}
    for i in range(1, n):
        prompt[str(i)] = {"class_type": "ImageInvert", "inputs": {"image": [str(i - 1), 0]}}
    save = {"images": [str(n - 1), 0], "filename_prefix": "deep"}
    prompt["out"] = {"class_type": "SaveImage", "inputs": save}
    return prompt


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def capture(value: Any, key: str = "k") -> dict[str, Any]:
    prompt = copy.deepcopy(GOOD)
    prompt["4"] = {"class_type": "RunPodCaptureData", "inputs": {"value": value, "key": key}}
    return prompt


def datas_are(expected: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def check(output: dict[str, Any]) -> None:
        assert output["datas"] == expected

    return check


def one_file_named(prefix: str) -> Callable[[dict[str, Any]], None]:
    def check(output: dict[str, Any]) -> None:
        [info] = output["file_info"]
        assert info["name"].startswith(prefix), info

    return check


GOOD = workflows.invert(0)
UNICODE = "ünïcödé 🙂 \x00 nul, \ud800 lone surrogate, \u202e bidi"
LEAKY_ENDPOINT = f"http://{TEST_ACCESS_ID}:{TEST_ACCESS_SECRET}@127.0.0.1:9"
INVALID_IMAGE = "Invalid image file"

CASES = [
    # -- the request itself (only over HTTP) ---------------------------------------------------
    Case("not-json", b"{not json", None, http=(400, "not valid JSON"), handler=False),
    Case("empty-body", b"", None, http=(400, "not valid JSON"), handler=False),
    Case("not-utf8", b'{"input": "\xff\xfe"}', None, http=(400, "not valid JSON"), handler=False),
    Case("body-is-a-list", b"[1, 2]", None, http=(400, "JSON object"), handler=False),
    Case(
        "body-nested-100k-deep",
        b"[" * 100_000,
        None,
        http=(400, "nested too deeply"),
        handler=False,
    ),
    Case(
        "oversize-run",
        lambda env: sized_body(10 * MiB + 1),
        None,
        http=(413, "10.0 MiB limit"),
        handler=False,
        route="run",
    ),
    Case(
        "oversize-runsync",
        lambda env: sized_body(20 * MiB + 1),
        None,
        http=(413, "20.0 MiB limit"),
        handler=False,
    ),
    Case(
        "oversize-chunked",  # no Content-Length: counted while reading
        lambda env: iter(
            [sized_body(10 * MiB + 1)[: 6 * MiB], sized_body(10 * MiB + 1)[6 * MiB :]]
        ),
        None,
        http=(413, "10.0 MiB limit"),
        handler=False,
        route="run",
    ),
    # -- input and workflow shape ---------------------------------------------------------------
    Case("input-missing", {}, "invalid_input", ('"input"',), http=(400, '"input"')),
    Case(
        "input-not-object", {"input": "text"}, "invalid_input", ('"input"',), http=(400, '"input"')
    ),
    Case("workflow-missing", {"input": {}}, "invalid_input", ("input.workflow is missing",)),
    Case("workflow-empty", job({}), "invalid_input", ("input.workflow is missing",)),
    Case("workflow-empty-string", job(""), "invalid_input", ("input.workflow is missing",)),
    Case("workflow-empty-json-string", job("{}"), "invalid_input", ("input.workflow is missing",)),
    Case("workflow-list", job([1, 2]), "invalid_input", ("input.workflow", "not list")),
    Case("workflow-number", job(42), "invalid_input", ("input.workflow", "not int")),
    Case("workflow-bool", job(True), "invalid_input", ("input.workflow", "not bool")),
    Case(
        "ui-format-widgets-missing",
        job({"nodes": [{"id": 1, "type": "SaveImage"}], "links": [], "version": 0.4}),
        "validation_failed",
        ("node 1 (SaveImage)", "0 saved widget values", "has 1 (filename_prefix)"),
    ),
    Case(
        "workflow-invalid-json-string",
        job("{not json"),
        "invalid_input",
        ("input.workflow", "not valid JSON"),
    ),
    Case(
        "workflow-json-100k-deep",
        job("[" * 100_000),
        "invalid_input",
        ("input.workflow", "nested too deeply"),
    ),
    Case("node-not-object", job({"1": 5}), "invalid_input", ("node '1'", "class_type")),
    Case(
        "node-inputs-not-object",
        job({"1": {"class_type": "EmptyImage", "inputs": [1]}}),
        "invalid_input",
        ("node '1'", "inputs must be an object"),
    ),
    Case(
        "node-without-inputs",
        job({**GOOD, "9": {"class_type": "EmptyImage"}}),  # unused, ran fine
        None,
        check=lambda output: len(output["files"]) == 1,
    ),
    Case(
        "node-inputs-600-deep",
        lambda env: job({"1": {"class_type": "EmptyImage", "inputs": {"width": nested(600)}}}),
        "invalid_input",
        ("node '1'", "nested more than 64 levels"),
    ),
    # -- what ComfyUI refuses ------------------------------------------------------------------
    Case(
        "unknown-class-type",
        job(changed(lambda p: p["2"].update(class_type="NoSuchNode"))),
        "validation_failed",
        ("node 2 ('NoSuchNode')", "install the custom nodes"),
    ),
    Case(
        "class-type-not-a-string",
        job(changed(lambda p: p["2"].update(class_type=5))),
        "validation_failed",
        ("node 2 (5)",),
    ),
    Case(
        "missing-required-input",
        job(changed(lambda p: p["1"]["inputs"].pop("width"))),
        "validation_failed",
        ("node 1 (EmptyImage)", "Required input is missing", "width"),
    ),
    Case(
        "wrong-type",
        job(changed(lambda p: p["1"]["inputs"].update(width="wide"))),
        "validation_failed",
        ("node 1 (EmptyImage)", "INT", "width"),
    ),
    Case(
        "wrong-link-type",
        job(feeding_the_inverter("EmptyLatentImage", {"width": 64, "height": 64, "batch_size": 1})),
        "validation_failed",
        ("node 2 (ImageInvert)", "LATENT", "IMAGE"),
    ),
    Case(
        "value-below-min",
        job(changed(lambda p: p["1"]["inputs"].update(width=-5))),
        "validation_failed",
        ("node 1 (EmptyImage)", "-5 smaller than min", "width"),
    ),
    Case(
        "value-above-max",
        job(changed(lambda p: p["1"]["inputs"].update(width=10**9))),
        "validation_failed",
        ("node 1 (EmptyImage)", "bigger than max", "width"),
    ),
    Case(
        "link-to-missing-node",
        job(changed(lambda p: p["2"]["inputs"].update(image=["99", 0]))),
        "validation_failed",
        ("node 2 (ImageInvert)", "'99'"),
    ),
    Case(
        "link-to-bad-output-index",
        job(changed(lambda p: p["2"]["inputs"].update(image=["1", 7]))),
        "validation_failed",
        ("node 2 (ImageInvert)", "index out of range"),
    ),
    Case(
        "link-malformed",
        job(changed(lambda p: p["2"]["inputs"].update(image=["1"]))),
        "validation_failed",
        ("node 2 (ImageInvert)", "Bad linked input"),
    ),
    Case(
        "cycle",
        job(feeding_the_inverter("ImageInvert", {"image": ["2", 0]})),  # 2 -> 4 -> 2
        "validation_failed",
        ("cycle", "node 2 (ImageInvert)", "node 4 (ImageInvert)"),
    ),
    Case(
        "self-link",
        job(changed(lambda p: p["2"]["inputs"].update(image=["2", 0]))),
        "validation_failed",
        ("cycle", "node 2 (ImageInvert) -> node 2 (ImageInvert)"),
    ),
    Case(
        "no-output-node", job(changed(lambda p: p.pop("3"))), "validation_failed", ("no outputs",)
    ),
    Case(
        "10k-node-chain",
        job(deep_chain(10_000)),  # ComfyUI validates recursively
        "validation_failed",
        ("(ImageInvert)", "recursion depth"),
        bound_s=10,
    ),
    Case(
        "10k-unknown-nodes",
        job({str(i): {"class_type": "Nope", "inputs": {}} for i in range(10_000)}),
        "validation_failed",
        ("node 0 ('Nope')", "and 9990 more"),
        bound_s=10,
    ),
    Case(
        "10k-output-nodes",
        job(wide_outputs(10_000)),
        None,
        bound_s=30,
        check=lambda output: output["files"] == [],
    ),
    Case(
        "node-raises",
        job(
            changed(
                lambda p: p["2"].update(
                    class_type="TestRaise",
                    inputs={"image": ["1", 0], "message": "kaput"},
                )
            )
        ),
        "execution_failed",
        ("node 2 (TestRaise) raised ValueError: kaput",),
    ),
    Case(
        "node-out-of-memory",
        job(
            changed(
                lambda p: p["2"].update(
                    class_type="TestOutOfMemory",
                    inputs={"image": ["1", 0]},
                )
            )
        ),
        "out_of_memory",
        ("node 2 (TestOutOfMemory)", "ran out of memory"),
    ),
    # -- input media -------------------------------------------------------------------------
    Case(
        "image-invalid-base64",
        with_image("not base64 at all!"),
        "invalid_input",
        ("in.png", "not valid base64"),
    ),
    Case(
        "image-base64-of-text",
        with_image(b64(b"just text")),
        "invalid_input",
        ("in.png", "not a readable image"),
    ),
    Case(
        "image-truncated-png",
        with_image(b64(png_bytes(size=64)[:-20])),
        "invalid_input",
        ("in.png", "not a readable image"),
    ),
    Case(
        "image-bomb",
        lambda env: with_image(image_bomb()),
        "invalid_input",
        ("in.png", "pixel limit"),
        bound_s=5,
    ),
    Case(
        "image-data-uri-not-base64",
        with_image("data:image/png,abc"),
        "invalid_input",
        ("in.png", "not base64"),
    ),
    Case(
        "image-file-url",
        with_image("file:///etc/passwd"),
        "invalid_input",
        ("in.png", "not valid base64"),
    ),
    Case(
        "image-not-a-string",
        job(images=[{"name": "in.png", "image": 5}]),
        "invalid_input",
        ("input.images[0]",),
    ),
    Case("images-not-a-list", job(images="in.png"), "invalid_input", ("input.images",)),
    Case(
        "image-name-traversal", with_image("AA==", "../in.png"), "invalid_input", ("'../in.png'",)
    ),
    Case(
        "image-name-absolute",
        with_image("AA==", "/etc/passwd"),
        "invalid_input",
        ("'/etc/passwd'",),
    ),
    Case(
        "image-name-backslashes",
        with_image("AA==", "..\\..\\in.png"),
        "invalid_input",
        ("not an allowed file name",),
    ),
    Case(
        "image-name-unicode",
        with_image("AA==", "bild-ü.png"),
        "invalid_input",
        ("'bild-ü.png'", "not an allowed"),
    ),
    Case(
        "image-name-nul",
        with_image("AA==", "in\x00.png"),
        "invalid_input",
        ("'in\\x00.png'", "not an allowed"),
    ),
    Case(
        "image-names-repeat",
        job(images=[{"name": "a.png", "image": "AA=="}] * 2),
        "invalid_input",
        ("repeat: a.png",),
    ),
    Case("files-not-strings", job(files=[1]), "invalid_input", ("input.files",)),
    Case(
        "files-invalid-base64",
        job(files=["%%%"]),
        "invalid_input",
        ("upload-0.png", "not valid base64"),
    ),
    Case(
        "loadimage-traversal",
        job(workflows.load_and_save("../other-job/in.png")),
        "validation_failed",
        ("node 1 (LoadImage)", "outside the job's input files"),
    ),
    Case(
        "loadimage-absolute",
        job(workflows.load_and_save("/etc/hostname")),
        "validation_failed",
        ("node 1 (LoadImage)", "outside the job's input files"),
    ),
    Case(
        "loadimage-output-annotation",
        job(workflows.load_and_save("inv_00001_.png [output]")),
        "validation_failed",
        ("node 1 (LoadImage)", "outside the job's input files"),
    ),
    Case(
        "loadimage-nul",
        job(workflows.load_and_save("in\x00.png")),
        "validation_failed",
        ("node 1 (LoadImage)", INVALID_IMAGE),
    ),
    Case(
        "url-private-address",
        lambda env: with_image(f"{env.web}/in.png"),
        "invalid_input",
        ("in.png", "127.0.0.1", "private or local address"),
    ),
    *[
        Case(f"url-{label}", with_image(url), "invalid_input", ("in.png", host, "private or local"))
        for label, url, host in [
            ("cloud-metadata", "http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
            ("private-network", "https://10.1.2.3/in.png", "10.1.2.3"),
            ("ipv6-loopback", "http://[::1]:9/in.png", "::1"),
            ("decimal-loopback", "http://2130706433/in.png", "2130706433"),
            ("any-address", "http://0.0.0.0:9/in.png", "0.0.0.0"),
        ]
    ],
    Case(
        "url-dead-host",
        lambda env: with_image(f"{env.closed}/in.png"),
        "invalid_input",
        ("in.png", "could not download from 127.0.0.1"),
        media={"allow_private_urls": True},
    ),
    Case(
        "url-5gb-body",
        lambda env: with_image(f"{env.web}/huge.png"),
        "invalid_input",
        ("in.png", "5120.0 MiB, over the"),
        media={"allow_private_urls": True},
        bound_s=5,
    ),
    Case(
        "url-endless-body",
        lambda env: with_image(f"{env.web}/endless.png"),
        "invalid_input",
        ("in.png", "over the 1.0 MiB limit"),
        media={"allow_private_urls": True, "max_bytes": 1_000_000},
        bound_s=5,
    ),
    Case(
        "url-never-answers",
        lambda env: with_image(f"{env.web}/tarpit.png"),
        "invalid_input",
        ("in.png", "could not download", "timed out"),
        media={"allow_private_urls": True, "url_timeout_s": 0.3},
        bound_s=5,
    ),
    Case(
        "url-not-an-image",
        lambda env: with_image(f"{env.web}/text.png"),
        "invalid_input",
        ("in.png", "not a readable image"),
        media={"allow_private_urls": True},
    ),
    # -- buckets -------------------------------------------------------------------------------
    Case(
        "tobucket-wrong-type",
        job(tobucket="s3://bucket"),
        "invalid_input",
        ("input.tobucket", "must be an object"),
    ),
    Case(
        "tobucket-missing-fields",
        bucket(accessId=None, accessSecret=None),
        "invalid_input",
        ("input.tobucket", "accessId is missing"),
    ),
    Case(
        "tobucket-field-wrong-type",
        bucket(accessSecret=12345),
        "invalid_input",
        ("input.tobucket", "accessSecret must be a string"),
    ),
    Case(
        "tobucket-bad-endpoint-url",
        bucket(endpointUrl="not-a-url"),
        "invalid_input",
        ("input.tobucket", "endpointUrl", "http(s) URL"),
    ),
    Case(
        "tobucket-secret-pasted-into-url",
        bucket(endpointUrl=LEAKY_ENDPOINT),
        "invalid_input",
        ("endpointUrl must not contain credentials",),
    ),
    Case(
        "tobucket-negative-expiry",
        bucket(urlExpiry=-5),
        "invalid_input",
        ("urlExpiry must be positive",),
    ),
    Case("s3config-wrong-type", {**job(), "s3Config": []}, "invalid_input", ("s3Config",)),
    Case(
        "tobucket-no-such-bucket",
        bucket(bucketName="no-such-bucket"),
        "upload_failed",
        ("could not upload inv_00001_.png to bucket no-such-bucket", "NoSuchBucket"),
        media={"allow_private_urls": True},  # the moto server is on loopback
    ),
    Case(
        "tobucket-private-endpoint",
        bucket(),
        "invalid_input",
        ("input.tobucket.endpointUrl: 127.0.0.1 resolves to a private", "--allow-private-urls"),
    ),
    Case(
        "tobucket-endpoint-down",
        lambda env: job(tobucket=bucket_contract(env.closed, "b")),
        "upload_failed",
        ("could not upload inv_00001_.png to bucket b",),
        media={"allow_private_urls": True},
    ),
    Case(
        "tobucket-endpoint-not-s3",
        lambda env: job(tobucket=bucket_contract(env.web, "b")),
        "upload_failed",
        ("could not upload inv_00001_.png to bucket b",),
        media={"allow_private_urls": True},
    ),
    # -- policy, flags, webhook ----------------------------------------------------------------
    Case(
        "policy-not-object",
        {**job(), "policy": "fast"},
        "invalid_input",
        ("policy must be an object",),
        http=(400, "policy must be an object"),
    ),
    Case(
        "timeout-negative",
        {**job(), "policy": {"executionTimeout": -1}},
        "invalid_input",
        ("policy.executionTimeout", "milliseconds in 1.."),
        http=(400, "policy.executionTimeout must be milliseconds"),
    ),
    Case(
        "timeout-zero",
        {**job(), "policy": {"executionTimeout": 0}},
        "invalid_input",
        ("policy.executionTimeout", "milliseconds in 1.."),
        http=(400, "policy.executionTimeout must be milliseconds"),
    ),
    Case(
        "timeout-absurd",
        {**job(), "policy": {"executionTimeout": 10**15}},
        "invalid_input",
        ("policy.executionTimeout", "milliseconds in 1.."),
        http=(400, "policy.executionTimeout must be milliseconds"),
    ),
    Case(
        "timeout-infinite",
        {**job(), "policy": {"executionTimeout": float("inf")}},
        "invalid_input",
        ("policy.executionTimeout", "not inf"),
        http=(400, "policy.executionTimeout must be milliseconds"),
    ),
    Case(
        "timeout-nan",
        {**job(), "policy": {"executionTimeout": float("nan")}},
        "invalid_input",
        ("policy.executionTimeout", "not nan"),
        http=(400, "policy.executionTimeout must be milliseconds"),
    ),
    Case(
        "timeout-string",
        {**job(), "policy": {"executiontimeout": "5s"}},
        "invalid_input",
        ("policy.executionTimeout", "milliseconds"),
        http=(400, "policy.executionTimeout must be milliseconds"),
    ),
    Case(
        "ttl-negative",
        {**job(), "policy": {"ttl": -5}},
        "invalid_input",
        ("policy.ttl", "milliseconds in 1.."),
        http=(400, "policy.ttl must be milliseconds in 1.."),
    ),  # one policy parser: the worker refuses what serve refuses
    Case(
        "webhook-not-a-url", {**job(), "webhook": "ftp://x"}, None, http=(400, "webhook")
    ),  # likewise
    Case("tobase64-string", job(tobase64="maybe"), "invalid_input", ("input.tobase64", "'maybe'")),
    Case("tobase64-number", job(tobase64=3), "invalid_input", ("input.tobase64",)),
    Case("tobase64-list", job(tobase64=[]), "invalid_input", ("input.tobase64",)),
    # -- unicode and NUL in names and prompts --------------------------------------------------
    Case(
        "prompt-unicode-and-nul",
        job(capture(UNICODE)),
        None,
        check=datas_are({"4": {"k": [UNICODE]}}),
    ),
    Case(
        "key-unicode-and-nul",
        job(capture("v", key="ü\x00")),
        None,
        check=datas_are({"4": {"ü\x00": ["v"]}}),
    ),
    Case(
        "prefix-unicode",
        job(changed(lambda p: p["3"]["inputs"].update(filename_prefix="bild-ü-🙂"))),
        None,
        check=one_file_named("bild-ü-🙂_"),
    ),
    Case(
        "prefix-traversal",
        job(changed(lambda p: p["3"]["inputs"].update(filename_prefix="../../../../tmp/x"))),
        "validation_failed",
        ("node 3 (SaveImage)", "filename_prefix", "leaves the output folder"),
    ),
    Case(
        "prefix-absolute",
        job(changed(lambda p: p["3"]["inputs"].update(filename_prefix="/tmp/x"))),
        "validation_failed",
        ("node 3 (SaveImage)", "filename_prefix", "leaves the output folder"),
    ),
    Case(
        "prefix-nul",
        job(changed(lambda p: p["3"]["inputs"].update(filename_prefix="a\x00b"))),
        "validation_failed",
        ("node 3 (SaveImage)", "filename_prefix", "control character"),
    ),
    Case(
        "prefix-newline",
        job(changed(lambda p: p["3"]["inputs"].update(filename_prefix="a\nb"))),
        "validation_failed",
        ("node 3 (SaveImage)", "filename_prefix", "control character"),
    ),
]

STATUS = {"timeout": "TIMED_OUT", "cancelled": "CANCELLED"}

#: Cases run per transport, and what was scanned for secrets (checked at the end).
SCANNED: dict[str, set[str]] = {"serve": set(), "handler": set()}


def ids(cases: list[Case]) -> list[str]:
    return [c.id for c in cases]


def build(case: Case, env: Any) -> Any:
    return case.body(env) if callable(case.body) else copy.deepcopy(case.body)


def assert_names_culprit(case: Case, line: str) -> None:
    assert line.startswith(f"{case.code}: "), line
    assert "\n" not in line and len(line) < 2000, line
    for text in case.culprit:
        assert text in line, f"{text!r} not in {line!r}"


def test_the_corpus_is_big_enough() -> None:
    assert len(CASES) >= 40
    assert len(set(ids(CASES))) == len(CASES)
    assert all(c.code is None or c.culprit for c in CASES)


# -- through serve, over HTTP --------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_serve(case: Case, served, env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    body = build(case, env)
    served.use_media(**case.media)
    began = time.monotonic()
    try:
        if isinstance(body, dict):
            code, answer = served.call("POST", case.route, body)
        else:
            code, answer = served.call("POST", case.route, raw=body)
    finally:
        served.use_media()  # back to production's for the good job and the next case
    elapsed = time.monotonic() - began
    texts: list[Any] = [answer]

    if case.http is not None:
        status, text = case.http
        assert code == status and text in answer["error"], (code, answer)
        assert set(answer) == {"error"}
    else:
        assert code == 200, answer
        if case.code is None:
            assert answer["status"] == "COMPLETED", answer
            if case.check:
                assert case.check(answer["output"]) is not False, answer
            for url in answer["output"]["files"]:
                status, data = fetch(url)
                assert status == 200, url
                texts.append(png_text(data))
        else:
            assert answer["status"] == STATUS.get(case.code, "FAILED"), answer
            assert answer["output"]["error_code"] == case.code
            assert_names_culprit(case, answer["error"])
    if case.bound_s is not None:
        assert elapsed < case.bound_s, f"{case.id} took {elapsed:.1f}s"

    # The same server then runs a good job.
    code, good = served.call("POST", "runsync", job(workflows.invert(0x102030)))
    assert code == 200 and good["status"] == "COMPLETED", good
    [url] = good["output"]["files"]
    assert API_KEY not in url
    status, png = fetch(url)
    assert status == 200 and pixel(png) == (0xEF, 0xDF, 0xCF)
    health = served.health()
    assert health["jobs"]["inQueue"] == health["jobs"]["inProgress"] == 0
    assert health["workers"]["unhealthy"] == 0
    texts += [good, png_text(png)]
    assert_no_secrets(caplog.records, *texts)
    SCANNED["serve"].add(case.id)


# -- through the RunPod handler ------------------------------------------------------------------

HANDLER_CASES = [c for c in CASES if c.handler]


@pytest.mark.parametrize("case", HANDLER_CASES, ids=ids(HANDLER_CASES))
def test_handler(
    case: Case, pipeline_for, env, caplog: pytest.LogCaptureFixture, monkeypatch
) -> None:
    import runpod

    caplog.set_level(logging.DEBUG)
    progress: list[Any] = []  # what would go to RunPod's progress endpoint
    monkeypatch.setattr(runpod.serverless, "progress_update", lambda j, e: progress.append(e))
    handler = make_handler(pipeline_for(**case.media))
    body = {**build(case, env), "id": f"handler-{case.id}"}
    began = time.monotonic()
    result = asyncio.run(handler(body))
    elapsed = time.monotonic() - began
    texts: list[Any] = [result, progress]

    if case.code is None:
        assert "error" not in result, result
        if case.check:
            assert case.check(result) is not False, result
        texts += [png_text(Path(path).read_bytes()) for path in result["files"]]
    else:
        assert result["error_code"] == case.code, result
        assert_names_culprit(case, result["error"])
        assert "refresh_worker" not in result  # none of these breaks the worker
    if case.bound_s is not None:
        assert elapsed < case.bound_s, f"{case.id} took {elapsed:.1f}s"

    # The same worker then runs a good job (base64 here: the PNG comes back in the result).
    good = asyncio.run(handler({"id": "good", "input": {"workflow": GOOD, "tobase64": True}}))
    assert "error" not in good, good
    png = base64.b64decode(good["files"][0])
    assert pixel(png) == (255, 255, 255)
    texts.append(png_text(png))
    assert_no_secrets(caplog.records, *texts)
    SCANNED["handler"].add(case.id)


def test_no_case_was_left_unscanned() -> None:
    """Across the whole corpus, every case's logs, results, errors and PNG metadata were
    scanned for the bucket keys and the API key (each case asserts it; this checks that
    the corpus really ran whole). Skips when only part of the module was selected."""
    if not SCANNED["serve"] and not SCANNED["handler"]:
        pytest.skip("the corpus did not run in this session")
    assert SCANNED["serve"] == set(ids(CASES))
    assert SCANNED["handler"] == set(ids(HANDLER_CASES))
