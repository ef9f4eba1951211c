"""API-format graphs: checking them against the node definitions, and summarising big ones.

An API-format graph (what ComfyUI's `/prompt` takes) maps node ids to nodes:
`{"3": {"class_type": "KSampler", "inputs": {"seed": 1, "model": ["4", 0]}}}`, where a two-item
list `[node_id, output_index]` is a link to another node's output. The front end's UI format
(`{"nodes": [...], "links": [...]}`) is a different thing and is refused with a clear message.
Pure functions; no IO.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from .catalog import MATCH_TYPE, InputSpec, close_matches, expand_inputs, output_types, produced_types

MAX_ERRORS = 50
SUMMARY_VALUE_CHARS = 120  # a value longer than this is cut in a summary
MAX_CHOICES_IN_ERROR = 10
_ANNOTATED = re.compile(r" \[(input|output|temp)\]$")
UI_FORMAT_MESSAGE = (
    "this is the front end's UI format (nodes and links lists); give the API format instead: "
    '{"<node id>": {"class_type": "<NodeClass>", "inputs": {"<input>": <value or ["<node id>", <output index>]>}}}'
)


@dataclass(frozen=True)
class NodeError:
    """One problem with one node of a graph (or with the whole graph when `node_id` is None)."""

    node_id: str | None
    class_type: str | None
    message: str
    input_name: str | None = None

    def __str__(self) -> str:
        if self.node_id is None:
            return self.message
        where = f"node {self.node_id}" + (f" ({self.class_type})" if self.class_type else "")
        return f"{where}: {self.message}"


def looks_like_ui_format(graph: Any) -> bool:
    return isinstance(graph, dict) and isinstance(graph.get("nodes"), list) and "links" in graph


def is_link(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and isinstance(value[0], (str, int))
        and not isinstance(value[0], bool)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def _types_compatible(output_type: str, spec: InputSpec) -> bool:
    """Whether a link from an output of `output_type` may feed `spec`, as ComfyUI's
    `validate_node_input` judges it; a match type's output takes the type it is given, so it may
    feed anything (ComfyUI does not check it either)."""
    if output_type == MATCH_TYPE:
        return True
    if spec.type == "COMBO" or output_type == "COMBO":
        return spec.type == "COMBO" or output_type in ("COMBO", "*") or output_type == "STRING"
    received = {t.strip() for t in output_type.split(",")}
    return "*" in received or "*" in spec.accepts or bool(received & spec.accepts)


def validate_graph(
    graph: Any, object_info: dict[str, Any], *, require_output: bool = True, check_values: bool = True
) -> list[NodeError]:
    """What would stop ComfyUI running this graph: unknown nodes, missing inputs, bad links, bad values.

    Inputs of a kind it does not know are left to ComfyUI's own validation, whose answer the tools
    pass on per node: this check must never refuse a graph ComfyUI runs."""
    if looks_like_ui_format(graph):
        return [NodeError(None, None, UI_FORMAT_MESSAGE)]
    if not isinstance(graph, dict) or not graph:
        return [NodeError(None, None, "the graph must be a non-empty object of node id -> {class_type, inputs}")]
    errors: list[NodeError] = []
    has_output = False
    sockets = produced_types(object_info)
    for node_id, node in graph.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            errors.append(NodeError(str(node_id), None, 'must be {"class_type": "...", "inputs": {...}}'))
            continue
        class_type = node["class_type"]
        node_def = object_info.get(class_type)
        if node_def is None:
            hint = close_matches(object_info, class_type)
            errors.append(
                NodeError(
                    str(node_id),
                    class_type,
                    f"unknown node type '{class_type}'"
                    + (f"; did you mean {', '.join(hint)}?" if hint else "; use search_nodes to find the right one"),
                )
            )
            continue
        has_output = has_output or bool(node_def.get("output_node"))
        inputs = node.get("inputs", {})
        if not isinstance(inputs, dict):
            errors.append(NodeError(str(node_id), class_type, "'inputs' must be an object"))
            continue
        for spec in expand_inputs(node_def, inputs):
            if spec.name not in inputs:
                if spec.required:
                    what = "a link" if _takes_link(spec, sockets) else "a value"
                    errors.append(NodeError(str(node_id), class_type, f"required input '{spec.name}' ({spec.shown_type}) is missing: give it {what}", spec.name))
                continue
            problem = _check_input(graph, object_info, spec, inputs[spec.name], check_values, sockets, class_type)
            if problem:
                errors.append(NodeError(str(node_id), class_type, problem, spec.name))
        if len(errors) >= MAX_ERRORS:
            break
    if require_output and not has_output and not errors:
        errors.append(NodeError(None, None, "the graph has no output node (add SaveImage or PreviewImage to get a result)"))
    return errors


def _unwrapped(value: Any) -> tuple[Any, bool]:
    """`{"__value__": v}` is how a list is given as a value rather than read as a link; ComfyUI
    unwraps it before checking. Returns the value and whether it was wrapped."""
    if isinstance(value, dict) and "__value__" in value:
        return value["__value__"], True
    return value, False


def _check_input(
    graph: dict[str, Any],
    object_info: dict[str, Any],
    spec: InputSpec,
    value: Any,
    check_values: bool,
    sockets: frozenset[str],
    class_type: str,
) -> str | None:
    value, wrapped = _unwrapped(value)
    if not wrapped and isinstance(value, (list, tuple)) and not (spec.type == "COMBO" and spec.options.get("multiselect")):
        return _check_link(graph, object_info, spec, value)
    if spec.is_widget:
        return value_problem(spec, value, class_type) if check_values else None
    if _is_socket(spec, sockets):
        return f"'{spec.name}' needs a link from an output of type {spec.type}, not the value {_short(value)}"
    return None  # a value of a kind this check does not know: ComfyUI's validation judges it


def _is_socket(spec: InputSpec, sockets: frozenset[str]) -> bool:
    """Only a link can feed this input: no value can be set in the node, and some node outputs
    each type it takes (a type none outputs is a front-end widget: a webcam, a 3D viewer)."""
    return not spec.may_take_value and bool(spec.accepts) and spec.accepts <= sockets


def _takes_link(spec: InputSpec, sockets: frozenset[str]) -> bool:
    """Whether a missing input wants a link rather than a value."""
    return not spec.is_widget and (spec.type == MATCH_TYPE or "*" in spec.accepts or _is_socket(spec, sockets))


def _check_link(graph: dict[str, Any], object_info: dict[str, Any], spec: InputSpec, value: Any) -> str | None:
    if not is_link(value):
        return f"'{spec.name}' is a list but not a link: a link is [\"<node id>\", <output index>]"
    source_id, index = str(value[0]), value[1]
    source = graph.get(source_id)
    if not isinstance(source, dict):
        return f"'{spec.name}' links to node {source_id}, which is not in the graph"
    source_def = object_info.get(str(source.get("class_type")))
    if source_def is None:
        return None  # reported on the source node itself
    outputs = output_types(source_def)
    if not 0 <= index < len(outputs):
        return (
            f"'{spec.name}' links to output {index} of node {source_id} ({source.get('class_type')}), "
            f"which has {len(outputs)} output(s): {', '.join(f'{i}:{t}' for i, t in enumerate(outputs)) or 'none'}"
        )
    if not _types_compatible(outputs[index], spec):
        return (
            f"'{spec.name}' needs {spec.shown_type} but output {index} of node {source_id} "
            f"({source.get('class_type')}) is {outputs[index]}"
        )
    return None


def value_problem(spec: InputSpec, value: Any, class_type: str | None = None) -> str | None:
    """A widget value ComfyUI would refuse: wrong type, out of range, not one of the choices
    (`class_type` lets the message say how to see every choice)."""
    if spec.value_type in ("INT", "FLOAT"):
        number = _number(spec, value)
        if isinstance(number, str):
            return number
        low, high = spec.options.get("min"), spec.options.get("max")
        if isinstance(low, (int, float)) and number < low:
            return f"'{spec.name}' is {number}, below the minimum {low}"
        if isinstance(high, (int, float)) and number > high:
            return f"'{spec.name}' is {number}, above the maximum {high}"
    elif spec.type == "COMBO" and spec.choices is not None and not spec.options.get("multiselect"):
        if value not in spec.choices and not (spec.is_upload and _unlisted_file(value)):
            if not spec.choices:
                return f"'{spec.name}': {_short(value)} is not available (no choices; for a model file: none of this kind is installed, see list_models)"
            return f"'{spec.name}': {_short(value)} is not one of the choices{_choices_hint(spec, value, class_type)}"
    return None


def _choices_hint(spec: InputSpec, value: Any, class_type: str | None) -> str:
    """The closest choices, then the first ten, and how to see them all when there are more."""
    choices = spec.choices or []
    by_text = {str(c): c for c in choices}
    close = difflib.get_close_matches(str(value), list(by_text), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(_short(by_text[c]) for c in close)}?)" if close else ""
    shown = ", ".join(_short(c) for c in choices[:MAX_CHOICES_IN_ERROR])
    more = ""
    if len(choices) > MAX_CHOICES_IN_ERROR:
        where = f'describe_node("{class_type}", input="{spec.name}")' if class_type else "describe_node with this input"
        more = f" (and {len(choices) - MAX_CHOICES_IN_ERROR} more: {where} lists them all)"
    return f"{hint}: {shown}{more}"


def _unlisted_file(value: Any) -> bool:
    """A file a file picker takes but does not list: `name.png [output]` (ComfyUI's annotation for
    another folder) or one in a sub-folder (`clipspace/mask.png`). The node checks that it exists."""
    return isinstance(value, str) and (bool(_ANNOTATED.search(value)) or "/" in value)


def _number(spec: InputSpec, value: Any) -> int | float | str:
    """`value` as the INT or FLOAT `spec` takes, or why it is not one. Why finite: JSON's `1e999`
    reads as infinity (which `int()` cannot take) and NaN passes any range check; neither is a
    value a number widget can hold."""
    if isinstance(value, bool):
        return f"'{spec.name}' must be a number, not {_short(value)}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"'{spec.name}': {_short(value)} is not a finite number"
    try:
        number = int(value) if spec.value_type == "INT" else float(value)
    except (TypeError, ValueError):
        return f"'{spec.name}' must be {'an integer' if spec.value_type == 'INT' else 'a number'}, not {_short(value)}"
    except OverflowError:  # an integer past a float's range, for a FLOAT
        return f"'{spec.name}': {_short(value)} is too large a number"
    if isinstance(number, float) and not math.isfinite(number):  # the text "inf" or "nan"
        return f"'{spec.name}': {_short(value)} is not a finite number"
    return number


def value_warnings(graph: dict[str, Any], object_info: dict[str, Any]) -> list[NodeError]:
    """Value problems only (missing model files, out-of-range numbers), for a graph that is otherwise sound."""
    out: list[NodeError] = []
    for node_id, node in graph.items():
        node_def = object_info.get(str(node.get("class_type"))) if isinstance(node, dict) else None
        if node_def is None or not isinstance(node.get("inputs"), dict):
            continue
        for spec in expand_inputs(node_def, node["inputs"]):
            value, wrapped = _unwrapped(node["inputs"].get(spec.name))
            if spec.name in node["inputs"] and spec.is_widget and (wrapped or not is_link(value)):
                problem = value_problem(spec, value, node["class_type"])
                if problem:
                    out.append(NodeError(str(node_id), node["class_type"], problem, spec.name))
    return out


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _short(value: Any, limit: int = 60) -> str:
    text = _json(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- summaries


def summarize_api_graph(graph: dict[str, Any], value_chars: int = SUMMARY_VALUE_CHARS) -> str:
    """One line per node: `id ClassType: input=value, input<-node.output`."""
    lines = []
    for node_id, node in graph.items():
        if not isinstance(node, dict):
            continue
        parts = []
        for name, value in (node.get("inputs") or {}).items():
            if is_link(value):
                parts.append(f"{name}<-{value[0]}.{value[1]}")
            else:
                parts.append(f"{name}={_short(value, value_chars)}")
        title = (node.get("_meta") or {}).get("title") if isinstance(node.get("_meta"), dict) else None
        label = f"{node.get('class_type')}" + (f" \"{title}\"" if title and title != node.get("class_type") else "")
        lines.append(f"{node_id} {label}: {', '.join(parts)}")
    return "\n".join(lines)


def summarize_ui_graph(workflow: dict[str, Any], value_chars: int = SUMMARY_VALUE_CHARS) -> str:
    """One line per node of a UI-format workflow, with its widget values and incoming links."""
    incoming: dict[str, list[tuple[int, Any, Any]]] = {}
    for link in workflow.get("links") or []:
        # [link id, from node, from slot, to node, to slot, type]
        if isinstance(link, list) and len(link) >= 5 and isinstance(link[4], int):
            incoming.setdefault(str(link[3]), []).append((link[4], link[1], link[2]))
    modes = {2: "muted", 4: "bypassed"}
    lines = []
    for node in workflow.get("nodes") or []:
        if not isinstance(node, dict):
            continue
        node_id = str(node.get("id"))
        names = [str(i.get("name")) if isinstance(i, dict) else "?" for i in node.get("inputs") or []]
        links = [
            f"{names[slot] if slot < len(names) else f'input{slot}'}<-{src}.{src_slot}"
            for slot, src, src_slot in sorted(incoming.get(node_id, []), key=lambda x: x[0])
        ]
        widgets = [_short(v, value_chars) for v in (node.get("widgets_values") or [])] if isinstance(node.get("widgets_values"), list) else []
        extra = f" [{modes[node.get('mode')]}]" if node.get("mode") in modes else ""
        title = node.get("title")
        label = f"{node.get('type')}" + (f" \"{title}\"" if title else "") + extra
        details = ", ".join(links + ([f"widgets=[{', '.join(widgets)}]"] if widgets else []))
        lines.append(f"{node_id} {label}: {details}")
    return "\n".join(lines)


def cut_nodes(graph: dict[str, Any], value_chars: int = SUMMARY_VALUE_CHARS) -> list[str]:
    """Ids of the nodes whose summary cuts a value (API or UI format), so the model can ask for them whole."""
    if isinstance(graph.get("nodes"), list):
        nodes = [(str(n.get("id")), n.get("widgets_values")) for n in graph["nodes"] if isinstance(n, dict)]
        values = [(node_id, v if isinstance(v, list) else []) for node_id, v in nodes]
    else:
        values = [
            (str(node_id), [v for v in (node.get("inputs") or {}).values() if not is_link(v)])
            for node_id, node in graph.items()
            if isinstance(node, dict) and isinstance(node.get("inputs") or {}, dict)
        ]
    return [node_id for node_id, items in values if any(len(_json(v)) > value_chars for v in items)]
