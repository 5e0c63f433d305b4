"""Imports a headless worker defers: what ComfyUI's ``server`` module imports only for its
HTTP server, which this process never starts.

``server`` (0.33+) imports ComfyUI's assets database at module level — the asset seeder,
its routes and services, and with them SQLAlchemy and Alembic (~1 s of a cold start) — yet
uses them only in request handlers and ``PromptServer.start``. Nodes need ``server`` (for
``PromptServer.instance``), so it is imported; :func:`deferring` lets the names it takes
from those packages stand in until first use, when the real module is imported.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import threading
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any


class Forward:
    """A name ``from module import name`` took from a stand-in: the real module is imported,
    and the call or attribute read forwarded, when it is first used."""

    def __init__(self, module: str, name: str) -> None:
        self._module, self._name = module, name

    def _target(self) -> Any:
        return getattr(importlib.import_module(self._module), self._name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._target()(*args, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._target(), attr)

    def __repr__(self) -> str:
        return f"<deferred {self._module}.{self._name}>"


class _StandIn(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return Forward(self.__name__, name)


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers imports under ``prefixes`` with stand-ins, for modules that really exist
    (a missing one still fails as it would)."""

    def __init__(self, prefixes: Sequence[str]) -> None:
        self.prefixes = tuple(prefixes)
        self.made: list[str] = []

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if not any(fullname == p or fullname.startswith(p + ".") for p in self.prefixes):
            return None
        real = importlib.machinery.PathFinder.find_spec(fullname, path)
        if real is None:
            return None
        locations = real.submodule_search_locations
        spec = importlib.machinery.ModuleSpec(fullname, self, is_package=locations is not None)
        if locations is not None:
            spec.submodule_search_locations = list(locations)
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _StandIn(spec.name)
        if spec.submodule_search_locations is not None:
            module.__path__ = spec.submodule_search_locations
        self.made.append(spec.name)
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


@contextmanager
def deferring(prefixes: Sequence[str]) -> Iterator[Callable[[], list[str]]]:
    """While the block runs, modules under ``prefixes`` not yet imported are stand-ins;
    after it they leave ``sys.modules`` (and their parents), so any later import, by a
    custom node say, gets the real module. Yields what it stood in for, so far."""
    finder = _Finder(prefixes)
    sys.meta_path.insert(0, finder)
    try:
        yield lambda: list(finder.made)
    finally:
        sys.meta_path.remove(finder)
        for name in finder.made:
            if isinstance(sys.modules.get(name), _StandIn):
                del sys.modules[name]
            parent, _, child = name.rpartition(".")
            if isinstance(getattr(sys.modules.get(parent), child, None), _StandIn):
                delattr(sys.modules[parent], child)


class _Lazy(types.ModuleType):
    """A module whose code has not run yet: the attributes the import system set
    (``__file__``, ``__spec__``…) read without running it — so scans of ``sys.modules``
    such as ``inspect.getmodule`` leave it alone — any other runs it first, and so does
    importing a submodule of it (which reads the package's ``__path__``)."""

    def __getattr__(self, name: str) -> Any:
        with _LOADING:
            if isinstance(self, _Lazy):
                _run(self)
        return getattr(self, name)


def _run(module: types.ModuleType) -> None:
    loader = module.__dict__.pop("__lazy_loader__")
    if "__lazy_path__" in module.__dict__:
        module.__path__ = module.__dict__.pop("__lazy_path__")
    module.__class__ = types.ModuleType
    try:
        loader.exec_module(module)
    except BaseException:
        if sys.modules.get(module.__name__) is module:  # as a failed import leaves it
            del sys.modules[module.__name__]
        raise


#: One module's code runs at a time, whichever thread first uses it.
_LOADING = threading.RLock()


class _LazyLoader(importlib.abc.Loader):
    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__dict__["__lazy_loader__"] = self.loader
        if "__path__" in module.__dict__:
            module.__dict__["__lazy_path__"] = module.__dict__.pop("__path__")
        module.__class__ = _Lazy


class _LazyFinder(importlib.abc.MetaPathFinder):
    """Answers imports of ``names`` (and of modules under ``prefixes``) with :class:`_Lazy`
    modules."""

    def __init__(self, names: Sequence[str], prefixes: Sequence[str]) -> None:
        self.names, self.prefixes = frozenset(names), tuple(prefixes)
        self.made: list[str] = []

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in self.names and not fullname.startswith(self.prefixes):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is None:
                continue
            if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _LazyLoader(spec.loader)
                self.made.append(fullname)
            return spec
        return None


@contextmanager
def lazily(names: Sequence[str], prefixes: Sequence[str] = ()) -> Iterator[Callable[[], list[str]]]:
    """While the block runs, modules named (or under a prefix) run their code only when
    first used; after it, imports are as usual. Yields the names made lazy and still
    unused."""
    finder = _LazyFinder(names, prefixes)
    sys.meta_path.insert(0, finder)
    try:
        yield lambda: [name for name in finder.made if isinstance(sys.modules.get(name), _Lazy)]
    finally:
        sys.meta_path.remove(finder)
