"""The ComfyUI tools over `HttpComfyAdapter`, against a loopback ComfyUI replaying recorded data.

Every tool is called the way the agent calls it, through `Tool.call(ctx, arguments)`.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import aiohttp
import pytest

from opencode_agent.core.protocol import ImagePart
from opencode_agent.core.tools import Tool, ToolError, ToolOutput
from opencode_agent.skills.comfyui import (
    ComfyUnavailable,
    ComfyValidationError,
    HttpComfyAdapter,
    build_comfyui_skill,
)
from opencode_agent.skills.comfyui.catalog import parse_input
from opencode_agent.skills.comfyui.graph import value_problem
from opencode_agent.tests.fakes.comfyui_data import ERROR_PROMPT_ID, OK_PROMPT_ID, SAVED_IMAGE, graph, load, recorded_runs, saved_png
from opencode_agent.tests.fakes.comfyui_http import FakeComfyUI
from opencode_agent.tests.fakes.tool_context import NO_PANEL, FakeToolContext


@pytest.fixture
async def comfy(aiohttp_server: Any) -> FakeComfyUI:
    fake = FakeComfyUI()
    fake.server = await aiohttp_server(fake.app(), host="127.0.0.1")
    return fake


@pytest.fixture
def tools(adapter: HttpComfyAdapter) -> dict[str, Tool]:
    skill = build_comfyui_skill(adapter, run_timeout=30.0)
    return {t.name: t for t in skill.tools}


async def call(tools: dict[str, Tool], name: str, ctx: FakeToolContext | None = None, **args: Any) -> ToolOutput:
    return await tools[name].call(ctx or FakeToolContext(), args)


def payload(out: ToolOutput) -> Any:
    """The JSON part of a tool's answer (after an optional one-line headline)."""
    text = out.content
    return json.loads(text[text.index("{"):])


# --------------------------------------------------------------------------- the skill


def test_skill_shape(tools: dict[str, Tool], adapter: HttpComfyAdapter) -> None:
    skill = build_comfyui_skill(adapter)
    assert skill.id == "comfyui" and skill.kind == "tools" and skill.origin == "python"
    assert "API format" in skill.instructions and "search_nodes" in skill.instructions
    assert {n: t.permission for n, t in tools.items()} == {
        "search_nodes": "read",
        "describe_node": "read",
        "get_workflow": "read",
        "propose_workflow": "edit",
        "queue_workflow": "run",
        "get_run": "read",
        "recent_runs": "read",
        "view_image": "read",
        "list_models": "read",
    }
    assert tools["view_image"].json_schema()["properties"]["type"]["enum"] == ["output", "input", "temp"]


# --------------------------------------------------------------------------- nodes


async def test_search_ranks_name_matches_first(tools: dict[str, Tool], comfy: FakeComfyUI) -> None:
    found = payload(await call(tools, "search_nodes", query="ksampler"))
    names = [r["class_type"] for r in found["results"]]
    assert names[0] == "KSampler" and "KSamplerAdvanced" in names[1:3]
    first = found["results"][0]
    assert first["display_name"] == "KSampler" and first["category"] == "sampling"
    assert first["outputs"] == ["LATENT"]
    assert "model:MODEL" in first["inputs"] and "latent_image:LATENT" in first["inputs"]

    found = payload(await call(tools, "search_nodes", query="load checkpoint", limit=3))
    assert found["results"][0]["class_type"] == "CheckpointLoaderSimple"
    assert found["shown"] == 3 and found["matches"] >= 3

    found = payload(await call(tools, "search_nodes", query="invert image"))
    assert found["results"][0]["class_type"] == "ImageInvert"
    assert comfy.requests.count("/object_info") == 1  # cached across calls


async def test_search_matches_category_and_description_after_names(tools: dict[str, Tool]) -> None:
    found = payload(await call(tools, "search_nodes", query="upscale", limit=50))
    names = [r["class_type"] for r in found["results"]]
    assert all("upscale" in n.lower() or "upscale" in r["display_name"].lower() for n, r in zip(names[:3], found["results"]))
    # Nodes that only mention the word in their category come after the ones named for it.
    name_hits = [i for i, r in enumerate(found["results"]) if "upscale" in (r["class_type"] + r["display_name"]).lower()]
    assert name_hits == list(range(len(name_hits)))


async def test_search_errors(tools: dict[str, Tool]) -> None:
    out = await call(tools, "search_nodes", query="   ")
    assert out.is_error and "give one or more words" in out.content
    out = await call(tools, "search_nodes", query="zzzqqq")
    assert out.is_error and "no node matches 'zzzqqq'" in out.content


async def test_describe_node_lists_inputs_outputs_and_truncated_choices(tools: dict[str, Tool]) -> None:
    node = payload(await call(tools, "describe_node", class_type="KSampler"))
    assert node["display_name"] == "KSampler" and node["category"] == "sampling"
    inputs = {i["name"]: i for i in node["inputs"]}
    assert inputs["seed"]["type"] == "INT" and inputs["seed"]["default"] == 0 and inputs["seed"]["min"] == 0
    assert inputs["cfg"]["max"] == 100.0 and inputs["cfg"]["step"] == 0.1
    assert inputs["model"]["connect"] == "link from an output of type MODEL"
    sampler = inputs["sampler_name"]
    assert sampler["type"] == "COMBO" and len(sampler["choices"]) == 25 and sampler["choices"][0] == "euler"
    assert sampler["choices_note"].startswith("showing 25 of ")
    assert len(inputs["seed"]["tooltip"]) <= 240
    assert node["outputs"] == [{"index": 0, "name": "LATENT", "type": "LATENT", "tooltip": "The denoised latent."}]
    assert node["example"]["inputs"]["model"] == ["<node id>", 0]
    assert node["example"]["inputs"]["steps"] == 20


async def test_describe_node_lists_every_choice_of_the_input_asked_for(tools: dict[str, Tool], comfy: FakeComfyUI) -> None:
    every = comfy.object_info["KSampler"]["input"]["required"]["sampler_name"][0]
    compact = {i["name"]: i for i in payload(await call(tools, "describe_node", class_type="KSampler"))["inputs"]}
    assert compact["sampler_name"]["choices_note"] == (
        f'showing 25 of {len(every)} choices; describe_node with input="sampler_name" lists them all'
    )
    asked = payload(await call(tools, "describe_node", class_type="KSampler", input="sampler_name"))
    assert asked["class_type"] == "KSampler" and asked["input"]["choices"] == every and "choices_note" not in asked["input"]
    assert {"uni_pc", "lcm"} <= set(asked["input"]["choices"])
    out = await call(tools, "describe_node", class_type="KSampler", input="sampler")
    assert out.is_error and out.content.startswith("KSampler has no input 'sampler'; its inputs: model, seed, steps")


async def test_describe_node_outputs_and_empty_model_choices(tools: dict[str, Tool]) -> None:
    node = payload(await call(tools, "describe_node", class_type="load checkpoint"))  # display name, any case
    assert node["class_type"] == "CheckpointLoaderSimple"
    assert payload(await call(tools, "describe_node", class_type="ksampler advanced"))["class_type"] == "KSamplerAdvanced"
    assert [(o["index"], o["type"]) for o in node["outputs"]] == [(0, "MODEL"), (1, "CLIP"), (2, "VAE")]
    ckpt = node["inputs"][0]
    assert ckpt["choices"] == [] and "no model files of this kind are installed" in ckpt["choices_note"]
    assert payload(await call(tools, "describe_node", class_type="SaveImage"))["output_node"] is True


async def test_describe_unknown_node_suggests_close_names(tools: dict[str, Tool], comfy: FakeComfyUI) -> None:
    out = await call(tools, "describe_node", class_type="KSampeler")
    assert out.is_error and "unknown node type 'KSampeler'" in out.content and "KSampler" in out.content
    assert comfy.requests.count("/object_info") == 2  # refreshed once in case the node is new


# --------------------------------------------------------------------------- queue and runs


async def test_queue_ok_workflow_returns_outputs_and_relays_progress(tools: dict[str, Tool], comfy: FakeComfyUI, adapter: HttpComfyAdapter) -> None:
    ctx = FakeToolContext()
    out = await call(tools, "queue_workflow", ctx, graph=graph("cpu_ok"))
    assert not out.is_error, out.content
    assert out.content.startswith(f"Run {OK_PROMPT_ID} finished; images: {SAVED_IMAGE}.")
    result = payload(out)
    assert result["status"] == "success"
    assert result["outputs"] == {"3": {"class_type": "SaveImage", "images": [{"filename": SAVED_IMAGE, "subfolder": "", "type": "output"}]}}
    assert result["duration_s"] == 0.013
    assert ctx.statuses == [
        f"queued as {OK_PROMPT_ID}",
        f"run {OK_PROMPT_ID} started",
        "running node 1 (EmptyImage)",
        "running node 2 (ImageInvert)",
        "running node 3 (SaveImage)",
        "node 3 (SaveImage) produced output",
        "run finished",
    ]
    assert ("info", f"queued ComfyUI prompt {OK_PROMPT_ID}") in ctx.logs
    assert comfy.posted[0]["client_id"] == adapter.client_id and adapter.client_id in comfy.sockets


async def test_queue_result_from_events_when_history_is_missing(tools: dict[str, Tool], comfy: FakeComfyUI) -> None:
    comfy.record_history = False
    out = await call(tools, "queue_workflow", graph=graph("cpu_ok"))
    assert not out.is_error
    result = payload(out)
    assert result["status"] == "success"
    assert result["outputs"]["3"]["images"][0]["filename"] == SAVED_IMAGE


async def test_a_finished_run_is_read_from_its_history_once_comfyui_saves_it(tools: dict[str, Tool], comfy: FakeComfyUI) -> None:
    """ComfyUI sends a run's last event before it saves the run's history: a `get_run` right after
    `queue_workflow` must not find the run still "running"."""
    comfy.history_lag = 0.2
    result = payload(await call(tools, "queue_workflow", graph=graph("cpu_ok")))
    assert result["status"] == "success" and result.get("duration_s") == 0.013  # from the history
    again = payload(await call(tools, "get_run", prompt_id=OK_PROMPT_ID))
    assert again["status"] == "success" and again["outputs"] == result["outputs"]


async def test_queue_invalid_workflow_returns_readable_node_errors(tools: dict[str, Tool], comfy: FakeComfyUI) -> None:
    out = await call(tools, "queue_workflow", graph=graph("txt2img"))
    assert out.is_error
    assert out.content.startswith("The workflow is not valid; nothing was queued:")
    assert "node 4 (CheckpointLoaderSimple): 'ckpt_name': \"missing.safetensors\" is not available" in out.content
    assert comfy.posted == []


async def test_queue_refuses_a_value_that_is_not_a_finite_number(tools: dict[str, Tool], comfy: FakeComfyUI) -> None:
    """`1e999` in a model's JSON reads as infinity: a node error, not an OverflowError."""
    bad = graph("cpu_ok")
    bad["1"]["inputs"]["width"] = json.loads("1e999")
    out = await call(tools, "queue_workflow", graph=bad)
    assert out.is_error and out.content == (
        "The workflow is not valid; nothing was queued:\n"
        "- node 1 (EmptyImage): 'width': Infinity is not a finite number"
    )
    assert comfy.posted == []


@pytest.mark.parametrize("spec, value, problem", [
    (("FLOAT", {"min": 0.0, "max": 1.0}), float("nan"), "'x': NaN is not a finite number"),
    (("FLOAT", {}), float("inf"), "'x': Infinity is not a finite number"),
    (("FLOAT", {}), "-inf", "'x': \"-inf\" is not a finite number"),
    (("FLOAT", {}), 10**400, f"'x': {str(10**400)[:57]}... is too large a number"),
    (("INT", {"min": 0}), float("-inf"), "'x': -Infinity is not a finite number"),
    (("INT", {}), float("nan"), "'x': NaN is not a finite number"),
    (("FLOAT", {"max": 1e308}), 1e308, None),
    (("INT", {}), 10**400, None),
], ids=["float-nan", "float-inf", "float-inf-text", "float-too-large", "int-minus-inf", "int-nan", "float-large",
        "int-large"])
def test_a_number_must_be_finite(spec: tuple[str, dict[str, Any]], value: Any, problem: str | None) -> None:
    """NaN passes any range check and infinity breaks `int()`: both are named, as is an integer past a float."""
    assert value_problem(parse_input("x", list(spec), True), value) == problem


async def test_queue_rejected_by_comfyui_returns_its_node_errors(tools: dict[str, Tool], comfy: FakeComfyUI) -> None:
    # Our cached definitions say the checkpoint exists; ComfyUI knows better.
    comfy.object_info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0].append("missing.safetensors")
    out = await call(tools, "queue_workflow", graph=graph("txt2img"))
    assert out.is_error
    assert out.content == (
        "ComfyUI rejected the workflow; nothing was queued:\n"
        "- node 4 (CheckpointLoaderSimple): Value not in list: ckpt_name: 'missing.safetensors' not in []"
    )
    assert len(comfy.posted) == 1


async def test_queue_unknown_node_is_a_readable_error(tools: dict[str, Tool], comfy: FakeComfyUI) -> None:
    bad = {**graph("cpu_ok"), "9": {"class_type": "NoSuchNode", "inputs": {}}}
    out = await call(tools, "queue_workflow", graph=bad)
    assert out.is_error and "node 9 (NoSuchNode): unknown node type 'NoSuchNode'" in out.content
    assert comfy.posted == []


async def test_adapter_queue_turns_comfyui_rejections_into_node_errors(adapter: HttpComfyAdapter) -> None:
    with pytest.raises(ComfyValidationError) as info:
        await adapter.queue({"1": {"class_type": "NoSuchNode", "inputs": {}}})
    assert str(info.value) == "ComfyUI rejected the workflow:\n- Cannot execute because node NoSuchNode does not exist. (Node ID '#1')"
    with pytest.raises(ComfyValidationError) as info:
        await adapter.queue(graph("txt2img"))
    [error] = info.value.errors
    assert (error.node_id, error.class_type, error.input_name) == ("4", "CheckpointLoaderSimple", "ckpt_name")


async def test_queue_runtime_error_reports_the_failing_node(tools: dict[str, Tool]) -> None:
    ctx = FakeToolContext()
    out = await call(tools, "queue_workflow", ctx, graph=graph("runtime_error"))
    assert out.is_error
    assert out.content.startswith(
        f"Run {ERROR_PROMPT_ID} failed in node 1 (LoadImage) with PIL.UnidentifiedImageError: "
        "cannot identify image file '/home/user/ComfyUI/input/corrupt.png'"
    )
    error = payload(out)["error"]
    assert (error["node_id"], error["node_type"]) == ("1", "LoadImage")
    assert error["traceback"][-1] == "PIL/Image.py:3730 in open: raise UnidentifiedImageError(msg)"
    assert "run failed in node 1 (LoadImage)" in ctx.statuses


async def test_queue_gives_up_following_after_the_timeout(adapter: HttpComfyAdapter, comfy: FakeComfyUI) -> None:
    tools = {t.name: t for t in build_comfyui_skill(adapter, run_timeout=0.05).tools}
    never_runs = graph("cpu_ok")
    never_runs["3"]["inputs"]["filename_prefix"] = "other"
    out = await call(tools, "queue_workflow", graph=never_runs)
    assert not out.is_error
    assert "is still going after 0 s; it stays in ComfyUI's queue" in out.content
    prompt_id = comfy.queue["queue_pending"][0][1]
    pending = payload(await call(tools, "get_run", prompt_id=prompt_id))
    assert pending == {"prompt_id": prompt_id, "status": "pending", "position": 1, "queued": 1}


async def test_queue_from_a_graph_waiting_on_this_session_does_not_wait_for_itself(
        tools: dict[str, Tool], comfy: FakeComfyUI) -> None:
    """A node waiting for this session's answer holds ComfyUI's worker: the run cannot start until
    the answer ends, so following it would last until the timeout. Queued, and said so."""
    from opencode_agent.skills.comfyui import worker

    never_runs = graph("cpu_ok")
    never_runs["3"]["inputs"]["filename_prefix"] = "other"
    ctx = FakeToolContext()
    with worker.holding(ctx.session_id):
        out = await asyncio.wait_for(call(tools, "queue_workflow", ctx, graph=never_runs), 5)
    assert not out.is_error and "holds ComfyUI's worker" in out.content
    prompt_id = comfy.queue["queue_pending"][0][1]
    assert f"Queued as {prompt_id}" in out.content and not worker.held_by(ctx.session_id)


async def test_get_run_of_the_error_run(tools: dict[str, Tool], comfy: FakeComfyUI) -> None:
    comfy.history[ERROR_PROMPT_ID] = load("history_run_error.json")[ERROR_PROMPT_ID]
    out = await call(tools, "get_run", prompt_id=ERROR_PROMPT_ID)
    assert out.is_error
    result = payload(out)
    assert result["status"] == "error" and result["outputs"] == {}
    error = result["error"]
    assert error["node_id"] == "1" and error["node_type"] == "LoadImage"
    assert error["exception_type"] == "PIL.UnidentifiedImageError"
    assert error["exception_message"] == "cannot identify image file '/home/user/ComfyUI/input/corrupt.png'"
    assert error["traceback"] == [
        "ComfyUI/execution.py:277 in process_inputs: result = f(**inputs)",
        "ComfyUI/nodes.py:1647 in load_image: img = node_helpers.pillow(Image.open, image_path)",
        "ComfyUI/node_helpers.py:31 in pillow: x = fn(arg)",
        "PIL/Image.py:3730 in open: raise UnidentifiedImageError(msg)",
    ]


async def test_get_run_of_the_ok_run_and_unknown_ids(tools: dict[str, Tool], comfy: FakeComfyUI) -> None:
    comfy.history[OK_PROMPT_ID] = load("history_run_ok.json")[OK_PROMPT_ID]
    out = await call(tools, "get_run", prompt_id=OK_PROMPT_ID)
    assert not out.is_error and payload(out)["outputs"]["3"]["class_type"] == "SaveImage"
    comfy.queue["queue_running"].append([7, "running-id", {}, {}, []])
    assert payload(await call(tools, "get_run", prompt_id="running-id"))["status"] == "running"
    out = await call(tools, "get_run", prompt_id="nope")
    assert out.is_error and "no run 'nope' in ComfyUI's queue or history" in out.content


async def test_recent_runs_lists_the_latest_runs_newest_first(tools: dict[str, Tool], comfy: FakeComfyUI, monkeypatch: Any) -> None:
    """A run queued from the browser failed: its prompt id is nowhere the user sees, so the model
    finds it among the latest runs, with the failing node and the error."""
    error_entry = load("history_run_error.json")[ERROR_PROMPT_ID]
    ended = next(m[1]["timestamp"] for m in error_entry["status"]["messages"] if m[0] == "execution_error") / 1000
    monkeypatch.setattr("opencode_agent.skills.comfyui.tools.time.time", lambda: ended + 90)
    comfy.history["older"] = load("history_run_ok.json")[OK_PROMPT_ID]
    comfy.history[OK_PROMPT_ID] = load("history_run_ok.json")[OK_PROMPT_ID]
    comfy.history[ERROR_PROMPT_ID] = error_entry
    comfy.queue["queue_pending"].append([9, "waiting", {}, {}, []])
    result = json.loads((await call(tools, "recent_runs", limit=2)).content)
    assert comfy.history_queries == [{"max_items": "2"}]
    assert [r["prompt_id"] for r in result["runs"]] == [ERROR_PROMPT_ID, OK_PROMPT_ID]
    failed, ok = result["runs"]
    assert failed == {
        "prompt_id": ERROR_PROMPT_ID, "status": "error", "nodes": 2, "ended_s_ago": 90, "duration_s": failed["duration_s"],
        "error": {"node_id": "1", "node_type": "LoadImage", "exception_type": "PIL.UnidentifiedImageError",
                  "exception_message": "cannot identify image file '/home/user/ComfyUI/input/corrupt.png'"},
    }
    assert ok["status"] == "success" and ok["images"] == [SAVED_IMAGE] and "error" not in ok
    assert result["running"] == [] and result["pending"] == 1

    comfy.history.clear()
    empty = json.loads((await call(tools, "recent_runs")).content)
    assert empty["runs"] == [] and "no finished run" in empty["note"] and comfy.history_queries[-1] == {"max_items": "5"}
    out = await call(tools, "get_run", prompt_id="")
    assert out.is_error and "recent_runs lists the latest runs" in out.content


async def test_get_run_of_a_run_leaving_the_queue_for_the_history(tools: dict[str, Tool], adapter: HttpComfyAdapter,
                                                                  comfy: FakeComfyUI, monkeypatch: Any) -> None:
    """Seen in a real ComfyUI (0.3.64): a run just finished was in neither `/history` nor
    `/queue` when read between ComfyUI's two steps; it is not an unknown run."""
    real_queue_state = adapter.queue_state

    async def saved_meanwhile() -> dict[str, list[str]]:
        state = await real_queue_state()
        comfy.history[OK_PROMPT_ID] = load("history_run_ok.json")[OK_PROMPT_ID]  # saved just after
        return state

    monkeypatch.setattr(adapter, "queue_state", saved_meanwhile)
    out = await call(tools, "get_run", prompt_id=OK_PROMPT_ID)
    assert not out.is_error and payload(out)["outputs"]["3"]["class_type"] == "SaveImage"


async def test_events_of_a_finished_run_come_from_its_history(adapter: HttpComfyAdapter, comfy: FakeComfyUI) -> None:
    comfy.history[OK_PROMPT_ID] = load("history_run_ok.json")[OK_PROMPT_ID]
    events = [e.type async for e in adapter.events(OK_PROMPT_ID)]
    assert events == ["execution_start", "execution_cached", "execution_success"]


# --------------------------------------------------------------------------- images and models


async def test_view_image_attaches_the_image(tools: dict[str, Tool]) -> None:
    out = await call(tools, "view_image", filename=SAVED_IMAGE)
    assert not out.is_error
    assert out.content == f"Attached output/{SAVED_IMAGE} (64x64 image/png, {len(saved_png())} bytes)."
    assert out.images == [ImagePart(source="comfyui", filename=SAVED_IMAGE, subfolder="", folder_type="output", mime_type="image/png")]


async def test_adapter_loads_comfyui_image_parts(adapter: HttpComfyAdapter) -> None:
    data, mime = await adapter.load_image(ImagePart(source="comfyui", filename=SAVED_IMAGE))
    assert data == saved_png() and mime == "image/png"


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ({"filename": "../secret.png"}, "is not a plain file name"),
        ({"filename": "..\\secret.png"}, "is not a plain file name"),
        ({"filename": ".."}, "is not a plain file name"),
        ({"filename": "a.png", "subfolder": "../.."}, "must be a relative folder"),
        ({"filename": "a.png", "subfolder": "/etc"}, "must be a relative folder"),
        ({"filename": "a.png", "subfolder": "x/../../y"}, "must be a relative folder"),
        ({"filename": "a.png", "type": "models"}, "invalid arguments"),
        ({"filename": "missing.png"}, "ComfyUI has no file output/missing.png"),
    ],
)
async def test_view_image_refuses_bad_paths(tools: dict[str, Tool], comfy: FakeComfyUI, args: dict[str, Any], problem: str) -> None:
    out = await call(tools, "view_image", **args)
    assert out.is_error and problem in out.content
    if problem != "ComfyUI has no file output/missing.png":
        assert "/view" not in comfy.requests


async def test_list_models(tools: dict[str, Tool], comfy: FakeComfyUI) -> None:
    comfy.models["loras"] = ["detail.safetensors", "style/ink.safetensors"]
    listed = payload(await call(tools, "list_models", folder="loras"))
    assert listed == {"folder": "loras", "count": 2, "files": ["detail.safetensors", "style/ink.safetensors"]}
    empty = payload(await call(tools, "list_models", folder="checkpoints"))
    assert empty["count"] == 0 and "models/checkpoints" in empty["note"]
    out = await call(tools, "list_models", folder="nope")
    assert out.is_error and "unknown model folder 'nope'" in out.content and "checkpoints, configs, loras, vae" in out.content


# --------------------------------------------------------------------------- the canvas


async def test_get_workflow_returns_the_canvas_graph(tools: dict[str, Tool]) -> None:
    ctx = FakeToolContext(ui_replies={"get_workflow": {"prompt": graph("cpu_ok"), "workflow": load("workflow_ui_default.json")}})
    out = await call(tools, "get_workflow", ctx)
    assert not out.is_error
    assert out.content.startswith("Workflow on the canvas (3 nodes, API format):")
    assert payload(out) == graph("cpu_ok")
    assert ctx.ui_requests == [("get_workflow", {}, 30.0)]


async def test_get_workflow_summarises_ui_format_and_huge_graphs(tools: dict[str, Tool]) -> None:
    ctx = FakeToolContext(ui_replies={"get_workflow": {"workflow": load("workflow_ui_default.json")}})
    out = await call(tools, "get_workflow", ctx)
    assert out.content.startswith("Workflow on the canvas (7 nodes, UI format summarised")
    assert "3 KSampler: model<-4.0, positive<-6.0, negative<-7.0, latent_image<-5.0, widgets=[" in out.content

    huge = {str(i): {"class_type": "CLIPTextEncode", "inputs": {"text": "word " * 200, "clip": ["0", 1]}} for i in range(1, 60)}
    ctx = FakeToolContext(ui_replies={"get_workflow": {"prompt": huge}})
    out = await call(tools, "get_workflow", ctx)
    assert "59 nodes, API format, summarised" in out.content
    assert '\n1 CLIPTextEncode: text="word word' in out.content and "clip<-0.1" in out.content
    assert len(out.content) < 16_000

    out = await call(tools, "get_workflow", FakeToolContext(ui_replies={"get_workflow": {}}))
    assert out.content == "The canvas is empty."


async def test_get_workflow_gives_the_nodes_a_summary_cut_whole(tools: dict[str, Tool]) -> None:
    """A summary cuts long values; queueing needs them whole, so the model can ask for those nodes."""
    long_text = "a lighthouse on a cliff at dusk, " * 8
    huge = {str(i): {"class_type": "CLIPTextEncode", "inputs": {"text": f"prompt {i}", "clip": ["0", 1]}} for i in range(1, 400)}
    huge["6"]["inputs"]["text"] = long_text
    ctx = FakeToolContext(ui_replies={"get_workflow": {"prompt": huge}})
    summary = (await call(tools, "get_workflow", ctx)).content
    assert "summarised" in summary and long_text not in summary
    assert summary.endswith(
        'Values over 120 characters are cut (they end in ...) in nodes "6": call get_workflow with '
        "node_ids=[...] to get those nodes whole before changing or queueing them."
    )
    out = await call(tools, "get_workflow", ctx, node_ids=["6", 7, "nope"])
    assert not out.is_error
    head, body, note = out.content.split("\n")
    assert head == "Nodes 6, 7 of the canvas's workflow, whole (API format):" and note == "(not on the canvas: nope)"
    assert json.loads(body) == {"6": huge["6"], "7": huge["7"]}

    ui = load("workflow_ui_default.json")
    out = await call(tools, "get_workflow", FakeToolContext(ui_replies={"get_workflow": {"workflow": ui}}), node_ids=["3"])
    assert json.loads(out.content.split("\n")[1]) == {"3": next(n for n in ui["nodes"] if n["id"] == 3)}
    out = await call(tools, "get_workflow", ctx, node_ids=["nope"])
    assert out.is_error and out.content.startswith("no node nope on the canvas; its node ids: 1, 2, 3")

    huge["8"]["inputs"]["text"] = huge["9"]["inputs"]["text"] = "x" * 40_000
    out = await call(tools, "get_workflow", ctx, node_ids=["8", "9"])
    assert out.content.startswith("Nodes 8 of") and out.content.endswith("(left out to keep this short, ask for them next: 9)")


async def test_get_workflow_without_a_panel_is_a_readable_error(tools: dict[str, Tool]) -> None:
    out = await call(tools, "get_workflow", FakeToolContext())
    assert out.is_error and out.content == NO_PANEL


async def test_propose_workflow_accepted(tools: dict[str, Tool]) -> None:
    ctx = FakeToolContext(ui_replies={"propose_workflow": {"accepted": True}})
    out = await call(tools, "propose_workflow", ctx, graph=graph("cpu_ok"), title="Red square, inverted")
    assert not out.is_error and out.content == "The user accepted the workflow; it is now on the canvas."
    [(action, sent, timeout)] = ctx.ui_requests
    assert action == "propose_workflow" and sent == {"graph": graph("cpu_ok"), "title": "Red square, inverted"}
    assert timeout == 600.0


async def test_propose_workflow_rejected_with_reason_and_value_warnings(tools: dict[str, Tool]) -> None:
    ctx = FakeToolContext(ui_replies={"propose_workflow": {"accepted": False, "reason": "keep my sampler"}})
    out = await call(tools, "propose_workflow", ctx, graph=graph("txt2img"))
    assert not out.is_error
    assert out.content.startswith("The user rejected the proposed workflow: keep my sampler\nValues to check before running:")
    assert "node 4 (CheckpointLoaderSimple): 'ckpt_name'" in out.content


async def test_propose_workflow_shows_a_graph_with_numbers_that_are_not_finite_and_warns(tools: dict[str, Tool]) -> None:
    """As with any value out of range, the user sees the graph and the model the warning."""
    ctx = FakeToolContext(ui_replies={"propose_workflow": {"accepted": True}})
    odd = graph("cpu_ok")
    odd["1"]["inputs"]["width"] = json.loads("1e999")
    odd["4"] = {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], "upscale_method": "area", "scale_by": float("nan")}}
    odd["2"]["inputs"]["image"] = ["4", 0]
    out = await call(tools, "propose_workflow", ctx, graph=odd)
    assert not out.is_error and out.content == (
        "The user accepted the workflow; it is now on the canvas.\n"
        "Values to check before running:\n"
        "- node 1 (EmptyImage): 'width': Infinity is not a finite number\n"
        "- node 4 (ImageScaleBy): 'scale_by': NaN is not a finite number"
    )
    assert [action for action, _, _ in ctx.ui_requests] == ["propose_workflow"]


async def test_propose_workflow_without_a_panel(tools: dict[str, Tool]) -> None:
    out = await call(tools, "propose_workflow", FakeToolContext(), graph=graph("cpu_ok"))
    assert out.is_error and out.content == NO_PANEL


async def test_propose_workflow_refuses_broken_graphs_before_asking(tools: dict[str, Tool]) -> None:
    ctx = FakeToolContext(ui_replies={"propose_workflow": {"accepted": True}})
    broken = graph("cpu_ok")
    broken["2"]["inputs"]["image"] = ["9", 0]
    broken["3"]["inputs"]["images"] = ["1", 3]
    del broken["1"]["inputs"]["width"]
    out = await call(tools, "propose_workflow", ctx, graph=broken)
    assert out.is_error
    assert out.content == (
        "The workflow was not shown to the user; fix these first:\n"
        "- node 1 (EmptyImage): required input 'width' (INT) is missing: give it a value\n"
        "- node 2 (ImageInvert): 'image' links to node 9, which is not in the graph\n"
        "- node 3 (SaveImage): 'images' links to output 3 of node 1 (EmptyImage), which has 1 output(s): 0:IMAGE"
    )
    out = await call(tools, "propose_workflow", ctx, graph=load("workflow_ui_default.json"))
    assert out.is_error and "UI format" in out.content and "give the API format" in out.content
    assert ctx.ui_requests == []


async def test_panel_errors_pass_through(tools: dict[str, Tool]) -> None:
    ctx = FakeToolContext(ui_replies={"propose_workflow": ToolError("the panel did not answer within 600 s")})
    out = await call(tools, "propose_workflow", ctx, graph=graph("cpu_ok"))
    assert out.is_error and out.content == "the panel did not answer within 600 s"


# --------------------------------------------------------------------------- ComfyUI not there


async def test_unreachable_comfyui_is_a_readable_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with aiohttp.ClientSession() as http:
        adapter = HttpComfyAdapter(f"http://127.0.0.1:{port}", http)
        tools = {t.name: t for t in build_comfyui_skill(adapter).tools}
        out = await call(tools, "search_nodes", query="ksampler")
        assert out.is_error and f"cannot reach ComfyUI at http://127.0.0.1:{port}" in out.content
        with pytest.raises(ComfyUnavailable):
            await adapter.folders()
        await adapter.close()


def test_recorded_runs_are_consistent() -> None:
    runs = recorded_runs()
    assert runs["ok"].tail_frames[0]["type"] == "execution_success"
    assert runs["error"].tail_frames[0]["type"] == "execution_error"


# --------------------------------------------------------------------------- abort


async def _queue_then_abort(tools: dict[str, Tool], graph_: dict[str, Any]) -> FakeToolContext:
    queued: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    ctx = FakeToolContext(on_status=lambda m: queued.done() or queued.set_result(m))
    task = asyncio.create_task(call(tools, "queue_workflow", ctx, graph=graph_))
    await queued
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return ctx


async def test_aborting_queue_workflow_takes_a_pending_run_off_the_queue(tools: dict[str, Tool], comfy: FakeComfyUI) -> None:
    never_runs = graph("cpu_ok")
    never_runs["3"]["inputs"]["filename_prefix"] = "other"
    ctx = await _queue_then_abort(tools, never_runs)
    prompt_id = ctx.statuses[0].removeprefix("queued as ")
    assert comfy.queue_posts == [{"delete": [prompt_id]}]
    assert comfy.queue["queue_pending"] == [] and comfy.interrupts == []
    assert ("info", f"stopped ComfyUI prompt {prompt_id}") in ctx.logs


async def test_cancel_interrupts_a_running_prompt_only(adapter: HttpComfyAdapter, comfy: FakeComfyUI) -> None:
    comfy.queue["queue_running"].append([1, "running-id", {}, {}, []])
    assert await adapter.cancel("running-id") is True
    assert comfy.interrupts == [{"prompt_id": "running-id"}]
    assert await adapter.cancel("gone") is False
    assert comfy.interrupts == [{"prompt_id": "running-id"}] and comfy.queue_posts == []


async def test_a_models_arguments_stay_inside_their_route(tools: dict[str, Tool], comfy: FakeComfyUI) -> None:
    """A folder or run id from the model went into the URL as it was: `../view?…` reached
    ComfyUI's `/view`, whose PNG then failed to decode and ended the whole run."""
    out = await call(tools, "list_models", folder="../view?filename=a.png&type=output")
    assert out.is_error and "unknown model folder '../view?filename=a.png&type=output'" in out.content
    out = await call(tools, "get_run", prompt_id="../object_info")
    for dots in (".", ".."):
        assert (await call(tools, "list_models", folder=dots)).is_error
        assert (await call(tools, "get_run", prompt_id=dots)).is_error
    assert "/view" not in comfy.requests and "/object_info" not in comfy.requests, comfy.requests
    assert "/" not in comfy.requests and "/models/" not in comfy.requests, comfy.requests
    comfy.raw_models["loras"] = b"\x89PNG\r\n\x1a\n\xff\xfe"
    out = await call(tools, "list_models", folder="loras")
    assert out.is_error and "not JSON" in out.content
