"""Which module provides each of ComfyUI's built-in node types, so that a boot imports a
built-in node module only when something first asks for one of its types.

ComfyUI's server imports all ~130 modules of ``comfy_extras/`` and ``comfy_api_nodes/`` at
start (about 2 s of a 9 s cold start on 0.33), although a job uses a handful. The index
maps node type → module file; it is built by one full boot (recording what each
``load_custom_node`` call registered), cached per ComfyUI tree, Python environment and
node set, and rebuilt when any of them changes. With it, :class:`LazyNodeClasses` stands in
for ``nodes.NODE_CLASS_MAPPINGS``: it lists and counts every type at once and imports a
module, through ComfyUI's own ``load_custom_node``, on the first lookup of one of its
types — whoever looks (validation, node expansion, the converter, an app, a custom node).

Custom node packs are not deferred: a pack may patch ComfyUI or register routes at import,
so they load at boot exactly as the server loads them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import site
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, KeysView, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .node_imports import FailedModule

log = logging.getLogger(__name__)

#: Bumped when the file's layout or what it records changes.
FORMAT = 2
#: ComfyUI's built-in node folders, as ``load_custom_node``'s ``module_parent`` names them.
BUILTIN_PARENTS = ("comfy_extras", "comfy_api_nodes")


@dataclass(frozen=True)
class Provider:
    """A built-in node module: its file and ``load_custom_node``'s ``module_parent``."""

    path: str
    parent: str


@dataclass
class NodeIndex:
    """Node type → providing module, for one ComfyUI tree, environment and node set."""

    key: str
    providers: dict[str, Provider]
    display_names: dict[str, str]
    #: Built-in modules that failed to import when the index was built.
    failed: list[FailedModule]
    #: Built-in modules loaded at every boot all the same: those that offer no node types
    #: or act when loaded, in ComfyUI's order (they are there for what loading them does).
    at_boot: list[Provider]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "key": self.key,
            "providers": {name: asdict(p) for name, p in self.providers.items()},
            "display_names": self.display_names,
            "failed": [{**asdict(f), "node_types": sorted(f.node_types)} for f in self.failed],
            "at_boot": [asdict(p) for p in self.at_boot],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NodeIndex:
        return cls(
            key=data["key"],
            providers={name: Provider(**p) for name, p in data["providers"].items()},
            display_names=dict(data["display_names"]),
            failed=[
                FailedModule(**{**f, "node_types": frozenset(f["node_types"])})
                for f in data["failed"]
            ],
            at_boot=[Provider(**p) for p in data["at_boot"]],
        )


def cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "comfyui-runpod" / "node-index"


def index_key(comfyui: Path, api_nodes: bool) -> str:
    """Changes whenever the set of built-in nodes could: any file of the node folders or
    ``nodes.py``, the Python, the environment's installed packages (a site-packages folder
    changes when a package is added, removed or upgraded), or the partner-node switch."""
    parts = [f"format {FORMAT}", sys.version, sys.prefix, str(comfyui.resolve()), str(api_nodes)]
    files = [comfyui / "nodes.py"]
    for folder in BUILTIN_PARENTS:
        files.extend(sorted((comfyui / folder).rglob("*.py")))
    folders = [Path(p) for p in (*site.getsitepackages(), site.getusersitepackages())]
    for path in files + [p for p in folders if p.is_dir()]:
        try:
            stat = path.stat()
        except OSError:
            continue
        parts.append(f"{path} {stat.st_mtime_ns} {stat.st_size}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def load(key: str, directory: Path) -> NodeIndex | None:
    """The cached index for ``key``, or None when there is none (or it is unreadable)."""
    path = directory / f"{key}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT or data.get("key") != key:
            return None
        return NodeIndex.from_json(data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("node index %s unreadable (%s): rebuilding it", path, exc)
        return None


def save(index: NodeIndex, directory: Path) -> Path | None:
    """Write atomically (two workers may boot at once); a read-only cache only costs speed."""
    path = directory / f"{index.key}.json"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(f".{os.getpid()}.tmp")
        temp.write_text(json.dumps(index.to_json()), encoding="utf-8")
        temp.replace(path)
    except OSError as exc:
        log.warning(
            "node index not saved to %s (%s): the next boot imports every module", path, exc
        )
        return None
    return path


@contextmanager
def recording(nodes: ModuleType, key: str) -> Iterator[Callable[[list[FailedModule]], NodeIndex]]:
    """While ComfyUI loads every node module, note which built-in module registered which
    types; yields a function that makes the index (given the modules that failed)."""
    original = nodes.load_custom_node
    providers: dict[str, Provider] = {}
    loaded: list[tuple[Provider, bool]] = []

    async def load_custom_node(module_path: str, *args: Any, **kwargs: Any) -> bool:
        parent = kwargs.get("module_parent", args[1] if len(args) > 1 else "custom_nodes")
        before = set(dict.keys(nodes.NODE_CLASS_MAPPINGS))
        ok = False
        try:
            ok = await original(module_path, *args, **kwargs)
            return ok
        finally:
            if parent in BUILTIN_PARENTS:
                provider = Provider(str(module_path), parent)
                loaded.append((provider, ok))
                for name in set(dict.keys(nodes.NODE_CLASS_MAPPINGS)) - before:
                    providers[name] = provider

    def make(failed: list[FailedModule]) -> NodeIndex:
        names = {
            n: nodes.NODE_DISPLAY_NAME_MAPPINGS[n]
            for n in providers
            if n in nodes.NODE_DISPLAY_NAME_MAPPINGS
        }
        typed = set(providers.values())
        at_boot = [p for p, ok in loaded if ok and (p not in typed or _acts_on_load(p))]
        return NodeIndex(key, providers, names, [f for f in failed if f.core], at_boot)

    nodes.load_custom_node = load_custom_node
    try:
        yield make
    finally:
        nodes.load_custom_node = original


def _acts_on_load(provider: Provider) -> bool:
    """A V3 extension with its own ``on_load`` does something when loaded besides
    offering node types (0.33's ``nodes_replacements`` registers node replacements)."""
    try:
        return "def on_load(" in Path(provider.path).read_text(encoding="utf-8")
    except OSError:
        return False


def run_now(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run one of ComfyUI's node loaders to completion from synchronous code, which may be
    inside a running event loop (a lookup during validation) and may hold import locks
    (a custom pack looking up a built-in type at import): in this thread, without a loop.
    The loaders are async in signature only; one that really awaits is refused, and the
    contract test loads every built-in module this way."""
    try:
        while True:
            awaited = coroutine.send(None)
            if awaited is not None:
                raise RuntimeError(f"{coroutine.__qualname__} awaited {awaited!r} while loading")
    except StopIteration as done:
        return done.value
    finally:
        coroutine.close()


class LazyNodeClasses(dict):  # type: ignore[type-arg]
    """``nodes.NODE_CLASS_MAPPINGS`` with the indexed built-in types not imported yet.

    Membership, iteration and ``len`` see every type at once, without importing anything;
    ``[]`` and ``get`` import the providing module first (``items``/``values`` import all).
    ComfyUI's own code reaches this object through ``nodes.NODE_CLASS_MAPPINGS`` at call
    time, so replacing the module attribute is enough (tests/test_comfy_contract.py pins it).
    """

    def __init__(
        self,
        loaded: Mapping[str, Any],
        pending: Mapping[str, Provider],
        load: Callable[[Provider, bool], bool],
    ) -> None:
        super().__init__(loaded)
        self._pending = {n: p for n, p in pending.items() if not dict.__contains__(self, n)}
        #: The modules in the order ComfyUI's boot imports them.
        self._order = list(dict.fromkeys(pending.values()))
        self._load = load
        self._lock = threading.RLock()
        #: (module file, seconds) of each module imported on first use, in order.
        self.imported: list[tuple[str, float]] = []

    def _import(self, name: str) -> bool:
        with self._lock:
            provider = self._pending.get(name)
            if provider is None:
                return dict.__contains__(self, name)
            started = time.perf_counter()
            if not self._load(provider, False):
                # Some of ComfyUI's modules import each other in a cycle that resolves only
                # in its boot's order (nodes_post_processing <-> nodes_latent): import the
                # ones before this one first, in that order, then this one again.
                for earlier in self._order[: self._order.index(provider)]:
                    if earlier in self._pending.values():
                        self._load(earlier, True)
                        self._forget(earlier)
                self._load(provider, True)
            self._forget(provider)
            elapsed = time.perf_counter() - started
            self.imported.append((provider.path, elapsed))
            module = Path(provider.path).name
            log.info("imported %s on first use of %s in %.2fs", module, name, elapsed)
            return dict.__contains__(self, name)

    def _forget(self, provider: Provider) -> None:
        for name in [n for n, p in self._pending.items() if p == provider]:
            del self._pending[name]

    def import_all(self) -> None:
        for name in list(self._pending):
            self._import(name)

    def __missing__(self, name: str) -> Any:
        if self._import(name):
            return dict.__getitem__(self, name)
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self, name) or name in self._pending

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self[name]
        except KeyError:
            return default

    def __setitem__(self, name: str, value: Any) -> None:
        self._pending.pop(name, None)
        dict.__setitem__(self, name, value)

    def setdefault(self, name: str, default: Any = None) -> Any:
        if name not in self:
            self[name] = default
        return self[name]

    def update(self, *args: Any, **kwargs: Any) -> None:
        for name, value in dict(*args, **kwargs).items():
            self[name] = value

    def _names(self) -> list[str]:
        """A snapshot: another thread (a job's first use) may import a module meanwhile."""
        with self._lock:
            loaded = list(dict.keys(self))
            return loaded + [n for n in self._pending if not dict.__contains__(self, n)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def keys(self) -> KeysView[str]:  # type: ignore[override]
        return KeysView(self)

    def items(self) -> Any:
        self.import_all()
        return dict.items(self)

    def values(self) -> Any:
        self.import_all()
        return dict.values(self)

    def copy(self) -> dict[str, Any]:
        self.import_all()
        return dict(dict.items(self))
