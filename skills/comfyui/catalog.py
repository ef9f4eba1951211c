"""Node definitions (ComfyUI's `/object_info` shape): input specs, search ranking, descriptions.

Pure functions over the JSON ComfyUI serves; no IO. An input spec is `[type]` or `[type, options]`
where `type` is a type name (`"INT"`, `"IMAGE"`, `"A,B"`, `"*"`), `"COMBO"` with
`options["options"]`, or the list of allowed values itself.

Nodes written against ComfyUI's v3 schema add input types of their own. Three stand for other
inputs, named with dots the way ComfyUI names them: a dynamic combo (`COMFY_DYNAMICCOMBO_V3`, a
choice whose inputs depend on the choice: `resize_type` = "scale by multiplier" brings
`resize_type.multiplier`), a growing list (`COMFY_AUTOGROW_V3`: `images.image0`, `images.image1`,
...) and a dynamic slot (no stock node has one: left to ComfyUI's own check). A match type
(`COMFY_MATCHTYPE_V3`) is a link of any of its allowed types. Others (`COLOR`, `BOUNDING_BOX`,
`"FLOAT,INT"` with a `widgetType`) are values set in the node.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
AUTOGROW = "COMFY_AUTOGROW_V3"
MATCH_TYPE = "COMFY_MATCHTYPE_V3"
_V3_TYPE = re.compile(r"^COMFY_[A-Z0-9_]+_V3$")
MAX_CHOICES_SHOWN = 25
MAX_CHOICES_ASKED = 2000  # for one input asked for by name: every choice, within reason
MAX_TOOLTIP_CHARS = 240


@dataclass(frozen=True)
class InputSpec:
    name: str
    type: str  # "COMBO" for lists of choices
    required: bool
    options: dict[str, Any] = field(default_factory=dict)
    choices: list[Any] | None = None  # the allowed values of a COMBO, when ComfyUI lists them

    @property
    def value_type(self) -> str:
        """The type of a value typed in the node: an input taking several types ("FLOAT,INT")
        names the one its widget holds in `widgetType`."""
        widget = self.options.get("widgetType")
        return widget if isinstance(widget, str) and widget in self.accepts else self.type

    @property
    def is_widget(self) -> bool:
        """A value typed in the node (a link can still feed it); otherwise a socket for a link."""
        return self.value_type in WIDGET_TYPES

    @property
    def is_v3(self) -> bool:
        """One of ComfyUI's v3 input types (dynamic combo, growing list, match type, ...)."""
        return bool(_V3_TYPE.match(self.type))

    @property
    def may_take_value(self) -> bool:
        """A value of a kind this module does not check may be set in the node: the definition
        gives a default, marks the input socketless or names a widget type, or a plain type is
        among the ones it takes (`"BOUNDING_BOX,ARRAY,STRING"`)."""
        return (
            "default" in self.options
            or bool(self.options.get("socketless"))
            or "widgetType" in self.options
            or "*" in self.accepts
            or bool(self.accepts & WIDGET_TYPES)
        )

    @property
    def is_set_in_node(self) -> bool:
        """Shown as a value set in the node rather than a socket: a widget, or a value of another
        kind that has a default, is socketless or names a widget type (`forceInput` makes a socket)."""
        if self.options.get("forceInput"):
            return False
        return self.is_widget or any(k in self.options for k in ("default", "socketless", "widgetType"))

    @property
    def accepts(self) -> set[str]:
        """The output types a link may bring; a match type's are its template's `allowed_types`."""
        type_name = self.type
        if type_name == MATCH_TYPE:
            template = self.options.get("template")
            allowed = template.get("allowed_types") if isinstance(template, dict) else None
            type_name = allowed if isinstance(allowed, str) and allowed else "*"
        return {t.strip() for t in type_name.split(",") if t.strip()}

    @property
    def shown_type(self) -> str:
        """The type as the model should read it: a match type's allowed types, not its marker."""
        return ",".join(sorted(self.accepts)) if self.type == MATCH_TYPE else self.type

    @property
    def is_upload(self) -> bool:
        """A file picker (LoadImage's `image_upload`, `video_upload`, ...): the node checks the file
        itself, and also takes `name.png [output]` or a file in a sub-folder, which it does not list."""
        return any(key.endswith("_upload") and bool(value) for key, value in self.options.items())


def parse_input(name: str, spec: Any, required: bool) -> InputSpec:
    raw_type = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    options = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(raw_type, (list, tuple)):
        return InputSpec(name, "COMBO", required, options, list(raw_type))
    type_name = str(raw_type)
    choices = options.get("options") if type_name == "COMBO" and isinstance(options.get("options"), list) else None
    return InputSpec(name, type_name, required, options, choices)


def _section_inputs(sections: Any, order: Any = None) -> list[InputSpec]:
    """Required then optional inputs of an `{"required": {...}, "optional": {...}}` object."""
    sections = sections if isinstance(sections, dict) else {}
    order = order if isinstance(order, dict) else {}
    out: list[InputSpec] = []
    for section in ("required", "optional"):
        specs = sections.get(section) or {}
        if not isinstance(specs, dict):
            continue
        names = [n for n in order.get(section, []) if n in specs] or list(specs)
        names += [n for n in specs if n not in names]
        out.extend(parse_input(n, specs[n], section == "required") for n in names)
    return out


def node_inputs(node_def: dict[str, Any]) -> list[InputSpec]:
    """Required then optional inputs, in ComfyUI's order (hidden inputs are not the user's)."""
    return _section_inputs(node_def.get("input"), node_def.get("input_order"))


def dynamic_choices(spec: InputSpec) -> list[tuple[str, list[InputSpec]]]:
    """A dynamic combo's choices, each with the inputs it brings (named without the prefix)."""
    out = []
    for option in spec.options.get("options") or []:
        if isinstance(option, dict) and isinstance(option.get("key"), str):
            out.append((option["key"], _section_inputs(option.get("inputs"))))
    return out


def autogrow_items(spec: InputSpec) -> tuple[list[str], int, InputSpec | None]:
    """A growing list's input names (without the prefix), how many are required, and the
    template every item follows, as ComfyUI's `Autogrow` expands them."""
    template = spec.options.get("template") if isinstance(spec.options.get("template"), dict) else {}
    items = _section_inputs(template.get("input"))
    if not items:
        return [], 0, None
    if isinstance(template.get("names"), list):
        names = [str(n) for n in template["names"]]
    else:
        names = [f"{template.get('prefix', '')}{i}" for i in range(_count(template.get("max")))]
    minimum = _count(template.get("min")) if items[0].required else 0
    return names, minimum, items[0]


def _count(value: Any) -> int:
    """A count from a node definition; anything but a whole number (a custom node's mistake) is 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def expand_inputs(node_def: dict[str, Any], given: dict[str, Any]) -> list[InputSpec]:
    """The inputs ComfyUI checks on a node given these inputs, like its `get_finalized_class_inputs`:
    a dynamic combo becomes a COMBO of its choices plus the inputs of the chosen one, a growing list
    its items, each under its dotted name. Other v3 types that stand for inputs (a dynamic slot, a
    type newer than this module) are left out: ComfyUI's own validation checks them."""
    out: list[InputSpec] = []
    for spec in node_inputs(node_def):
        out.extend(_expand(spec, given, ""))
    return out


def _expand(spec: InputSpec, given: dict[str, Any], prefix: str) -> Iterator[InputSpec]:
    name = prefix + spec.name
    if spec.type == DYNAMIC_COMBO:
        choices = dynamic_choices(spec)
        value = given.get(name)
        if isinstance(value, (list, tuple)):
            return  # a link: ComfyUI leaves it to the node
        yield InputSpec(name, "COMBO", spec.required, {k: v for k, v in spec.options.items() if k != "options"}, [k for k, _ in choices])
        for key, inputs in choices:
            if key == value:
                for inner in inputs:
                    yield from _expand(inner, given, name + ".")
    elif spec.type == AUTOGROW:
        names, minimum, template = autogrow_items(spec)
        for index, item in enumerate(names):
            full = f"{name}.{item}"
            if template is not None and (index < minimum or full in given):
                yield dataclasses.replace(template, name=full, required=index < minimum)
    elif spec.is_v3 and spec.type != MATCH_TYPE:
        return
    else:
        yield dataclasses.replace(spec, name=name)


def output_types(node_def: dict[str, Any]) -> list[str]:
    return ["COMBO" if isinstance(t, list) else str(t) for t in node_def.get("output") or []]


def produced_types(object_info: dict[str, Any]) -> frozenset[str]:
    """Every type some node outputs: an input of any other type cannot be fed by a link, so it is
    a widget of the front end's (a webcam, a 3D viewer) whatever its type says."""
    found: set[str] = set()
    for node_def in object_info.values():
        if isinstance(node_def, dict):
            for type_name in output_types(node_def):
                found.update(t.strip() for t in type_name.split(","))
    return frozenset(found)


# --------------------------------------------------------------------------- search


def _compact(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", text.lower())


def _aliases(node_def: dict[str, Any]) -> list[str]:
    """The other names ComfyUI's search knows a node by ("img2img" for KSampler)."""
    aliases = node_def.get("search_aliases")
    return [str(a).lower() for a in aliases if isinstance(a, str)] if isinstance(aliases, list) else []


def _score(class_type: str, node_def: dict[str, Any], query: str, tokens: list[str]) -> float:
    name = class_type.lower()
    display = str(node_def.get("display_name") or "").lower()
    category = str(node_def.get("category") or "").lower()
    description = str(node_def.get("description") or "").lower()
    aliases = _aliases(node_def)
    alias_words = {w for a in aliases for w in a.split()}
    total = 0.0
    for token in tokens:
        if token == name or token == display:
            best = 120.0
        elif token in name:
            best = 100.0 if name.startswith(token) else 80.0
        elif token in display:
            best = 60.0
        elif token in alias_words:
            best = 50.0
        elif any(token in a for a in aliases):
            best = 40.0
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
    elif whole and any(whole == _compact(a) for a in aliases):
        total += 50  # below a name: aliases are loose ("upscale" on the SeedVR2 helpers)
    if node_def.get("deprecated"):
        total *= 0.5
    elif node_def.get("experimental"):
        total *= 0.8
    # Among equals, shorter names are the more basic node (KSampler before KSamplerAdvanced).
    return total - len(class_type) / 100


def _link_label(spec: InputSpec) -> str | None:
    """`name:TYPE` of an input a link feeds, for a search result; None for a value."""
    if spec.type == AUTOGROW:
        _, _, template = autogrow_items(spec)
        return f"{spec.name}:{template.type} (list)" if template is not None and not template.is_set_in_node else None
    if spec.type == MATCH_TYPE:
        return f"{spec.name}:{spec.shown_type}"
    if spec.is_set_in_node or spec.is_v3:
        return None
    return f"{spec.name}:{spec.type}"


def summary(class_type: str, node_def: dict[str, Any]) -> dict[str, Any]:
    """One search result: enough to choose a node and see how it connects."""
    description = str(node_def.get("description") or "")
    out: dict[str, Any] = {
        "class_type": class_type,
        "display_name": node_def.get("display_name") or class_type,
        "category": node_def.get("category") or "",
        "inputs": [label for i in node_inputs(node_def) if (label := _link_label(i))],
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
    """The class type as ComfyUI spells it: matching exactly, then ignoring case, then by display
    name, then either ignoring spaces and punctuation ("ksampler advanced" is "KSampler (Advanced)")."""
    if class_type in object_info:
        return class_type
    lowered, compact = class_type.lower(), _compact(class_type)
    displays = {name: str(node_def.get("display_name") or "") for name, node_def in object_info.items()}
    for matches in (
        lambda name: name.lower() == lowered,
        lambda name: displays[name].lower() == lowered,
        lambda name: _compact(name) == compact,
        lambda name: _compact(displays[name]) == compact,
    ):
        found = next((name for name in object_info if matches(name)), None)
        if found is not None and compact:
            return found
    return None


# --------------------------------------------------------------------------- describe


def describe_input(spec: InputSpec, max_choices: int = MAX_CHOICES_SHOWN, prefix: str = "") -> dict[str, Any]:
    """One input as the model reads it; a v3 input that stands for others lists them under their
    dotted names (`prefix` is the name of the input they belong to)."""
    if spec.type == DYNAMIC_COMBO:
        return _describe_dynamic_combo(spec, max_choices, prefix)
    if spec.type == AUTOGROW:
        return _describe_autogrow(spec, max_choices, prefix)
    out: dict[str, Any] = {"name": prefix + spec.name, "type": spec.type, "required": spec.required}
    if spec.type == MATCH_TYPE:
        allowed = spec.shown_type
        out["type"] = allowed
        out["connect"] = f"link from an output of type {allowed}" if allowed != "*" else "link from an output of any type"
    elif spec.is_v3:
        out["note"] = "a ComfyUI v3 input of a kind these tools do not know: ComfyUI checks it when the workflow is queued"
    elif not spec.is_widget:
        if spec.options.get("socketless"):
            out["value"] = "set in the node, not linked" + ("; the default shows its shape" if "default" in spec.options else "")
        else:
            out["connect"] = f"link from an output of type {spec.type}"
    for key in ("default", "min", "max", "step"):
        if key in spec.options:
            out[key] = spec.options[key]
    if spec.options.get("multiline"):
        out["multiline"] = True
    if spec.options.get("forceInput"):
        out["connect"] = f"link from an output of type {spec.type} (no widget)"
    _describe_choices(out, spec, max_choices)
    _describe_tooltip(out, spec)
    return out


def find_input(node_def: dict[str, Any], name: str) -> InputSpec | None:
    """An input by its name, or by the dotted name of one a dynamic combo's choice or a growing
    list brings (`resize_type.multiplier`, `images.image3`), named so; None if there is none."""
    return _find_in(node_inputs(node_def), name, "")


def _find_in(specs: list[InputSpec], name: str, prefix: str) -> InputSpec | None:
    for spec in specs:
        full = prefix + spec.name
        if full == name:
            return dataclasses.replace(spec, name=full)
        if not name.startswith(full + "."):
            continue
        if spec.type == DYNAMIC_COMBO:
            for _, inputs in dynamic_choices(spec):
                found = _find_in(inputs, name, full + ".")
                if found is not None:
                    return found
        elif spec.type == AUTOGROW:
            names, minimum, template = autogrow_items(spec)
            item = name[len(full) + 1 :]
            if template is not None and item in names:
                return dataclasses.replace(template, name=name, required=names.index(item) < minimum)
    return None


def _describe_choices(out: dict[str, Any], spec: InputSpec, max_choices: int) -> None:
    if spec.choices is not None:
        out["choices"] = spec.choices[:max_choices]
        if len(spec.choices) > max_choices:
            more = f"describe_node with input=\"{out['name']}\" lists them all" if max_choices < MAX_CHOICES_ASKED else "the rest are not listed"
            out["choices_note"] = f"showing {max_choices} of {len(spec.choices)} choices; {more}"
        elif not spec.choices:
            out["choices_note"] = "no choices available (for a model input: no model files of this kind are installed)"
    elif spec.type == "COMBO":
        out["choices_note"] = "choices are loaded by the front end and not listed here"


def _describe_tooltip(out: dict[str, Any], spec: InputSpec) -> None:
    tooltip = str(spec.options.get("tooltip") or "")
    if tooltip:
        out["tooltip"] = tooltip if len(tooltip) <= MAX_TOOLTIP_CHARS else tooltip[: MAX_TOOLTIP_CHARS - 3] + "..."


def _describe_dynamic_combo(spec: InputSpec, max_choices: int, prefix: str) -> dict[str, Any]:
    """A choice whose inputs depend on it: the choices, then the inputs each one brings."""
    name = prefix + spec.name
    choices = dynamic_choices(spec)
    as_combo = InputSpec(spec.name, "COMBO", spec.required, spec.options, [key for key, _ in choices])
    out: dict[str, Any] = {"name": name, "type": "COMBO", "required": spec.required}
    if "default" in spec.options:
        out["default"] = spec.options["default"]
    _describe_choices(out, as_combo, max_choices)
    brought = _choice_inputs(choices, max_choices, name + ".")
    if brought:
        out["choice_inputs"] = brought
        out["note"] = f"a choice brings the inputs whose 'for' names it, named {name}.<input>: give them beside {name}"
    _describe_tooltip(out, spec)
    return out


def _choice_inputs(choices: list[tuple[str, list[InputSpec]]], max_choices: int, prefix: str) -> list[dict[str, Any]]:
    """Each input a dynamic combo's choices bring, described once with the choices that bring it
    (`"for"`): choices often share most of their inputs (a choice of 2 to 9 frames brings 9 times
    the inputs of frame 1)."""
    found: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for key, inputs in choices:
        for inner in inputs:
            described = describe_input(inner, max_choices, prefix)
            seen = found.setdefault(json.dumps(described, sort_keys=True, default=str), (described, []))
            seen[1].append(key)
    out = []
    for described, keys in found.values():
        out.append({**described, "for": "every choice" if len(keys) == len(choices) else keys})
    return out


def _describe_autogrow(spec: InputSpec, max_choices: int, prefix: str) -> dict[str, Any]:
    """A growing list of inputs: their names, how many are needed, and what each one takes."""
    name = prefix + spec.name
    names, minimum, template = autogrow_items(spec)
    if template is None or not names:
        return {"name": name, "type": spec.type, "required": spec.required, "note": "a growing list of inputs with no template"}
    out = describe_input(dataclasses.replace(template, name=name, required=minimum > 0), max_choices)
    shown = f"{name}.{names[0]}" + (f" ... {name}.{names[-1]}" if len(names) > 1 else "")
    out["items"] = f"{shown}: one input per item, at least {minimum}" + (f", at most {len(names)}" if len(names) > 1 else "")
    _describe_tooltip(out, spec)
    return out


def example_node(class_type: str, node_def: dict[str, Any]) -> dict[str, Any]:
    """An API-format node with each widget's default and a placeholder for each link."""
    inputs: dict[str, Any] = {}
    for spec in node_inputs(node_def):
        if spec.required:
            inputs.update(_example_inputs(spec, ""))
    return {"class_type": class_type, "inputs": inputs}


def _example_inputs(spec: InputSpec, prefix: str) -> dict[str, Any]:
    name = prefix + spec.name
    if spec.type == DYNAMIC_COMBO:
        choices = dynamic_choices(spec)
        if not choices:
            return {}
        key, inputs = next(((k, i) for k, i in choices if k == spec.options.get("default")), choices[0])
        out: dict[str, Any] = {name: key}
        for inner in inputs:
            if inner.required:
                out.update(_example_inputs(inner, name + "."))
        return out
    if spec.type == AUTOGROW:
        names, minimum, template = autogrow_items(spec)
        if template is None:
            return {}
        items = names[: max(minimum, 2)]  # two show how the names go on
        return {f"{name}.{item}": _example_value(template) for item in items}
    if spec.is_v3 and spec.type != MATCH_TYPE:
        return {}
    return {name: _example_value(spec)}


def _example_value(spec: InputSpec) -> Any:
    if not spec.is_set_in_node:
        return ["<node id>", 0]
    if spec.options.get("default") is not None:  # some nodes declare `"default": null` (OpenAIChatNode's model)
        default = spec.options["default"]
        return {"__value__": default} if isinstance(default, list) else default  # a bare list reads as a link
    if spec.choices:
        return spec.choices[0]
    if spec.value_type == "BOOLEAN":
        return False
    if spec.value_type in ("INT", "FLOAT"):
        low, high = spec.options.get("min"), spec.options.get("max")
        if isinstance(low, (int, float)) and low > 0:
            return low
        return high if isinstance(high, (int, float)) and high < 0 else 0
    return "<value>"


def _output_type(node_def: dict[str, Any], index: int, type_name: str) -> str:
    """A match type output takes the type of the inputs of its template: say which those may be."""
    matches = node_def.get("output_matchtypes") or []
    template_id = matches[index] if type_name == MATCH_TYPE and index < len(matches) else None
    if template_id is None:
        return type_name
    allowed: set[str] = set()
    for spec in node_inputs(node_def):
        template = spec.options.get("template")
        if spec.type == MATCH_TYPE and isinstance(template, dict) and template.get("template_id") == template_id:
            allowed |= spec.accepts
    return ",".join(sorted(allowed)) if allowed else "*"


def describe(class_type: str, node_def: dict[str, Any]) -> dict[str, Any]:
    names = node_def.get("output_name") or []
    is_list = node_def.get("output_is_list") or []
    tooltips = node_def.get("output_tooltips") or []
    outputs = []
    for index, type_name in enumerate(output_types(node_def)):
        out: dict[str, Any] = {
            "index": index,
            "name": names[index] if index < len(names) else type_name,
            "type": _output_type(node_def, index, type_name),
        }
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
