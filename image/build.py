"""Build the serverless image from the Dockerfile, unchanged (`make image`).

With a Docker engine that answers, this is `docker build`. Without one (this project's CI
machines), it is Debian's `buildah` (installed from apt when missing and root), and where
the defaults cannot be reached, two stand-ins go in through the Dockerfile's own build args
instead, each said in the log:

- the base: the CUDA image cannot be pulled, so a Debian trixie root made once with
  `mmdebstrap` is committed as ``localhost/comfyui-runpod-standin:trixie`` (trixie has the
  same ``t64`` package names as Ubuntu 24.04) and used as ``BASE_IMAGE``;
- ComfyUI: GitHub cannot be reached, so the upstream tree beside the clone is committed
  once into a bare git repository tagged ``v<version>``, mounted read-only into the build
  and cloned from ``file://`` (``COMFYUI_REPO``): the Dockerfile's clone, version check and
  requirements step run as on a real build.

buildah also gets the host's CA bundle (pip behind a TLS-inspecting proxy) and the host
network, both only for the build's RUN steps (nothing of them is committed). A failed step
ends the output with one line: which step, and why.

Standard library only: it runs before (and without) the project's venv.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
STANDIN = "localhost/comfyui-runpod-standin:trixie"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
# Where the local ComfyUI repository appears inside the build's RUN steps: a folder every
# base has, empty, so that no mount point is left in the image.
MOUNTED_REPO = "/mnt"
# Debian packages for the buildah path. runc, not crun, as the OCI runtime of RUN steps:
# crun refuses hosts with hybrid cgroups (v1 controllers plus a v2 mount), as CI's are.
APT_PACKAGES = ("buildah", "runc", "mmdebstrap")


class StepFailed(Exception):
    """A step of `make image` failed; the message is the one line printed at the end."""


# -- pure helpers (tests/test_image_build.py) ---------------------------------------------


def dockerfile_arg(name: str, text: str) -> str:
    """The default of ``ARG name=...`` in the Dockerfile (its first declaration)."""
    match = re.search(rf"^ARG {re.escape(name)}=(\S*)\s*$", text, re.MULTILINE)
    if not match:
        raise StepFailed(f"the Dockerfile declares no default for ARG {name}")
    return match.group(1)


def qualified(ref: str) -> str:
    """``ref`` as Docker resolves a short name (buildah refuses short names without a
    search registry): ``nvidia/cuda:x`` is ``docker.io/nvidia/cuda:x``."""
    first, slash, _ = ref.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return ref
    return f"docker.io/{ref}" if slash else f"docker.io/library/{ref}"


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def failure_line(log: str) -> str | None:
    """One line naming the Dockerfile step that failed and why, from a buildah or BuildKit
    (``--progress=plain``) log; None when the log shows no failed step."""
    lines = log.splitlines()
    # buildah: "[2/3] STEP 5/9: RUN ..." headers; "error building at STEP "RUN ...": why".
    for i in range(len(lines) - 1, -1, -1):
        error = re.search(r'[Ee]rror:? building at STEP "(.*)": (.*)$', lines[i])
        if not error:
            continue
        header, output = None, []
        for line in reversed(lines[:i]):
            if re.match(r"(\[\d+/\d+\] )?STEP \d+/\d+: ", line):
                header = line
                break
            if line.strip() and not line.startswith(("time=", "Error:", "error ")):
                output.append(line.strip())
        step = header.split(": ", 1)[0] if header else "a step"
        why = error.group(2)
        if output:
            why += f": {output[0]}"
        return f"{step} ({_short(error.group(1), 100)}) failed: {_short(why)}"
    # BuildKit: "#9 [builder 4/8] RUN ..." headers, "#9 0.51 output", "#9 ERROR: why".
    for i in range(len(lines) - 1, -1, -1):
        error = re.match(r"#(\d+) ERROR: (.*)$", lines[i])
        if not error:
            continue
        number = error.group(1)
        header, output = None, None
        for line in lines[:i]:
            found = re.match(rf"#{number} \[(.+?)\] (.*)$", line)
            if found:
                header = found
            said = re.match(rf"#{number} \d+\.\d+ (.*\S)", line)
            if said:
                output = said.group(1)
        step = f"[{header.group(1)}] ({_short(header.group(2), 100)})" if header else "a step"
        why = error.group(2) + (f": {output}" if output else "")
        return f"{step} failed: {_short(why)}"
    return None


# -- running things ------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"make image: {message}", flush=True)


def run(args: Sequence[str], what: str, timeout: float | None = None, **kwargs) -> str:
    """Run ``args`` quietly; its stdout, or StepFailed with ``what`` and its last line."""
    try:
        done = subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, check=False, **kwargs
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StepFailed(f"{what}: {exc}") from None
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise StepFailed(f"{what}: exit {done.returncode}: {_short(last)}")
    return done.stdout


def docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_packages() -> None:
    """buildah, runc and mmdebstrap from Debian's packages, as `make chromium` does."""
    missing = [name for name in APT_PACKAGES if not shutil.which(name)]
    if not missing:
        return
    command = ["apt-get", "install", "-y", "--no-install-recommends", *APT_PACKAGES]
    if os.geteuid() != 0:
        raise StepFailed(
            f"no Docker engine answers and {', '.join(missing)} is missing: "
            f"install it (sudo apt-get update && sudo {' '.join(command)}) or start Docker"
        )
    log(f"no Docker engine answers; installing {' '.join(missing)} from Debian's packages")
    run(["apt-get", "update"], "apt-get update", timeout=600)
    run(command, "apt-get install " + " ".join(missing), timeout=900)


def has_image(engine: str, ref: str) -> bool:
    probe = [engine, "image", "inspect", ref] if engine == "docker" else ["buildah", "inspect"]
    if engine == "buildah":
        probe += ["--type", "image", ref]
    return subprocess.run(probe, capture_output=True).returncode == 0


def image_id(engine: str, ref: str) -> str | None:
    probe = [engine, "image", "inspect", "--format", "{{.Id}}", ref]
    if engine == "buildah":
        probe = ["buildah", "inspect", "--type", "image", "--format", "{{.FromImageID}}", ref]
    done = subprocess.run(probe, capture_output=True, text=True)
    return done.stdout.strip() or None if done.returncode == 0 else None


def standin_base(engine: str) -> str:
    """The Debian trixie stand-in base, built with mmdebstrap the first time."""
    if has_image(engine, STANDIN):
        log(f"stand-in base {STANDIN} is cached")
        return STANDIN
    started = time.monotonic()
    log(f"building the stand-in base {STANDIN} (mmdebstrap trixie from {DEBIAN_MIRROR})")
    with tempfile.TemporaryDirectory(prefix="standin-") as tmp:
        tar = Path(tmp) / "trixie.tar"
        # ca-certificates as in the CUDA base: the build's apt-get then leaves alone the
        # bundle mounted over it (rewriting a mounted file fails).
        debootstrap = ["mmdebstrap", "--variant=apt", "--include=ca-certificates"]
        run(
            [*debootstrap, "trixie", str(tar), DEBIAN_MIRROR],
            "stand-in base (mmdebstrap trixie)",
            timeout=1200,
        )
        if engine == "docker":
            run(["docker", "import", str(tar), STANDIN], "stand-in base (docker import)")
        else:
            ctr = run(["buildah", "from", "scratch"], "stand-in base (buildah from)").strip()
            try:
                run(["buildah", "add", ctr, str(tar), "/"], "stand-in base (buildah add)")
                run(
                    ["buildah", "config", "--cmd", "/bin/bash", "--env",
                     "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", ctr],
                    "stand-in base (buildah config)",
                )  # fmt: skip
                run(["buildah", "commit", "--quiet", ctr, STANDIN], "stand-in base (commit)")
            finally:
                subprocess.run(["buildah", "rm", ctr], capture_output=True)
    log(f"stand-in base ready in {time.monotonic() - started:.0f}s")
    return STANDIN


def choose_base(engine: str, default: str) -> str:
    """The Dockerfile's base when it is here or can be pulled, else the stand-in."""
    ref = default if engine == "docker" else qualified(default)
    if has_image(engine, ref):
        return ref
    pull = ["docker", "pull", ref] if engine == "docker" else ["buildah", "pull", "-q", ref]
    try:
        run(pull, f"pull {ref}", timeout=1800)
        return ref
    except StepFailed as exc:
        log(f"base {ref} cannot be pulled ({exc}); using the stand-in instead")
    return standin_base(engine)


def github_has(repo: str, version: str) -> bool:
    try:
        run(["git", "ls-remote", "--exit-code", repo, f"refs/tags/v{version}"], "", timeout=30)
        return True
    except StepFailed:
        return False


def local_comfyui_repo(tree: Path, version: str, cache: Path) -> Path:
    """A bare repository holding ``tree`` as one commit tagged ``v<version>`` (made once)."""
    version_file = tree / "comfyui_version.py"
    if not version_file.is_file():
        raise StepFailed(
            f"GitHub cannot be reached and there is no ComfyUI tree at {tree} "
            "(set UPSTREAM_COMFYUI to an unmodified ComfyUI release tree)"
        )
    if f'__version__ = "{version}"' not in version_file.read_text(encoding="utf-8"):
        raise StepFailed(f"{tree} is not ComfyUI {version} (its comfyui_version.py says otherwise)")
    repo = cache / f"ComfyUI-v{version}.git"
    if repo.is_dir():
        return repo
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=repo.name + ".", dir=cache))
    git = ["git", "--git-dir", str(tmp), "--work-tree", str(tree)]
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "comfyui-runpod",
        "GIT_AUTHOR_EMAIL": "image@localhost",
        "GIT_COMMITTER_NAME": "comfyui-runpod",
        "GIT_COMMITTER_EMAIL": "image@localhost",
    }
    try:
        run(["git", "init", "--quiet", "--bare", str(tmp)], "local ComfyUI repository")
        # Every file of the tree (-f: its .gitignore must not drop any), committed as one.
        run([*git, "add", "--all", "--force"], "local ComfyUI repository (add)", env=env)
        run([*git, "commit", "--quiet", "-m", f"ComfyUI {version} from {tree}"], "commit", env=env)
        run([*git, "tag", f"v{version}"], "local ComfyUI repository (tag)", env=env)
        tmp.rename(repo)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return repo


# -- the build -----------------------------------------------------------------------------


def stream(command: Sequence[str], log_path: Path) -> int:
    """Run the build, its output to the terminal (each step's start time in front) and
    to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with (
        log_path.open("w", encoding="utf-8") as out,
        subprocess.Popen(
            list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
        ) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            step = re.match(r"(\[\d+/\d+\] )?STEP \d+/\d+: |#\d+ \[", line)
            sys.stdout.write(f"[{time.monotonic() - started:4.0f}s] {line}" if step else line)
            out.write(line)
        return proc.wait()


def build(tag: str, upstream: Path, cache: Path, extra_args: list[str]) -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    engine = "docker" if docker_answers() else "buildah"
    if engine == "buildah":
        ensure_packages()
    log(f"engine: {engine}")

    # The Dockerfile's defaults, or what the caller passes for them.
    given = dict(arg.partition("=")[::2] for arg in extra_args)
    base = given.pop("BASE_IMAGE", None) or dockerfile_arg("BASE_IMAGE", text)
    version = given.get("COMFYUI_VERSION") or dockerfile_arg("COMFYUI_VERSION", text)
    repo = given.get("COMFYUI_REPO") or dockerfile_arg("COMFYUI_REPO", text)
    args = [f"BASE_IMAGE={choose_base(engine, base)}"]
    volumes: list[str] = []
    if not github_has(repo, version):
        if engine == "docker":
            raise StepFailed(f"{repo} cannot be reached and docker build cannot mount a local tree")
        local = local_comfyui_repo(upstream, version, cache)
        log(f"ComfyUI: {repo} cannot be reached; cloning v{version} from {upstream} instead")
        volumes.append(f"{local}:{MOUNTED_REPO}:ro")
        given["COMFYUI_REPO"] = f"file://{MOUNTED_REPO}"
    log("base: " + args[0].partition("=")[2])

    if engine == "docker":
        command = ["docker", "build", "--progress=plain", "-t", tag]
    else:
        # --format docker: the OCI format has no SHELL (RUN would lose bash's pipefail).
        command = ["buildah", "bud", "--layers", "--force-rm", "--format", "docker", "--pull=false"]
        command += ["--runtime", "runc"]
        command += ["--network", "host", "-t", tag]
        if HOST_CA.is_file():
            volumes.append(f"{HOST_CA}:{HOST_CA}:ro")
        for volume in volumes:
            command += ["-v", volume]
    for arg in [*args, *(f"{k}={v}" for k, v in given.items())]:
        command += ["--build-arg", arg]
    command += ["-f", str(DOCKERFILE), str(ROOT)]

    log_path = cache / "build.log"
    previous = image_id(engine, tag)
    started = time.monotonic()
    log(" ".join(command))
    if stream(command, log_path) != 0:
        why = failure_line(log_path.read_text(encoding="utf-8", errors="replace"))
        raise StepFailed(why or f"{engine} failed (log: {log_path})")
    log(f"built {tag} with {engine} in {time.monotonic() - started:.0f}s (log: {log_path})")
    if engine == "buildah" and previous and previous != image_id(engine, tag):
        # The image this build replaced: its ~6 GB venv layer would stay on disk, unnamed.
        subprocess.run(["buildah", "rmi", previous], capture_output=True)
        log(f"removed the image it replaced ({previous[:12]})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", default="comfyui-runpod:dev")
    parser.add_argument(
        "--upstream",
        type=Path,
        default=ROOT.parent / "shared" / "upstream" / "ComfyUI-0.33.0",
        help="the ComfyUI release tree to build from when GitHub cannot be reached",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        / "comfyui-runpod-image",
        help="the build log and the local ComfyUI repository",
    )
    parser.add_argument("--build-arg", action="append", default=[], help="passed on (repeatable)")
    args = parser.parse_args(argv)
    try:
        build(args.tag, args.upstream.resolve(), args.cache, args.build_arg)
    except StepFailed as exc:
        print(f"make image: failed: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
