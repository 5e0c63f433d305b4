"""The boot defers what ComfyUI's ``server`` imports for its HTTP server alone (0.33: the
assets database and SQLAlchemy), and a deferred name still works when first used."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from comfyui_runpod.executor import Executor
from comfyui_runpod.executor.deferred_imports import Forward, deferring


@pytest.fixture
def heavy_package(tmp_path: Path) -> Iterator[Path]:
    """``heavy/db.py`` that records being executed, and ``user_of_heavy.py`` that takes a
    name from it at import, as ``server`` takes ``register_file_in_place``."""
    (tmp_path / "heavy").mkdir()
    (tmp_path / "heavy" / "__init__.py").write_text("")
    (tmp_path / "heavy" / "db.py").write_text(
        "import sys\nsys.heavy_db_ran = True\ndef lookup(x):\n    return x * 2\n"
    )
    (tmp_path / "user_of_heavy.py").write_text("from heavy.db import lookup\n")
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        for name in ("heavy", "heavy.db", "user_of_heavy"):
            sys.modules.pop(name, None)
        if hasattr(sys, "heavy_db_ran"):
            del sys.heavy_db_ran


def test_a_deferred_module_runs_at_first_use_and_later_imports_get_it(heavy_package) -> None:
    with deferring(["heavy"]) as deferred:
        import user_of_heavy
    assert deferred() == ["heavy", "heavy.db"]
    assert not hasattr(sys, "heavy_db_ran")  # not executed by the import
    assert "heavy.db" not in sys.modules  # the stand-ins are gone
    assert user_of_heavy.lookup(21) == 42  # first use imports the real module
    assert sys.heavy_db_ran is True  # type: ignore[attr-defined]
    import heavy.db

    assert heavy.db.lookup is user_of_heavy.lookup._target()


def test_a_missing_module_still_fails_to_import(heavy_package) -> None:
    with deferring(["heavy"]), pytest.raises(ModuleNotFoundError):
        import heavy.nowhere  # noqa: F401


def test_the_boot_defers_comfyuis_assets_database(executor: Executor) -> None:
    import server

    register = getattr(server, "register_file_in_place", None)
    if register is None:
        pytest.skip("this ComfyUI's server imports no assets database (before 0.33)")
    assert isinstance(register, Forward)
    node_types = executor.comfy.nodes.NODE_CLASS_MAPPINGS
    assert {"SaveImage", "LoadImage", "OpenAIDalle2"} <= set(node_types)
    # first use: the real function, from the real module any later import also gets
    assert server.get_known_subfolder_tags("") == []
    from app.assets.services import path_utils

    assert server.get_known_subfolder_tags._target() is path_utils.get_known_subfolder_tags
