"""Make the oracle corpus: saved (UI-format) workflows paired with what the real frontend's
``app.graphToPrompt()`` makes of them.

Desktop ComfyUI 0.3.75 + comfyui-frontend-package (tests/desktopkit.py) in Debian's chromium.
Hand-made cases are built in the browser (``app.loadApiJson``, then the LiteGraph API for
modes, reroutes, notes, primitives, subgraphs; legacy group nodes through the frontend's
own command and its name dialog) and serialized; templates come from the
``comfyui-workflow-templates-json`` package (only those whose nodes are all installed).
Each case is reloaded with ``app.loadGraphData`` and converted by ``graphToPrompt`` — what
a person gets on opening the file and queueing it. Output: ``tests/oracle/cases/*.json``
(``{"workflow", "prompt", "source"}``) and ``tests/oracle/widgets.json`` (every node type's
widgets as the frontend builds them). Run by hand; the fixtures are committed::

    python tests/oracle/make_corpus.py [--templates N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import workflows  # noqa: E402
from desktopkit import launch_chromium, open_frontend, start_desktop  # noqa: E402

CASES = HERE / "cases"


def _invert(prefix: str = "inv") -> dict[str, Any]:
    return workflows.invert(color=0x123456, prefix=prefix)


def _txt2img() -> dict[str, Any]:
    return workflows.tiny_sd(
        "tiny.safetensors", seed=123456789, prefix="sd", negative="blurry", cfg=7.5
    )


# JS helpers available to every case's ``mutate`` body (``g`` is app.graph).
HELPERS = """
const node = (id) => g.getNodeById(Number(id));
const add = (type, props = {}) => {
  const n = LiteGraph.createNode(type); Object.assign(n, props); g.add(n); return n; };
const slot = (n, name) => n.inputs.findIndex((i) => i.name === name);
const link = (from, out, to, name) => from.connect(out, to, slot(to, name));
const setw = (n, name, v) => { n.widgets.find((w) => w.name === name).value = v; };
const grp = (name) => g.nodes.filter((n) => n.type === 'workflow>' + name);
"""

#: name → (API prompt to open, JS that edits ``g`` before it is saved, "0.4" | "1").
HAND: dict[str, tuple[dict[str, Any], str, str]] = {
    "invert_plain": (_invert(), "", "0.4"),
    "invert_v1": (_invert("v1"), "", "1"),
    "sampler_seed": (_txt2img(), "", "0.4"),
    "sampler_advanced_noise_seed": (
        {
            **_txt2img(),
            "3": {
                "class_type": "KSamplerAdvanced",
                "inputs": {
                    "add_noise": "enable",
                    "noise_seed": 42,
                    "steps": 4,
                    "cfg": 6.0,
                    "sampler_name": "euler",
                    "scheduler": "karras",
                    "start_at_step": 0,
                    "end_at_step": 1000,
                    "return_with_leftover_noise": "disable",
                    "model": ["4", 0],
                    "positive": ["6", 0],
                    "negative": ["7", 0],
                    "latent_image": ["5", 0],
                },
            },
        },
        "",
        "0.4",
    ),
    "primitive_node": (
        _invert("prim"),
        """const p = add('PrimitiveNode'); p.pos = [0, 300];
        link(p, 0, node(1), 'width'); p.widgets[0].value = 16;
        const q = add('PrimitiveNode'); link(q, 0, node(3), 'filename_prefix');
        q.widgets[0].value = 'from_primitive';""",
        "0.4",
    ),
    "primitive_seed": (
        _txt2img(),
        "const p = add('PrimitiveNode'); link(p, 0, node(3), 'seed'); p.widgets[0].value = 777;",
        "0.4",
    ),
    "reroute_chain": (
        _invert("rr"),
        """const a = add('Reroute'); const b = add('Reroute');
        node(1).connect(0, a, 0); a.connect(0, b, 0); b.connect(0, node(2), 0);""",
        "0.4",
    ),
    "reroute_fanout_v1": (
        {
            **_invert("fan"),
            "4": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        },
        """const a = add('Reroute'); node(1).connect(0, a, 0);
        a.connect(0, node(2), 0); a.connect(0, node(4), 0);""",
        "1",
    ),
    "muted_middle": (_invert("muted"), "node(2).mode = 2;", "0.4"),
    "muted_output": (
        {**_invert("kept"), "4": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}},
        "node(4).mode = 2;",
        "0.4",
    ),
    "bypassed_same_type": (_invert("bypass"), "node(2).mode = 4;", "0.4"),
    "bypassed_chain": (
        {
            **_invert("bypass2"),
            "4": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
            "3": {
                "class_type": "SaveImage",
                "inputs": {"images": ["4", 0], "filename_prefix": "bypass2"},
            },
        },
        "node(2).mode = 4; node(4).mode = 4;",
        "0.4",
    ),
    "bypassed_sampler": (_txt2img(), "node(3).mode = 4;", "0.4"),
    "bypassed_other_type": (_txt2img(), "node(8).mode = 4;", "0.4"),
    "notes": (
        _invert("notes"),
        """const n = add('Note'); n.widgets[0].value = 'remember: invert';
        const m = add('MarkdownNote'); m.widgets[0].value = '# title';""",
        "0.4",
    ),
    "converted_widget_linked": (
        {
            **_invert("conv"),
            "10": {"class_type": "PrimitiveInt", "inputs": {"value": 24}},
            "11": {"class_type": "PrimitiveString", "inputs": {"value": "linked_prefix"}},
        },
        "link(node(10), 0, node(1), 'height'); link(node(11), 0, node(3), 'filename_prefix');",
        "0.4",
    ),
    "load_image": (
        {
            "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {
                "class_type": "SaveImage",
                "inputs": {"images": ["2", 0], "filename_prefix": "li"},
            },
            "4": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
            "5": {
                "class_type": "LoadImageMask",
                "inputs": {"image": "example.png", "channel": "alpha"},
            },
            "6": {"class_type": "MaskToImage", "inputs": {"mask": ["5", 0]}},
            "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
        },
        "",
        "0.4",
    ),
    "several_outputs": (
        {
            **_invert("a"),
            "4": {
                "class_type": "SaveImage",
                "inputs": {"images": ["1", 0], "filename_prefix": "b"},
            },
            "5": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
            "6": {
                "class_type": "ImageScale",
                "inputs": {
                    "image": ["2", 0],
                    "upscale_method": "bilinear",
                    "width": 16,
                    "height": 16,
                    "crop": "center",
                },
            },
            "7": {
                "class_type": "SaveImage",
                "inputs": {"images": ["6", 0], "filename_prefix": "c"},
            },
        },
        "node(5).title = 'My preview';",
        "0.4",
    ),
    "subgraph": (
        _invert("sub"),
        """const items = new Set([node(1), node(2)]);
        g.convertToSubgraph(items);""",
        "0.4",
    ),
    "subgraph_middle_v1": (
        {
            **_invert("submid"),
            "4": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
            "3": {
                "class_type": "SaveImage",
                "inputs": {"images": ["4", 0], "filename_prefix": "submid"},
            },
        },
        "g.convertToSubgraph(new Set([node(2), node(4)]));",
        "1",
    ),
    "subgraph_nested": (
        _txt2img(),
        """const outer = g.convertToSubgraph(new Set([node(6), node(7), node(3)])).node;
        const sg = outer.subgraph;
        const inner = [...sg.nodes].filter((n) => n.type === 'CLIPTextEncode');
        sg.convertToSubgraph(new Set(inner));""",
        "0.4",
    ),
}

#: name → (API prompt to open, JS before grouping, [(group name, node ids)], JS after,
#: "0.4" | "1", saved as older frontends saved it). Legacy group nodes (``extra.groupNodes``,
#: the frontend's "Convert to Group Node (Deprecated)").
GROUPED: dict[str, tuple[dict[str, Any], str, list[tuple[str, list[int]]], str, str, bool]] = {
    "group_sampler": (
        _txt2img(),
        "",
        [("Sampler", [5, 3, 8])],
        "setw(grp('Sampler')[0], 'steps', 5); setw(grp('Sampler')[0], 'seed', 99);",
        "0.4",
        False,
    ),
    "group_sampler_legacy": (
        _txt2img(),
        "",
        [("Sampler", [5, 3, 8])],
        "setw(grp('Sampler')[0], 'cfg', 4.5);",
        "0.4",
        True,
    ),
    "group_advanced_sampler": (
        HAND["sampler_advanced_noise_seed"][0],
        "const p = add('PrimitiveNode'); link(p, 0, node(3), 'sampler_name'); "
        "p.widgets[0].value = 'dpmpp_2m';",
        [("Advanced", [10, 5, 3, 8])],
        "setw(grp('Advanced')[0], 'steps', 7); setw(grp('Advanced')[0], 'end_at_step', 500);",
        "0.4",
        False,
    ),
    "group_twice_v1": (
        {
            **_invert("one"),
            "4": {
                "class_type": "SaveImage",
                "inputs": {"images": ["2", 0], "filename_prefix": "two"},
            },
        },
        "",
        [("Inv", [1, 2])],
        """const b = add('workflow>Inv'); setw(b, 'width', 32); setw(b, 'color', 255);
        b.connect(0, node(4), 0);""",
        "1",
        False,
    ),
    "group_primitive_reroute": (
        _invert("pr"),
        """const p = add('PrimitiveNode'); link(p, 0, node(1), 'width'); p.widgets[0].value = 16;
        const r = add('Reroute'); node(1).connect(0, r, 0); r.connect(0, node(2), 0);""",
        [("PR", [4, 1, 5, 2])],
        "",
        "0.4",
        False,
    ),
    "group_muted": (
        _txt2img(),
        "",
        [("Sampler", [5, 3, 8])],
        "grp('Sampler')[0].mode = 2;",
        "0.4",
        False,
    ),
    "group_bypassed": (
        {
            **_invert("gbp"),
            "4": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
            "3": {
                "class_type": "SaveImage",
                "inputs": {"images": ["4", 0], "filename_prefix": "gbp"},
            },
        },
        "",
        [("Mid", [2, 4])],
        "grp('Mid')[0].mode = 4;",
        "0.4",
        False,
    ),
}


def _subgraph_input_by_name() -> dict[str, Any]:
    """The shape of the template "Qwen image edit (subgraphed)", made small: the subgraph
    node saved with only its linked input (``image``), the definition listing an unlinked
    widget input (``width``) before it. The frontend pairs the two by name; by position,
    ``width`` would get the outer image link and ``image`` nothing."""
    sub = "5e1f0c2a-0000-4000-8000-000000000001"
    image = {"name": "IMAGE", "type": "IMAGE"}
    return {
        "version": 0.4,
        "last_node_id": 3,
        "last_link_id": 2,
        "nodes": [
            {
                "id": 1,
                "type": "EmptyImage",
                "mode": 0,
                "inputs": [],
                "outputs": [{**image, "links": [1]}],
                "widgets_values": [16, 16, 1, 0],
            },
            {
                "id": 2,
                "type": sub,
                "mode": 0,
                "inputs": [{**image, "name": "image", "link": 1}],
                "outputs": [{**image, "links": [2]}],
                "widgets_values": [24],
            },
            {
                "id": 3,
                "type": "SaveImage",
                "mode": 0,
                "inputs": [{"name": "images", "type": "IMAGE", "link": 2}],
                "outputs": [],
                "widgets_values": ["by_name"],
            },
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"]],
        "definitions": {
            "subgraphs": [
                {
                    "id": sub,
                    "name": "Scale",
                    "version": 1,
                    "revision": 0,
                    "config": {},
                    "state": {
                        "lastGroupId": 0,
                        "lastLinkId": 12,
                        "lastNodeId": 5,
                        "lastRerouteId": 0,
                    },
                    "inputNode": {"id": -10, "bounding": [-180, -20, 120, 60]},
                    "outputNode": {"id": -20, "bounding": [400, -20, 120, 60]},
                    "inputs": [
                        {"id": "in-width", "name": "width", "type": "INT", "linkIds": [10]},
                        {"id": "in-image", "name": "image", "type": "IMAGE", "linkIds": [11]},
                    ],
                    "outputs": [
                        {"id": "out-image", "name": "IMAGE", "type": "IMAGE", "linkIds": [12]}
                    ],
                    "widgets": [],
                    "groups": [],
                    "extra": {},
                    "nodes": [
                        {
                            "id": 5,
                            "type": "ImageScale",
                            "mode": 0,
                            "inputs": [
                                {"name": "image", "type": "IMAGE", "link": 11},
                                {
                                    "name": "width",
                                    "type": "INT",
                                    "widget": {"name": "width"},
                                    "link": 10,
                                },
                            ],
                            "outputs": [{**image, "links": [12]}],
                            "widgets_values": ["nearest-exact", 24, 8, "disabled"],
                        }
                    ],
                    "links": [
                        {
                            "id": 10,
                            "origin_id": -10,
                            "origin_slot": 0,
                            "target_id": 5,
                            "target_slot": 1,
                            "type": "INT",
                        },
                        {
                            "id": 11,
                            "origin_id": -10,
                            "origin_slot": 1,
                            "target_id": 5,
                            "target_slot": 0,
                            "type": "IMAGE",
                        },
                        {
                            "id": 12,
                            "origin_id": 5,
                            "origin_slot": 0,
                            "target_id": -20,
                            "target_slot": 0,
                            "type": "IMAGE",
                        },
                    ],
                }
            ]
        },
        "extra": {},
    }


#: name → a saved file written by hand (shapes found in real files that the LiteGraph API
#: does not save), opened in the frontend as it is.
WRITTEN: dict[str, dict[str, Any]] = {"subgraph_input_by_name": _subgraph_input_by_name()}

LOAD = "async ([api, name]) => { await app.loadApiJson(api, name); }"

MUTATE = (
    """async ([mutate, version]) => {
  const g = app.graph;
"""
    + HELPERS
    + """
  new Function('g', 'LiteGraph', 'node', 'add', 'slot', 'link', 'setw', 'grp', mutate)(
    g, LiteGraph, node, add, slot, link, setw, grp);
  g.setDirtyCanvas(true, true);
  return JSON.parse(JSON.stringify(version === '1' ? g.asSerialisable() : g.serialize()));
}"""
)

SELECT = """(ids) => { app.canvas.deselectAll();
  for (const id of ids) app.canvas.select(app.graph.getNodeById(id)); }"""


def _group(page: Any, name: str, ids: list[int]) -> None:
    """Ids to one legacy group node, as a person does it: select, the command (Alt+G),
    a name in its dialog."""
    page.evaluate(SELECT, ids)
    page.evaluate(
        "() => { app.extensionManager.command.execute("
        "'Comfy.GroupNode.ConvertSelectedNodesToGroupNode'); }"
    )
    page.fill(".p-dialog input", name)
    page.keyboard.press("Enter")
    page.wait_for_function(
        "(n) => app.graph.nodes.some((x) => x.type === 'workflow>' + n)", arg=name
    )


def _legacy(saved: dict[str, Any]) -> dict[str, Any]:
    """A save as frontends before widget sockets made it: ``workflow/`` group types, and
    only linked widgets among a node's inputs."""
    saved = json.loads(json.dumps(saved))
    inner = [n for d in saved["extra"]["groupNodes"].values() for n in d["nodes"]]
    for node in saved["nodes"] + inner:
        node["type"] = node["type"].replace("workflow>", "workflow/")
        node["inputs"] = [
            i for i in node.get("inputs", []) if not ("widget" in i and i.get("link") is None)
        ]
    return saved


CONVERT = """async ([wf, name]) => {
  await app.loadGraphData(structuredClone(wf), true, true, name,
    {showMissingNodesDialog: false, showMissingModelsDialog: false});
  const {output} = await app.graphToPrompt();
  return JSON.parse(JSON.stringify(output));
}"""

WIDGETS = """() => {
  const table = {};
  for (const type of Object.keys(LiteGraph.registered_node_types).sort()) {
    let n; try { n = LiteGraph.createNode(type); } catch { continue; }
    if (!n) continue;
    // [name, widget type, goes into the prompt, saved in widgets_values]
    table[type] = (n.widgets || []).map((w) => [w.name, w.type,
      w.options?.serialize !== false, w.serialize !== false]);
  }
  return table;
}"""


def _templates(limit: int) -> list[tuple[str, dict[str, Any]]]:
    """Templates whose every node type is installed (core ComfyUI 0.3.75 + frontend-only)."""
    try:
        import comfyui_workflow_templates_json as package
    except ImportError:
        print("comfyui-workflow-templates-json is not installed: no templates", file=sys.stderr)
        return []
    known = set(json.loads(_nodes_json())["types"]) | {
        "Note",
        "MarkdownNote",
        "PrimitiveNode",
        "Reroute",
    }
    found = []
    for path in sorted((Path(package.__file__).parent / "templates").glob("*.json")):
        try:
            workflow = json.loads(path.read_text())
        except ValueError:
            continue
        if not isinstance(workflow, dict) or "nodes" not in workflow:
            continue
        subs = (workflow.get("definitions") or {}).get("subgraphs") or []
        types = {n["type"] for n in workflow["nodes"]}
        types |= {n["type"] for s in subs for n in s.get("nodes", [])}
        if types - {s["id"] for s in subs} <= known:
            found.append((path.stem, workflow))
    step = max(1, len(found) // limit) if limit else 1
    return found[::step][:limit]


def _nodes_json() -> str:
    import subprocess

    command = [sys.executable, "-m", "comfyui_runpod", "comfyui", "nodes", "--json", "--cpu"]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def main() -> int:
    from comfyui_runpod.executor import find_comfyui
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--templates", type=int, default=24, help="at most this many (spread)")
    parser.add_argument("--only", nargs="*", help="only these hand-made case names")
    parser.add_argument("--widgets-only", action="store_true", help="only widgets.json")
    args = parser.parse_args()
    templates = _templates(args.templates)
    CASES.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        desktop = start_desktop(find_comfyui().path, Path(scratch) / "desktop", {})
        try:
            deadline = time.monotonic() + 150
            desktop.wait_ready(urllib.request.Request(f"{desktop.url}/object_info"), deadline)
            with sync_playwright() as playwright:
                browser = launch_chromium(playwright)
                page = open_frontend(browser, desktop.url)
                widgets = page.evaluate(WIDGETS)
                (HERE / "widgets.json").write_text(json.dumps(widgets, indent=0) + "\n")
                for name, (api, mutate, version) in HAND.items():
                    if args.widgets_only or (args.only and name not in args.only):
                        continue
                    page.evaluate(LOAD, [api, name])
                    saved = page.evaluate(MUTATE, [mutate, version])
                    _write(name, saved, page.evaluate(CONVERT, [saved, name]), "hand-made")
                for name, (api, pre, groups, post, version, legacy) in GROUPED.items():
                    if args.widgets_only or (args.only and name not in args.only):
                        continue
                    page.evaluate(LOAD, [api, name])
                    page.evaluate(MUTATE, [pre, version])
                    for group_name, ids in groups:
                        _group(page, group_name, ids)
                    saved = page.evaluate(MUTATE, [post, version])
                    saved = _legacy(saved) if legacy else saved
                    _write(name, saved, page.evaluate(CONVERT, [saved, name]), "hand-made")
                for name, saved in WRITTEN.items():
                    if args.widgets_only or (args.only and name not in args.only):
                        continue
                    _write(name, saved, page.evaluate(CONVERT, [saved, name]), "hand-made")
                for name, workflow in templates if not (args.only or args.widgets_only) else []:
                    try:
                        prompt = page.evaluate(CONVERT, [workflow, name])
                    except Exception as exc:  # the frontend itself cannot convert it
                        print(f"skip template {name}: {exc}", file=sys.stderr)
                        continue
                    _write(f"template_{name}", workflow, prompt, "comfyui-workflow-templates")
                browser.close()
        finally:
            desktop.stop()
    return 0


def _write(name: str, workflow: Any, prompt: Any, source: str) -> None:
    document = {"source": source, "workflow": workflow, "prompt": prompt}
    (CASES / f"{name}.json").write_text(json.dumps(document, sort_keys=True) + "\n")
    print(f"{name}: {len(prompt)} prompt nodes")


if __name__ == "__main__":
    sys.exit(main())
