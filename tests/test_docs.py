"""The README's examples run as written, against a real ``serve`` on loopback.

Each block is taken from README.md itself, so an edit that breaks one fails here. The
only change made to a block is the address: the documented ``http://127.0.0.1:8000``
becomes the test server's free port. Blocks run from the repository root, where their
relative paths (``examples/…``) point.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

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
