"""Node definitions (ComfyUI's `/object_info` shape): input specs, search ranking, descriptions.

Pure functions over the JSON ComfyUI serves; no IO. An input spec is `[type]` or `[type, options]`
where `type` is a type name (`"INT"`, `"IMAGE"`, `"A,B"`, `"*"`), `"COMBO"` with
`options["options"]`, or the list of allowed values itself.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
MAX_CHOICES_SHOWN = 25
MAX_TOOLTIP_CHARS = 240


@dataclass(frozen=True)
class InputSpec:
    name: str
    type: str  # "COMBO" for lists of choices
    required: bool
    options: dict[str, Any] = field(default_factory=dict)
    choices: list[Any] | None = None  # the allowed values of a COMBO, when ComfyUI lists them

    @property
    def is_widget(self) -> bool:
        """A value typed in the node (a link can still feed it); otherwise a socket for a link."""
        return self.type in WIDGET_TYPES

    @property
    def accepts(self) -> set[str]:
        return {t.strip() for t in self.type.split(",") if t.strip()}


def parse_input(name: str, spec: Any, required: bool) -> InputSpec:
    raw_type = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    options = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(raw_type, (list, tuple)):
        return InputSpec(name, "COMBO", required, options, list(raw_type))
    type_name = str(raw_type)
    choices = options.get("options") if type_name == "COMBO" and isinstance(options.get("options"), list) else None
    return InputSpec(name, type_name, required, options, choices)


def node_inputs(node_def: dict[str, Any]) -> list[InputSpec]:
    """Required then optional inputs, in ComfyUI's order (hidden inputs are not the user's)."""
    sections = node_def.get("input") or {}
    order = node_def.get("input_order") or {}
    out: list[InputSpec] = []
    for section in ("required", "optional"):
        specs = sections.get(section) or {}
        names = [n for n in order.get(section, []) if n in specs] or list(specs)
        names += [n for n in specs if n not in names]
        out.extend(parse_input(n, specs[n], section == "required") for n in names)
    return out


def output_types(node_def: dict[str, Any]) -> list[str]:
    return ["COMBO" if isinstance(t, list) else str(t) for t in node_def.get("output") or []]


# --------------------------------------------------------------------------- search


def _compact(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", text.lower())


def _score(class_type: str, node_def: dict[str, Any], query: str, tokens: list[str]) -> float:
    name = class_type.lower()
    display = str(node_def.get("display_name") or "").lower()
    category = str(node_def.get("category") or "").lower()
    description = str(node_def.get("description") or "").lower()
    total = 0.0
    for token in tokens:
        if token == name or token == display:
            best = 120.0
        elif token in name:
            best = 100.0 if name.startswith(token) else 80.0
        elif token in display:
            best = 60.0
        elif token in category:
            best = 30.0
        elif token in description:
            best = 10.0
        else:
            return 0.0  # every word must match somewhere
        total += best
    whole = _compact(query)
    if whole and whole == _compact(class_type):
        total += 1000
    elif whole and whole == _compact(display):
        total += 800
    elif whole and _compact(class_type).startswith(whole):
        total += 200
    elif whole and whole in _compact(class_type) + " " + _compact(display):
        total += 100
    if node_def.get("deprecated"):
        total *= 0.5
    elif node_def.get("experimental"):
        total *= 0.8
    # Among equals, shorter names are the more basic node (KSampler before KSamplerAdvanced).
    return total - len(class_type) / 100


def summary(class_type: str, node_def: dict[str, Any]) -> dict[str, Any]:
    """One search result: enough to choose a node and see how it connects."""
    description = str(node_def.get("description") or "")
    out: dict[str, Any] = {
        "class_type": class_type,
        "display_name": node_def.get("display_name") or class_type,
        "category": node_def.get("category") or "",
        "inputs": [f"{i.name}:{i.type}" for i in node_inputs(node_def) if not i.is_widget],
        "outputs": output_types(node_def),
    }
    if description:
        out["description"] = description if len(description) <= 160 else description[:157] + "..."
    if node_def.get("deprecated"):
        out["deprecated"] = True
    return out


def search(object_info: dict[str, Any], query: str, limit: int = 20) -> tuple[list[dict[str, Any]], int]:
    """Nodes matching every word of `query`, best first: (results, number of matches)."""
    tokens = [t for t in re.split(r"\s+", query.lower().strip()) if t]
    scored = [
        (score, class_type)
        for class_type, node_def in object_info.items()
        if (score := _score(class_type, node_def, query, tokens)) > 0
    ]
    scored.sort(key=lambda x: (-x[0], x[1]))
    return [summary(c, object_info[c]) for _, c in scored[:limit]], len(scored)


def close_matches(object_info: dict[str, Any], name: str, n: int = 5) -> list[str]:
    by_lower = {k.lower(): k for k in object_info}
    found = difflib.get_close_matches(name.lower(), list(by_lower), n=n, cutoff=0.6)
    return [by_lower[f] for f in found]


def find_class(object_info: dict[str, Any], class_type: str) -> str | None:
    """The class type as ComfyUI spells it, matching exactly, then ignoring case, then by display name."""
    if class_type in object_info:
        return class_type
    lowered = class_type.lower()
    for name, node_def in object_info.items():
        if name.lower() == lowered or str(node_def.get("display_name") or "").lower() == lowered:
            return name
    return None


# --------------------------------------------------------------------------- describe


def describe_input(spec: InputSpec, max_choices: int = MAX_CHOICES_SHOWN) -> dict[str, Any]:
    out: dict[str, Any] = {"name": spec.name, "type": spec.type, "required": spec.required}
    if not spec.is_widget:
        out["connect"] = f"link from an output of type {spec.type}"
    for key in ("default", "min", "max", "step"):
        if key in spec.options:
            out[key] = spec.options[key]
    if spec.options.get("multiline"):
        out["multiline"] = True
    if spec.options.get("forceInput"):
        out["connect"] = f"link from an output of type {spec.type} (no widget)"
    if spec.choices is not None:
        out["choices"] = spec.choices[:max_choices]
        if len(spec.choices) > max_choices:
            out["choices_note"] = f"showing {max_choices} of {len(spec.choices)} choices"
        elif not spec.choices:
            out["choices_note"] = "no choices available (for a model input: no model files of this kind are installed)"
    elif spec.type == "COMBO":
        out["choices_note"] = "choices are loaded by the front end and not listed here"
    tooltip = str(spec.options.get("tooltip") or "")
    if tooltip:
        out["tooltip"] = tooltip if len(tooltip) <= MAX_TOOLTIP_CHARS else tooltip[: MAX_TOOLTIP_CHARS - 3] + "..."
    return out


def example_node(class_type: str, node_def: dict[str, Any]) -> dict[str, Any]:
    """An API-format node with each widget's default and a placeholder for each link."""
    inputs: dict[str, Any] = {}
    for spec in node_inputs(node_def):
        if not spec.required:
            continue
        if not spec.is_widget or spec.options.get("forceInput"):
            inputs[spec.name] = ["<node id>", 0]
        elif "default" in spec.options:
            inputs[spec.name] = spec.options["default"]
        elif spec.choices:
            inputs[spec.name] = spec.choices[0]
        else:
            inputs[spec.name] = "<value>"
    return {"class_type": class_type, "inputs": inputs}


def describe(class_type: str, node_def: dict[str, Any]) -> dict[str, Any]:
    names = node_def.get("output_name") or []
    is_list = node_def.get("output_is_list") or []
    tooltips = node_def.get("output_tooltips") or []
    outputs = []
    for index, type_name in enumerate(output_types(node_def)):
        out: dict[str, Any] = {"index": index, "name": names[index] if index < len(names) else type_name, "type": type_name}
        if index < len(is_list) and is_list[index]:
            out["is_list"] = True
        if index < len(tooltips) and tooltips[index]:
            out["tooltip"] = tooltips[index]
        outputs.append(out)
    result: dict[str, Any] = {
        "class_type": class_type,
        "display_name": node_def.get("display_name") or class_type,
        "category": node_def.get("category") or "",
        "description": node_def.get("description") or "",
        "output_node": bool(node_def.get("output_node")),
        "inputs": [describe_input(s) for s in node_inputs(node_def)],
        "outputs": outputs,
        "example": example_node(class_type, node_def),
    }
    for flag in ("deprecated", "experimental", "api_node"):
        if node_def.get(flag):
            result[flag] = True
    return result
