"""storage.py against a real S3 API (moto's server over loopback HTTP); no boto3 mocks."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from botocore import exceptions as bc
from comfyui_runpod.nodes import storage
from comfyui_runpod.nodes.storage import (
    MAX_URL_EXPIRY_S,
    BucketConfig,
    StorageConfigError,
    StorageError,
    UploadError,
    content_type_for,
    resolve_bucket,
    upload_bytes,
    upload_files,
)
from s3server import (
    TEST_ACCESS_ID,
    TEST_ACCESS_SECRET,
    S3Proxy,
    bucket_contract,
    closed_port_url,
)

SECRETS = (TEST_ACCESS_ID, TEST_ACCESS_SECRET)


@pytest.fixture
def bucket(s3_server) -> str:
    return s3_server.make_bucket(f"b-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def cfg(s3_server, bucket) -> BucketConfig:
    return BucketConfig.from_contract(bucket_contract(s3_server, bucket), "input.tobucket")


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def fetch(url: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read(), r.headers.get("Content-Type")


def assert_no_secrets(text: str) -> None:
    for s in SECRETS:
        assert s not in text


# --- uploads -----------------------------------------------------------------------------


def test_upload_files_keys_types_and_presigned_urls(s3_server, cfg, bucket, tmp_path):
    files = [
        write(tmp_path, "ComfyUI_00001_.png", b"\x89PNG fake png"),
        write(tmp_path, "anim.webp", b"RIFF webp" * 100),
        write(tmp_path, "clip.mp4", b"\x00mp4" * 5000),
        write(tmp_path, "mesh.xyz123", b"unknown kind"),
    ]
    results = upload_files(cfg, files, "job-1")

    assert [r.path for r in results] == files
    assert [r.key for r in results] == [f"generations/job-1/{f.name}" for f in files]
    expected_types = ["image/png", "image/webp", "video/mp4", "application/octet-stream"]
    assert [r.content_type for r in results] == expected_types
    assert [r.size for r in results] == [f.stat().st_size for f in files]

    client = s3_server.client()
    for f, r, ctype in zip(files, results, expected_types, strict=True):
        assert client.head_object(Bucket=bucket, Key=r.key)["ContentType"] == ctype
        data, served_type = fetch(r.url)  # presigned GET over real HTTP
        assert data == f.read_bytes()
        assert served_type == ctype
        assert "X-Amz-Signature" in r.url


def test_results_keep_input_order(cfg, tmp_path):
    # Big files first so they finish last: order must come from the input, not completion.
    files = [write(tmp_path, f"f{i:02d}.png", bytes([i]) * (200_000 - i * 9000)) for i in range(20)]
    results = upload_files(cfg, files, "order", max_workers=8)
    assert [r.path for r in results] == files
    for f, r in zip(files, results, strict=True):
        assert fetch(r.url)[0] == f.read_bytes()


def test_names_prefix_and_clean_keys(s3_server, bucket, tmp_path):
    c = BucketConfig.from_contract(
        bucket_contract(s3_server, bucket, keyPrefix="/out/v1/"), "s3Config"
    )
    a = write(tmp_path, "a.png", b"a")
    b = write(tmp_path, "b.png", b"b")
    results = upload_files(c, [a, b], "/job-2/", names=["sub/x.png", "../y.gif"])
    assert [r.key for r in results] == ["out/v1/job-2/sub/x.png", "out/v1/job-2/y.gif"]
    assert results[1].content_type == "image/gif"

    no_prefix = BucketConfig.from_contract(bucket_contract(s3_server, bucket, keyPrefix=""), "x")
    assert upload_files(no_prefix, [a], "")[0].key == "a.png"


def test_public_base_url_mode(s3_server, bucket, tmp_path):
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{bucket}/*",
            }
        ],
    }
    s3_server.client().put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    public = f"{s3_server.endpoint_url}/{bucket}/"
    c = BucketConfig.from_contract(bucket_contract(s3_server, bucket, publicUrl=public), "x")
    f = write(tmp_path, "my image.png", b"public bytes")
    [r] = upload_files(c, [f], "job-3")
    assert r.url == f"{s3_server.endpoint_url}/{bucket}/generations/job-3/my%20image.png"
    assert fetch(r.url) == (b"public bytes", "image/png")


def test_url_expiry_is_used_and_clamped(s3_server, bucket, tmp_path):
    f = write(tmp_path, "e.png", b"e")
    short = BucketConfig.from_contract(bucket_contract(s3_server, bucket, urlExpiry=600), "x")
    [r] = upload_files(short, [f], "exp")
    assert parse_qs(urlsplit(r.url).query)["X-Amz-Expires"] == ["600"]

    long = BucketConfig.from_contract(bucket_contract(s3_server, bucket, urlExpiry="9999999"), "x")
    assert long.url_expiry_s == MAX_URL_EXPIRY_S
    [r] = upload_files(long, [f], "exp")
    assert parse_qs(urlsplit(r.url).query)["X-Amz-Expires"] == [str(MAX_URL_EXPIRY_S)]


def test_upload_bytes(s3_server, cfg, bucket):
    r = upload_bytes(cfg, b"hello node", "node-run", "note.txt")
    assert (r.path, r.key, r.size) == (None, "generations/node-run/note.txt", 10)
    assert fetch(r.url) == (b"hello node", "text/plain")

    r = upload_bytes(cfg, b"{}", "node-run", "blob", content_type="application/json")
    assert r.content_type == "application/json"
    assert s3_server.client().head_object(Bucket=bucket, Key=r.key)["ContentType"] == (
        "application/json"
    )


def test_empty_list_needs_no_network():
    c = BucketConfig.from_contract(bucket_contract(closed_port_url(), "nope"), "x")
    assert upload_files(c, [], "job") == []


def test_names_must_match_files_and_keys_be_unique(cfg, tmp_path):
    a = write(tmp_path, "a.png", b"a")
    with pytest.raises(ValueError, match="2 names"):
        upload_files(cfg, [a], "j", names=["x.png", "y.png"])
    with pytest.raises(ValueError, match="same object key"):
        upload_files(cfg, [a, a], "j")


# --- failures and retries ----------------------------------------------------------------


def test_unreachable_endpoint_fails_fast_with_upload_failed(tmp_path):
    c = BucketConfig.from_contract(bucket_contract(closed_port_url(), "outs"), "input.tobucket")
    f = write(tmp_path, "ComfyUI_00007_.png", b"x")
    start = time.monotonic()
    with pytest.raises(UploadError) as ei:
        upload_files(c, [f], "job", attempts=3, backoff_s=0.01)
    assert time.monotonic() - start < 5
    e = ei.value
    assert e.code == "upload_failed"
    assert isinstance(e, StorageError)
    msg = str(e)
    assert msg.startswith("upload_failed: could not upload ComfyUI_00007_.png to bucket outs: ")
    assert "connect" in msg.lower()
    assert_no_secrets(msg)


def test_missing_bucket_is_not_retried(s3_server, tmp_path):
    c = BucketConfig.from_contract(bucket_contract(s3_server, "no-such-bucket-here"), "x")
    f = write(tmp_path, "out.png", b"x")
    start = time.monotonic()
    with pytest.raises(UploadError) as ei:
        upload_files(c, [f], "job", backoff_s=5)  # a retry would sleep for seconds
    assert time.monotonic() - start < 3
    msg = str(ei.value)
    assert "could not upload out.png to bucket no-such-bucket-here: NoSuchBucket" in msg
    assert_no_secrets(msg)


@pytest.fixture
def put_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts ``put_object`` calls (attempts), whether or not they reach the network."""
    calls: list[str] = []
    make_client = storage._client

    def counting_client(*args: object) -> object:
        client = make_client(*args)
        client.meta.events.register(
            "provide-client-params.s3.PutObject", lambda params, **kw: calls.append(params["Key"])
        )
        return client

    monkeypatch.setattr(storage, "_client", counting_client)
    return calls


def test_error_that_cannot_succeed_is_not_retried(s3_server, tmp_path, put_calls):
    # botocore rejects the bucket name before sending anything (ParamValidationError).
    c = BucketConfig.from_contract(bucket_contract(s3_server, "not a bucket!"), "x")
    f = write(tmp_path, "out.png", b"x")
    start = time.monotonic()
    with pytest.raises(UploadError) as ei:
        upload_files(c, [f], "job", attempts=3, backoff_s=2.0)  # a retry sleeps ≥ 1 s
    assert time.monotonic() - start < 1
    assert len(put_calls) == 1
    msg = str(ei.value)
    assert msg.startswith("upload_failed: could not upload out.png to bucket not a bucket!: ")
    assert "ParamValidationError: " in msg and "Invalid bucket name" in msg
    assert_no_secrets(msg)


def test_refused_connection_is_retried(tmp_path, put_calls):
    c = BucketConfig.from_contract(bucket_contract(closed_port_url(), "outs"), "x")
    f = write(tmp_path, "out.png", b"x")
    start = time.monotonic()
    with pytest.raises(UploadError, match="EndpointConnectionError: "):
        upload_files(c, [f], "job", attempts=3, backoff_s=0.1)
    assert len(put_calls) == 3
    assert time.monotonic() - start >= (0.1 + 0.2) * 0.5  # both backoffs, at least jitter


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (bc.EndpointConnectionError(endpoint_url="http://h"), True),
        (bc.ConnectTimeoutError(endpoint_url="http://h"), True),
        (bc.ReadTimeoutError(endpoint_url="http://h"), True),
        (bc.ConnectionClosedError(endpoint_url="http://h"), True),
        (ConnectionResetError(104, "reset"), True),
        (bc.SSLError(endpoint_url="http://h", error="certificate verify failed"), False),
        (bc.NoCredentialsError(), False),
        (bc.ParamValidationError(report="bad"), False),
        (TypeError("a bug"), False),
    ],
)
def test_only_transport_errors_are_retried(error: Exception, retry: bool):
    assert storage._classify(error) == (retry, f"{type(error).__name__}: {error}")


def test_missing_local_file_names_the_file(cfg, tmp_path):
    ok = write(tmp_path, "ok.png", b"ok")
    with pytest.raises(UploadError, match=r"could not upload gone\.png to bucket"):
        upload_files(cfg, [ok, tmp_path / "gone.png"], "job")


def test_first_attempt_fails_then_retry_succeeds(s3_server, bucket, tmp_path):
    f = write(tmp_path, "retry.png", b"retried bytes")
    with S3Proxy(s3_server, fail_puts=1) as proxy:
        c = BucketConfig.from_contract(bucket_contract(proxy.endpoint_url, bucket), "x")
        [r] = upload_files(c, [f], "job", backoff_s=0.01)
        assert proxy.puts == 2
    obj = s3_server.client().get_object(Bucket=bucket, Key=r.key)
    assert obj["Body"].read() == b"retried bytes"


def test_persistent_server_error_gives_up_after_attempts(s3_server, bucket):
    with S3Proxy(s3_server, fail_puts=100) as proxy:
        c = BucketConfig.from_contract(bucket_contract(proxy.endpoint_url, bucket), "x")
        with pytest.raises(UploadError) as ei:
            upload_bytes(c, b"x", "job", "n.png", attempts=3, backoff_s=0.01)
        assert proxy.puts == 3
    assert str(ei.value).endswith("bucket " + bucket + ": InternalError: injected failure")


@pytest.mark.parametrize("workers", [8, 2])
def test_uploads_run_concurrently_up_to_max_workers(s3_server, bucket, tmp_path, workers):
    files = [write(tmp_path, f"p{i}.png", b"p" * 1000) for i in range(8)]
    with S3Proxy(s3_server, put_delay_s=0.3) as proxy:
        c = BucketConfig.from_contract(bucket_contract(proxy.endpoint_url, bucket), "x")
        start = time.monotonic()
        upload_files(c, files, f"conc-{workers}", max_workers=workers)
        elapsed = time.monotonic() - start
    assert proxy.max_in_flight == workers
    assert elapsed < 8 * 0.3 * (0.66 if workers == 8 else 1.5)  # one at a time: 2.4 s


# --- configuration -----------------------------------------------------------------------


def env_for(server, bucket: str) -> dict[str, str]:
    return {
        "BUCKET_ENDPOINT_URL": server.endpoint_url,
        "BUCKET_ACCESS_KEY_ID": TEST_ACCESS_ID,
        "BUCKET_SECRET_ACCESS_KEY": TEST_ACCESS_SECRET,
        "BUCKET_NAME": bucket,
    }


def test_precedence_tobucket_then_s3config_then_env(s3_server):
    to, s3, env = bucket_contract(s3_server, "to"), bucket_contract(s3_server, "s3"), None
    env = env_for(s3_server, "env")
    assert resolve_bucket(to, s3, env).bucket_name == "to"
    assert resolve_bucket(None, s3, env).bucket_name == "s3"
    assert resolve_bucket(None, None, env).bucket_name == "env"
    assert resolve_bucket(None, None, {}) is None
    assert resolve_bucket(None, None, {"BUCKET_ENDPOINT_URL": "  "}) is None


def test_invalid_higher_level_is_an_error_not_a_fall_through(s3_server):
    s3, env = bucket_contract(s3_server, "s3"), env_for(s3_server, "env")
    bad = bucket_contract(s3_server, "to", accessSecret=None)
    with pytest.raises(StorageConfigError, match=r"^input\.tobucket: accessSecret is missing"):
        resolve_bucket(bad, s3, env)
    with pytest.raises(StorageConfigError, match=r"^s3Config: .*object"):
        resolve_bucket(None, "not a dict", env)
    with pytest.raises(StorageConfigError, match=r"^env: BUCKET_SECRET_ACCESS_KEY is missing"):
        resolve_bucket(None, None, {**env, "BUCKET_SECRET_ACCESS_KEY": ""})


def test_env_optional_settings(s3_server):
    env = {
        **env_for(s3_server, "envb"),
        "BUCKET_REGION": "eu-west-3",
        "BUCKET_KEY_PREFIX": "outputs",
        "BUCKET_URL_EXPIRY": "3600",
        "BUCKET_PUBLIC_URL": "https://cdn.example.com/x/",
    }
    c = BucketConfig.from_env(env)
    assert (c.region, c.key_prefix, c.url_expiry_s) == ("eu-west-3", "outputs", 3600)
    assert c.public_base_url == "https://cdn.example.com/x"
    with pytest.raises(StorageConfigError, match=r"^env: BUCKET_URL_EXPIRY must be"):
        BucketConfig.from_env({**env, "BUCKET_URL_EXPIRY": "soon"})


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"endpointUrl": None}, "endpointUrl is missing"),
        ({"accessId": None}, "accessId is missing"),
        ({"accessSecret": ""}, "accessSecret is missing"),
        ({"accessSecret": 12345}, "accessSecret must be a string (got int)"),
        ({"endpointUrl": "ftp://example.com"}, "endpointUrl must be an http(s) URL"),
        ({"endpointUrl": "s3.amazonaws.com"}, "endpointUrl must be an http(s) URL"),
        # a secret pasted into the wrong field must not be echoed back
        ({"endpointUrl": TEST_ACCESS_SECRET}, "endpointUrl must be an http(s) URL"),
        (
            {"endpointUrl": f"https://{TEST_ACCESS_ID}:{TEST_ACCESS_SECRET}@h.example.com"},
            "endpointUrl must not contain credentials",
        ),
        ({"urlExpiry": 0}, "urlExpiry must be positive"),
        ({"urlExpiry": True}, "urlExpiry must be a whole number"),
        ({"publicUrl": "cdn.example.com"}, "publicUrl must be an http(s) URL"),
        ({"bucketName": None, "endpointUrl": "http://127.0.0.1:9000"}, "cannot be derived"),
    ],
)
def test_contract_errors_name_source_and_field_never_secrets(change, expected):
    d = bucket_contract("https://s3.example.com", "b", **change)
    with pytest.raises(StorageConfigError) as ei:
        BucketConfig.from_contract(d, "input.tobucket")
    assert ei.value.code == "invalid_input"
    msg = str(ei.value)
    assert msg.startswith("input.tobucket: ")
    assert expected in msg
    assert_no_secrets(msg)


@pytest.mark.parametrize("value", [None, [], "x", 3])
def test_contract_must_be_an_object(value):
    with pytest.raises(StorageConfigError, match=r"^s3Config: must be an object"):
        BucketConfig.from_contract(value, "s3Config")


@pytest.mark.parametrize(
    ("endpoint", "bucket", "base", "region"),
    [
        (
            "https://my-bucket.s3.us-east-1.amazonaws.com",
            "my-bucket",
            "https://s3.us-east-1.amazonaws.com",
            "us-east-1",
        ),
        ("https://my-bucket.s3.amazonaws.com/", "my-bucket", "https://s3.amazonaws.com", None),
        (
            "https://my.dotted.bucket.s3-us-west-2.amazonaws.com",
            "my.dotted.bucket",
            "https://s3-us-west-2.amazonaws.com",
            "us-west-2",
        ),
        (
            "https://outs.s3.us-west-004.backblazeb2.com",
            "outs",
            "https://s3.us-west-004.backblazeb2.com",
            "us-west-004",
        ),
        (
            "https://outs.nyc3.digitaloceanspaces.com",
            "outs",
            "https://nyc3.digitaloceanspaces.com",
            "nyc3",
        ),
        (
            "https://acct.r2.cloudflarestorage.com/outs",
            "outs",
            "https://acct.r2.cloudflarestorage.com",
            None,
        ),
        ("http://127.0.0.1:9000/outs/", "outs", "http://127.0.0.1:9000", None),
    ],
)
def test_bucket_name_derived_from_endpoint(endpoint, bucket, base, region):
    c = BucketConfig.from_contract(bucket_contract(endpoint, "", bucketName=None), "s3Config")
    assert (c.bucket_name, c.endpoint_url, c.region) == (bucket, base, region)


def test_derived_bucket_works_for_uploads(s3_server, bucket, tmp_path):
    d = bucket_contract(f"{s3_server.endpoint_url}/{bucket}", "", bucketName=None)
    c = BucketConfig.from_contract(d, "input.tobucket")
    [r] = upload_files(c, [write(tmp_path, "d.png", b"derived")], "job")
    assert fetch(r.url)[0] == b"derived"


def test_repr_hides_credentials(s3_server):
    c = BucketConfig.from_contract(bucket_contract(s3_server, "b"), "x")
    for text in (repr(c), str(c), f"{c}", f"{c!r}"):
        assert "bucket_name='b'" in text
        assert_no_secrets(text)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.png", "image/png"),
        ("A.JPG", "image/jpeg"),
        ("a.webp", "image/webp"),
        ("a.gif", "image/gif"),
        ("a.webm", "video/webm"),
        ("a.mp4", "video/mp4"),
        ("a.glb", "model/gltf-binary"),
        ("a.gltf", "model/gltf+json"),
        ("a.flac", "audio/flac"),
        ("a.wav", "audio/wav"),
        ("a.mp3", "audio/mpeg"),
        ("a.json", "application/json"),
        ("a.txt", "text/plain"),
        ("m.safetensors", "application/octet-stream"),
        ("noext", "application/octet-stream"),
        ("a.zzz-unknown", "application/octet-stream"),
    ],
)
def test_content_type_for(name, expected):
    assert content_type_for(name) == expected
