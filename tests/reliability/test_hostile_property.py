"""Hostile saved workflows, generated: real saves and built bombs (nested subgraphs,
reroute loops) with parts replaced by odd types, huge numbers, control characters and
ids that close cycles, through the real parse and convert path on the session's ComfyUI
node definitions. Whatever comes in, the answer is a prompt or a coded user error
(``invalid_input``, ``validation_failed``), never an exception of ours."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import savedkit
from comfyui_runpod.executor.convert import DisplayNames, convert
from comfyui_runpod.executor.errors import JobError
from comfyui_runpod.executor.request import parse_workflow
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

CASES = Path(__file__).resolve().parents[1] / "oracle" / "cases"
SAVES = [
    "invert_plain",
    "invert_v1",
    "subgraph_middle_v1",
    "subgraph_nested",
    "group_twice_v1",
    "group_primitive_reroute",
    "reroute_chain",
    "primitive_node",
    "bypassed_same_type",
    "muted_output",
]
BASES = [json.loads((CASES / f"{name}.json").read_text())["workflow"] for name in SAVES] + [
    savedkit.nested_subgraphs(3),
    savedkit.nested_subgraphs(24),  # 33 million nodes: refused by the limit
    savedkit.reroute_chain(40),
    savedkit.reroute_chain(5, loop=True),
]
#: Values a hostile client puts where the frontend writes ids, slots, lists and names:
#: subgraph boundary ids, huge numbers, odd types, control characters.
ODD = st.one_of(
    st.sampled_from(
        [-10, -20, 0, 1, 2, 5, -1, 10**400, -(10**400), 2**63, 1.5, float("inf"), True]
    ),
    st.sampled_from(["", "\n", "in.png\n", "\x00", "1", "-10", "Reroute", "PrimitiveNode"]),
    st.sampled_from(["workflow>Inv", "54eead58-08e1-4782-afdc-cc36c6a57610", "sg-0", "sg-1"]),
    st.sampled_from([None, [], {}, [None], ["x"], [[1]], {"x": 1}, [1, 2, 3, 4, 5, 6]]),
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8)),
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
        ),
        max_leaves=6,
    ),
)


def _places(document: Any) -> list[tuple[Any, Any]]:
    """Every (container, key or index) in the document, found without recursion."""
    found, stack = [], [document]
    while stack:
        item = stack.pop()
        keys = item.keys() if isinstance(item, dict) else range(len(item))
        for key in keys:
            found.append((item, key))
            if isinstance(item[key], (dict, list)):
                stack.append(item[key])
    return found


@st.composite
def hostile_saves(draw: st.DrawFn) -> dict[str, Any]:
    """A base save with one to four parts replaced; a replacement may also be another
    part of the same document (a node into its own subgraph, a link onto itself)."""
    document = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 4))):
        places = _places(document)
        if not places:
            break
        parent, key = draw(st.sampled_from(places))
        if draw(st.booleans()):
            value = draw(ODD)
        else:  # a part elsewhere in the document: cycles, swapped ids, lists as ids
            other_parent, other_key = draw(st.sampled_from(places))
            value = copy.deepcopy(other_parent[other_key])
        parent[key] = value
    return document


@pytest.fixture(scope="module")
def node_classes(executor: Any) -> Any:
    return executor.comfy.nodes.NODE_CLASS_MAPPINGS


@pytest.fixture(scope="module")
def display_names(executor: Any, node_classes: Any) -> DisplayNames:
    return DisplayNames(node_classes, executor.comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS)


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(document=hostile_saves(), as_text=st.booleans())
def test_any_saved_document_converts_or_is_a_coded_user_error(
    document: dict[str, Any], as_text: bool, node_classes: Any, display_names: DisplayNames
) -> None:
    try:
        workflow = parse_workflow(json.dumps(document) if as_text else document)
        prompt = convert(workflow, node_classes, display_names)
    except JobError as exc:
        event(exc.code)
        assert exc.code in ("invalid_input", "validation_failed"), exc.line
        assert "\n" not in exc.line
        return
    event("converted")
    json.dumps(prompt)  # a prompt ComfyUI can be sent
    for node_id, node in prompt.items():
        assert isinstance(node_id, str) and isinstance(node["class_type"], str)
        assert isinstance(node["inputs"], dict)
