"""Where a job can make the worker connect, and what reaches whom (issue #22, items 1-5, 19).

A job names URLs (media, models, a webhook) and even its own S3 endpoint; none of them may
reach loopback, private or metadata addresses unless the operator says so, the checked
address must be the connected one, a model's secret headers stay with their host, and no
error quotes a signed URL's query. ``serve`` must not take orders from other web pages.

Everything is real HTTP on loopback (moto for S3). A rebinding DNS server cannot exist
here, so ``test_inputs``' fake resolver answers for made-up ``.test`` names and counts
127.0.0.2 as public (127.0.0.1 stays private).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import workflows
from comfyui_runpod.executor.cli import main
from comfyui_runpod.executor.endpoint import ServeSettings
from comfyui_runpod.executor.errors import JobError
from comfyui_runpod.executor.inputs import MediaSettings, materialize
from comfyui_runpod.executor.models import ModelCache, ModelSettings, ModelSpec
from comfyui_runpod.executor.request import InputMedia
from comfyui_runpod.nodes.netguard import is_public_address
from comfyui_runpod.nodes.storage import resolve_bucket, upload_bytes
from httpkit import Hook, QuietHandler, http, start_http, stop_http
from reliability_kit import pixel, png_bytes
from s3server import S3Server, bucket_contract
from test_inputs import PRIVATE, PUBLIC, Resolver, Site, resolver, self_signed, sites

__all__ = ["resolver", "sites"]  # fixtures shared with test_inputs

FLAG = "--allow-private-urls"


class Recorder:
    """Loopback HTTP: ``/to?<url>`` answers 302 to ``<url>`` (GET and POST), anything else
    200 with a few bytes. Records each request's path and headers."""

    def __init__(self) -> None:
        recorder = self
        self.requests: list[tuple[str, str, dict[str, str]]] = []

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                recorder.requests.append((self.command, self.path, dict(self.headers)))
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.startswith("/to?"):
                    self.send_response(302)
                    self.send_header("Location", self.path[4:])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", "5")
                self.end_headers()
                self.wfile.write(b"model")

            do_POST = do_GET

        self.server = start_http(Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        stop_http(self.server)


@pytest.fixture
def recorders() -> Iterator[tuple[Recorder, Recorder]]:
    pair = Recorder(), Recorder()
    yield pair
    for recorder in pair:
        recorder.stop()


def invert_job(**request: Any) -> dict[str, Any]:
    return {"input": {"workflow": workflows.invert(0)}, **request}


# -- 1. a job's own S3 endpoint -----------------------------------------------------------------


@pytest.mark.parametrize("level", ["tobucket", "s3Config"])
def test_a_jobs_bucket_on_a_private_address_is_refused_naming_the_field_and_flag(
    make_pipeline, s3_server: S3Server, level: str
) -> None:
    bucket = s3_server.make_bucket(f"guarded-{level.lower()}")
    contract = bucket_contract(s3_server, bucket)
    job = invert_job()
    if level == "tobucket":
        job["input"]["tobucket"] = contract
    else:
        job["s3Config"] = contract
    before = s3_server.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0)

    result = make_pipeline(allow_private_urls=False).run_sync({"id": "guarded", **job})

    field = "input.tobucket.endpointUrl" if level == "tobucket" else "s3Config.endpointUrl"
    assert result["error_code"] == "invalid_input", result
    message = result["error"]
    assert message.startswith(f"invalid_input: {field}: 127.0.0.1 resolves to a private"), message
    assert FLAG in message
    assert "execute_s" not in result.get("timings", {}), result  # refused before running
    assert "kept_files" not in result.get("details", {}), result
    assert s3_server.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == before


def test_s3_inputs_and_models_from_a_private_job_bucket_are_refused(
    tmp_path: Path, s3_server: S3Server
) -> None:
    bucket = s3_server.make_bucket("guarded-reads")
    s3_server.client().put_object(Bucket=bucket, Key="in.png", Body=png_bytes((1, 2, 3)))
    cfg = resolve_bucket(None, bucket_contract(s3_server, bucket), {})
    assert cfg is not None

    with pytest.raises(JobError) as image:
        materialize(
            [InputMedia("in.png", f"s3://{bucket}/in.png")], tmp_path / "in", MediaSettings(), cfg
        )
    cache = ModelCache(ModelSettings(tmp_path / "models"))
    with pytest.raises(JobError) as model:
        cache.ensure(ModelSpec(f"s3://{bucket}/in.png", "loras", "x.safetensors"), bucket=cfg)

    for caught in (image.value, model.value):
        assert caught.code == "invalid_input", caught
        assert "s3Config.endpointUrl: 127.0.0.1 resolves to a private" in caught.message
        assert FLAG in caught.message


def test_the_operators_env_bucket_and_the_flag_stay_trusted(
    make_pipeline, s3_server: S3Server
) -> None:
    bucket = s3_server.make_bucket("operator-bucket")
    env = {
        "BUCKET_ENDPOINT_URL": s3_server.endpoint_url,
        "BUCKET_ACCESS_KEY_ID": bucket_contract(s3_server, bucket)["accessId"],
        "BUCKET_SECRET_ACCESS_KEY": bucket_contract(s3_server, bucket)["accessSecret"],
        "BUCKET_NAME": bucket,
    }
    result = make_pipeline(environ=env, allow_private_urls=False).run_sync(invert_job())
    assert "error" not in result and result["file_info"][0]["delivered"] == "bucket", result

    allowed = make_pipeline(allow_private_urls=True)
    result = allowed.run_sync(invert_job(s3Config=bucket_contract(s3_server, bucket)))
    assert "error" not in result and result["file_info"][0]["delivered"] == "bucket", result


def test_a_job_bucket_connects_to_the_address_it_checked(
    tmp_path: Path, sites: tuple[Site, Site], resolver: Resolver
) -> None:
    public, private = sites  # two plain servers on one port; any GET returns a PNG
    resolver.answers["rebind.test"] = lambda n: PUBLIC if n == 1 else PRIVATE
    resolver.answers["private.test"] = lambda n: PRIVATE
    contract = {"endpointUrl": "", "accessId": "id", "accessSecret": "secret", "bucketName": "b"}

    cfg = resolve_bucket({**contract, "endpointUrl": f"http://rebind.test:{public.port}"}, None)
    [path] = materialize([InputMedia("in.png", "s3://b/in.png")], tmp_path, MediaSettings(), cfg)
    assert pixel(path.read_bytes()) == (0, 200, 0)
    assert public.hits == ["/b/in.png"] and resolver.lookups["rebind.test"] == 1

    cfg = resolve_bucket({**contract, "endpointUrl": f"http://private.test:{public.port}"}, None)
    with pytest.raises(JobError, match=r"input\.tobucket\.endpointUrl: private\.test resolves"):
        materialize([InputMedia("in.png", "s3://b/in.png")], tmp_path, MediaSettings(), cfg)
    assert cfg is not None
    with pytest.raises(Exception, match=r"input\.tobucket\.endpointUrl: private\.test") as up:
        upload_bytes(cfg, b"x", "job", "x.txt")
    assert type(up.value).__name__ == "EndpointRefused" and up.value.code == "invalid_input"
    assert private.hits == []


def test_a_guarded_https_bucket_verifies_the_certificate_for_the_name(
    tmp_path: Path, resolver: Resolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed(tmp_path, "secure.test")
    site = Site(PUBLIC, 0, (0, 0, 200))
    site.use_tls(cert, key)
    site.start()
    try:
        monkeypatch.setenv("AWS_CA_BUNDLE", str(cert))  # botocore's trust store
        resolver.answers["secure.test"] = resolver.answers["other.test"] = lambda n: PUBLIC
        contract = {"accessId": "id", "accessSecret": "secret", "bucketName": "b"}
        media = [InputMedia("in.png", "s3://b/in.png")]

        cfg = resolve_bucket({**contract, "endpointUrl": f"https://secure.test:{site.port}"}, None)
        [path] = materialize(media, tmp_path / "a", MediaSettings(), cfg)
        assert pixel(path.read_bytes()) == (0, 0, 200)
        assert site.server_names == ["secure.test"]  # SNI and the check: the name, not the IP

        cfg = resolve_bucket({**contract, "endpointUrl": f"https://other.test:{site.port}"}, None)
        with pytest.raises(JobError, match=r"could not read s3://b/in\.png: .*(SSL|certificate)"):
            materialize(media, tmp_path / "b", MediaSettings(), cfg)
    finally:
        site.stop()


# -- 2. serve's webhook -------------------------------------------------------------------------


def test_a_webhook_to_a_private_address_is_refused_at_submission(serve) -> None:
    hook = Hook().start()
    try:
        running = serve()
        code, body = running.call("POST", "run", invert_job(webhook=hook.url))
        assert code == 400, body
        assert body["error"].startswith("webhook: 127.0.0.1 resolves to a private or local")
        assert FLAG in body["error"]

        allowed = serve(allow_private_urls=True)
        code, body = allowed.call("POST", "run", invert_job(webhook=hook.url))
        assert code == 200, body
        assert [h["id"] for h in hook.wait(1)] == [body["id"]]
    finally:
        hook.stop()


def test_a_webhook_name_that_rebinds_to_a_private_address_gets_nothing(
    serve, resolver: Resolver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="comfyui_runpod")
    hook = Hook().start()
    try:
        port = hook.url.split(":")[2].split("/")[0]
        resolver.answers["hook.test"] = lambda n: PUBLIC if n == 1 else PRIVATE  # 1: submit
        running = serve()
        code, body = running.call(
            "POST", "run", invert_job(webhook=f"http://hook.test:{port}/hook?token=t0ken")
        )
        assert code == 200, body
        running.wait(body["id"], "COMPLETED")
        deadline = time.monotonic() + 10
        while "webhook to hook.test" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)
        assert "refused" in caplog.text and FLAG in caplog.text
        assert hook.attempts == 0 and "t0ken" not in caplog.text
    finally:
        hook.stop()


def test_a_webhook_redirect_is_not_followed(serve, recorders) -> None:
    first, second = recorders
    running = serve(allow_private_urls=True, webhook_attempts=1)
    code, body = running.call(
        "POST", "run", invert_job(webhook=f"{first.url}/to?{second.url}/stolen")
    )
    assert code == 200, body
    running.wait(body["id"], "COMPLETED")
    deadline = time.monotonic() + 10
    while not first.requests:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    assert [r[0] for r in first.requests] == ["POST"] and second.requests == []


# -- 3. a model's headers and redirects ----------------------------------------------------------


def test_model_headers_stay_with_their_host_across_redirects(tmp_path: Path, recorders) -> None:
    here, there = recorders
    cache = ModelCache(ModelSettings(tmp_path, allow_private_urls=True))
    secret = {"Authorization": "Bearer s3cret-token"}

    cache.ensure(
        ModelSpec(f"{here.url}/to?/same.safetensors", "loras", "a.safetensors", None, secret)
    )
    cache.ensure(
        ModelSpec(
            f"{here.url}/to?{there.url}/cdn.safetensors", "loras", "b.safetensors", None, secret
        )
    )

    auth = {path: headers.get("Authorization") for _, path, headers in here.requests}
    assert auth == {
        "/to?/same.safetensors": "Bearer s3cret-token",
        "/same.safetensors": "Bearer s3cret-token",  # same scheme, host and port: kept
        f"/to?{there.url}/cdn.safetensors": "Bearer s3cret-token",
    }
    [(_, path, headers)] = there.requests  # another port is another origin
    assert path == "/cdn.safetensors" and "Authorization" not in headers
    assert (tmp_path / "loras" / "b.safetensors").read_bytes() == b"model"


def test_an_https_to_http_redirect_is_refused(
    tmp_path: Path, resolver: Resolver, monkeypatch, recorders
) -> None:
    plain, _ = recorders
    cert, key = self_signed(tmp_path, "secure.test")
    secure = Site(PUBLIC, 0, (0, 0, 0))
    secure.use_tls(cert, key)
    secure.start()
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        resolver.answers["secure.test"] = lambda n: PUBLIC
        cache = ModelCache(ModelSettings(tmp_path / "cache", allow_private_urls=True))
        url = f"https://secure.test:{secure.port}/to?{plain.url}/m.safetensors"
        with pytest.raises(JobError, match="a redirect from https to http is refused"):
            cache.ensure(ModelSpec(url, "loras", "m.safetensors", None, {"Authorization": "x"}))
        assert plain.requests == []
    finally:
        secure.stop()


# -- 4. IPv6 addresses that carry a private IPv4 one --------------------------------------------


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("64:ff9b::7f00:1", False),  # NAT64 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254 (cloud metadata)
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
        ("64:ff9b:1::808:808", False),  # local-use NAT64 (RFC 8215): never public
        ("2002:7f00:1::1", False),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::", False),  # 6to4 of the metadata address
        ("::7f00:1", False),  # IPv4-compatible 127.0.0.1
        ("::ffff:127.0.0.1", False),
        ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
        ("2002:808:808::1", True),  # 6to4 of 8.8.8.8
        ("2606:4700:4700::1111", True),
        ("8.8.8.8", True),
    ],
)
def test_ipv6_addresses_are_judged_by_the_ipv4_address_they_carry(address: str, public: bool):
    assert is_public_address(address) is public


def test_a_url_naming_a_nat64_loopback_literal_is_refused(tmp_path: Path) -> None:
    with pytest.raises(JobError) as caught:
        materialize(
            [InputMedia("in.png", "http://[64:ff9b::7f00:1]:9/in.png")], tmp_path, MediaSettings()
        )
    assert caught.value.code == "invalid_input"
    assert "64:ff9b::7f00:1 resolves to a private or local address" in caught.value.message


# -- 5. serve and other web pages --------------------------------------------------------------


def test_serve_refuses_other_pages_and_non_json_bodies(serve) -> None:
    running = serve()
    body = json.dumps(invert_job()).encode()

    code, answer = running.call("POST", "run", raw=body, headers={"Content-Type": "text/plain"})
    assert code == 415 and "Content-Type: application/json" in answer["error"], answer
    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Host": f"evil.example:{running.url.rsplit(':', 1)[1]}"},  # a rebinding DNS name
    ):
        code, answer = running.call("POST", "run", raw=body, headers=headers)
        assert code == 403, (headers, answer)
    assert (
        "--allow-origin"
        in running.call("GET", "health", headers={"Origin": "http://x.example"})[1]["error"]
    )
    assert running.call("POST", "purge-queue", headers={"Origin": "http://evil.example"})[0] == 403

    # What still works: the server's own origin, a same-site fetch, bodiless POSTs, curl.
    assert running.call("POST", "run", raw=body, headers={"Origin": running.url})[0] == 200
    assert running.call("POST", "run", raw=body, headers={"Sec-Fetch-Site": "same-site"})[0] == 200
    code, answer = http("POST", f"{running.base}/cancel/nope", headers={"Content-Type": ""})
    assert code == 404, answer


def test_allowed_origins_get_cors_answers(serve) -> None:
    import urllib.request

    running = serve(allow_origins=("http://App.example:3000/",))
    assert running.settings.allow_origins == ("http://app.example:3000",)
    origin = {"Origin": "http://app.example:3000"}
    code, answer = running.call("POST", "runsync", invert_job(), headers=origin)
    assert code == 200 and answer["status"] == "COMPLETED", answer

    preflight = urllib.request.Request(f"{running.base}/run", method="OPTIONS", headers=origin)
    with urllib.request.urlopen(preflight, timeout=10) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "http://app.example:3000"
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
        assert "Content-Type" in response.headers["Access-Control-Allow-Headers"]
    request = urllib.request.Request(f"{running.base}/health", headers=origin)
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Access-Control-Allow-Origin"] == "http://app.example:3000"

    with pytest.raises(ValueError, match="scheme://host"):
        ServeSettings(allow_origins=("app.example/path",))


def test_serve_help_documents_the_browser_and_address_flags(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    for flag in ("--allow-origin", "COMFYUI_RUNPOD_ALLOW_ORIGINS", "--allow-private-urls"):
        assert flag in text


# -- 19. signed URL queries in errors ------------------------------------------------------------


def test_an_invalid_url_does_not_quote_its_signature(
    tmp_path: Path, recorders, caplog: pytest.LogCaptureFixture
) -> None:
    here, _ = recorders
    url = f"{here.url}/in.png?X-Amz-Signature=SIGSECRET1 more&X-Amz-Credential=CRED2"
    with pytest.raises(JobError) as image:
        materialize(
            [InputMedia("in.png", url)], tmp_path / "in", MediaSettings(allow_private_urls=True)
        )
    cache = ModelCache(ModelSettings(tmp_path / "cache", allow_private_urls=True))
    with pytest.raises(JobError) as model:
        cache.ensure(ModelSpec(url.replace("in.png", "m.safetensors"), "loras", "m.safetensors"))

    for caught in (image.value, model.value):
        text = json.dumps(caught.to_result())
        assert "InvalidURL" in text or "control characters" in text, text
        assert "SIGSECRET1" not in text and "CRED2" not in text, text
    assert "SIGSECRET1" not in caplog.text
    assert here.requests == []
