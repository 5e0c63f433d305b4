"""Custom node packs in a folder of their own (a network volume's ``custom_nodes``):
installed from git with their requirements beside them, importable when ComfyUI boots.

A pack's requirements never go into the venv the worker runs in: the venv is the image's,
shared by every job and by ComfyUI itself, and one pack asking for another torch would
break them all. They go into ``<pack>/.comfyui-runpod/site-packages``, which the boot puts
on ``sys.path`` after the venv's own folders. Only what the venv lacks is installed there:
pip resolves the requirements against the venv with every installed distribution pinned
(so nothing the venv has can move, the torch trio included), and a requirement that would
need another version of one of them is refused by name.

An install is all or nothing: the pack is built in a hidden ``*.disabled`` folder inside
DIR (ComfyUI skips those) and renamed into place last, so a failure leaves DIR as it was.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import site
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

#: This package's folder inside an installed pack: ``pack.json`` and ``site-packages/``.
META = ".comfyui-runpod"
#: Where packs go when no folder is given: the network volume, as the image loads it.
VOLUME_DIR = Path("/runpod-volume/custom_nodes")
SCHEMES = ("https", "git")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
#: Extra pip constraints an image may provide next to its venv (the Dockerfile writes the
#: torch trio and docker/constraints.txt there).
_VENV_CONSTRAINTS = "constraints.txt"


class PackError(Exception):
    """An install that cannot go ahead, in one line that names the culprit."""


@dataclass(frozen=True)
class Source:
    """Where a pack comes from: a git URL or a local repository, and the ref to check out."""

    url: str
    ref: str | None
    name: str

    @property
    def text(self) -> str:
        return f"{self.url}@{self.ref}" if self.ref else self.url


def parse_source(text: str) -> Source:
    """``SOURCE[@REF]``: ``https://`` or ``git://`` URLs and local paths to a repository.

    The ref is what follows the last ``@`` of the URL's path (``user@host`` stays part of
    the URL); for a path, the last ``@`` unless the whole text names an existing path.
    """
    text = text.strip()
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme.lower() not in SCHEMES:
            raise PackError(
                f"{text}: not a git URL or path (accepted: https://…, git://…, or the path "
                "of a local git repository)"
            )
        host, slash, path = rest.partition("/")
        path, at, ref = path.rpartition("@") if "@" in path else (path, "", "")
        url = f"{scheme}://{host}{slash}{path}"
        if not host or not path.strip("/"):
            raise PackError(f"{text}: a git URL names a repository (https://host/owner/repo)")
    else:
        url, at, ref = ("", "", "") if Path(text).exists() else text.rpartition("@")
        url = url or text
        if not Path(url).exists():
            raise PackError(
                f"{url}: no such path (accepted: https://…, git://…, or the path of a local "
                "git repository)"
            )
        url = str(Path(url).resolve())
    if at and not ref:
        raise PackError(f"{text}: empty ref after '@'")
    name = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
    if not _NAME.fullmatch(name) or name.endswith(".disabled"):
        raise PackError(f"{text}: cannot name a folder after {name!r}")
    return Source(url, ref or None, name)


def default_dir() -> Path:
    """The network volume's ``custom_nodes`` when a volume is mounted."""
    if VOLUME_DIR.parent.is_dir():
        return VOLUME_DIR
    raise PackError(f"no network volume at {VOLUME_DIR.parent}: give the folder (--into DIR)")


def install(source_text: str, into: Path, *, force: bool = False) -> Path:
    """Clone the pack at its ref into ``into/<name>``, its requirements beside it; the
    pack's folder. Nothing changes in ``into`` unless everything succeeded."""
    source = parse_source(source_text)
    into = into.expanduser().absolute()
    dest = into / source.name
    if dest.exists() and not force:
        raise PackError(f"{dest} already exists: give --force to replace it")
    created = not into.exists()
    into.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{source.name}.", suffix=".disabled", dir=into))
    try:
        pack = work / source.name
        commit = _clone(source, pack)
        installed = _install_requirements(pack, work)
        meta = {"source": source.url, "ref": source.ref, "commit": commit}
        (pack / META).mkdir(exist_ok=True)
        (pack / META / "pack.json").write_text(
            json.dumps({**meta, "requirements": installed}, indent=2) + "\n", encoding="utf-8"
        )
        if dest.exists():  # --force: the old copy out of the way, the new one in
            dest.rename(work / "replaced")
        pack.rename(dest)
    except BaseException:
        if created and not any(p != work for p in into.iterdir()):
            shutil.rmtree(into, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def _clone(source: Source, pack: Path) -> str:
    """The repository at ``source.ref`` (default branch without one), submodules included,
    without ``.git``; the commit id checked out."""
    _git("ls-remote", "--heads", source.url, what=f"cannot read the git repository {source.url}")
    if source.ref is None:
        _git("clone", "--quiet", "--depth", "1", source.url, str(pack), what=source.url)
    else:
        _git("init", "--quiet", str(pack), what="git init")
        _git("-C", str(pack), "remote", "add", "origin", source.url, what="git remote")
        try:
            _git("-C", str(pack), "fetch", "--quiet", "--depth", "1", "origin", source.ref)
        except PackError:
            # A commit id that the server will not hand out by itself: fetch all, then look.
            _git("-C", str(pack), "fetch", "--quiet", "--tags", "origin", what=source.url)
            try:
                _git(
                    "-C", str(pack), "rev-parse", "--verify", "--quiet", f"{source.ref}^{{commit}}"
                )
            except PackError:
                raise PackError(f"no ref {source.ref!r} in {source.url}") from None
            target = source.ref
        else:
            target = "FETCH_HEAD"
        _git("-C", str(pack), "-c", "advice.detachedHead=false", "checkout", "--quiet", target)
    if (pack / ".gitmodules").exists():
        _git("-C", str(pack), "submodule", "update", "--quiet", "--init", "--recursive")
    commit = _git("-C", str(pack), "rev-parse", "HEAD").strip()
    shutil.rmtree(pack / ".git")
    return commit


def _git(*args: str, what: str | None = None) -> str:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}  # a private repository fails, not asks
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, env=env, check=False)
    except FileNotFoundError:
        raise PackError("git is not installed on this machine") from None
    if done.returncode != 0:
        raise PackError(f"{what or 'git ' + args[0]}: {_last_line(done.stderr)}")
    return done.stdout


def _install_requirements(pack: Path, work: Path) -> list[str]:
    """``requirements.txt`` into ``pack/.comfyui-runpod/site-packages``: what the venv lacks
    only, resolved with everything the venv has pinned; the ``name==version`` installed."""
    requirements = pack / "requirements.txt"
    if not requirements.is_file():
        return []
    constraints = work / "constraints.txt"
    constraints.write_text(_venv_constraints(), encoding="utf-8")
    report = work / "report.json"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    dry_run = ["install", "--dry-run", "--quiet", "--report", str(report)]
    _pip([*pip, *dry_run, "-r", str(requirements), "-c", str(constraints)], pack)
    planned = json.loads(report.read_text(encoding="utf-8")).get("install", [])
    if not planned:
        return []
    target = pack / META / "site-packages"
    _pip(
        [*pip, "install", "--quiet", "--no-deps", "--target", str(target)]
        + [_direct_reference(item) for item in planned],
        pack,
    )
    return [f"{i['metadata']['name']}=={i['metadata']['version']}" for i in planned]


def _venv_constraints() -> str:
    """Every distribution this venv has, pinned, and the image's own constraints file."""
    lines = ["# what this venv has: a pack's requirements may add to it, never change it"]
    seen: set[str] = set()
    for dist in metadata.distributions():
        name = dist.metadata.get("Name")
        key = re.sub(r"[-_.]+", "-", name or "").lower()
        if key and key not in seen:
            seen.add(key)
            lines.append(f"{key}=={dist.version}")
    extra = Path(sys.prefix) / _VENV_CONSTRAINTS
    if extra.is_file():
        lines.append(extra.read_text(encoding="utf-8"))
    return "\n".join(lines) + "\n"


def _direct_reference(item: dict[str, Any]) -> str:
    """One resolved distribution as pip fetched it (``name @ url``): the second pip run
    installs exactly what the first one resolved."""
    name, info = item["metadata"]["name"], item["download_info"]
    vcs = info.get("vcs_info")
    if vcs:
        return f"{name} @ {vcs['vcs']}+{info['url']}@{vcs['commit_id']}"
    return f"{name} @ {info['url']}"


def _pip(command: list[str], cwd: Path) -> None:
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, check=False)
    if done.returncode != 0:
        raise PackError(f"cannot install {cwd.name}'s requirements: {_pip_error(done.stderr)}")


def _pip_error(stderr: str) -> str:
    """pip's first ``ERROR:`` line (it names the requirement), with a conflict's causes."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    if not errors:
        return _last_line(stderr)
    first = errors[0].removeprefix("ERROR: ")
    causes = [line for line in lines if line.startswith("The user requested")]
    if causes:
        first += " (" + "; ".join(causes) + "; the venv's packages are pinned)"
    return first


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1].removeprefix("fatal: ") if lines else "failed"


def listing(folder: Path) -> list[dict[str, Any]]:
    """The packs in ``folder`` as ComfyUI would load them, each with what ``install``
    recorded (``source``, ``ref``, ``commit``, ``requirements``; absent when it was put
    there by other means)."""
    packs = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name.lower()):
        if entry.name.startswith((".", "__")) or entry.name.endswith(".disabled"):
            continue
        if entry.is_file() and entry.suffix != ".py":
            continue
        record: dict[str, Any] = {"name": entry.name}
        with contextlib.suppress(OSError, ValueError):  # put there by other means
            record |= json.loads((entry / META / "pack.json").read_text(encoding="utf-8"))
        packs.append(record)
    return packs


def add_requirement_paths(custom_dir: Path) -> list[str]:
    """Make the requirements ``install`` put beside each pack in ``custom_dir`` importable:
    each ``site-packages`` folder goes on ``sys.path`` after the venv's (with its ``.pth``
    files), before ComfyUI imports the packs."""
    added = []
    try:
        entries = sorted(Path(custom_dir).iterdir())
    except OSError:  # a missing folder: the boot says so when it skips it
        return added
    for entry in entries:
        folder = entry / META / "site-packages"
        if folder.is_dir() and str(folder) not in sys.path:
            site.addsitedir(str(folder))
            added.append(str(folder))
    if added:
        log.info("requirements of %d node packs in %s importable", len(added), custom_dir)
    return added
