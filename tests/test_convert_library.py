"""The converter against the frontend on ComfyUI's whole template library, per CI lane.

tests/oracle/library/comfyui-<version>.json.gz holds every template of the
``comfyui-workflow-templates`` release the lane's ComfyUI pins, with what the lane's own
frontend made of it (``graphToPrompt()`` in chromium: tests/oracle/library.py, run by
hand; no browser here, so CI compares all of them in seconds). Each template must convert
to exactly that prompt, or have an outcome listed for that lane, each with its reason
(docs/saved-workflows.md has the table): nothing may differ silently.

- ``comfyui-<version>.refused.json``: templates refused with the named widget-count
  mismatch (template → the start of the error's line on the first node it names). The
  frontend fills such widgets by position; a shifted value would run with the wrong
  settings.
- The dicts below: the frontend's own quirks, applied to its prompt before comparing.
"""

from __future__ import annotations

import gzip
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from comfyui_runpod.executor import find_comfyui
from comfyui_runpod.executor.convert import DisplayNames, convert
from comfyui_runpod.executor.errors import JobError

VERSION = find_comfyui().version
#: Where tests/oracle/library.py writes the lane's oracle (``library_file``).
LIBRARY = Path(__file__).resolve().parent / "oracle" / "library"
ORACLE = LIBRARY / f"comfyui-{VERSION}.json.gz"
LANES = ("0.3.75", "0.33.0")


@cache
def _library() -> dict[str, Any]:
    return json.loads(gzip.decompress(ORACLE.read_bytes())) if ORACLE.exists() else {}


@cache
def _refused() -> dict[str, str]:
    path = LIBRARY / f"comfyui-{VERSION}.refused.json"
    return json.loads(path.read_text()) if path.exists() else {}


NAMES = sorted(_library().get("templates", {}))

#: Templates that need custom node packs (template → one missing type). The frontend
#: sends the unknown types on; the converter names them all at once.
NEEDS_PACKS: dict[str, dict[str, str]] = {
    "0.3.75": {"video_wan2_2_14B_animate": "DWPreprocessor"},
    "0.33.0": {
        "template_rob_realistic_2k_images_quick_variations": "AILab_QwenVL",
        "templates_mjm_looped_restyler": "GetImageSizeAndCount",
        "templates_rob_realistic_2k_images_quick_variations.app": "AILab_QwenVL",
    },
}

#: Node types the frontend's bundled locale titles otherwise than ComfyUI's display name
#: (type → the frontend's title), where the saved node has no title of its own. Titles
#: do not change what runs; ours is the display name ``/object_info`` gives.
LOCALE_TITLES: dict[str, dict[str, str]] = {
    "0.3.75": {
        "EmptyHunyuanLatentVideo": "EmptyHunyuanLatentVideo",
        "PreviewAny": "Preview Any",
        "Preview3D": "Preview 3D",
    },
    "0.33.0": {
        "TopazImageEnhance": "Topaz Image Enhance",
        "ByteDance2ReferenceNode": "ByteDance Seedance 2.5 Reference to Video",
        "IdeogramPImage": "Ideogram P-Image",
        "LTXVConcatAVLatent": "LTXVConcatAVLatent",
        "LTXVSeparateAVLatent": "LTXVSeparateAVLatent",
    },
}

#: Widgets that only show something (an audio player, a text preview, an image
#: comparison): the frontend sends them, empty; the converter does not (ComfyUI ignores
#: inputs a node does not have). Type → input.
DISPLAY_INPUTS: dict[str, dict[str, str]] = {
    "0.3.75": {
        "LoadAudio": "audioUI",
        "SaveAudio": "audioUI",
        "SaveAudioMP3": "audioUI",
        "SaveAudioOpus": "audioUI",
        "PreviewAudio": "audioUI",
        "PreviewAny": "preview",
    },
    "0.33.0": {"ImageCompare": "compare_view"},
}

#: Inputs whose value the frontend makes in the browser when queueing (the 3D viewer's
#: camera and screenshot): a worker has no viewer and sends the saved value. Type → input.
BROWSER_VALUES: dict[str, dict[str, str]] = {"0.3.75": {}, "0.33.0": {"Load3D": "image"}}

#: Frontend 1.49 gives a subgraph's node whose id a node outside it also has a new id
#: when it opens the file; 1.32 and the converter keep the saved id (template → the
#: frontend's prompt id → the saved one).
RENUMBERED: dict[str, dict[str, dict[str, str]]] = {
    "0.3.75": {},
    "0.33.0": {
        "templates-product_scene_relight": {"15:30": "15:15"},
        "image_newbieimage_exp0_1-t2i": {"41:53": "41:43", "41:54": "41:49"},
    },
}

#: The frontend's other quirks (docs/saved-workflows.md says why): template → [(node
#: id, input or None for the whole node, the frontend's value, ours)].
ABSENT = "(absent)"
QUIRKS: dict[str, dict[str, list[tuple[str, str | None, Any, Any]]]] = {
    "0.3.75": {},
    "0.33.0": {
        # A bypassed subgraph node inside a subgraph: 1.49 hands its input through and
        # still lists its inner nodes (unlinked, so they never run); ours lists none.
        # A subgraph input linked outside (here through a reroute from a primitive):
        # 1.49 sends the inner widget's own value, the converter what the link gives
        # (docs/saved-workflows.md, "The two frontends").
        "template_contact_sheet-step_3.app": [
            (node_id, "duration", 3, 5)
            for node_id in (
                "309:310",
                "345:343",
                "353:351",
                "361:359",
                "369:367",
                "377:375",
                "385:383",
            )
        ],
        "flux1_dev_uso_reference_image_gen": [
            (node_id, None, kind, ABSENT)
            for node_id, kind in (
                ("112:55:117", "CLIPVisionEncode"),
                ("112:55:118", "USOStyleReference"),
                ("112:56:119", "CLIPVisionEncode"),
                ("112:56:120", "USOStyleReference"),
            )
        ],
    },
}


@pytest.fixture(scope="module")
def converter(executor):
    nodes = executor.comfy.nodes
    names = DisplayNames(nodes.NODE_CLASS_MAPPINGS, nodes.NODE_DISPLAY_NAME_MAPPINGS)
    return lambda workflow: convert(workflow, nodes.NODE_CLASS_MAPPINGS, names)


def test_the_lane_has_its_library() -> None:
    """Both CI lanes have their oracle; another ComfyUI version has none to compare with."""
    if VERSION not in LANES:
        pytest.skip(f"no template-library oracle for ComfyUI {VERSION}")
    assert ORACLE.exists(), f"{ORACLE}: run tests/oracle/library.py for this lane"
    assert _library()["comfyui"] == VERSION
    assert len(NAMES) >= 150
    listed = set(_refused()) | set(NEEDS_PACKS[VERSION]) | set(RENUMBERED[VERSION])
    assert listed | set(QUIRKS[VERSION]) <= set(NAMES)


def _renumber(prompt: dict[str, Any], ids: dict[str, str]) -> dict[str, Any]:
    """The prompt with the frontend's new node ids back to the saved ones, links too."""
    text = json.dumps(prompt)
    for theirs, ours in ids.items():
        text = text.replace(f'"{theirs}"', f'"{ours}"')
    return json.loads(text)


def _as_ours(expected: dict[str, Any], ours: dict[str, Any], name: str) -> None:
    """The frontend's prompt with its listed quirks replaced by what the converter does
    there, each checked to be there first."""
    for node_id, input_name, theirs, value in QUIRKS.get(VERSION, {}).get(name, []):
        if input_name is None:
            assert expected.pop(node_id)["class_type"] == theirs
        else:
            assert expected[node_id]["inputs"].get(input_name, ABSENT) == theirs
            expected[node_id]["inputs"][input_name] = value
    for node_id, node in expected.items():
        kind, inputs, mine = node["class_type"], node["inputs"], ours.get(node_id)
        if LOCALE_TITLES.get(VERSION, {}).get(kind) == node["_meta"]["title"] and mine:
            node["_meta"] = mine["_meta"]
        shown = DISPLAY_INPUTS.get(VERSION, {}).get(kind)
        if shown in inputs and inputs[shown] in ("", {"__value__": ["", ""]}):
            del inputs[shown]
        made = BROWSER_VALUES.get(VERSION, {}).get(kind)
        if made in inputs and isinstance(inputs[made], dict) and mine:
            inputs[made] = mine["inputs"].get(made)


@pytest.mark.parametrize("name", NAMES)
def test_template_converts_as_the_frontend_does(name: str, converter) -> None:
    entry = _library()["templates"][name]
    missing = NEEDS_PACKS.get(VERSION, {}).get(name)
    refused = _refused().get(name)
    if missing is not None or refused is not None:
        with pytest.raises(JobError) as caught:
            converter(entry["workflow"])
        assert caught.value.code == "validation_failed"
        if missing is not None:
            assert "unknown node type" in caught.value.message
        assert (missing or refused) in caught.value.message
        return
    assert "frontend_error" not in entry, entry.get("frontend_error")
    expected = _renumber(entry["prompt"], RENUMBERED.get(VERSION, {}).get(name, {}))
    ours = converter(entry["workflow"])
    _as_ours(expected, ours, name)
    assert ours == expected


def test_a_refusal_names_an_option_the_converter_does_not_lay_out(converter) -> None:
    """ComfyUI 0.33's dynamic combos add widgets by the option chosen, and the converter
    lays them out, except an option that adds a seed's ``control_after_generate`` (the
    frontend removes an option's widgets by their name's prefix, which that one lacks).
    Its refusal says so instead of blaming the file."""
    if VERSION != "0.33.0":
        pytest.skip("dynamic combos are ComfyUI 0.33's")
    with pytest.raises(JobError) as caught:
        converter(_library()["templates"]["api_topaz_image_enhance_bloom2"]["workflow"])
    message = caught.value.message
    assert (
        "node 2 (TopazImageEnhanceV2): 13 saved widget values, but option 'Bloom 2' of model "
        "adds widgets this converter does not lay out (a seed's control)"
    ) in message
    assert "export the API format from ComfyUI for such a workflow" in message
    assert "saved with another version" not in message
    assert caught.value.detail["widget_mismatch"][0]["unfollowed"] == "model"
