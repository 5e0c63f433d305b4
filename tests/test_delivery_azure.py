"""Azure Blob delivery (``input.toazure``, env ``AZURE_STORAGE_*``), issue #26 item 3.

Real parts: a real ComfyUI makes the files, Azurite (Microsoft's emulator, the ``azurite``
fixture) stores them and checks every signature, the azure-storage-blob SDK uploads them,
and the URLs in ``files`` are fetched over plain HTTP as a client would.
"""

from __future__ import annotations

import datetime
import io
import json
import logging
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import workflows
from azurite import Azurite
from comfyui_runpod.executor import azureblob, compat
from comfyui_runpod.executor.apps import AppStore
from comfyui_runpod.executor.delivery import DeliverySettings
from comfyui_runpod.executor.errors import JobError
from comfyui_runpod.executor.pipeline import Pipeline, PipelineSettings
from comfyui_runpod.executor.request import parse_job
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from s3server import S3Server, bucket_contract
from servekit import ServeThread

TESTS = Path(__file__).resolve().parent


def fetch(url: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.headers["Content-Type"], response.read()


def color_of(data: bytes) -> set[tuple[int, int, int]]:
    with Image.open(io.BytesIO(data)) as image:
        return {color for _, color in image.convert("RGB").getcolors()}


def container_sas(azurite: Azurite, container: str) -> str:
    """What a caller sends instead of the key: a SAS for one container, write only."""
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    return generate_container_sas(
        azurite.account,
        container,
        account_key=azurite.key,
        permission=ContainerSasPermissions(write=True, create=True),
        expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1),
    )


def test_connection_string_private_container_gives_signed_read_urls(
    make_pipeline, azurite: Azurite, caplog: pytest.LogCaptureFixture
) -> None:
    container = azurite.make_container("private-out")
    job = {
        "id": "az-1",
        "input": {
            "workflow": workflows.invert(0x102030, batch=2),
            "toazure": {
                "connectionString": azurite.connection_string,
                "container": container,
                "prefix": "runs",
            },
        },
    }
    with caplog.at_level(logging.DEBUG):
        result = make_pipeline().run_sync(job)
    assert "error" not in result, result
    base = f"{azurite.endpoint}/{container}/runs/az-1"
    names = ["inv_00001_.png", "inv_00002_.png"]
    assert [url.split("?")[0] for url in result["files"]] == [f"{base}/{n}" for n in names]
    assert [i["delivered"] for i in result["file_info"]] == ["azure", "azure"]
    assert "warnings" not in result  # toazure is a known input field
    for url in result["files"]:
        assert "sp=r" in url and "sig=" in url  # a read-only SAS
        content_type, body = fetch(url)
        assert content_type == "image/png"
        assert color_of(body) == {(0xEF, 0xDF, 0xCF)}
    # The container is private: without the signature the blob is not readable.
    with pytest.raises(urllib.error.HTTPError) as denied:
        fetch(result["files"][0].split("?")[0])
    assert denied.value.code in (403, 404)
    assert azurite.key not in json.dumps(result)
    assert not [r for r in caplog.records if azurite.key in r.getMessage()]


def test_public_container_gives_plain_blob_urls(make_pipeline, azurite: Azurite) -> None:
    container = azurite.make_container("public-out", public=True)
    job = {
        "id": "az-public",
        "input": {
            "workflow": workflows.invert(0),
            "toazure": {"connectionString": azurite.connection_string, "container": container},
        },
    }
    result = make_pipeline().run_sync(job)
    [url] = result["files"]
    assert url == f"{azurite.endpoint}/{container}/generations/az-public/inv_00001_.png"
    assert color_of(fetch(url)[1]) == {(255, 255, 255)}


def test_account_url_and_sas_token_never_return_the_token(
    make_pipeline, azurite: Azurite, caplog: pytest.LogCaptureFixture
) -> None:
    container = azurite.make_container("sas-out")
    sas = container_sas(azurite, container)
    signature = dict(p.split("=", 1) for p in sas.split("&"))["sig"]
    job = {
        "id": "az-sas",
        "input": {
            "workflow": workflows.invert(0),
            "toazure": {
                "accountUrl": azurite.endpoint,
                "sasToken": f"?{sas}",
                "container": container,
            },
        },
    }
    # The runpod SDK, once imported (by another test, or the worker), sets urllib3's level
    # to WARNING: open it for this run, as a worker's -v or a root DEBUG handler would see.
    with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="urllib3"):
        result = make_pipeline().run_sync(job)
    assert result["files"] == [f"{azurite.endpoint}/{container}/generations/az-sas/inv_00001_.png"]
    blob = azurite.service().get_blob_client(container, "generations/az-sas/inv_00001_.png")
    assert blob.get_blob_properties().content_settings.content_type == "image/png"
    assert color_of(blob.download_blob().readall()) == {(255, 255, 255)}
    assert signature not in json.dumps(result)
    # urllib3 logs each request line at DEBUG, the SAS query included, unless redacted.
    assert any("sas-out" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if signature in r.getMessage()]


def test_env_account_is_the_operators_default(make_pipeline, azurite: Azurite) -> None:
    container = azurite.make_container("env-out", public=True)
    environ = {
        "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
        "AZURE_STORAGE_CONTAINER": container,
        "AZURE_STORAGE_PREFIX": "/",
    }
    # Trusted like the BUCKET_* env bucket: loopback is fine without --allow-private-urls.
    pipeline = make_pipeline(environ, allow_private_urls=False)
    result = pipeline.run_sync({"id": "env-1", "input": {"workflow": workflows.invert(0)}})
    assert result["files"] == [f"{azurite.endpoint}/{container}/env-1/inv_00001_.png"]
    assert result["file_info"][0]["delivered"] == "azure"


def test_destination_order_with_the_env_account(azurite: Azurite, s3_server: S3Server) -> None:
    workflow = workflows.invert(0)
    azure_env = {
        "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
        "AZURE_STORAGE_CONTAINER": "env-out",
    }
    bucket_env = {
        "BUCKET_ENDPOINT_URL": f"{s3_server.endpoint_url}/b",
        "BUCKET_ACCESS_KEY_ID": "k",
        "BUCKET_SECRET_ACCESS_KEY": "s",
    }
    job = {"input": {"workflow": workflow}}
    assert parse_job(job, azure_env).destination == "azure"
    # The env account is the operator's default, like BUCKET_*: it outranks tobase64.
    base64_job = {"input": {"workflow": workflow, "tobase64": True}}
    assert parse_job(base64_job, azure_env).destination == "azure"
    urls = {"input": {"workflow": workflow, "toUrls": ["https://x.example/a"]}}
    assert parse_job(urls, azure_env).destination == "urls"
    assert parse_job(job, {**azure_env, **bucket_env}).destination == "bucket"
    own = {
        "input": {
            "workflow": workflow,
            "toazure": {"connectionString": azurite.connection_string, "container": "mine"},
        },
        "s3Config": bucket_contract(s3_server, "b"),
    }
    request = parse_job(own, bucket_env, allow_private_urls=True)
    assert request.destination == "azure" and request.azure.container == "mine"
    assert request.bucket is not None  # s3Config still serves s3:// inputs and S3 nodes
    assert azurite.key not in repr(request)


@pytest.mark.parametrize("missing", ["no-such-container", "wrong-key"])
def test_upload_failure_keeps_the_files(make_pipeline, azurite: Azurite, missing: str) -> None:
    container = "no-such-container"
    connection = azurite.connection_string
    if missing == "wrong-key":
        container = azurite.make_container("wrong-key")
        connection = connection.replace(azurite.key, "d3Jvbmcta2V5LXdyb25nLWtleQ==")
    job = {
        "id": f"az-{missing}",
        "input": {
            "workflow": workflows.invert(0),
            "toazure": {"connectionString": connection, "container": container},
        },
    }
    result = make_pipeline().run_sync(job)
    assert result["error_code"] == "upload_failed"
    # With the key, the container is opened first (is it public?): that call fails.
    assert result["error"].startswith(
        f"upload_failed: could not open Azure container {container} at 127.0.0.1:"
    )
    expected = "HTTP 404 ContainerNotFound" if missing == "no-such-container" else "HTTP 403"
    assert expected in result["error"]
    [kept] = result["details"]["kept_files"]
    assert Path(kept).is_file()
    assert azurite.key not in json.dumps(result)
    assert "d3Jvbmcta2V5LXdyb25nLWtleQ" not in json.dumps(result)


def test_private_account_refused_without_the_flag(make_pipeline, azurite: Azurite) -> None:
    container = azurite.make_container("guarded")
    job = {
        "id": "az-private",
        "input": {
            "workflow": workflows.invert(0),
            "toazure": {"connectionString": azurite.connection_string, "container": container},
        },
    }
    result = make_pipeline(allow_private_urls=False).run_sync(job)
    assert result["error_code"] == "invalid_input"
    assert result["error"].startswith(
        "invalid_input: input.toazure.connectionString: 127.0.0.1 resolves to a private"
    )
    assert "--allow-private-urls" in result["error"]
    assert azurite.key not in json.dumps(result)
    assert "files" not in result and "execute_s" not in result["timings"]  # refused up front


def test_every_connection_is_guarded(azurite: Azurite, tmp_path: Path) -> None:
    """DNS may answer "public" to the early check and "127.0.0.1" later: the SDK's own
    sockets are checked too (here without the early check)."""
    container = azurite.make_container("socket-guard")
    toazure = {"connectionString": azurite.connection_string, "container": container}
    job = {"input": {"workflow": workflows.invert(0), "toazure": toazure}}
    cfg = parse_job(job, {}).azure
    assert cfg is not None and cfg.guard_field == "input.toazure.connectionString"
    path = tmp_path / "a.png"
    path.write_bytes(b"not really a png")
    with pytest.raises(JobError) as caught:
        azureblob.upload_files(cfg, [path], ["a.png"], ["image/png"], "job")
    assert caught.value.code == "invalid_input" and "private" in caught.value.message
    assert list(azurite.service().get_container_client(container).list_blobs()) == []


@pytest.mark.parametrize(
    ("toazure", "expected"),
    [
        ({"connectionString": "AccountName=acct;AccountKey=a2V5", "prefix": "x"}, "container is"),
        ({"connectionString": "x", "container": "Bad_Name"}, "container is not a container"),
        (
            {
                "connectionString": "AccountName=acct;AccountKey=a2V5",
                "accountUrl": "https://a",
                "container": "out",
            },
            "connectionString and input.toazure.accountUrl are both given",
        ),
        ({"container": "out"}, "connectionString is missing"),
        ({"accountUrl": "https://a.blob.core.windows.net", "container": "out"}, "sasToken is"),
        (
            {"accountUrl": "https://a/?sv=1&sig=SECRET", "sasToken": "sig=b", "container": "out"},
            "accountUrl must not carry a query",
        ),
        (
            {"accountUrl": "https://a", "sasToken": "sv=2024&se=SECRET", "container": "out"},
            "sasToken is not a SAS token",
        ),
        ({"connectionString": "SECRET-garbage", "container": "out"}, "a part is not Name=value"),
        (
            {"connectionString": "AccountName=acct;SECRET=1", "container": "out"},
            "neither AccountKey nor SharedAccessSignature",
        ),
        (
            {"connectionString": "AccountName=acct;AccountKey=SECRET!!", "container": "out"},
            "AccountKey is not base64",
        ),
        (
            {"connectionString": "AccountName=acct;AccountKey=a2V5;BlobEndpoint=ftp://h", "x": 1},
            "unknown field(s) x",
        ),
        ({"connectionString": 5, "container": "out"}, "connectionString must be a string"),
        ("SECRET", "input.toazure must be an object"),
    ],
)
def test_bad_toazure_is_invalid_input_naming_the_field(toazure: object, expected: str) -> None:
    with pytest.raises(JobError) as caught:
        parse_job({"input": {"workflow": workflows.invert(0), "toazure": toazure}}, {})
    assert caught.value.code == "invalid_input"
    assert expected in caught.value.message and "input.toazure" in caught.value.message
    assert "SECRET" not in caught.value.message


TEXTS = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", "http://[::1", "https://h:99999", "AccountName=acct;AccountKey=", "sig="]),
)


@settings(database=None, deadline=None, max_examples=300)
@given(
    toazure=st.one_of(
        st.dictionaries(
            st.sampled_from([*azureblob.ENV_NAMES, "other"]),
            st.one_of(TEXTS, st.none(), st.integers(), st.booleans()),
            max_size=5,
        ),
        TEXTS,
    )
)
def test_any_toazure_parses_or_is_one_coded_line(toazure: object) -> None:
    job = {"input": {"workflow": workflows.invert(0), "toazure": toazure}}
    try:
        cfg = parse_job(job, {}).azure
    except JobError as exc:
        assert exc.code == "invalid_input" and "input.toazure" in exc.message
        assert "\n" not in exc.line
    else:
        assert cfg is not None and cfg.account_url.startswith(("http://", "https://"))


def test_bad_env_account_names_the_variable() -> None:
    environ = {
        "AZURE_STORAGE_CONTAINER": "out",
        "AZURE_STORAGE_CONNECTION_STRING": "AccountName=acct",
    }
    with pytest.raises(JobError) as caught:
        parse_job({"input": {"workflow": workflows.invert(0)}}, environ)
    assert caught.value.code == "invalid_input"
    assert caught.value.message.startswith(
        "env AZURE_STORAGE_CONNECTION_STRING is not a storage connection string"
    )


@pytest.mark.parametrize(
    "other", [{"toUrls": ["https://x.example/a"]}, {"tobucket": {}}, {"tobase64": True}]
)
def test_toazure_with_another_destination_is_invalid(other: dict) -> None:
    toazure = {"connectionString": "AccountName=acct;AccountKey=a2V5", "container": "out"}
    job = {"input": {"workflow": workflows.invert(0), "toazure": toazure, **other}}
    with pytest.raises(JobError) as caught:
        parse_job(job, {})
    first, second = ("toUrls", "toazure") if "toUrls" in other else ("toazure", next(iter(other)))
    assert f"send one destination: input.{first} or input.{second}, not both" in (
        caught.value.message
    )


def test_worker_comfyui_compat_keeps_toazure() -> None:
    toazure = {"connectionString": "AccountName=acct;AccountKey=a2V5", "container": "out"}
    job = compat.prepare_job({"input": {"workflow": workflows.invert(0), "toazure": toazure}})
    assert parse_job(job, {}).destination == "azure"
    info = {"kind": "images", "name": "a.png", "delivered": "azure"}
    shaped = compat.shape_result({"files": ["https://a/c/a.png"], "file_info": [info]})
    assert shaped["images"][0]["type"] == "s3_url"


def test_served_openapi_describes_the_delivery_fields(executor, tmp_path: Path) -> None:
    """``/openapi.json`` of ``serve --apps`` names the job's delivery and check fields, and
    its schema accepts a good request and refuses a bad one for each."""
    from jsonschema import Draft202012Validator
    from openapi_spec_validator import validate

    settings = PipelineSettings(
        delivery=DeliverySettings(local_dir=tmp_path), apps=AppStore(TESTS / "apps")
    )
    running = ServeThread(Pipeline(executor, settings))
    try:
        code, document = running.call("GET", "openapi.json")
    finally:
        running.stop()
    assert code == 200
    validate(document)
    schemas = document["components"]["schemas"]
    fields = schemas["app_color"]["properties"]["input"]["properties"]
    assert {"toUrls", "output_format", "toazure", "check", "fetch_models"} <= set(fields)
    validator = Draft202012Validator({**schemas["app_color"], "components": {"schemas": schemas}})

    def valid(**extra: object) -> bool:
        return validator.is_valid({"input": {"app": "color", "params": {}, **extra}})

    assert valid(toUrls=["https://x.example/a?sig=1"]) and not valid(toUrls=[])
    assert valid(output_format={"format": "webp", "quality": 80})
    assert not valid(output_format={"format": "gif"})
    assert not valid(output_format={"format": "jpeg", "quality": 101})
    key = {"connectionString": "AccountName=acct;AccountKey=a2V5", "container": "out"}
    assert valid(toazure=key)
    sas = {"accountUrl": "https://a.blob.core.windows.net", "sasToken": "sig=x", "container": "out"}
    assert valid(toazure=sas)
    assert not valid(toazure={**sas, "connectionString": "x"})  # one credential
    assert not valid(toazure={"connectionString": "x"})  # no container
    assert valid(check=True, fetch_models=True) and not valid(check="yes")
