"""The local graph check, the node descriptions and the search over ComfyUI 0.33.0's node definitions.

ComfyUI's v3 schema adds inputs that stand for other inputs (a dynamic combo, a growing list),
links of any of several types (a match type) and values of new kinds (`COLOR`, `BOUNDING_BOXES`,
`"FLOAT,INT"` with a `widgetType`). Each graph said to run here was queued on a real ComfyUI 0.33.0
and ran; each refused one fails there, in its validation or when it runs.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from opencode_agent.skills.comfyui import catalog
from opencode_agent.skills.comfyui.graph import validate_graph, value_warnings
from opencode_agent.tests.fakes.comfyui_data import example_problems, object_info_0_33

INFO = object_info_0_33()
IMAGE = {"1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 255}}}


def save(source: list[Any]) -> dict[str, Any]:
    return {"9": {"class_type": "SaveImage", "inputs": {"images": source, "filename_prefix": "t"}}}


def resize(**inputs: Any) -> dict[str, Any]:
    node = {"input": ["1", 0], "resize_type": "scale by multiplier", "resize_type.multiplier": 2.0, "scale_method": "nearest-exact"}
    node.update(inputs)
    return {**IMAGE, "2": {"class_type": "ResizeImageMaskNode", "inputs": {k: v for k, v in node.items() if v is not None}}, **save(["2", 0])}


RUNS = {
    "dynamic combo and match type": resize(),
    "growing list": {**IMAGE, "2": {"class_type": "BatchImagesNode", "inputs": {"images.image0": ["1", 0], "images.image1": ["1", 0]}}, **save(["2", 0])},
    "switch into a resize": {
        **IMAGE,
        "5": {"class_type": "ComfySwitchNode", "inputs": {"switch": True, "on_false": ["1", 0], "on_true": ["1", 0]}},
        "2": {"class_type": "ResizeImageMaskNode", "inputs": {"input": ["5", 0], "resize_type": "scale dimensions", "resize_type.width": 16,
                                                              "resize_type.height": 16, "resize_type.crop": "center", "scale_method": "area"}},
        **save(["2", 0]),
    },
    "nested dynamic combos": {
        **IMAGE,
        "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 8.0}},
        "3": {"class_type": "SaveVideo", "inputs": {"video": ["2", 0], "filename_prefix": "t", "format": "mp4", "format.codec": "h264",
                                                    "format.codec.encoding": "re-encode", "format.codec.encoding.crf": 20.0,
                                                    "format.codec.encoding.color_space": "auto"}},
    },
    "COLOR value": {
        **IMAGE,
        "4": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 32}},
        "2": {"class_type": "ImageCropToMask", "inputs": {"images": ["1", 0], "masks": ["4", 0], "width": 64, "height": 64, "pad_factor": 1.0,
                                                          "grow_mask": 0, "background": "#ff0000"}},
        **save(["2", 0]),
    },
    "a list given as __value__": {"2": {"class_type": "CreateBoundingBoxes", "inputs": {"width": 64, "height": 64, "editor_state": {"__value__": []}}}, **save(["2", 0])},
    "several types, one a value": {"2": {"class_type": "ComfyNumberConvert", "inputs": {"value": 3}}, "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}},
    "any type given a value": {"3": {"class_type": "PreviewAny", "inputs": {"source": "hello"}}},
}


@pytest.mark.parametrize("name", list(RUNS))
def test_graphs_comfyui_runs_pass(name: str) -> None:
    graph = RUNS[name]
    assert validate_graph(graph, INFO) == []
    assert value_warnings(graph, INFO) == []


@pytest.mark.parametrize("graph, problem", [
    # ComfyUI 0.33.0 queues these, then the node fails: "execute() missing 1 required positional argument: 'resize_type'"
    (resize(resize_type="scale by magic"), "'resize_type': \"scale by magic\" is not one of the choices (did you mean \"scale by multiplier\""),
    (resize(resize_type=None), "required input 'resize_type' (COMBO) is missing: give it a value"),
    # ComfyUI's validation refuses these
    (resize(**{"resize_type.multiplier": None}), "required input 'resize_type.multiplier' (FLOAT) is missing: give it a value"),
    (resize(**{"resize_type.multiplier": 99.0}), "'resize_type.multiplier' is 99.0, above the maximum 8.0"),
    ({**IMAGE, "2": {"class_type": "BatchImagesNode", "inputs": {"images.image1": ["1", 0]}}, **save(["2", 0])},
     "required input 'images.image0' (IMAGE) is missing: give it a link"),
    # ComfyUI queues these, then the node fails on a latent (a dict) or a text where it wanted an image
    ({**IMAGE, "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}, **resize(input=["5", 0])},
     "'input' needs IMAGE,MASK but output 0 of node 5 (EmptyLatentImage) is LATENT"),
    ({**IMAGE, "2": {"class_type": "BatchImagesNode", "inputs": {"images.image0": "x"}}, **save(["2", 0])},
     "'images.image0' needs a link from an output of type IMAGE, not the value \"x\""),
    ({"2": {"class_type": "CreateBoundingBoxes", "inputs": {"width": 64, "height": 64, "editor_state": []}}, **save(["2", 0])},
     "'editor_state' is a list but not a link"),
])
def test_what_comfyui_refuses_or_fails_on_is_refused(graph: dict[str, Any], problem: str) -> None:
    errors = validate_graph(graph, INFO)
    assert len(errors) == 1 and problem in str(errors[0]), errors


def test_a_number_taking_several_types_is_checked_as_its_widget_type() -> None:
    graph = {"2": {"class_type": "LTXVEmptyLatentAudio", "inputs": {"frames_number": 97, "frame_rate": 25, "batch_size": 1, "audio_vae": ["3", 0]}}}
    spec = next(s for s in catalog.node_inputs(INFO["LTXVEmptyLatentAudio"]) if s.name == "frame_rate")
    assert spec.is_widget and spec.value_type == "FLOAT"
    assert [e.message for e in validate_graph(graph, INFO, require_output=False) if e.input_name == "frame_rate"] == []
    graph["2"]["inputs"]["frame_rate"] = 0.5
    assert "'frame_rate' is 0.5, below the minimum 1.0" in [e.message for e in validate_graph(graph, INFO, require_output=False)]


def test_a_front_end_widget_no_node_outputs_takes_a_value() -> None:
    """WEBCAM is set by the front end's webcam widget: no node outputs it, so no link could feed it."""
    graph = {"2": {"class_type": "WebcamCapture", "inputs": {"image": "webcam/1.png", "width": 0, "height": 0, "capture_on_queue": True}}, **save(["2", 0])}
    assert validate_graph(graph, INFO) == []
    del graph["2"]["inputs"]["image"]
    assert [str(e) for e in validate_graph(graph, INFO)] == ["node 2 (WebcamCapture): required input 'image' (WEBCAM) is missing: give it a value"]


def test_an_unknown_v3_type_is_left_to_comfyui() -> None:
    info = copy.deepcopy(INFO)
    info["BatchImagesNode"]["input"]["required"]["images"][0] = "COMFY_FUTURE_V3"
    graph = {**IMAGE, "2": {"class_type": "BatchImagesNode", "inputs": {"images.whatever": "x"}}, **save(["2", 0])}
    assert validate_graph(graph, info) == []


def test_describe_lists_what_a_dynamic_combo_brings() -> None:
    node = catalog.describe("ResizeImageMaskNode", INFO["ResizeImageMaskNode"])
    inputs = {i["name"]: i for i in node["inputs"]}
    assert inputs["input"]["type"] == "IMAGE,MASK" and inputs["input"]["connect"] == "link from an output of type IMAGE,MASK"
    resize_type = inputs["resize_type"]
    assert resize_type["type"] == "COMBO" and "scale by multiplier" in resize_type["choices"] and "connect" not in resize_type
    brought = {(i["name"], str(i["for"])): i for i in resize_type["choice_inputs"]}
    assert brought[("resize_type.multiplier", "['scale by multiplier']")]["max"] == 8.0
    assert brought[("resize_type.crop", "['scale dimensions', 'match size']")]["choices"] == ["disabled", "center"]
    assert node["outputs"][0]["type"] == "IMAGE,MASK"  # a match type output takes its input's type
    assert node["example"]["inputs"]["resize_type"] == "scale dimensions"
    assert node["example"]["inputs"]["resize_type.width"] == 512 and node["example"]["inputs"]["input"] == ["<node id>", 0]


def test_describe_a_growing_list_and_values_set_in_the_node() -> None:
    images = catalog.describe("BatchImagesNode", INFO["BatchImagesNode"])["inputs"][0]
    assert images["type"] == "IMAGE" and images["items"] == "images.image0 ... images.image49: one input per item, at least 1, at most 50"
    crop = {i["name"]: i for i in catalog.describe("ImageCropToMask", INFO["ImageCropToMask"])["inputs"]}["background"]
    assert crop["default"] == "#000000" and "connect" not in crop and crop["value"].startswith("set in the node")
    found = catalog.search(INFO, "resize")[0]
    assert next(r for r in found if r["class_type"] == "ResizeImageMaskNode")["inputs"] == ["input:IMAGE,MASK"]


def test_every_example_node_passes_once_its_links_are_fed() -> None:
    """describe_node's example, each link placeholder fed by a node that outputs the type."""
    assert example_problems(INFO) == {}


@pytest.mark.parametrize("value, problem", [
    ("rev_00001_.png [output]", None),  # ComfyUI's annotation for a file in another folder
    ("clipspace/clipspace-mask-1.png [input]", None),  # what the mask editor saves
    ("pasted/image.png", None),  # a sub-folder, which LoadImage does not list
    ("example.png", None),
    ("nope.png", "'image': \"nope.png\" is not one of the choices"),
    ("nope.png[output]", "is not one of the choices"),  # ComfyUI reads the annotation only after a space
])
def test_a_file_picker_takes_files_it_does_not_list(value: str, problem: str | None) -> None:
    """LoadImage checks the file itself (VALIDATE_INPUTS), so ComfyUI skips its list of choices."""
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": value}}, **save(["1", 0])}
    errors = [e.message for e in validate_graph(graph, INFO)]
    assert errors == [] if problem is None else (len(errors) == 1 and problem in errors[0]), errors


def test_only_a_file_picker_takes_annotated_names() -> None:
    graph = {"1": {"class_type": "ImageScaleBy", "inputs": {"image": ["2", 0], "upscale_method": "area [output]", "scale_by": 1.0}},
             "2": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}}
    assert ["'upscale_method': \"area [output]\" is not one of the choices"] == [
        e.message[: len("'upscale_method': \"area [output]\" is not one of the choices")] for e in validate_graph(graph, INFO, require_output=False)
    ]


def test_a_value_not_among_many_choices_names_the_closest_and_how_to_see_all() -> None:
    graph = {"3": {"class_type": "KSampler", "inputs": {**catalog.example_node("KSampler", INFO["KSampler"])["inputs"], "sampler_name": "dpmpp2m"}}}
    [problem] = [e.message for e in validate_graph(graph, INFO, require_output=False) if e.input_name == "sampler_name"]
    total = len(INFO["KSampler"]["input"]["required"]["sampler_name"][0])
    assert problem.startswith("'sampler_name': \"dpmpp2m\" is not one of the choices (did you mean \"dpmpp_2m\"")
    assert problem.endswith(f'(and {total - 10} more: describe_node("KSampler", input="sampler_name") lists them all)')


def test_find_input_by_its_dotted_name() -> None:
    multiplier = catalog.find_input(INFO["ResizeImageMaskNode"], "resize_type.multiplier")
    assert multiplier is not None and multiplier.name == "resize_type.multiplier" and multiplier.options["max"] == 8.0
    crf = catalog.find_input(INFO["SaveVideo"], "format.codec.encoding.crf")
    assert crf is not None and crf.type == "FLOAT"
    item = catalog.find_input(INFO["BatchImagesNode"], "images.image7")
    assert item is not None and item.type == "IMAGE" and not item.required
    assert catalog.find_input(INFO["BatchImagesNode"], "images.image50") is None
    assert catalog.find_input(INFO["ResizeImageMaskNode"], "resize_type.nothing") is None


def test_search_knows_a_nodes_aliases_but_ranks_names_first() -> None:
    results, total = catalog.search(INFO, "img2img")
    assert total == 1 and results[0]["class_type"] == "KSampler"  # an alias of ComfyUI's search only
    names = [r["class_type"] for r in catalog.search(INFO, "sampler")[0]]
    assert names[:2] == ["KSampler", "KSamplerAdvanced"]


@pytest.mark.parametrize("asked, found", [
    ("ksampler advanced", "KSamplerAdvanced"),
    ("KSampler (Advanced)", "KSamplerAdvanced"),
    ("ksampler (advanced)", "KSamplerAdvanced"),
    ("resize image/mask", "ResizeImageMaskNode"),
    ("Resize Image Mask", "ResizeImageMaskNode"),
    ("empty_image", "EmptyImage"),
    ("(  )", None),
    ("ksampler advance", None),
])
def test_find_class_ignores_case_spaces_and_punctuation(asked: str, found: str | None) -> None:
    assert catalog.find_class(INFO, asked) == found


def test_search_results_list_the_inputs_a_link_feeds() -> None:
    inputs = {r["class_type"]: r["inputs"] for r in catalog.search(INFO, "image", limit=50)[0]}
    assert inputs["ImageCropToMask"] == ["images:IMAGE", "masks:MASK"]  # not the COLOR set in the node
    assert inputs["BatchImagesNode"] == ["images:IMAGE (list)"]
    assert catalog.search(INFO, "preview any")[0][0]["inputs"] == ["source:*"]


def test_a_malformed_growing_list_is_no_crash() -> None:
    info = copy.deepcopy(INFO)
    info["BatchImagesNode"]["input"]["required"]["images"][1]["template"].update(max="lots", min=None)
    graph = {**IMAGE, "2": {"class_type": "BatchImagesNode", "inputs": {"images.image0": ["1", 0]}}, **save(["2", 0])}
    assert validate_graph(graph, info) == []
    assert "items" not in catalog.describe("BatchImagesNode", info["BatchImagesNode"])["inputs"][0]


def test_an_example_skips_a_declared_null_default() -> None:
    """ComfyUI 0.3.64's OpenAIChatNode declares its model combo with `"default": null`: the
    example takes the first choice, which the check passes, not null, which it refuses."""
    node_def = {"input": {"required": {"model": ["COMBO", {"options": ["o4-mini", "gpt-5"], "default": None}]}},
                "output": ["STRING"], "output_name": ["STRING"], "name": "OpenAIChatNode"}
    assert catalog.example_node("OpenAIChatNode", node_def)["inputs"] == {"model": "o4-mini"}
