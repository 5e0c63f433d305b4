"""The saved-workflow converter against the real frontend (tests/oracle/: saved workflows
paired with what ``app.graphToPrompt()`` of desktop ComfyUI's frontend made of them, and
every node type's widgets as that frontend builds them). No browser here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from comfyui_runpod.executor.convert import DisplayNames, convert, widgets_of
from comfyui_runpod.executor.errors import JobError

ORACLE = Path(__file__).resolve().parent / "oracle"
CASES = sorted((ORACLE / "cases").glob("*.json"))


@pytest.fixture(scope="module")
def node_classes(executor):
    return executor.comfy.nodes.NODE_CLASS_MAPPINGS


@pytest.fixture(scope="module")
def display_names(executor, node_classes):
    return DisplayNames(node_classes, executor.comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS)


def test_widgets_are_the_frontends(node_classes) -> None:
    """Every installed node type's widgets (names, which reach the prompt, which are
    saved) as the desktop frontend builds them."""
    table = json.loads((ORACLE / "widgets.json").read_text())
    wrong = {}
    for node_type, widgets in table.items():
        if node_type not in node_classes:
            continue
        ours = [
            [w.name, w.in_prompt, w.saved] for w in widgets_of(node_classes[node_type], node_type)
        ]
        theirs = [[name, prompt, saved] for name, _, prompt, saved in widgets]
        if ours != theirs:
            wrong[node_type] = {"ours": ours, "frontend": theirs}
    assert not wrong, json.dumps(wrong, indent=1)[:4000]


#: Templates saved with newer nodes than ComfyUI 0.3.75's: the frontend fills the widgets
#: by position and drops the extra value; the converter refuses, naming the node.
MISMATCHED = {
    "template_3d_hunyuan3d-v2.1": "node 19:3 (ModelSamplingAuraFlow): 2 saved widget values",
    "template_image_flux2_klein_image_edit_4b_base": "(ImageScaleToTotalPixels): 3 saved",
    "template_image_flux2_klein_image_edit_9b_distilled": "(ImageScaleToTotalPixels): 3 saved",
    "template_image_qwen_image_edit_2509_relight": "node 10:75 (CFGNorm): 2 saved widget",
    "template_templates-image_to_real": "node 17:7 (CFGNorm): 2 saved widget values",
}
#: Where the frontend's answer is its own quirk, not the graph's meaning: (node id, input or
#: "_meta", the frontend's value, ours).
QUIRKS = {
    # The frontend's bundled locale names this node by its type, not ComfyUI's display name.
    "template_hunyuan_video_text_to_video": [
        (
            "45",
            "_meta",
            {"title": "EmptyHunyuanLatentVideo"},
            {"title": "Empty HunyuanVideo 1.0 Latent"},
        ),
    ],
    # A subgraph node saved without its inputs: the frontend shifts the promoted widget
    # values (steps gets the seed); the inner node's own values are what the graph says.
    "template_image_ovis_text_to_image": [
        ("57:44", "steps", 775709856082329, 20),
        ("57:44", "cfg", 20, 5),
    ],
}


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_matches_graph_to_prompt(case: Path, node_classes, display_names) -> None:
    document = json.loads(case.read_text())
    if case.stem in MISMATCHED:
        with pytest.raises(JobError) as caught:
            convert(document["workflow"], node_classes, display_names)
        assert caught.value.code == "validation_failed"
        assert MISMATCHED[case.stem] in caught.value.message
        assert "the installed node has" in caught.value.message
        return
    expected = document["prompt"]
    for node_id, name, theirs, ours in QUIRKS.get(case.stem, []):
        place = expected[node_id] if name == "_meta" else expected[node_id]["inputs"]
        assert place[name] == theirs
        place[name] = ours
    assert convert(document["workflow"], node_classes, display_names) == expected


def test_corpus_covers_the_graph_features() -> None:
    names = {c.stem for c in CASES}
    assert len(names) >= 40
    for feature in (
        "primitive",
        "reroute",
        "muted",
        "bypassed",
        "notes",
        "converted",
        "load_image",
        "several_outputs",
        "subgraph",
        "seed",
        "v1",
        "template_",
    ):
        assert any(feature in n for n in names), feature
