"""The converter against the real frontend on random graphs (a property test).

Hypothesis draws small graphs of model-free core nodes — random widget values, links,
reroute chains, primitives (the frontend's and ComfyUI's own), converted widgets, titles,
muted and bypassed nodes, notes, a subgraph (itself bypassed or muted, where the
frontend drops a subgraph node's insides as the converter does) perhaps nested in
another, links through the link's own reroutes, both save versions, saves compressed as
templates are (unlinked widget inputs left out); the desktop ComfyUI's frontend in
Debian's chromium builds each with the LiteGraph API and saves it, reopens the save and
makes the prompt (``app.graphToPrompt()``). Converting that same save here must give
that prompt. Runs on the ComfyUI and frontend of the lane (0.3.75 + 1.32.9, 0.33.0 +
1.49.6). ``CONVERT_EXAMPLES`` sets how many graphs (default 60; the draws are
derandomized, so a CI run is repeatable); ``CONVERT_SHRINK=1`` has hypothesis shrink a
failing graph to a small one (minutes in the browser, so not in CI, where the whole
failing case is written out instead).
"""

from __future__ import annotations

import json
import os
import string
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from comfyui_runpod.executor.convert import DisplayNames, convert
from comfyui_runpod.executor.errors import JobError
from desktopkit import launch_chromium, open_frontend, require_chromium, start_desktop
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

#: Core nodes that need no model and make something from nothing: each graph starts here.
SOURCES = ("EmptyImage", "SolidMask", "PrimitiveInt", "PrimitiveString")
#: ...and nodes that take IMAGE, MASK, INT or STRING sockets.
CONSUMERS = (
    "ImageInvert",
    "ImageBlend",
    "ImageScale",
    "ImageToMask",
    "MaskToImage",
    "SaveImage",
    "PreviewImage",
)
POOL = SOURCES + CONSUMERS
EXAMPLES = int(os.environ.get("CONVERT_EXAMPLES", "60"))
SHRINK = os.environ.get("CONVERT_SHRINK") == "1"
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")
WIDGET_CHOICES = ("value", "value", "link", "primitive")
TEXT = st.text(string.ascii_letters + string.digits + "_- ", min_size=1, max_size=10)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The desktop frontend in chromium, ready for graphs (no RunPod endpoint needed)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    require_chromium()
    from comfyui_runpod.executor import find_comfyui

    desktop = start_desktop(find_comfyui().path, tmp_path_factory.mktemp("frontend"), {})
    try:
        probe = urllib.request.Request(f"{desktop.url}/object_info")
        desktop.wait_ready(probe, time.monotonic() + 180)
        with sync_api.sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            yield open_frontend(browser, desktop.url, timeout_ms=90_000)
            browser.close()
    finally:
        desktop.stop()


# -- drawing graphs ---------------------------------------------------------------------------


def _inputs(node_class: Any) -> list[tuple[str, Any, dict[str, Any]]]:
    spec = node_class.INPUT_TYPES()
    found = []
    for group in ("required", "optional"):
        for name, definition in (spec.get(group) or {}).items():
            kind = definition[0]
            options = (
                definition[1] if len(definition) > 1 and isinstance(definition[1], dict) else {}
            )
            found.append((name, kind, options))
    return found


def _value(kind: Any, options: dict[str, Any]) -> st.SearchStrategy[Any]:
    if isinstance(kind, (list, tuple)):
        return st.sampled_from(list(kind))
    if kind == "INT":
        low = max(int(options.get("min", 0)), -1000)
        return st.integers(low, max(low, min(int(options.get("max", low + 64)), low + 64)))
    if kind == "FLOAT":
        return st.sampled_from([0.0, 0.25, 0.5, 1.0])
    if kind == "BOOLEAN":
        return st.booleans()
    if kind == "STRING":
        return TEXT
    return st.none()


@st.composite
def graphs(draw: st.DrawFn, classes: dict[str, Any], subgraph_modes: list[int]) -> dict[str, Any]:
    """A graph as the JS below builds it: nodes, links (through reroute nodes and the
    link's own reroutes), primitives, a subgraph perhaps nested in another."""
    count = draw(st.integers(2, 7))
    nodes: list[dict[str, Any]] = []
    links: list[dict[str, Any]] = []
    primitives: list[dict[str, Any]] = []
    for index in range(count):
        node_type = draw(st.sampled_from(SOURCES if index == 0 else CONSUMERS + SOURCES))
        node = {
            "type": node_type,
            "mode": draw(st.sampled_from([0, 4, 2, 0, 0])),
            "title": draw(st.none() | TEXT),
            "widgets": {},
        }
        for name, kind, options in _inputs(classes[node_type]):
            is_widget = isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES
            if is_widget:
                node["widgets"][name] = draw(_value(kind, options))
            sources = [
                (origin, slot)
                for origin, earlier in enumerate(nodes)
                for slot, out in enumerate(classes[earlier["type"]].RETURN_TYPES)
                if out == kind and not (is_widget and earlier["mode"] == 2)
            ]
            # Sockets are linked wherever something fits (chains are where bypass and
            # reroutes bite); widgets sometimes take a link or a primitive, never from a
            # muted node: frontends 1.32 and 1.49 disagree there (test_convert.py pins
            # what the converter does).
            choice = "link" if not is_widget else draw(st.sampled_from(WIDGET_CHOICES))
            if choice == "link" and sources:
                origin, slot = draw(st.sampled_from(sources))
                links.append(
                    {
                        "from": origin,
                        "out": slot,
                        "to": index,
                        "input": name,
                        "widget": is_widget,
                        "reroutes": draw(st.integers(0, 2)),
                        "native": draw(st.integers(0, 2)),
                    }
                )
            elif choice == "primitive" and kind in ("INT", "STRING"):
                value = draw(_value(kind, options))
                primitives.append({"to": index, "input": name, "value": value})
        nodes.append(node)
    grouped = draw(st.none() | st.lists(st.integers(0, count - 1), min_size=1, unique=True))
    outer = None
    if grouped and draw(st.booleans()):  # the subgraph node and others into another
        rest = [i for i in range(count) if i not in grouped]
        outer = draw(st.lists(st.sampled_from(rest), unique=True)) if rest else []
    inside = set(grouped or ()) | set(outer or ())
    # A PrimitiveNode into a subgraph: 1.32 inlines it (as ours), 1.49 drops it.
    primitives = [p for p in primitives if p["to"] not in inside]
    # A muted subgraph node feeding a widget: as a muted node above. A bypassed or muted
    # subgraph node inside another: both frontends still send its inner nodes (they
    # check the mode of top-level nodes only), the converter drops them.
    crossing = any(
        link["widget"] and link["from"] in (grouped or ()) and link["to"] not in grouped
        for link in links
    )
    modes = [0] if outer is not None else [m for m in subgraph_modes if not (crossing and m == 2)]
    return {
        "nodes": nodes,
        "links": links,
        "primitives": primitives,
        "notes": draw(st.integers(0, 1)),
        "subgraph": grouped,
        "subgraph_mode": draw(st.sampled_from(modes)),
        "outer": outer,
        "version": draw(st.sampled_from(["0.4", "1"])),
        "compress": draw(st.booleans()),
    }


# Each example starts from a cleared graph with an id of its own: frontend 1.49 keeps
# widget values in a store keyed by root graph id, node id and widget name, and
# ``clear()`` leaves the graph the all-zero id, whose entries it never clears, so a node
# made there took the value of the same id's node in an earlier example. ``stale``
# names any node whose widgets differ from a new node's on being added (the check that
# examples stay apart). A compressed save leaves out unlinked widget inputs, as
# templates are saved.
BUILD = """async (spec) => {
  const g = app.graph;
  g.clear();
  g.id = crypto.randomUUID();
  const stale = [];
  const slot = (n, name) => n.inputs.findIndex((i) => i.name === name);
  const made = spec.nodes.map((s, i) => {
    const n = LiteGraph.createNode(s.type);
    const fresh = JSON.stringify((n.widgets ?? []).map((w) => w.value));
    g.add(n);
    if (JSON.stringify((n.widgets ?? []).map((w) => w.value)) !== fresh) stale.push(i);
    if (s.title !== null) n.title = s.title;
    for (const [name, value] of Object.entries(s.widgets)) {
      const w = n.widgets?.find((w) => w.name === name); if (w) w.value = value;
    }
    return n;
  });
  for (const l of spec.links) {
    let from = made[l.from], out = l.out;
    for (let i = 0; i < l.reroutes; i++) {
      const r = LiteGraph.createNode('Reroute'); g.add(r); from.connect(out, r, 0);
      from = r; out = 0;
    }
    let before = from.connect(out, made[l.to], slot(made[l.to], l.input));
    for (let i = 0; before && i < l.native; i++) before = g.createReroute([40 * i, 40], before);
  }
  for (const p of spec.primitives) {
    const n = LiteGraph.createNode('PrimitiveNode'); g.add(n);
    n.connect(0, made[p.to], slot(made[p.to], p.input));
    if (n.widgets?.length) n.widgets[0].value = p.value;
  }
  for (let i = 0; i < spec.notes; i++) {
    const n = LiteGraph.createNode('Note'); g.add(n); n.widgets[0].value = 'a note';
  }
  spec.nodes.forEach((s, i) => { made[i].mode = s.mode; });
  if (spec.subgraph) {
    const {node} = g.convertToSubgraph(new Set(spec.subgraph.map((i) => made[i])));
    node.mode = spec.subgraph_mode;
    if (spec.outer) g.convertToSubgraph(new Set([node, ...spec.outer.map((i) => made[i])]));
  }
  const saved = JSON.parse(JSON.stringify(
    spec.version === '1' ? g.asSerialisable() : g.serialize()));
  if (spec.compress) {
    const lean = (n) => {
      if (n.inputs) n.inputs = n.inputs.filter((i) => !i.widget || i.link != null);
    };
    saved.nodes.forEach(lean);
    (saved.definitions?.subgraphs ?? []).forEach((d) => d.nodes.forEach(lean));
  }
  await app.loadGraphData(structuredClone(saved), true, true, 'random',
    {showMissingNodesDialog: false, showMissingModelsDialog: false});
  const {output} = await app.graphToPrompt();
  return {saved, prompt: JSON.parse(JSON.stringify(output)), stale};
}"""


def test_converting_the_frontends_saves_gives_its_prompts(
    page: Any, executor: Any, tmp_path: Path
) -> None:
    classes = executor.comfy.nodes.NODE_CLASS_MAPPINGS
    names = DisplayNames(classes, executor.comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS)
    # Frontend 1.32 sends the insides of a bypassed or muted subgraph node (1.49 and the
    # converter drop them), so only 1.49 on draws such subgraph nodes.
    version = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__")
    newer = tuple(int(part) for part in version.split(".")[:2]) >= (1, 49)
    subgraph_modes = [0, 4, 2] if newer else [0]

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        phases=list(Phase) if SHRINK else [Phase.explicit, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(graphs({t: classes[t] for t in POOL}, subgraph_modes))
    def check(spec: dict[str, Any]) -> None:
        made = page.evaluate(BUILD, spec)
        assert made["stale"] == [], "a node took widget values left by an earlier example"
        if not made["prompt"]:  # nothing would run: the converter refuses the file
            with pytest.raises(JobError, match="no nodes to run"):
                convert(made["saved"], classes, names)
            return
        ours = convert(made["saved"], classes, names)
        if ours != made["prompt"]:  # the whole case, to rebuild it without the browser
            case = {"spec": spec, "workflow": made["saved"], "prompt": made["prompt"]}
            (tmp_path / "mismatch.json").write_text(json.dumps(case, indent=1))
        assert ours == made["prompt"], f"case in {tmp_path / 'mismatch.json'}"

    check()
