"""Saved (UI-format) workflows to API prompts, as the frontend's ``graphToPrompt()`` does.

People send the file ComfyUI saved (``{"nodes": [...], "links": [...]}``, versions 0.4 and
1); ComfyUI's executor takes the API prompt. Converting needs each node's input definitions
to know which saved widget value is which input — the booted ComfyUI has them, so the
worker converts instead of refusing. What the frontend does, and so what this does:

- widget values map to inputs in widget order; frontend-only widgets (the
  ``control_after_generate`` combo after seed-like widgets, upload buttons) take a saved
  value but never reach the prompt; a dynamic combo's chosen option puts its widgets
  right after it (executor/widgets.py ``fill``);
- a linked input (a widget converted to an input too) takes the link; ``PrimitiveNode``
  values are inlined, ``Reroute`` chains and subgraph boundaries are followed (a
  subgraph node's inputs paired with its definition's by name, as the frontend does; an
  unlinked one gives the value the subgraph node shows for it);
- muted nodes (mode 2) are dropped and inputs linked to them removed — a widget input
  keeps its own value, as frontend 1.49 does (1.32 dropped it too); bypassed ones (mode
  4) hand an input of the same type through;
- Note, MarkdownNote, PrimitiveNode and Reroute never reach the prompt;
- subgraph nodes (``definitions.subgraphs``) are flattened, inner ids named
  ``"outer:inner"``; legacy group nodes (``extra.groupNodes``) too, as
  ``"group:index"`` (executor/groupnodes.py); every node keeps ``_meta.title``.

Unlike the frontend, a node whose saved widget values do not fit the installed node (a
file saved with another version of it) is refused instead of filled in by position: a
shifted value would run silently with the wrong settings. A file the frontend could not
have written (a list where an id goes, links in a loop) or that expands past the node
limit (executor/savedgraph.py) is refused as ``invalid_input`` naming the part: files
come from clients, and a few KB of nested subgraphs expand to millions of nodes. Nothing
here imports ComfyUI: node classes are passed in (``NODE_CLASS_MAPPINGS``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .checks import unknown_node_types
from .errors import JobError
from .groupnodes import expand, group_name
from .node_imports import FailedModule
from .savedgraph import BYPASS, MAX_NODES, MUTED, Budget, Link, check_document, parse_links
from .widgets import NO_DEFAULT, VALUE_LAYOUTS, Unfollowed, Widget, fill, widgets_of

#: Node types that exist only in the frontend: never in the prompt.
FRONTEND_ONLY = frozenset({"Note", "MarkdownNote", "PrimitiveNode", "Reroute"})
#: Ids of a subgraph's boundary nodes inside it.
SUBGRAPH_INPUT, SUBGRAPH_OUTPUT = -10, -20


# -- the saved graph -----------------------------------------------------------------------


@dataclass
class _Graph:
    """The root graph or one subgraph instance, with the ids its nodes get in the prompt."""

    nodes: dict[Any, dict[str, Any]]
    links: dict[Any, Link]
    prefix: str = ""
    #: The subgraph node this instance is (in ``parent``), and the definition.
    parent: _Graph | None = None
    instance: dict[str, Any] | None = None
    definition: dict[str, Any] = field(default_factory=dict)

    def full_id(self, node_id: Any) -> str:
        return f"{self.prefix}{node_id}"


class _Converter:
    def __init__(
        self,
        document: Mapping[str, Any],
        node_classes: Mapping[str, Any],
        display_names: Mapping[str, str],
        max_nodes: int,
    ) -> None:
        self.node_classes = node_classes
        self.display_names = display_names
        self.budget = Budget(max_nodes)
        definitions = document.get("definitions") or {}
        self.subgraphs = {s["id"]: s for s in definitions.get("subgraphs") or []}
        self.budget.add(document["nodes"])
        nodes = {n["id"]: n for n in document["nodes"]}
        links = parse_links(document.get("links"))
        groups = (document.get("extra") or {}).get("groupNodes")
        self.groups: Mapping[str, Any] = groups if isinstance(groups, Mapping) else {}
        self.mismatched: list[dict[str, Any]] = []
        if self.groups:
            nodes, links, self.mismatched = expand(
                nodes, links, self.groups, node_classes, self.budget
            )
        self.root = _Graph(nodes, links)
        #: Each subgraph instance by (id of the graph it is in, its node id there).
        self.instances: dict[tuple[int, Any], _Graph] = {}
        #: Links of each definition, parsed once however often it is used.
        self._links: dict[Any, dict[Any, Link]] = {}
        #: What each walk state resolves to (see :meth:`resolve_output`).
        self._resolved: dict[tuple[int, Any, int, Any, bool], Any] = {}
        #: Each node type's widgets (``INPUT_TYPES()`` may list a folder), per conversion.
        self._widgets: dict[str, list[Widget] | None] = {}
        self.graphs = self._flatten(self.root, depth=0)

    def _flatten(self, graph: _Graph, depth: int) -> list[_Graph]:
        """This graph and every subgraph instance under it (a subgraph used twice is two
        instances, as in the frontend), counted against the size limit before each is
        built: nested subgraphs grow exponentially."""
        if depth > 32:
            raise JobError("invalid_input", "input.workflow: subgraphs nest more than 32 deep")
        found = [graph]
        for node_id, node in graph.nodes.items():
            definition = self.subgraphs.get(node.get("type"))
            if definition is None or node.get("mode") in (MUTED, BYPASS):
                continue
            outputs = definition.get("outputs") or []
            self.budget.add(
                definition.get("nodes") or [], sum(len(o.get("linkIds") or ()) for o in outputs)
            )
            if definition["id"] not in self._links:
                where = f"subgraph {definition['id']} links"
                self._links[definition["id"]] = parse_links(definition.get("links"), where)
            inner = _Graph(
                {n["id"]: n for n in definition.get("nodes") or []},
                self._links[definition["id"]],
                prefix=f"{graph.prefix}{node_id}:",
                parent=graph,
                instance=node,
                definition=definition,
            )
            self.instances[(id(graph), node_id)] = inner
            found.extend(self._flatten(inner, depth + 1))
        return found

    # -- what a link resolves to -----------------------------------------------------------

    def resolve_input(self, graph: _Graph, node: Mapping[str, Any], slot: int) -> Any:
        """None (nothing: a widget value stays), ``("value", v)`` or ``("link", id, slot)``."""
        link = _link_into(graph, node, slot)
        if link is None:
            return None
        return self.resolve_output(graph, link.origin_id, link.origin_slot, link.type)

    def resolve_output(self, graph: _Graph, origin_id: Any, slot: int, kind: Any) -> Any:
        """What output ``slot`` of ``origin_id`` is, through reroutes, bypassed nodes and
        subgraph boundaries: walked in a loop (a chain of hundreds of reroutes is no
        deeper a recursion than one), every state remembered, so a chain shared by many
        inputs is walked once and a loop is named instead of followed. A walk past a
        bypassed node is another walk (``bypassed`` in its states): a PrimitiveNode's
        value does not reach through a bypass, as in the frontend."""
        walked: set[tuple[int, Any, int, Any, bool]] = set()
        step: Any = ("next", graph, origin_id, slot, kind)
        bypassed = False
        while step is not None and step[0] in ("next", "bypass"):
            bypassed = bypassed or step[0] == "bypass"
            _, graph, origin_id, slot, kind = step
            state = (id(graph), origin_id, slot, kind, bypassed)
            if state in self._resolved:
                step = self._resolved[state]
                break
            if state in walked:
                node_type = (graph.nodes.get(origin_id) or {}).get("type")
                raise JobError(
                    "invalid_input",
                    f"input.workflow: node {graph.full_id(origin_id)} ({node_type}): its links "
                    "go round in a loop (through reroutes or bypassed nodes), so what it passes "
                    "on has no source: link one of them to a real node",
                )
            walked.add(state)
            step = self._step(graph, origin_id, slot, kind, bypassed)
        for state in walked:
            self._resolved[state] = step
        return step

    def _step(self, graph: _Graph, origin_id: Any, slot: int, kind: Any, bypassed: bool) -> Any:
        """One hop of :meth:`resolve_output`: a result, or ``("next", graph, origin_id,
        slot, kind)`` to go on from (``"bypass"`` first: through a bypassed node)."""
        if origin_id == SUBGRAPH_INPUT:
            if graph.parent is None or graph.instance is None:
                return None
            link = _link_into(graph.parent, graph.instance, _instance_slot(graph, slot))
            if link is None:
                return self._promoted_value(graph, slot)
            return ("next", graph.parent, link.origin_id, link.origin_slot, link.type)
        node = graph.nodes.get(origin_id)
        if node is None:
            return None
        node_type = node.get("type")
        if node_type == "Reroute":
            return _through(graph, node, 0, kind)
        if node_type == "PrimitiveNode":
            if bypassed:  # the frontend writes it into the bypassed node's widget only
                return None
            values = node.get("widgets_values") or []
            return ("value", values[0]) if isinstance(values, list) and values else None
        if node_type in FRONTEND_ONLY or node.get("mode") == MUTED:
            return None  # a muted node gives nothing: a widget keeps its own value
        if node.get("mode") == BYPASS:
            index = _bypass_slot(node, slot, kind)
            return None if index is None else _through(graph, node, index, kind, "bypass")
        definition = self.subgraphs.get(node_type)
        if definition is not None:
            inner = self.instances.get((id(graph), origin_id))
            outputs = definition.get("outputs") or []
            if inner is None or not 0 <= slot < len(outputs):
                return None
            for link_id in outputs[slot].get("linkIds") or []:
                link = inner.links.get(link_id)
                if link is not None:
                    return ("next", inner, link.origin_id, link.origin_slot, link.type)
            return None
        return ("link", graph.full_id(origin_id), slot)

    def _promoted_value(self, graph: _Graph, slot: int) -> Any:
        """What input ``slot`` of a subgraph instance that nothing links to outside gives
        inside. Frontend 1.49 shows the first inner widget it leads to on the subgraph
        node, and every inner input it feeds takes that widget's value: the instance's
        saved one (its ``widgets_values``: one per input that leads to a widget, in the
        definition's order) or else the inner widget's own. None where it leads to no
        widget (the frontend sends nothing) or to a nested subgraph's (followed there)."""
        declared = graph.definition.get("inputs")
        if not isinstance(declared, list):
            return None
        saved = (graph.instance or {}).get("widgets_values")
        index = 0
        for position, entry in enumerate(declared):
            target = _promoted_widget(graph, entry) if isinstance(entry, Mapping) else None
            if target is None:
                continue
            if position == slot:
                if isinstance(saved, list) and index < len(saved):
                    return ("value", saved[index])
                node_id, name = target
                node = graph.nodes[node_id]
                if node.get("type") in self.subgraphs:
                    return None
                values = self._widget_values(graph.full_id(node_id), node, [])
                return ("value", values[name]) if name in values else None
            index += 1
        return None

    # -- the prompt ------------------------------------------------------------------------

    def _packed(self, node_type: Any) -> bool:
        """Whether nodes of this type never reach the prompt themselves: frontend-only
        ones, subgraph nodes (their inner nodes do) and group nodes left packed."""
        return (
            node_type in FRONTEND_ONLY
            or node_type in self.subgraphs
            or group_name(node_type) in self.groups
        )

    def check_types(self, failed_modules: Sequence[FailedModule]) -> None:
        typed = {
            graph.full_id(node_id): {"class_type": node.get("type")}
            for graph in self.graphs
            for node_id, node in graph.nodes.items()
            if not self._packed(node.get("type"))
        }
        error = unknown_node_types(typed, self.node_classes, failed_modules)
        if error is not None:
            raise error

    def prompt(self) -> dict[str, Any]:
        output: dict[str, Any] = {}
        mismatched = list(self.mismatched)
        for graph in self.graphs:
            for node_id, node in graph.nodes.items():
                node_type = node.get("type")
                if self._packed(node_type) or node.get("mode") in (MUTED, BYPASS):
                    continue
                full_id = graph.full_id(node_id)
                inputs = self._widget_inputs(full_id, node, mismatched)
                for slot, entry in enumerate(node.get("inputs") or []):
                    resolved = self.resolve_input(graph, node, slot)
                    if resolved is None or not entry.get("name"):
                        continue
                    if resolved[0] == "value":
                        inputs[entry["name"]] = _wrap(resolved[1])
                    else:
                        inputs[entry["name"]] = [resolved[1], resolved[2]]
                title = node.get("title") or self.display_names.get(node_type) or node_type
                output[full_id] = {
                    "inputs": inputs,
                    "class_type": node_type,
                    "_meta": {"title": title},
                }
        if mismatched:
            raise _mismatch_error(mismatched)
        for node in output.values():  # links to nodes that are not in the prompt go
            node["inputs"] = {
                name: value
                for name, value in node["inputs"].items()
                if not (_is_link(value) and value[0] not in output)
            }
        return output

    def _widget_inputs(
        self, full_id: str, node: Mapping[str, Any], mismatched: list[dict[str, Any]]
    ) -> dict[str, Any]:
        values = self._widget_values(full_id, node, mismatched)
        return {name: _wrap(value) for name, value in values.items()}

    def _widget_values(
        self, full_id: str, node: Mapping[str, Any], mismatched: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """The node's widget values that reach the prompt, by input name (as saved: not
        yet wrapped); a node whose values do not fit is added to ``mismatched``."""
        node_type = node.get("type")
        if node_type not in self._widgets:
            try:
                self._widgets[node_type] = widgets_of(self.node_classes[node_type], node_type)
            except Exception:  # a broken node: ComfyUI's validation names it
                self._widgets[node_type] = None
        widgets = self._widgets[node_type]
        if widgets is None:
            return {}
        values = node.get("widgets_values")
        if isinstance(values, Mapping):  # some packs save {name: value}
            return {w.name: values[w.name] for w in widgets if w.in_prompt and w.name in values}
        values = list(values or [])
        if not any(w.saved and w.in_prompt for w in widgets):
            return {}  # no saved value can reach the prompt, however many the file has
        saved = [w for w in widgets if w.saved]
        if node_type in VALUE_LAYOUTS:
            filled = VALUE_LAYOUTS[node_type](values)
        elif any(w.choices is not None or w.default is not NO_DEFAULT for w in widgets):
            try:
                filled = fill(widgets, values)  # the layout depends on the values
            except Unfollowed as exc:
                unfollowed = {"found": len(values), "unfollowed": exc.widget, "option": exc.option}
                mismatched.append({"node_id": full_id, "class_type": node_type, **unfollowed})
                return {}
        else:
            if len(values) == len(widgets) and len(saved) != len(widgets):
                saved = widgets  # holes kept where a widget is not saved
            filled = list(zip(saved, values, strict=True)) if len(values) == len(saved) else None
        if filled is None:
            mismatch = {
                "node_id": full_id,
                "class_type": node_type,
                "expected": len(saved),
                "found": len(values),
                "widgets": [w.name for w in saved],
            }
            if any(w.choices is not None for w in widgets):
                mismatch["by_option"] = True
            mismatched.append(mismatch)
            return {}
        return {w.name: value for w, value in filled if w.in_prompt and value is not None}


def _mismatch_error(mismatched: Sequence[Mapping[str, Any]]) -> JobError:
    """The refusal of nodes whose saved widget values do not fit, all named at once: a
    node saved with another version of it (its counts), or one whose chosen option adds
    widgets the converter does not lay out (the converter's gap, not the file's)."""
    listed = "; ".join(_mismatch_line(m) for m in mismatched[:10])
    more = f" and {len(mismatched) - 10} more" if len(mismatched) > 10 else ""
    advice = []
    if any("unfollowed" not in m for m in mismatched):
        advice.append(
            "a node whose values do not fit was saved with another version of it: open and "
            "re-save the workflow in a ComfyUI with the worker's versions, or export the "
            "API format"
        )
    if any("unfollowed" in m for m in mismatched):
        advice.append(
            "options that add widgets this converter does not lay out: export the API "
            "format from ComfyUI for such a workflow"
        )
    return JobError(
        "validation_failed",
        f"the saved workflow does not match the installed nodes: {listed}{more}; "
        + "; ".join(advice),
        {"widget_mismatch": list(mismatched)},
    )


def _mismatch_line(mismatch: Mapping[str, Any]) -> str:
    """One node of :func:`_mismatch_error`."""
    where = f"node {mismatch['node_id']} ({mismatch['class_type']})"
    if "unfollowed" in mismatch:
        return (
            f"{where}: {mismatch['found']} saved widget values, but option "
            f"{mismatch['option']!r} of {mismatch['unfollowed']} adds widgets this converter "
            "does not lay out (a seed's control)"
        )
    added = ", and those its options add" if mismatch.get("by_option") else ""
    return (
        f"{where}: {mismatch['found']} saved widget values, the installed node has "
        f"{mismatch['expected']} ({', '.join(mismatch['widgets'])}{added})"
    )


def _link_into(graph: _Graph, node: Mapping[str, Any], slot: int) -> Link | None:
    """The link into input ``slot`` of ``node`` (None: unlinked, or no such input)."""
    inputs = node.get("inputs") or []
    return graph.links.get(inputs[slot].get("link")) if 0 <= slot < len(inputs) else None


def _instance_slot(graph: _Graph, slot: int) -> int:
    """Which of the subgraph node's saved inputs is the definition's input ``slot``: the
    one of its name, as the frontend pairs them on load. A node may be saved with only its
    linked inputs (templates are), so position alone would hand one input's link to
    another — an outer IMAGE as a model's file name. -1 (none) where no saved input has
    that name; position only where the definition lists no inputs."""
    declared = graph.definition.get("inputs")
    if not isinstance(declared, list):
        return slot
    entry = declared[slot] if 0 <= slot < len(declared) else None
    name = entry.get("name") if isinstance(entry, Mapping) else None
    saved = (graph.instance or {}).get("inputs") or []
    found = (i for i, given in enumerate(saved) if name is not None and given.get("name") == name)
    return next(found, -1)


def _promoted_widget(graph: _Graph, entry: Mapping[str, Any]) -> tuple[Any, str] | None:
    """The inner widget a subgraph input leads to, as (node id, widget name): the first of
    its links into an input that has a widget (the frontend promotes that one onto the
    subgraph node); None where none does."""
    for link_id in entry.get("linkIds") or ():
        link = graph.links.get(link_id)
        target = graph.nodes.get(link.target_id) if link is not None else None
        inputs = (target or {}).get("inputs") or []
        found = next((i for i in inputs if i.get("link") == link_id), None)
        widget = found.get("widget") if found is not None else None
        if isinstance(widget, Mapping) and isinstance(widget.get("name"), str):
            return link.target_id, widget["name"]
    return None


def _through(
    graph: _Graph, node: Mapping[str, Any], index: int, kind: Any, hop: str = "next"
) -> Any:
    """The hop through a reroute or bypassed node: on from what feeds its input ``index``."""
    link = _link_into(graph, node, index)
    return None if link is None else (hop, graph, link.origin_id, link.origin_slot, kind)


def _bypass_slot(node: Mapping[str, Any], slot: int, kind: Any) -> int | None:
    """Which input a bypassed node hands through for output ``slot``: the same index when
    its type fits, else the first input of exactly that type."""
    inputs = node.get("inputs") or []
    if kind in ("*", "", None):
        return slot if slot < len(inputs) else (0 if inputs else None)
    if slot < len(inputs) and _fits(inputs[slot].get("type"), kind):
        return slot
    for index, entry in enumerate(inputs):
        if entry.get("type") == kind:
            return index
    return None


def _fits(have: Any, want: Any) -> bool:
    if have in ("*", "", None) or want in ("*", "", None):
        return True
    have_set = {t.strip() for t in str(have).split(",")}
    want_set = {t.strip() for t in str(want).split(",")}
    return bool(have_set & want_set)


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def _wrap(value: Any) -> Any:
    """Lists mean links in a prompt: a list value goes as ``{"__value__": list}``, as the
    frontend sends it (ComfyUI unwraps it)."""
    return {"__value__": value} if isinstance(value, list) else value


def convert(
    document: Mapping[str, Any],
    node_classes: Mapping[str, Any],
    display_names: Mapping[str, str] | None = None,
    failed_modules: Sequence[FailedModule] = (),
    max_nodes: int = MAX_NODES,
    *,
    strict: bool = True,
) -> dict[str, Any]:
    """The API prompt the frontend's ``graphToPrompt()`` makes of a saved workflow.

    ``strict=False`` (a check job) keeps nodes of unknown types, without their widget
    values, so that the rest of the graph can still be reported on.

    Raises :class:`JobError` ``validation_failed`` naming every unknown node type at once,
    or every node whose saved widget values do not fit the installed node;
    ``invalid_input`` for a malformed document, a link loop, or one that expands to more
    than ``max_nodes`` nodes.
    """
    if not isinstance(document.get("nodes"), list):
        raise JobError("invalid_input", "input.workflow: a saved workflow's nodes must be a list")
    check_document(document)
    converter = _Converter(document, node_classes, display_names or {}, max_nodes)
    if strict:
        converter.check_types(failed_modules)
    prompt = converter.prompt()
    if not prompt:
        raise JobError("invalid_input", "input.workflow: the saved workflow has no nodes to run")
    return prompt


class DisplayNames(Mapping[str, str]):
    """Node display names as ComfyUI's ``/object_info`` gives them to the frontend (the
    title a node has when the saved file names none), read only for the types asked."""

    def __init__(self, node_classes: Mapping[str, Any], mappings: Mapping[str, str]) -> None:
        self.node_classes, self.mappings = node_classes, mappings

    def __getitem__(self, node_type: str) -> str:
        info = getattr(self.node_classes.get(node_type), "GET_NODE_INFO_V1", None)
        if info is not None:  # V3 nodes: their own, as /object_info gives it
            try:
                return info()["display_name"] or node_type
            except Exception:
                return node_type
        return self.mappings.get(node_type, node_type)

    def __iter__(self) -> Any:
        return iter(self.node_classes)

    def __len__(self) -> int:
        return len(self.node_classes)


def converter_for(
    comfy: Any, max_nodes: int = MAX_NODES
) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """``convert`` bound to a booted ComfyUI (executor/boot.py ``Comfy``): its node
    classes, display names and the node modules that failed to import."""
    nodes = comfy.nodes
    names = DisplayNames(nodes.NODE_CLASS_MAPPINGS, nodes.NODE_DISPLAY_NAME_MAPPINGS)
    failed = getattr(comfy, "failed_modules", ())

    def run(document: Mapping[str, Any], *, strict: bool = True) -> dict[str, Any]:
        return convert(document, nodes.NODE_CLASS_MAPPINGS, names, failed, max_nodes, strict=strict)

    return run
