"""The saved-workflow converter against the real frontend (tests/oracle/: saved workflows
paired with what ``app.graphToPrompt()`` of desktop ComfyUI's frontend made of them, and
every node type's widgets as that frontend builds them). No browser here."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import savedkit
import workflows
from comfyui_runpod.executor import find_comfyui
from comfyui_runpod.executor.convert import DisplayNames, convert
from comfyui_runpod.executor.errors import JobError
from comfyui_runpod.executor.widgets import DYNAMIC_COMBO, custom_combo, widgets_of
from PIL import Image

ORACLE = Path(__file__).resolve().parent / "oracle"
CASES = sorted((ORACLE / "cases").glob("*.json"))
#: The oracle is desktop ComfyUI 0.3.75's frontend (1.32.9) on 0.3.75's node definitions.
#: Other versions title, version and widget some nodes differently (0.33: "Empty Image",
#: CreateVideo's bit_depth, ...), so comparing with it is that version's test alone; the
#: converter's behaviour tests below run on every version.
ORACLE_COMFYUI = "0.3.75"
oracle_version_only = pytest.mark.skipif(
    find_comfyui().version != ORACLE_COMFYUI,
    reason=f"the oracle fixtures were made with ComfyUI {ORACLE_COMFYUI}",
)


@pytest.fixture(scope="module")
def node_classes(executor):
    return executor.comfy.nodes.NODE_CLASS_MAPPINGS


@pytest.fixture(scope="module")
def display_names(executor, node_classes):
    return DisplayNames(node_classes, executor.comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS)


@oracle_version_only
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
#: Not in the frontend's answer (a quirk below) or not in ours.
ABSENT = "(absent)"
#: Where the frontend's answer is its own quirk, not the graph's meaning: (node id, input,
#: "_meta" or None for the whole node, the frontend's value, ours).
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
    # Legacy group nodes. Muted, the frontend still runs the group's nodes (and what
    # they feed); muted means "do not run" everywhere else.
    "group_muted": [
        ("10:0", None, "EmptyLatentImage", ABSENT),
        ("10:1", None, "KSampler", ABSENT),
        ("10:2", None, "VAEDecode", ABSENT),
        ("9", "images", ["10:2", 0], ABSENT),
    ],
    # Bypassed, it hands its input through (as ours) but still lists the inner nodes.
    "group_bypassed": [
        ("5:0", None, "ImageInvert", ABSENT),
        ("5:1", None, "ImageInvert", ABSENT),
    ],
    # A reroute inside a group: the frontend links to the reroute itself, then drops
    # the link (the node would fail validation); ours follows it, as outside groups.
    "group_primitive_reroute": [("6:3", "image", ABSENT, ["6:1", 0])],
    # A primitive feeding a widget of a node with 10+ inputs inside a group: the frontend
    # checks "linked" by position among sockets sorted as strings, so it binds the
    # primitive to noise_seed (an INT given "dpmpp_2m"); ours follows the link.
    "group_advanced_sampler": [
        ("11:2", "noise_seed", "dpmpp_2m", 42),
        ("11:2", "sampler_name", "euler", "dpmpp_2m"),
    ],
}


def _patch(expected: dict, node_id: str, name: str | None, theirs, ours) -> None:
    """One quirk of the frontend's answer replaced by ours, after checking it is there."""
    if name is None:
        assert expected.get(node_id, {}).get("class_type", ABSENT) == theirs
        place, key = expected, node_id
    else:
        place = expected[node_id] if name == "_meta" else expected[node_id]["inputs"]
        assert place.get(name, ABSENT) == theirs
        key = name
    if ours is ABSENT:
        del place[key]
    else:
        place[key] = ours


@oracle_version_only
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
    for quirk in QUIRKS.get(case.stem, []):
        _patch(expected, *quirk)
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
        "group_",
        "seed",
        "v1",
        "template_",
    ):
        assert any(feature in n for n in names), feature


# -- saved workflows as jobs ------------------------------------------------------------------


def saved(name: str) -> dict:
    """A saved workflow of the corpus (model-free ones run for real)."""
    return json.loads((ORACLE / "cases" / f"{name}.json").read_text())["workflow"]


def test_a_saved_workflow_runs_as_a_job_dict_or_string(make_pipeline) -> None:
    pipeline = make_pipeline()
    for workflow in (saved("invert_plain"), json.dumps(saved("invert_v1"))):
        result = pipeline.run_sync({"id": "saved", "input": {"workflow": workflow}})
        assert "error" not in result, result
        assert len(result["files"]) == 1 and "convert_s" in result["timings"]
    plain = pipeline.run_sync({"id": "api", "input": {"workflow": workflows.invert()}})
    assert "convert_s" not in plain["timings"]


def test_saved_graph_features_reach_the_run(make_pipeline) -> None:
    """Primitives, reroutes, bypasses and subgraphs change what runs, as on the desktop."""
    pipeline = make_pipeline()
    cases = {
        "primitive_node": ["from_primitive_00001_.png"],
        "reroute_chain": ["rr_00001_.png"],
        "bypassed_same_type": ["bypass_00001_.png"],
        "subgraph_middle_v1": ["submid_00001_.png"],
        "muted_output": ["kept_00001_.png"],
    }
    for name, files in cases.items():
        result = pipeline.run_sync({"id": name, "input": {"workflow": saved(name)}})
        assert "error" not in result, (name, result)
        assert [Path(f).name for f in result["files"]] == files, name


def test_legacy_group_nodes_run_each_instance_with_its_own_values(make_pipeline) -> None:
    """Two instances of one group node (EmptyImage → ImageInvert): each runs with the
    widget values of its instance, and a reroute inside a group is followed."""
    pipeline = make_pipeline()
    result = pipeline.run_sync({"id": "groups", "input": {"workflow": saved("group_twice_v1")}})
    assert "error" not in result, result
    images = {Path(f).name: Image.open(f).convert("RGB") for f in result["files"]}
    one, two = images["one_00001_.png"], images["two_00001_.png"]
    assert one.size == (8, 8) and one.getpixel((0, 0)) == (0xED, 0xCB, 0xA9)
    assert two.size == (32, 512) and two.getpixel((0, 0)) == (255, 255, 0)
    rerouted = pipeline.run_sync(
        {"id": "gr", "input": {"workflow": saved("group_primitive_reroute")}}
    )
    assert "error" not in rerouted, rerouted
    [image] = [Image.open(f) for f in rerouted["files"]]
    assert image.size == (16, 8)  # the primitive inside the group set the width


def test_a_muted_group_node_does_not_run(make_pipeline) -> None:
    """The frontend would still run a muted group's nodes (and save ``two_``)."""
    workflow = saved("group_twice_v1")
    second = next(n for n in workflow["nodes"] if n["id"] == 6)
    second["mode"] = 2
    result = make_pipeline().run_sync({"id": "muted", "input": {"workflow": workflow}})
    assert "error" not in result, result  # ComfyUI runs the outputs that validate
    assert [Path(f).name for f in result["files"]] == ["one_00001_.png"]
    assert result["warnings"] == [
        "node 4 (SaveImage): Required input is missing: images; not run: output 4 (SaveImage)"
    ]


def test_a_group_node_saved_with_other_widgets_is_named(make_pipeline) -> None:
    workflow = saved("group_twice_v1")
    second = next(n for n in workflow["nodes"] if n["id"] == 6)
    second["widgets_values"] = [*second["widgets_values"], 7]
    result = make_pipeline().run_sync({"id": "gm", "input": {"workflow": workflow}})
    assert result["error_code"] == "validation_failed", result
    assert "node 6 (workflow>Inv): 5 saved widget values" in result["error"]
    assert "has 4 (width, height, batch_size, color)" in result["error"]


def test_an_unreadable_group_definition_is_named(make_pipeline) -> None:
    workflow = saved("group_twice_v1")
    workflow["extra"]["groupNodes"]["Inv"]["nodes"][0]["inputs"] = 7
    result = make_pipeline().run_sync({"id": "gd", "input": {"workflow": workflow}})
    assert result["error_code"] == "invalid_input", result
    assert "group node 5 (workflow>Inv)" in result["error"]
    assert "extra.groupNodes" in result["error"]


def test_a_widget_fed_by_a_muted_node_keeps_its_own_value(node_classes, display_names) -> None:
    """As frontend 1.49 (ComfyUI 0.33's) does; 1.32 dropped the input, which then failed
    validation as missing."""
    workflow = saved("converted_widget_linked")
    next(n for n in workflow["nodes"] if n["id"] == 10)["mode"] = 2  # PrimitiveInt → height
    empty = next(n for n in workflow["nodes"] if n["type"] == "EmptyImage")
    prompt = convert(workflow, node_classes, display_names)
    assert "10" not in prompt
    assert prompt[str(empty["id"])]["inputs"]["height"] == empty["widgets_values"][1]


def test_a_primitive_into_a_subgraph_is_inlined(node_classes, display_names) -> None:
    """A PrimitiveNode outside a subgraph feeding one of its inputs: 1.32 inlines its value,
    as here; 1.49 (this save's) sends the inner widget's own value, losing the one shown."""
    case = json.loads((ORACLE / "frontend-1.49.6" / "primitive_into_subgraph.json").read_text())
    primitive = next(n for n in case["workflow"]["nodes"] if n["type"] == "PrimitiveNode")
    assert case["prompt"]["5:1"]["inputs"]["width"] == 1  # what 1.49.6 sent
    prompt = convert(case["workflow"], node_classes, display_names)
    assert prompt["5:1"]["inputs"]["width"] == primitive["widgets_values"][0] == 56


def test_a_primitive_behind_a_bypassed_node_does_not_reach_past_it(
    node_classes, display_names
) -> None:
    """A PrimitiveNode into a bypassed PrimitiveInt's ``value``, that node into EmptyImage's
    ``batch_size``: the frontend (1.49.6's save and prompt here; 1.32.9 the same) inlines a
    PrimitiveNode only into the widgets it feeds itself or through reroutes, so the bypass
    hands nothing through and ``batch_size`` keeps its own value, 3, not the primitive's 11."""
    case = json.loads((ORACLE / "frontend-1.49.6" / "primitive_behind_bypass.json").read_text())
    assert case["prompt"]["2"]["inputs"]["batch_size"] == 3  # what 1.49.6 sent
    prompt = convert(case["workflow"], node_classes, display_names)
    assert {k: v["inputs"] for k, v in prompt.items()} == {
        k: v["inputs"] for k, v in case["prompt"].items()
    }


def test_a_subgraph_input_is_the_instance_input_of_its_name(node_classes, display_names) -> None:
    """The subgraph node saved with its linked input only (``image``), the definition
    listing an unlinked widget input (``width``) first — the shape of the template "Qwen
    image edit (subgraphed)", whose UNETLoader got the outer LoadImage as its file name.
    The frontend pairs the two lists by name: ``width`` keeps its widget value and
    ``image`` gets the outer link, on every ComfyUI version."""
    case = json.loads((ORACLE / "cases" / "subgraph_input_by_name.json").read_text())
    prompt = convert(case["workflow"], node_classes, display_names)
    assert prompt["2:5"]["inputs"]["width"] == 24
    assert prompt["2:5"]["inputs"]["image"] == ["1", 0]
    assert prompt["2:5"]["inputs"] == case["prompt"]["2:5"]["inputs"]  # the frontend's


def test_a_subgraph_nodes_saved_value_reaches_the_widget_it_promotes(
    node_classes, display_names
) -> None:
    """Frontend 1.49 shows the inner widget an unlinked subgraph input leads to on the
    subgraph node; the node's ``widgets_values`` (one per such input, in the definition's
    order) are what the prompt gets, not the inner widget's own value (14 templates on
    0.3.75 and 155 on 0.33 hold such values; their frontends agree). Without a saved value
    the inner widget keeps its own."""
    case = json.loads((ORACLE / "cases" / "subgraph_input_by_name.json").read_text())
    instance = next(n for n in case["workflow"]["nodes"] if n["id"] == 2)
    instance["widgets_values"] = [77]
    assert convert(case["workflow"], node_classes, display_names)["2:5"]["inputs"]["width"] == 77
    instance["widgets_values"] = []
    assert convert(case["workflow"], node_classes, display_names)["2:5"]["inputs"]["width"] == 24


def _dynamic(node_classes, node_type: str, input_name: str) -> None:
    """Skip where ``node_type`` has no dynamic combo ``input_name`` (before ComfyUI 0.33)."""
    spec = node_classes[node_type].INPUT_TYPES() if node_type in node_classes else {}
    kinds = {
        n: d[0] for group in spec.values() if isinstance(group, dict) for n, d in group.items()
    }
    if kinds.get(input_name) != DYNAMIC_COMBO:
        pytest.skip(f"{node_type}.{input_name} is not a dynamic combo in this ComfyUI")


def _one_node(node_type: str, values: list, inputs: list | None = None) -> dict:
    node = {"id": 1, "type": node_type, "mode": 0, "inputs": inputs or [], "outputs": []}
    return {"nodes": [{**node, "widgets_values": values}], "links": [], "version": 0.4}


def test_a_dynamic_combos_option_widgets_take_the_values_after_it(node_classes) -> None:
    """ComfyUI 0.33's SaveVideo: ``format`` adds ``format.codec``, whose ``h264`` adds
    ``format.codec.encoding``, whose ``re-encode`` adds ``crf`` and ``color space``, each
    right after the combo that adds it, named by its path; the frontend sets the saved
    values in that order. The hidden ``codec`` (kept for old prompts) comes last."""
    _dynamic(node_classes, "SaveVideo", "format")
    values = ["clip", "mp4", "h264", "re-encode", 18.0, "HDR", "auto"]
    inputs = [{"name": "video", "type": "VIDEO", "link": None}]
    prompt = convert(_one_node("SaveVideo", values, inputs), node_classes)
    assert prompt["1"]["inputs"] == {
        "filename_prefix": "clip",
        "format": "mp4",
        "format.codec": "h264",
        "format.codec.encoding": "re-encode",
        "format.codec.encoding.crf": 18.0,
        "format.codec.encoding.color_space": "HDR",
        "codec": "auto",
    }
    # The option chosen decides how many values follow: "auto" adds none.
    prompt = convert(_one_node("SaveVideo", ["clip", "webm", "auto", "auto"], inputs), node_classes)
    assert prompt["1"]["inputs"] == {
        "filename_prefix": "clip",
        "format": "webm",
        "format.codec": "auto",
        "codec": "auto",
    }


def test_values_a_dynamic_combo_lacks_keep_only_safe_defaults(node_classes) -> None:
    """A file saved before an input existed has no value for it. The frontend keeps the
    widget's default; the converter does that only for a hidden input or an option's
    optional one (SaveVideo's templates: ``[prefix, format, codec]`` gets the hidden
    ``codec`` and h264's optional ``encoding`` at "auto", as the frontend sends). A
    missing required value is refused as another version of the node, naming it."""
    _dynamic(node_classes, "SaveVideo", "format")
    inputs = [{"name": "video", "type": "VIDEO", "link": None}]
    prompt = convert(_one_node("SaveVideo", ["clip", "mp4", "h264"], inputs), node_classes)
    assert prompt["1"]["inputs"]["format.codec.encoding"] == "auto"
    assert prompt["1"]["inputs"]["codec"] == "auto"
    _dynamic(node_classes, "ResizeImageMaskNode", "resize_type")
    # "scale dimensions" adds width, height and crop; the file stops after width.
    workflow = _one_node("ResizeImageMaskNode", ["scale dimensions", 512])
    with pytest.raises(JobError) as caught:
        convert(workflow, node_classes)
    assert caught.value.code == "validation_failed"
    assert (
        "node 1 (ResizeImageMaskNode): 2 saved widget values, the installed node has 2 "
        "(resize_type, scale_method, and those its options add)"
    ) in caught.value.message
    assert "saved with another version of it" in caught.value.message


def test_an_option_with_a_seed_control_is_refused_as_the_converters_gap(node_classes) -> None:
    """An option that adds a seed (and its ``control_after_generate``, whose name lacks
    the option's prefix) is not laid out: refused, saying so, not blaming the file."""
    _dynamic(node_classes, "TopazImageEnhanceV2", "model")
    values = ["Bloom 2", "", 3, 649, "randomize", True, False, "silver", 0.5, 1, 0.5, 0, 0]
    with pytest.raises(JobError) as caught:
        convert(_one_node("TopazImageEnhanceV2", values), node_classes)
    assert "option 'Bloom 2' of model adds widgets this converter does not lay out" in (
        caught.value.message
    )
    assert "saved with another version" not in caught.value.message


def test_custom_combo_options_grow_as_the_frontend_grows_them() -> None:
    """CustomCombo (0.33): ``[choice, index, option1, ...]`` with an empty last option;
    ``index`` as the frontend works it out when queueing, not as saved."""
    filled = custom_combo(["9:16", 0, "16:9", "9:16", ""])
    assert filled is not None
    assert {w.name: v for w, v in filled} == {
        "choice": "9:16",
        "index": 1,
        "option1": "16:9",
        "option2": "9:16",
        "option3": "",
    }
    filled = custom_combo(["x", 5, "a"])  # the frontend adds the empty one after "a"
    assert filled is not None
    assert {w.name: v for w, v in filled} == {
        "choice": "x",
        "index": -1,
        "option1": "a",
        "option2": "",
    }
    assert custom_combo(["a", 0, "a", "", "b"]) is None  # no widget would take "b"


def test_widgets_of_frontend_1_49_kinds(node_classes) -> None:
    """0.33's colour, painter and image-comparison inputs are widgets in frontend 1.49:
    Painter's mask (a STRING drawn as a painter, no upload button) and colour are saved
    and sent; ImageCompare's view is sent but never saved."""
    if "Painter" not in node_classes or "ImageCompare" not in node_classes:
        pytest.skip("Painter and ImageCompare are ComfyUI 0.33's")
    painter = [(w.name, w.in_prompt, w.saved) for w in widgets_of(node_classes["Painter"])]
    assert painter == [(n, True, True) for n in ("mask", "width", "height", "bg_color")]
    compare = [(w.name, w.in_prompt, w.saved) for w in widgets_of(node_classes["ImageCompare"])]
    assert compare == [("compare_view", True, False)]


def test_overrides_name_the_converted_prompts_node_ids(make_pipeline) -> None:
    result = make_pipeline().run_sync(
        {
            "id": "ov",
            "input": {
                "workflow": saved("subgraph_middle_v1"),
                "overrides": {"3.filename_prefix": "renamed", "1.width": 4},
                "tobase64": True,
            },
        }
    )
    assert "error" not in result, result
    assert result["file_info"][0]["name"] == "renamed_00001_.png"


def test_unknown_types_are_named_all_at_once(make_pipeline) -> None:
    workflow = saved("subgraph_middle_v1")
    workflow["nodes"][0]["type"] = "NoSuchNodeA"
    workflow["definitions"]["subgraphs"][0]["nodes"][0]["type"] = "NoSuchNodeB"
    result = make_pipeline().run_sync({"id": "unknown", "input": {"workflow": workflow}})
    assert result["error_code"] == "validation_failed"
    assert "'NoSuchNodeA'" in result["error"] and "'NoSuchNodeB'" in result["error"]
    assert "convert_s" in result["timings"]


def test_a_widget_count_mismatch_names_node_type_and_counts(make_pipeline) -> None:
    workflow = saved("invert_plain")
    empty = next(n for n in workflow["nodes"] if n["type"] == "EmptyImage")
    empty["widgets_values"] = [*empty["widgets_values"], "extra"]
    result = make_pipeline().run_sync({"id": "mismatch", "input": {"workflow": workflow}})
    assert result["error_code"] == "validation_failed"
    message = result["error"]
    assert f"node {empty['id']} (EmptyImage): 5 saved widget values" in message
    assert "has 4 (width, height, batch_size, color)" in message
    assert result["details"]["widget_mismatch"][0]["expected"] == 4


def test_a_saved_workflow_with_nothing_to_run_is_refused(make_pipeline) -> None:
    result = make_pipeline().run_sync(
        {"id": "e", "input": {"workflow": {"nodes": [], "links": []}}}
    )
    assert result["error_code"] == "invalid_input" and "no nodes to run" in result["error"]


# -- hostile saved workflows ------------------------------------------------------------------


def refusal(workflow: dict, node_classes, **kwargs) -> str:
    """The ``invalid_input`` line converting ``workflow`` fails with."""
    with pytest.raises(JobError) as caught:
        convert(workflow, node_classes, **kwargs)
    assert caught.value.code == "invalid_input", caught.value.line
    return caught.value.line


def test_nested_subgraphs_past_the_node_limit_are_refused_before_expanding(
    node_classes,
) -> None:
    """21 levels of a subgraph used twice: 4 million nodes from 15 KB (before the limit,
    ``serve`` grew to tens of GB and was killed). Refused at once, naming the limit and
    how to raise it; the same shape within the limit converts."""
    started = time.perf_counter()
    line = refusal(savedkit.nested_subgraphs(21), node_classes)
    assert time.perf_counter() - started < 2
    assert "expands to more than 10000 nodes" in line
    assert "--max-workflow-nodes (env COMFYUI_RUNPOD_MAX_WORKFLOW_NODES)" in line
    prompt = convert(savedkit.nested_subgraphs(4), node_classes)  # 30 nodes, 16 inverts
    assert sum(n["class_type"] == "ImageInvert" for n in prompt.values()) == 16
    assert "more than 29 nodes" in refusal(savedkit.nested_subgraphs(4), node_classes, max_nodes=29)
    assert convert(savedkit.nested_subgraphs(4), node_classes, max_nodes=33) == prompt


def test_group_node_instances_count_toward_the_node_limit(node_classes) -> None:
    workflow = saved("group_twice_v1")  # 2 instances of a 2-node group, 1 SaveImage each
    assert convert(workflow, node_classes, max_nodes=8)
    assert "more than 6 nodes" in refusal(workflow, node_classes, max_nodes=6)


def test_a_long_reroute_chain_converts_and_a_loop_is_named(node_classes) -> None:
    prompt = convert(savedkit.reroute_chain(600), node_classes)
    assert prompt["2"]["inputs"]["images"] == ["1", 0]
    line = refusal(savedkit.reroute_chain(5, loop=True), node_classes)
    assert "node 104 (Reroute): its links go round in a loop" in line


def _with(path: str, value: object) -> dict:
    """``subgraph_middle_v1`` with the part at ``path`` (dots; digits index lists) set."""
    workflow = saved("subgraph_middle_v1")
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    target = workflow
    for key in parents:
        target = target[key]
    target[last] = value
    return workflow


@pytest.mark.parametrize(
    ("workflow", "named"),
    [
        (_with("definitions", ["x"]), "definitions: must be an object"),
        (_with("definitions.subgraphs", 5), "definitions.subgraphs: must be a list"),
        (_with("definitions.subgraphs.0", "x"), "definitions.subgraphs[0]: must be an object"),
        (_with("definitions.subgraphs.0.id", ["x"]), "subgraphs[0]: id must be a string"),
        (_with("definitions.subgraphs.0.nodes.0", 7), "nodes[0]: must be an object"),
        (_with("definitions.subgraphs.0.outputs", {}), "subgraphs[0].outputs: must be a list"),
        (_with("definitions.subgraphs.0.outputs.0.linkIds", [[5]]), "linkIds: must be"),
        (_with("definitions.subgraphs.0.inputs", {}), "subgraphs[0].inputs: must be a list"),
        (_with("definitions.subgraphs.0.inputs.0.linkIds", 5), "inputs[0]: must be an object"),
        (_with("definitions.subgraphs.0.inputs.0.linkIds", [{}]), "inputs[0].linkIds: must"),
        (_with("nodes.0.id", [1]), "nodes[0]: id must be a number or a string"),
        (_with("nodes.0.type", ["EmptyImage"]), "node 1: type must be a string"),
        (_with("nodes.0.inputs", {"width": 1}), "node 1: inputs must be a list"),
        (_with("nodes.0.inputs.0", "width"), "node 1 input 0: must be an object"),
        (_with("nodes.2.inputs.0.link", [7]), "node 5 input 0: link must be a number"),
        (_with("nodes.0.widgets_values", 8), "node 1: widgets_values must be a list"),
        (_with("links", {"7": 1}), "links: must be a list"),
        (_with("links.0.origin_slot", "0"), "links[0]: origin_slot must be an integer"),
        (_with("links.0.id", {}), "links[0]: id must be a number or a string"),
        (_with("extra", "x"), "extra: must be an object"),
        (
            _with("definitions.subgraphs.0.links.0.target_slot", "x"),
            "subgraph 54eead58-08e1-4782-afdc-cc36c6a57610 links[0]: target_slot",
        ),
    ],
)
def test_a_malformed_saved_document_is_named(workflow: dict, named: str, node_classes) -> None:
    """Wrong JSON types where the frontend writes ids, lists and slots: ``invalid_input``
    naming the part (each was a ``TypeError`` and so an ``internal_error``)."""
    assert named in refusal(workflow, node_classes)


def test_a_malformed_group_definition_is_named(node_classes) -> None:
    workflow = saved("group_twice_v1")
    workflow["extra"]["groupNodes"]["Inv"]["links"][0][1] = "0"  # a string slot
    assert "group node 5 (workflow>Inv)" in refusal(workflow, node_classes)
    workflow = saved("group_twice_v1")
    workflow["extra"]["groupNodes"]["Inv"]["nodes"][1]["inputs"][0]["name"] = ["image"]
    line = refusal(workflow, node_classes)
    assert "group node 5 (workflow>Inv) in extra.groupNodes: node 1 input 0: name must be" in line


def test_hostile_saved_workflows_are_invalid_input_through_the_pipeline(make_pipeline) -> None:
    pipeline = make_pipeline()
    for name, workflow in {
        "bomb": savedkit.nested_subgraphs(21),
        "loop": savedkit.reroute_chain(5, loop=True),
        "definitions": _with("definitions", ["x"]),
    }.items():
        result = pipeline.run_sync({"id": name, "input": {"workflow": workflow}})
        assert result["error_code"] == "invalid_input", (name, result)
    result = pipeline.run_sync({"id": "chain", "input": {"workflow": savedkit.reroute_chain(600)}})
    assert "error" not in result, result
    assert [Path(f).name for f in result["files"]] == ["rerouted_00001_.png"]


# -- the command line -------------------------------------------------------------------------


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "comfyui_runpod", *args, "--cpu"]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=300)


@oracle_version_only
def test_convert_command_prints_one_or_writes_each_and_reports_failures(tmp_path: Path) -> None:
    for name in ("invert_plain", "subgraph_nested"):
        (tmp_path / f"{name}.json").write_text(json.dumps(saved(name)))
    mismatched = saved("invert_plain")
    mismatched["nodes"][0]["widgets_values"] = [1]
    (tmp_path / "bad.json").write_text(json.dumps(mismatched))
    (tmp_path / "api.json").write_text(json.dumps(workflows.invert()))
    names = ["invert_plain.json", "bad.json", "subgraph_nested.json", "api.json"]
    done = cli("convert", *names, "--out-dir", "out", cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    expected = json.loads((ORACLE / "cases" / "subgraph_nested.json").read_text())["prompt"]
    assert json.loads((tmp_path / "out" / "subgraph_nested.api.json").read_text()) == expected
    assert (tmp_path / "out" / "invert_plain.api.json").is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "api.api.json",
        "invert_plain.api.json",
        "subgraph_nested.api.json",
    ]
    assert "bad.json: validation_failed: " in done.stderr and "saved widget values" in done.stderr
    assert "api.json is already in API format: passed on unchanged" in done.stderr

    one = cli("convert", "invert_plain.json", cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-2000:]
    assert (
        json.loads(one.stdout)
        == json.loads((ORACLE / "cases" / "invert_plain.json").read_text())["prompt"]
    )


def test_run_command_takes_a_saved_workflow(tmp_path: Path) -> None:
    (tmp_path / "wf.json").write_text(json.dumps(saved("reroute_chain")))
    done = cli("run", "wf.json", "--out", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert "convert_s" in result["timings"]
    assert [Path(f).name for f in result["files"]] == ["rr_00001_.png"]
    small = cli("run", "wf.json", "--out", "out", "--max-workflow-nodes", "3", cwd=tmp_path)
    assert small.returncode == 1
    assert "invalid_input: input.workflow: the saved workflow expands to more than 3 nodes" in (
        small.stdout
    )
