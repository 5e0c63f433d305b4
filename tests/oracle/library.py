"""Make the template-library oracle of one CI lane: every template of the
``comfyui-workflow-templates`` release that lane's ComfyUI pins, paired with what that
lane's frontend makes of it (``app.graphToPrompt()`` in Debian's chromium, as
make_corpus.py does for the hand-made cases).

The lane is the environment's, as for the tests: ``COMFYUI_PATH`` names the ComfyUI tree
(its requirements.txt pins the templates), ``COMFYUI_RUNPOD_FRONTEND_ROOT`` the frontend
(unset: the venv's). The template packages are fetched with pip (``--no-deps``, only the
wheels that hold the JSON files) into ``~/.cache/comfyui-runpod/templates/``. Output:
``tests/oracle/library/comfyui-<version>.json.gz`` (``{"comfyui", "frontend",
"templates_package", "templates": {name: {"bundle", "workflow", "prompt" | "frontend_error"}}}``),
committed, so CI compares the converter with it without a browser
(tests/test_convert_library.py); ``--refused`` then writes the converter's refusals
beside it (``comfyui-<version>.refused.json``). Run by hand, once per lane::

    COMFYUI_PATH=... [COMFYUI_RUNPOD_FRONTEND_ROOT=...] python tests/oracle/library.py [--only N]
    COMFYUI_PATH=... python tests/oracle/library.py --refused
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from desktopkit import launch_chromium, open_frontend, start_desktop  # noqa: E402
from make_corpus import CONVERT  # noqa: E402

LIBRARY = HERE / "library"
CACHE = Path.home() / ".cache" / "comfyui-runpod" / "templates"
META = "comfyui-workflow-templates"
#: A fresh page after this many templates: every loaded workflow stays open in a tab.
PAGE_EVERY = 40


def library_file(version: str) -> Path:
    """Where the oracle of ComfyUI ``version``'s lane is (tests/test_convert_library.py)."""
    return LIBRARY / f"comfyui-{version}.json.gz"


def _pin(comfyui: Path, package: str) -> str:
    found = re.search(
        rf"^{re.escape(package)}==(\S+)", (comfyui / "requirements.txt").read_text(), re.M
    )
    if found is None:
        raise SystemExit(f"{comfyui}/requirements.txt pins no {package}")
    return found.group(1)


def _wheel(name: str, version: str) -> zipfile.ZipFile:
    """One wheel from PyPI (cached): the template packages are data, nothing to install."""
    folder = CACHE / f"{name}-{version}"
    if not list(folder.glob("*.whl")):
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
        subprocess.run([*command, "-d", str(folder), f"{name}=={version}"], check=True)
    return zipfile.ZipFile(next(folder.glob("*.whl")))


def _requires(wheel: zipfile.ZipFile) -> dict[str, str]:
    metadata = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    pins = re.findall(r"^Requires-Dist: (\S+)==([^\s;]+)$", wheel.read(metadata).decode(), re.M)
    return dict(pins)


def templates(version: str) -> dict[str, dict[str, Any]]:
    """Every workflow template of the release (the core package's manifest lists them):
    its bundle and workflow. The JSON files are in ``-json`` where the release has that
    package, else in the ``-media-<bundle>`` packages (fetched only when needed)."""
    parts = _requires(_wheel(META, version))
    core = _wheel(f"{META}-core", parts[f"{META}-core"])
    manifest = json.loads(
        core.read(next(n for n in core.namelist() if n.endswith("manifest.json")))
    )
    files: dict[str, zipfile.ZipFile] = {}
    wheels = [_wheel(f"{META}-json", parts[f"{META}-json"])] if f"{META}-json" in parts else []
    wanted = {
        t["id"]: (
            t["bundle"],
            next(a["filename"] for a in t["assets"] if a["filename"].endswith(".json")),
        )
        for t in manifest["templates"]
    }
    found: dict[str, dict[str, Any]] = {}
    for bundle in [None, *sorted({b for b, _ in wanted.values()})]:
        if bundle is not None:
            missing = [n for n, (b, f) in wanted.items() if b == bundle and n not in found]
            if not missing:
                continue
            wheels = [_wheel(f"{META}-{bundle}", parts[f"{META}-{bundle}"])]
        for wheel in wheels:
            for member in wheel.namelist():
                if "/templates/" in member and member.endswith(".json"):
                    files.setdefault(member.rsplit("/", 1)[1], wheel)
        for name, (bundle_of, filename) in wanted.items():
            if name not in found and filename in files:
                member = next(
                    m for m in files[filename].namelist() if m.endswith(f"/templates/{filename}")
                )
                found[name] = {
                    "bundle": bundle_of,
                    "workflow": json.loads(files[filename].read(member)),
                }
    lost = sorted(set(wanted) - set(found))
    if lost:
        raise SystemExit(f"{META} {version}: no JSON file for {', '.join(lost)}")
    # The manifest lists the template index (index.json, index.fr.json, ...) too.
    return {n: t for n, t in sorted(found.items()) if _is_workflow(t["workflow"])}


def _is_workflow(document: Any) -> bool:
    return isinstance(document, dict) and isinstance(document.get("nodes"), list)


FRONTEND_VERSION = "() => window.__COMFYUI_FRONTEND_VERSION__ ?? null"


def write_refused(version: str) -> Path:
    """``comfyui-<version>.refused.json``: the templates of the lane's oracle that the
    converter refuses with the widget-count mismatch (template → the start of the error's
    line on the first node it names), for tests/test_convert_library.py to hold it to.
    Read it before committing: each is a template the worker will not run."""
    from comfyui_runpod.executor import Executor
    from comfyui_runpod.executor.boot import BootSettings
    from comfyui_runpod.executor.convert import convert
    from comfyui_runpod.executor.errors import JobError

    document = json.loads(gzip.decompress(library_file(version).read_bytes()))
    refused = {}
    with tempfile.TemporaryDirectory() as scratch:
        executor = Executor(BootSettings(work_dir=Path(scratch), cpu=True))
        executor.start()
        try:
            classes = executor.comfy.nodes.NODE_CLASS_MAPPINGS
            for name, entry in document["templates"].items():
                try:
                    convert(entry["workflow"], classes)
                except JobError as exc:
                    first = (exc.detail.get("widget_mismatch") or [None])[0]
                    if first is not None:
                        refused[name] = (
                            f"node {first['node_id']} ({first['class_type']}): "
                            f"{first['found']} saved widget values"
                        )
        finally:
            executor.close()
    out = LIBRARY / f"comfyui-{version}.refused.json"
    out.write_text(json.dumps(refused, indent=0, sort_keys=True) + "\n")
    return out


def main() -> int:
    from comfyui_runpod.executor import find_comfyui
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="only these templates (merged into the file)")
    parser.add_argument(
        "--refused", action="store_true", help="only the converter's refusals (no browser)"
    )
    args = parser.parse_args()
    comfyui = find_comfyui()
    if args.refused:
        print(write_refused(comfyui.version))
        return 0
    release = _pin(comfyui.path, META)
    library = templates(release)
    if args.only:
        library = {n: t for n, t in library.items() if n in args.only}
    out = library_file(comfyui.version)
    document: dict[str, Any] = {"templates": {}}
    if args.only and out.exists():
        document = json.loads(gzip.decompress(out.read_bytes()))
    with tempfile.TemporaryDirectory() as scratch:
        desktop = start_desktop(comfyui.path, Path(scratch) / "desktop", {})
        try:
            deadline = time.monotonic() + 180
            desktop.wait_ready(urllib.request.Request(f"{desktop.url}/object_info"), deadline)
            with sync_playwright() as playwright:
                browser = launch_chromium(playwright)
                page = None
                for index, (name, template) in enumerate(library.items()):
                    if index % PAGE_EVERY == 0:
                        page = page.close() if page else None
                        page = open_frontend(browser, desktop.url)
                    entry = {"bundle": template["bundle"], "workflow": template["workflow"]}
                    try:
                        entry["prompt"] = page.evaluate(CONVERT, [template["workflow"], name])
                    except Exception as exc:  # the frontend itself cannot convert it
                        entry["frontend_error"] = str(exc).splitlines()[0][:300]
                    document["templates"][name] = entry
                    print(f"{name}: {len(entry.get('prompt') or {})} prompt nodes", flush=True)
                frontend = page.evaluate(FRONTEND_VERSION) if page else None
                browser.close()
        finally:
            desktop.stop()
    document.update(comfyui=comfyui.version, frontend=frontend, templates_package=release)
    document["templates"] = dict(sorted(document["templates"].items()))
    LIBRARY.mkdir(exist_ok=True)
    text = json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n"
    out.write_bytes(gzip.compress(text.encode(), mtime=0))
    print(f"{out}: {len(document['templates'])} templates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
