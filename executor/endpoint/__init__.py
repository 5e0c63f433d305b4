"""``comfyui-runpod serve``: the hosted RunPod serverless API on this machine.

``runpod.Endpoint`` (with ``RUNPOD_ENDPOINT_BASE_URL=http://127.0.0.1:8000/v2``), the JS
SDK and plain curl talk to it as to production; jobs run through the same
:class:`~comfyui_runpod.executor.pipeline.Pipeline` as the serverless worker.
"""

from .app import LocalEndpoint, Server, make_app, serve
from .settings import ServeSettings

__all__ = ["LocalEndpoint", "ServeSettings", "Server", "make_app", "serve"]
