"""Parser fuzzing: whatever a caller sends, the outcome is a JobRequest or a coded
``JobError`` with a one-line message (``parse_job``), a contract result (the whole
pipeline, a bounded number of examples), or a JSON answer (``serve``'s request reader)."""

from __future__ import annotations

import json
from typing import Any

import workflows
from comfyui_runpod.executor.errors import CODES, JobError
from comfyui_runpod.executor.request import JobRequest, parse_job
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from reliability_kit import b64, png_bytes
from s3server import TEST_ACCESS_ID, TEST_ACCESS_SECRET

# No example database (nothing written into the checkout) and no deadline (the machine
# is shared); the examples are fixed in number so the run time is bounded.
FUZZ = settings(database=None, deadline=None, suppress_health_check=list(HealthCheck))

WEIRD_TEXT = st.sampled_from(
    ["", " ", "\x00", "ü🙂", "\ud800", "../x", "/etc/passwd", "C:\\x", "a" * 300, "NaN", "true"]
)
#: Text that cannot be taken for a URL: the pipeline examples must not reach the network.
TEXT = st.one_of(st.text(max_size=40), WEIRD_TEXT).filter(lambda s: "://" not in s)
NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=12,
)

GOOD = workflows.invert(0)
CLASS_TYPES = st.sampled_from(
    ["EmptyImage", "ImageInvert", "SaveImage", "LoadImage", "RunPodCaptureData", "NoSuchNode"]
)
NODE_IDS = st.one_of(st.sampled_from(["1", "2", "3", "4"]), TEXT)
LINKS = st.tuples(NODE_IDS, st.integers(min_value=-1, max_value=3)).map(list)
INPUT_VALUES = st.one_of(JSON, LINKS, st.sampled_from([8, 0, "in.png", "../in.png", "p"]))
NODES = st.fixed_dictionaries(
    {"class_type": st.one_of(CLASS_TYPES, JSON)},
    optional={"inputs": st.one_of(st.dictionaries(TEXT, INPUT_VALUES, max_size=5), JSON)},
)


@st.composite
def mutated_good(draw: st.DrawFn) -> dict[str, Any]:
    """The good workflow with one input replaced, one node dropped or added, or only its
    file name prefix changed (which keeps it valid)."""
    prompt = json.loads(json.dumps(GOOD))
    node_id = draw(st.sampled_from(sorted(prompt)))
    choice = draw(st.integers(0, 3))
    if choice == 3:
        prompt["3"]["inputs"]["filename_prefix"] = draw(TEXT)
    elif choice == 0:
        inputs = prompt[node_id]["inputs"]
        inputs[draw(st.sampled_from(sorted(inputs)))] = draw(INPUT_VALUES)
    elif choice == 1:
        del prompt[node_id]
    else:
        prompt[draw(NODE_IDS)] = draw(NODES)
    return prompt


WORKFLOWS = st.one_of(
    JSON,
    mutated_good(),
    st.dictionaries(NODE_IDS, NODES, max_size=5),
    st.dictionaries(NODE_IDS, NODES, max_size=5).map(json.dumps),
    st.sampled_from([json.dumps(GOOD), GOOD, {"nodes": [], "links": []}, "[" * 5000]),
)
SOURCES = st.one_of(
    TEXT,
    st.sampled_from(
        [b64(png_bytes()), "data:image/png;base64," + b64(png_bytes()), "AA==", "data:,x"]
    ),
)
IMAGES = st.one_of(
    JSON,
    st.lists(
        st.one_of(
            JSON,
            st.fixed_dictionaries(
                {},
                optional={
                    "name": st.one_of(TEXT, st.sampled_from(["in.png", "a.png", "../x.png"])),
                    "image": st.one_of(SOURCES, JSON),
                },
            ),
        ),
        max_size=3,
    ),
)
BUCKET_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "endpointUrl": st.one_of(st.sampled_from(["not-a-url", "http://u:p@h", "ftp://x"]), JSON),
        "accessId": st.one_of(st.just(TEST_ACCESS_ID), JSON),
        "accessSecret": st.one_of(st.just(TEST_ACCESS_SECRET), JSON),
        "bucketName": JSON,
        "urlExpiry": JSON,
        "keyPrefix": JSON,
        "publicUrl": JSON,
        "region": JSON,
    },
)
POLICIES = st.one_of(
    JSON,
    st.fixed_dictionaries(
        {},
        optional={
            "executionTimeout": st.one_of(NUMBERS, JSON),
            "executiontimeout": st.one_of(NUMBERS, JSON),
            "ttl": st.one_of(NUMBERS, JSON),
        },
    ),
)
INPUTS = st.fixed_dictionaries(
    {},
    optional={
        "workflow": WORKFLOWS,
        "tobase64": JSON,
        "tobucket": st.one_of(BUCKET_FIELDS, JSON),
        "images": IMAGES,
        "files": st.one_of(JSON, st.lists(SOURCES, max_size=2)),
    },
)
JOBS = st.one_of(
    JSON,
    st.fixed_dictionaries(
        {},
        optional={
            "id": JSON,
            "input": st.one_of(INPUTS, JSON),
            "policy": POLICIES,
            "s3Config": st.one_of(BUCKET_FIELDS, JSON),
            "webhook": JSON,
        },
    ),
)
ENVIRON = st.dictionaries(
    st.sampled_from(
        ["BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY", "BUCKET_NAME"]
    ),
    st.one_of(TEXT, st.sampled_from(["not-a-url", "http://h/b"])),
)


def assert_one_coded_line(line: str, code: str) -> None:
    assert code in CODES
    assert line.startswith(f"{code}: ")
    assert "\n" not in line and "\r" not in line


@settings(FUZZ, max_examples=400)
@given(job=JOBS, environ=ENVIRON)
def test_parse_job_returns_a_request_or_a_coded_error(job: Any, environ: dict[str, str]) -> None:
    try:
        request = parse_job(job, environ)
    except JobError as exc:
        assert_one_coded_line(exc.line, exc.code)
        assert TEST_ACCESS_SECRET not in exc.line
    else:
        assert isinstance(request, JobRequest)
        assert isinstance(request.workflow, dict) and request.workflow
        assert isinstance(request.tobase64, bool)
        assert request.timeout_s is None or 0 < request.timeout_s <= 7 * 24 * 3600


PIPELINE_JOBS = st.one_of(
    JOBS,
    st.builds(
        lambda workflow, tobase64: {"input": {"workflow": workflow, "tobase64": tobase64}},
        st.one_of(mutated_good(), st.dictionaries(NODE_IDS, NODES, max_size=4)),
        st.booleans(),
    ),
    st.builds(
        lambda name, images: {
            "input": {"workflow": workflows.load_and_save(name), "images": images}
        },
        st.sampled_from(["in.png", "a.png"]),
        IMAGES,
    ),
)


@settings(FUZZ, max_examples=40)
@given(job=PIPELINE_JOBS)
def test_the_pipeline_answers_every_job_with_a_result(job: Any, pipeline_for) -> None:
    """Through the whole pipeline (real ComfyUI). No URL reaches the network: text that
    looks like one is filtered out, and bucket endpoints are never valid. Jobs without
    a policy get a 10 s deadline, so a fuzzed batch size cannot hold the suite up."""
    if isinstance(job, dict) and "policy" not in job:
        job = {**job, "policy": {"executionTimeout": 10_000}}
    result = pipeline_for().run_sync(job)
    json.dumps(result)  # the result can always be sent back
    event(result.get("error_code", "completed"))
    if "error" in result:
        assert_one_coded_line(result["error"], result["error_code"])
        assert result["error_code"] != "internal_error", result  # that would be our bug
        assert TEST_ACCESS_SECRET not in json.dumps(result)
    else:
        assert isinstance(result["files"], list) and isinstance(result["datas"], dict)


@settings(FUZZ, max_examples=60)
@given(
    raw=st.one_of(
        st.binary(max_size=200),
        JOBS.map(lambda j: json.dumps(j).encode()),
        st.sampled_from([b"[" * 50_000, b'{"input": ' * 5000, b"\xff", b"{}" * 100]),
    )
)
def test_serve_answers_any_body_with_json(raw: bytes, served) -> None:
    code, answer = served.call("POST", "run", raw=raw)
    if code == 200:
        assert answer["status"] == "IN_QUEUE"
        served.call("POST", f"cancel/{answer['id']}")
    else:
        assert code == 400 and isinstance(answer["error"], str), (code, answer)
