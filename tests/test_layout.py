"""The package's floor plan, read from source with ``ast`` (nothing is imported).

``nodes/`` must load in a desktop ComfyUI without the headless side, and only the seam
(``executor/boot.py``, ``runner.py``) may import ComfyUI at module level, because ComfyUI
is importable only after ``boot`` has put it on ``sys.path`` and set its CLI args.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMFYUI = {"comfy", "comfy_execution", "comfy_extras", "comfy_api", "execution", "nodes"}
COMFYUI |= {"folder_paths", "server", "latent_preview", "utils", "app"}
SEAM = frozenset({"executor/boot.py", "executor/runner.py"})
PRODUCTION = sorted(
    [*ROOT.glob("*.py"), *ROOT.glob("executor/**/*.py"), *ROOT.glob("nodes/**/*.py")]
)


def imports(path: Path) -> Iterator[tuple[int, str, bool, str]]:
    """(line, absolute target, at module level, source text) for each import in ``path``."""
    package = ["comfyui_runpod", *path.relative_to(ROOT).parent.parts]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lazy = {
        id(node)
        for func in ast.walk(tree)
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(func)
    }
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        text, top = ast.unparse(node), id(node) not in lazy
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name, top, text) for alias in node.names)
        else:
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            yield node.lineno, module, top, text
            yield from ((node.lineno, f"{module}.{a.name}", top, text) for a in node.names)


def offenders(
    rule: Callable[[str, bool], bool], wing: str = "", exempt: frozenset[str] = frozenset()
) -> str:
    """One ``file:line: import`` per import under ``wing`` that ``rule(target, top)`` flags."""
    bad = {  # a dict: `from a import b, c` yields three targets but is one offence
        f"{name}:{line}: {text}": None
        for path in PRODUCTION
        if (name := path.relative_to(ROOT).as_posix()).startswith(wing) and name not in exempt
        for line, target, top, text in imports(path)
        if rule(target, top)
    }
    return "\n".join(bad)


def test_nodes_never_import_executor() -> None:
    bad = offenders(lambda target, _: f"{target}.".startswith("comfyui_runpod.executor."), "nodes/")
    assert not bad, f"nodes/ must load without executor/ (executor may import nodes):\n{bad}"


def test_only_the_seam_imports_comfyui_at_module_level() -> None:
    # Relative imports resolve to comfyui_runpod.*, so the pack's own `.nodes` never matches.
    bad = offenders(lambda target, top: top and target.split(".")[0] in COMFYUI, exempt=SEAM)
    assert not bad, (
        "ComfyUI is importable only after boot: import it inside a function, or move the "
        f"code into executor/boot.py or runner.py:\n{bad}"
    )


def test_the_root_holds_only_init_and_main() -> None:
    extra = sorted({p.name for p in ROOT.glob("*.py")} - {"__init__.py", "__main__.py"})
    assert not extra, f"only __init__.py and __main__.py belong at the root; move {extra} to a wing"
