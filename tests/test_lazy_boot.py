"""The lazy boot: ComfyUI's built-in node modules import on first use of one of their types
(executor/nodeindex.py), its model families on first use of any of their attributes
(executor/deferred_imports.py ``lazily``) — and nothing a server boot would offer is lost.

The whole suite runs lazy (conftest builds the node index before the session boots); the
tests here compare a lazy and an eager boot of the same tree and pin the parts."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import workflows
from comfyui_runpod.executor.deferred_imports import lazily
from comfyui_runpod.executor.nodeindex import (
    LazyNodeClasses,
    NodeIndex,
    Provider,
    index_key,
    load,
    save,
)

TESTS = Path(__file__).resolve().parent

#: Boots once (lazy or eager, with the node index in a given folder) and prints what it
#: offers before and after importing every node type.
DUMP = """
import json, sys, tempfile
from pathlib import Path
from comfyui_runpod.executor import BootSettings, Executor
from comfyui_runpod.executor.deferred_imports import _Lazy

lazy, index_dir, custom = sys.argv[1] == "lazy", Path(sys.argv[2]), Path(sys.argv[3])
settings = BootSettings(
    work_dir=Path(tempfile.mkdtemp()), cpu=True, lazy=lazy, node_index_dir=index_dir,
    custom_node_dirs=(custom,),
)
with Executor(settings) as executor:
    comfy = executor.comfy
    mappings = comfy.nodes.NODE_CLASS_MAPPINGS
    report = {
        "types": sorted(mappings),
        "not_imported": len(mappings) - dict.__len__(mappings),
        "unrun_modules": sorted(n for n, m in sys.modules.items() if isinstance(m, _Lazy)),
        "failed": sorted(f.line for f in comfy.failed_modules),
        "index": str(comfy.node_index),
    }
    report["classes"] = {n: f"{c.__module__}.{c.__qualname__}" for n, c in mappings.items()}
    report["display_names"] = dict(comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS)
    report["failed_after"] = sorted(f.line for f in comfy.failed_modules)
print(json.dumps(report))
"""


def _boot_report(mode: str, index_dir: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", DUMP, mode, str(index_dir), str(TESTS / "custom_nodes")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def boots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """An eager boot (which writes the index) then a lazy one (which reads it)."""
    index_dir = tmp_path_factory.mktemp("node-index")
    eager = _boot_report("eager", index_dir)
    return {"eager": eager, "lazy": _boot_report("lazy", index_dir)}


def test_a_lazy_boot_offers_every_type_and_failure_an_eager_one_does(boots) -> None:
    eager, lazy = boots["eager"], boots["lazy"]
    assert eager["not_imported"] == 0
    assert Path(eager["index"]).is_file() and eager["index"] == lazy["index"]
    assert lazy["not_imported"] > 100, "the built-in node modules were imported at boot"
    assert lazy["types"] == eager["types"]
    assert lazy["failed"] == eager["failed"]
    assert any("broken_pack" in line for line in lazy["failed"])  # custom packs: eager


def test_every_type_imported_on_first_use_is_the_class_an_eager_boot_has(boots) -> None:
    eager, lazy = boots["eager"], boots["lazy"]
    assert lazy["classes"] == eager["classes"]
    assert lazy["display_names"] == eager["display_names"]
    assert lazy["failed_after"] == eager["failed_after"]


def test_the_lazy_boot_leaves_model_families_unrun(boots) -> None:
    unrun = boots["lazy"]["unrun_modules"]
    assert sum(name.startswith("comfy.text_encoders.") for name in unrun) > 10
    assert sum(name.startswith("comfy.ldm.") for name in unrun) > 10
    assert boots["eager"]["unrun_modules"] == []


def test_a_job_imports_the_node_module_it_names_on_first_use(tmp_path: Path) -> None:
    """In a fresh lazy process (the session's ComfyUI may have imported it already)."""
    prompt = workflows.invert(color=0x0A0A0A, size=8)
    prompt["4"] = {
        "class_type": "ImageBlur",  # comfy_extras/nodes_post_processing.py
        "inputs": {"image": ["2", 0], "blur_radius": 1, "sigma": 1.0},
    }
    prompt["3"]["inputs"]["images"] = ["4", 0]
    job = tmp_path / "blur.json"
    job.write_text(json.dumps(prompt))
    command = [sys.executable, "-m", "comfyui_runpod", "run", str(job), "--cpu"]
    command += ["--out", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "of them imported on first use" in done.stderr  # the boot was lazy
    assert "imported nodes_post_processing.py on first use of ImageBlur" in done.stderr
    [png] = json.loads(done.stdout)["files"]
    from PIL import Image

    with Image.open(png) as image:  # a blur of flat 245 is flat 245
        assert image.convert("RGB").getextrema() == ((245, 245),) * 3


# -- the parts ----------------------------------------------------------------------------


def _mappings(loads: list[str], broken: str = "") -> LazyNodeClasses:
    """Three types in two modules; ``broken`` fails unless the modules before it in the
    boot order were imported (like ComfyUI's nodes_post_processing <-> nodes_latent)."""
    providers = {"A": Provider("a.py", "comfy_extras"), "B": Provider("a.py", "comfy_extras")}
    providers["C"] = Provider("c.py", "comfy_api_nodes")

    def load(provider: Provider, final: bool) -> bool:
        loads.append(provider.path)
        if provider.path == broken and "a.py" not in loads[:-1]:
            return False
        for name, p in providers.items():
            if p == provider:
                mappings[name] = f"class {name}"
        return True

    mappings = LazyNodeClasses({"Core": "class Core"}, providers, load)
    return mappings


def test_a_module_that_needs_the_boot_order_is_retried_after_those_before_it() -> None:
    loads: list[str] = []
    mappings = _mappings(loads, broken="c.py")
    assert mappings["C"] == "class C"
    assert loads == ["c.py", "a.py", "c.py"]
    assert mappings["A"] == "class A" and loads == ["c.py", "a.py", "c.py"]


def test_lazy_node_classes_list_without_importing_and_import_once_per_module() -> None:
    loads: list[str] = []
    mappings = _mappings(loads)
    assert len(mappings) == 4 and sorted(mappings) == ["A", "B", "C", "Core"]
    assert "A" in mappings and "Nope" not in mappings
    assert "A" in mappings.keys()  # noqa: SIM118 - ComfyUI's node_replace_manager asks so
    assert set(mappings.keys()) == {"A", "B", "C", "Core"}
    assert loads == []
    assert mappings["B"] == "class B" and mappings.get("A") == "class A"
    assert loads == ["a.py"]  # one module, both its types
    assert mappings.get("Nope") is None
    with pytest.raises(KeyError):
        mappings["Nope"]
    assert dict(mappings.items()) == {n: f"class {n}" for n in ("Core", "A", "B", "C")}
    assert loads == ["a.py", "c.py"]


def test_lazy_node_classes_keep_a_type_set_before_its_module_loads() -> None:
    """A custom pack cannot take a built-in name (ComfyUI passes the base names as
    ``ignore``), but our own nodes are set with ``setdefault``; either way a value set
    first is not replaced by a lookup."""
    loads: list[str] = []
    mappings = _mappings(loads)
    mappings.setdefault("Mine", "my class")
    mappings["C"] = "replacement"
    assert mappings["C"] == "replacement" and loads == []
    assert len(mappings) == 5


def test_the_index_key_changes_with_a_node_file_and_a_bad_file_is_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tree = tmp_path / "ComfyUI"
    (tree / "comfy_extras").mkdir(parents=True)
    (tree / "nodes.py").write_text("")
    module = tree / "comfy_extras" / "nodes_x.py"
    module.write_text("NODE_CLASS_MAPPINGS = {}\n")
    key = index_key(tree, True)
    assert index_key(tree, True) == key != index_key(tree, False)
    module.write_text("NODE_CLASS_MAPPINGS = {'X': object}\n")
    assert index_key(tree, True) != key

    index = NodeIndex(key, {"X": Provider(str(module), "comfy_extras")}, {"X": "Ex"}, [], [])
    directory = tmp_path / "cache"
    assert save(index, directory) == directory / f"{key}.json"
    assert load(key, directory) == index
    (directory / f"{key}.json").write_text("{not json")
    assert load(key, directory) is None
    assert "unreadable" in caplog.text and "rebuilding" in caplog.text


@pytest.fixture
def heavy_package(tmp_path: Path) -> Iterator[Path]:
    """``heavy/`` whose ``__init__`` and ``sub`` record being run; ``broken`` raises."""
    (tmp_path / "heavy").mkdir()
    (tmp_path / "heavy" / "__init__.py").write_text(
        "import sys\nsys.heavy_ran = getattr(sys, 'heavy_ran', 0) + 1\nVALUE = 42\n"
    )
    (tmp_path / "heavy" / "sub.py").write_text("from heavy import VALUE\nDOUBLE = VALUE * 2\n")
    (tmp_path / "broken.py").write_text("raise RuntimeError('broken at import')\n")
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        for name in ("heavy", "heavy.sub", "broken"):
            sys.modules.pop(name, None)
        if hasattr(sys, "heavy_ran"):
            del sys.heavy_ran


def test_a_lazy_module_runs_once_on_first_use_not_on_a_scan(heavy_package: Path) -> None:
    import inspect

    with lazily(["heavy"]) as unrun:
        import heavy
    assert unrun() == ["heavy"] and not hasattr(sys, "heavy_ran")
    assert heavy.__file__.endswith("__init__.py") and heavy.__name__ == "heavy"
    inspect.getmodule(test_a_lazy_module_runs_once_on_first_use_not_on_a_scan)
    assert not hasattr(sys, "heavy_ran"), "a scan of sys.modules ran it"
    assert heavy.VALUE == 42 and sys.heavy_ran == 1  # type: ignore[attr-defined]
    assert heavy.VALUE == 42 and sys.heavy_ran == 1  # type: ignore[attr-defined]
    assert unrun() == []


def test_a_submodule_import_runs_its_lazy_package_first(heavy_package: Path) -> None:
    with lazily(["heavy"]):
        import heavy
    import heavy.sub

    assert heavy.sub.DOUBLE == 84 and sys.heavy_ran == 1  # type: ignore[attr-defined]


def test_a_lazy_module_that_fails_fails_like_an_import_and_can_be_retried(
    heavy_package: Path,
) -> None:
    with lazily(["broken"]):
        import broken
    with pytest.raises(RuntimeError, match="broken at import"):
        broken.anything  # noqa: B018
    assert "broken" not in sys.modules
    with pytest.raises(RuntimeError, match="broken at import"):
        import broken


def test_listing_while_a_first_use_imports_a_module_does_not_break() -> None:
    """``/health`` or ``comfyui nodes`` may list the types while the executor thread
    imports a module on first use: the listing reads a snapshot."""
    mappings = _mappings([])
    listing = iter(mappings)
    assert next(listing) == "Core"
    assert mappings["A"] == "class A"  # the dict grows while the listing is under way
    assert sorted(["Core", *listing]) == ["A", "B", "C", "Core"]
