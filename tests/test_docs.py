"""The README's examples run as written, against a real ``serve`` on loopback.

Each block is taken from README.md itself, so an edit that breaks one fails here. The
only change made to a block is the address: the documented ``http://127.0.0.1:8000``
becomes the test server's free port. Blocks run from the repository root, where their
relative paths (``examples/…``) point.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
DOCUMENTED_URL = "http://127.0.0.1:8000"


def readme_blocks(section: str, language: str) -> list[str]:
    """The ``language`` code blocks of one ``## section`` of README.md."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end != -1 else None]
    return re.findall(rf"^```{language}\n(.*?)^```$", body, flags=re.M | re.S)


def at(block: str, url: str) -> str:
    assert DOCUMENTED_URL in block, block
    return block.replace(DOCUMENTED_URL, url)


def run_block(command: list[str], block: str) -> str:
    # A newcomer's shell: no RunPod settings of its own.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
    # ... with the package installed: its console script on PATH, as after `make setup`.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(
        [*command, block], capture_output=True, text=True, cwd=REPO, env=env, timeout=120
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def json_values(text: str) -> list[Any]:
    """The JSON documents printed one after another (curl adds no newline)."""
    decoder, values, index = json.JSONDecoder(), [], 0
    while index < len(text.rstrip()):
        value, index = decoder.raw_decode(text, index)
        values.append(value)
        while index < len(text) and text[index].isspace():
            index += 1
    return values


def test_readme_python_sdk_example_runs_as_written(serve) -> None:
    """The official runpod SDK (installed here at the version setup pins), unchanged."""
    [block] = readme_blocks("Send a job", "python")
    running = serve()
    stdout = run_block([sys.executable, "-c"], at(block, running.url))
    assert "'files': [" in stdout and "'error'" not in stdout, stdout[-2000:]


def test_readme_curl_examples_run_as_written(serve) -> None:
    [block] = readme_blocks("Send a job", "bash")
    running = serve()
    result, health = json_values(run_block(["bash", "-e", "-c"], at(block, running.url)))
    assert result["status"] == "COMPLETED", result
    assert result["output"]["datas"] == {"4": {"note": ["model-free example"]}}
    assert health["jobs"]["completed"] == 1, health


def test_docs_name_the_pinned_torch_trio() -> None:
    """README and docs/ state the versions ``requirements/torch.txt`` pins (docs/torch.md
    explains the choice and may name others); an older record says it is one."""
    pins = (REPO / "requirements" / "torch.txt").read_text(encoding="utf-8")
    pinned = set(re.findall(r"^(torch\w*)==([\d.]+)", pins, flags=re.M))
    assert ("torchaudio", "2.11.0") in pinned
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    for page in pages:
        if page.name == "torch.md":
            continue
        text = " ".join(page.read_text(encoding="utf-8").split())
        for match in re.finditer(r"\b(torch\w*) (\d+\.\d+\.\d+)", text):
            historical = "at the time of" in text[match.end() : match.end() + 40]
            assert match.groups() in pinned or historical, f"{page.name}: {match.group()}"
        assert "no torchaudio" not in text and "audio nodes do not load:" not in text, page.name


def test_readme_names_every_comfyui_install_option() -> None:
    from comfyui_runpod.executor.cli import _parser

    commands = next(a for a in _parser()._actions if a.dest == "command").choices
    comfyui = next(a for a in commands["comfyui"]._actions if a.dest == "action").choices
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for action in comfyui["install"]._actions:
        for option in action.option_strings:
            assert option in ("-h", "--help") or option in readme, option
            assert option in ("-h", "--help") or action.help, option
    assert "`--force`" in readme and "`--source git`" in readme


def test_readme_app_example_runs_as_written(make_pipeline, tmp_path) -> None:
    """``serve --apps examples/apps``, then the README's block: ``apps`` lists the shipped
    apps with whole-number ranges, the curl call runs ``fill``, ``/docs`` answers."""
    from dataclasses import replace

    from comfyui_runpod.executor.apps import AppStore
    from servekit import ServeThread

    [block] = readme_blocks("Workflow apps: named, typed inputs", "bash")
    pipeline = make_pipeline()
    pipeline.settings = replace(pipeline.settings, apps=AppStore(REPO / "examples" / "apps"))
    running = ServeThread(pipeline)
    try:
        stdout = run_block(["bash", "-e", "-c"], at(block, running.url))
    finally:
        running.stop()
    listing, rest = stdout.split("{", 1)
    assert "fill\n  color: integer 0..16777215 (default 2113632): Fill colour" in listing
    assert (
        "  size: integer 8..1024 (default 64)" in listing and "invert\n  picture: image" in listing
    )
    result, end = json.JSONDecoder().raw_decode("{" + rest)
    page = ("{" + rest)[end:]
    assert result["status"] == "COMPLETED", result
    [png] = result["output"]["files"]
    with Image.open(io.BytesIO(base64.b64decode(png))) as image:
        assert image.size == (32, 32) and image.getpixel((0, 0)) == (255, 0, 0)
    assert page.lstrip().lower().startswith("<!doctype html") and "fill" in page, page


def test_deploy_send_jobs_block_runs_against_serve(serve) -> None:
    """docs/deploy.md's *Send jobs* calls, with RunPod's address swapped for a local serve
    that has a key (the hosted API's shape; RunPod's cloud cannot be reached from here)."""
    text = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    [block] = [b for b in page_blocks("deploy.md") if b.section == "## 6. Send jobs"]
    running = serve(api_key="deploy-doc-key")
    env = {
        "ENDPOINT_ID": "local",
        "RUNPOD_API_KEY": "deploy-doc-key",
        "JOB_ID": "no-such-job",
    }
    local = block.text.replace("https://api.runpod.ai/v2", f"{running.url}/v2")
    assert local != block.text and "api.runpod.ai" in text
    done = subprocess.run(
        ["bash", "-e", "-c", local], capture_output=True, text=True, cwd=REPO,
        env={**os.environ, **env}, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    sync, queued, status, health = json_values(done.stdout)
    assert sync["status"] == "COMPLETED" and sync["output"]["datas"], sync
    assert queued["status"] == "IN_QUEUE" and queued["id"]
    assert "error" in status and "jobs" in health


# -- every shell and Python block: run above, or marked with why not -----------------------

#: A block's first line when it cannot run here; the reason follows on that line.
MARK = "# not run by the tests:"
SHELLS = ("bash", "sh", "shell", "console", "python")


@dataclass(frozen=True)
class Block:
    page: str
    section: str
    language: str
    text: str

    @property
    def first(self) -> str:
        return self.text.splitlines()[0] if self.text else ""


def page_blocks(name: str) -> list[Block]:
    path = REPO / name if name == "README.md" else REPO / "docs" / name
    text, section, found = path.read_text(encoding="utf-8"), "", []
    pattern = r"^(#{1,4} [^\n]*)$|^```(\w*)\n(.*?)^```$"
    for match in re.finditer(pattern, text, flags=re.M | re.S):
        if match.group(1):
            section = match.group(1)
        elif match.group(2) in SHELLS:
            found.append(Block(name, section, match.group(2), match.group(3)))
    return found


#: Blocks a test here runs: (page, section, language) → that test.
RUN = {
    ("README.md", "## Send a job", "bash"): test_readme_curl_examples_run_as_written,
    ("README.md", "## Send a job", "python"): test_readme_python_sdk_example_runs_as_written,
    ("README.md", "## Workflow apps: named, typed inputs", "bash"): (
        test_readme_app_example_runs_as_written
    ),
    ("deploy.md", "## 6. Send jobs", "bash"): test_deploy_send_jobs_block_runs_against_serve,
}
_PARSED = "command below is parsed with the real CLI"
_NO_DOCKER = "No Docker engine runs on this project's CI machines"
#: Blocks of pages another change owns, not marked in the block itself: (page, how its
#: first line starts, the page's own visible sentence that says why; None: only here).
ELSEWHERE = [
    ("deploy.md", "comfyui-runpod worker --extra-model-paths /comfyui/", _PARSED),
    ("deploy.md", "comfyui-runpod serve --host=0.0.0.0 --port=8000 ", _PARSED),
    ("deploy.md", "docker ", _NO_DOCKER),
    ("deploy.md", "mkdir -p models/checkpoints    # put model files", _NO_DOCKER),
    # my_workflow.json stands for the reader's own file; tests/test_convert.py runs convert.
    ("saved-workflows.md", "comfyui-runpod convert my_workflow.json > ", None),
    # needs a desktop ComfyUI, chromium and minutes; tests/oracle/ checks what it made.
    ("saved-workflows.md", 'export COMFYUI_PATH="$(.venv/bin/comfyui-runpod comfyui ', None),
]


def all_blocks() -> list[Block]:
    pages = ["README.md", *sorted(p.name for p in (REPO / "docs").glob("*.md"))]
    return [block for page in pages for block in page_blocks(page)]


def test_every_shell_and_python_block_is_run_or_says_why_not() -> None:
    """A block is run by a test here (``RUN``), or its first line says why not (``MARK``),
    or, on a page another change owns, the page says why (``ELSEWHERE``). A new block, or a
    run block that moved or changed language, fails here until one of them holds."""
    unaccounted, run = [], set()
    for block in all_blocks():
        key = (block.page, block.section, block.language)
        if key in RUN:
            run.add(key)
            continue
        if block.first.startswith(MARK):
            assert len(block.first) > len(MARK) + 10, f"{block.page}: a mark needs its reason"
            continue
        why = [
            p
            for page, start, p in ELSEWHERE
            if (page, start) == (block.page, block.first[: len(start)])
        ]
        if why:
            page = REPO / ("README.md" if block.page == "README.md" else f"docs/{block.page}")
            visible = " ".join(page.read_text(encoding="utf-8").split())
            assert why[0] is None or why[0] in visible, why[0]
            continue
        unaccounted.append(f"{block.page} {block.section}: {block.first}")
    assert unaccounted == [], "\n".join(unaccounted)
    assert run == set(RUN), f"no longer there: {set(RUN) - run}"


def test_deploy_env_table_is_generated_from_the_cli() -> None:
    """docs/deploy.md's table between its markers is what the CLI's definitions give;
    refresh it with ``python -m comfyui_runpod.executor.envtable docs/deploy.md``."""
    from comfyui_runpod.executor import envtable
    from comfyui_runpod.executor.cli import _parser

    text = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    with envtable.documented_defaults():
        fresh = envtable.render(text, _parser())
    assert fresh == text, "stale: run python -m comfyui_runpod.executor.envtable docs/deploy.md"


#: Variables the RunPod platform sets for the SDK; operators do not.
PLATFORM = {"RUNPOD_WEBHOOK_GET_JOB", "RUNPOD_WEBHOOK_POST_OUTPUT", "RUNPOD_REALTIME_PORT"}


OWN_VARIABLE = r"[\"'`\s]((?:COMFYUI|COMFY|RUNPOD|BUCKET|AZURE)_[A-Z0-9_]*[A-Z0-9])\b"


def test_every_variable_the_code_reads_is_in_the_table() -> None:
    text = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    table = text[text.index("<!-- env-table") : text.index("<!-- /env-table -->")]
    read = set()
    for path in [*REPO.glob("executor/**/*.py"), *REPO.glob("nodes/*.py")]:
        source = path.read_text(encoding="utf-8")
        read |= set(re.findall(OWN_VARIABLE, source))
    # RUNPOD_DEBUG_LEVEL: the SDK's older name, read only to leave it alone.
    read = {name for name in read if not re.fullmatch(r"COMFY_[A-Z]+_V\d+", name)}  # io types
    missing = sorted(read - PLATFORM - {"RUNPOD_DEBUG_LEVEL"} - set(re.findall(r"`(\w+)`", table)))
    assert missing == [], missing
