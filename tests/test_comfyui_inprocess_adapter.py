"""The ComfyUI tools over `InProcessComfyAdapter`, against fakes of ComfyUI's own objects
(node classes, validate_prompt, the prompt queue and its worker thread, folder_paths) that
replay the recorded data."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, AsyncIterator

import pytest

from opencode_agent.core.protocol import ImagePart
from opencode_agent.core.tools import Tool, ToolOutput
from opencode_agent.skills.comfyui import ComfyError, ComfyValidationError, InProcessComfyAdapter, build_comfyui_skill
from opencode_agent.tests.fakes.comfyui_data import ERROR_PROMPT_ID, OK_PROMPT_ID, SAVED_IMAGE, graph, load, object_info, object_info_0_33, saved_png
from opencode_agent.tests.fakes.comfyui_inprocess import (
    FakeExecution,
    FakeExecutionOld,
    FakePromptServer,
    fake_folder_paths,
    fake_nodes_module,
)
from opencode_agent.tests.fakes.tool_context import FakeToolContext


@pytest.fixture
def recorded_info() -> dict[str, Any]:
    return object_info()


@pytest.fixture
def nodes(recorded_info: dict[str, Any]) -> SimpleNamespace:
    return fake_nodes_module(recorded_info)


@pytest.fixture
def server() -> FakePromptServer:
    return FakePromptServer()


@pytest.fixture
def folder_paths(tmp_path: Path) -> SimpleNamespace:
    fp = fake_folder_paths(tmp_path / "comfy", models={"loras": ["detail.safetensors"]})
    (tmp_path / "comfy" / "output" / SAVED_IMAGE).write_bytes(saved_png())
    (tmp_path / "comfy" / "output" / "sub").mkdir()
    (tmp_path / "comfy" / "output" / "sub" / "b.png").write_bytes(saved_png())
    (tmp_path / "comfy" / "secret.png").write_bytes(saved_png())
    return fp


@pytest.fixture
async def adapter(server: FakePromptServer, nodes: SimpleNamespace, folder_paths: SimpleNamespace) -> AsyncIterator[InProcessComfyAdapter]:
    a = InProcessComfyAdapter(server, nodes_module=nodes, execution_module=FakeExecution(nodes), folder_paths_module=folder_paths)
    yield a
    await a.close()
    server.prompt_queue.join()


@pytest.fixture
def tools(adapter: InProcessComfyAdapter) -> dict[str, Tool]:
    return {t.name: t for t in build_comfyui_skill(adapter, run_timeout=30.0).tools}


async def call(tools: dict[str, Tool], name: str, ctx: FakeToolContext | None = None, **args: Any) -> ToolOutput:
    return await tools[name].call(ctx or FakeToolContext(), args)


def payload(out: ToolOutput) -> Any:
    return json.loads(out.content[out.content.index("{"):])


# --------------------------------------------------------------------------- node definitions


def _normalised(info: dict[str, Any]) -> dict[str, Any]:
    """Drop flags ComfyUI writes as `false` (the adapter writes only the true ones)."""
    return {k: v for k, v in info.items() if v is not False or k == "output_node"}


async def test_object_info_is_built_from_the_node_classes_like_comfyui_does(
    adapter: InProcessComfyAdapter, recorded_info: dict[str, Any]
) -> None:
    info = await adapter.object_info()
    assert list(info) == list(recorded_info)
    for name, recorded in recorded_info.items():
        assert _normalised(info[name]) == _normalised(recorded), name


async def test_a_node_classs_search_aliases_reach_search_nodes(server: FakePromptServer, folder_paths: SimpleNamespace) -> None:
    """ComfyUI's node_info copies SEARCH_ALIASES; the definition built without it does too."""
    v1_nodes = {k: d for k, d in object_info_0_33().items() if k in ("KSampler", "EmptyImage")}
    adapter = InProcessComfyAdapter(server, nodes_module=fake_nodes_module(v1_nodes), folder_paths_module=folder_paths)
    info = await adapter.object_info()
    assert info["KSampler"]["search_aliases"] == v1_nodes["KSampler"]["search_aliases"] and "search_aliases" not in info["EmptyImage"]
    tools = {t.name: t for t in build_comfyui_skill(adapter).tools}
    assert payload(await call(tools, "search_nodes", query="img2img"))["results"][0]["class_type"] == "KSampler"


async def test_server_node_info_or_an_injected_one_is_preferred(server: FakePromptServer, nodes: SimpleNamespace, folder_paths: SimpleNamespace) -> None:
    seen: list[str] = []

    def node_info(class_type: str) -> dict[str, Any]:
        seen.append(class_type)
        return {"name": class_type, "input": {}, "output": [], "display_name": class_type, "category": "x"}

    server.node_info = node_info  # type: ignore[attr-defined]
    adapter = InProcessComfyAdapter(server, nodes_module=nodes, folder_paths_module=folder_paths)
    assert len(await adapter.object_info()) == len(nodes.NODE_CLASS_MAPPINGS)
    assert seen[0] == next(iter(nodes.NODE_CLASS_MAPPINGS))
    injected = InProcessComfyAdapter(server, nodes_module=nodes, folder_paths_module=folder_paths, node_info=lambda c: {"name": "injected"})
    assert (await injected.object_info())["KSampler"] == {"name": "injected"}


async def test_a_broken_node_class_is_skipped_and_logged(
    adapter: InProcessComfyAdapter, nodes: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        @classmethod
        def INPUT_TYPES(cls) -> dict[str, Any]:
            raise RuntimeError("custom node bug")

    nodes.NODE_CLASS_MAPPINGS["Broken"] = Broken
    with caplog.at_level(logging.WARNING, logger="opencode.comfyui.inprocess"):
        info = await adapter.object_info()
    assert "Broken" not in info and "KSampler" in info
    assert "skipping node Broken: its definition failed: custom node bug" in caplog.text


async def test_search_and_describe_over_in_process_definitions(tools: dict[str, Tool]) -> None:
    found = payload(await call(tools, "search_nodes", query="save image"))
    assert found["results"][0]["class_type"] == "SaveImage"
    node = payload(await call(tools, "describe_node", class_type="EmptyImage"))
    assert [i["name"] for i in node["inputs"]] == ["width", "height", "batch_size", "color"]
    assert node["example"] == {"class_type": "EmptyImage", "inputs": {"width": 512, "height": 512, "batch_size": 1, "color": 0}}


# --------------------------------------------------------------------------- validation


async def test_validate_uses_comfyuis_validate_prompt(adapter: InProcessComfyAdapter, nodes: SimpleNamespace) -> None:
    execution = adapter._module("execution")
    assert await adapter.validate(graph("cpu_ok")) == []
    [(prompt_id, prompt, partial)] = execution.calls
    assert prompt == graph("cpu_ok") and partial is None and prompt_id

    # Our definitions list the checkpoint; ComfyUI's validation says it is not there.
    nodes.NODE_CLASS_MAPPINGS["CheckpointLoaderSimple"].INPUT_TYPES = classmethod(
        lambda cls: {"required": {"ckpt_name": [["missing.safetensors"], {}]}}
    )
    await adapter.object_info(refresh=True)
    errors = await adapter.validate(graph("txt2img"))
    assert [str(e) for e in errors] == [
        "node 4 (CheckpointLoaderSimple): Value not in list: ckpt_name: 'missing.safetensors' not in []"
    ]


@pytest.mark.parametrize("form", ["async3", "async2", "sync1"])
async def test_validate_prompt_signatures_of_every_comfyui_version(
    form: str, server: FakePromptServer, nodes: SimpleNamespace, folder_paths: SimpleNamespace
) -> None:
    calls: list[tuple[Any, ...]] = []

    async def validate3(prompt_id: str, prompt: dict[str, Any], partial_execution_list: Any) -> tuple[Any, ...]:
        calls.append((prompt_id, prompt, partial_execution_list))
        return (True, None, ["3"], {})

    async def validate2(prompt_id: str, prompt: dict[str, Any]) -> tuple[Any, ...]:
        calls.append((prompt_id, prompt))
        return (True, None, ["3"], {})

    def validate1(prompt: dict[str, Any]) -> tuple[Any, ...]:
        calls.append((prompt, threading.current_thread() is threading.main_thread()))
        return (True, None, ["3"], {})

    execution = SimpleNamespace(validate_prompt={"async3": validate3, "async2": validate2, "sync1": validate1}[form])
    adapter = InProcessComfyAdapter(server, nodes_module=nodes, execution_module=execution, folder_paths_module=folder_paths)
    assert await adapter.validate(graph("cpu_ok")) == []
    [args] = calls
    if form == "async3":
        assert args[1] == graph("cpu_ok") and args[2] is None
    elif form == "async2":
        assert args[1] == graph("cpu_ok") and len(args) == 2
    else:
        assert args == (graph("cpu_ok"), False)  # a sync validate_prompt runs off the event loop


async def test_unknown_node_never_reaches_validate_prompt(tools: dict[str, Tool], adapter: InProcessComfyAdapter) -> None:
    out = await call(tools, "queue_workflow", graph={**graph("cpu_ok"), "9": {"class_type": "NoSuchNode", "inputs": {}}})
    assert out.is_error and "node 9 (NoSuchNode): unknown node type 'NoSuchNode'" in out.content
    assert adapter._module("execution").calls == []


async def test_queue_rejected_by_validate_prompt_raises_node_errors(adapter: InProcessComfyAdapter, server: FakePromptServer) -> None:
    with pytest.raises(ComfyValidationError) as info:
        await adapter.queue({"1": {"class_type": "NoSuchNode", "inputs": {}}})
    assert "Cannot execute because node NoSuchNode does not exist. (Node ID '#1')" in str(info.value)
    assert server.prompt_queue.items == []


# --------------------------------------------------------------------------- runs


async def test_queue_ok_workflow_through_the_prompt_queue(tools: dict[str, Tool], adapter: InProcessComfyAdapter, server: FakePromptServer) -> None:
    ctx = FakeToolContext()
    out = await call(tools, "queue_workflow", ctx, graph=graph("cpu_ok"))
    assert not out.is_error, out.content
    result = payload(out)
    assert result["status"] == "success"
    assert result["outputs"]["3"]["images"] == [{"filename": SAVED_IMAGE, "subfolder": "", "type": "output"}]

    [item] = server.prompt_queue.items
    number, prompt_id, prompt, extra_data, outputs, sensitive = item
    assert (number, prompt, outputs, sensitive) == (0, graph("cpu_ok"), ["3"], {})
    assert extra_data["client_id"] == adapter.client_id and isinstance(extra_data["create_time"], int)
    assert result["prompt_id"] == prompt_id and server.number == 1
    assert server.on_prompt == [{"prompt": graph("cpu_ok"), "client_id": adapter.client_id}]
    # Events came from the worker thread through the send_sync hook, and still reached ComfyUI.
    # The tool returns at the run's end; the worker may still be sending its tail frames.
    await asyncio.to_thread(server.prompt_queue.join)
    assert ctx.statuses[1:] == [
        f"run {prompt_id} started",
        "running node 1 (EmptyImage)",
        "running node 2 (ImageInvert)",
        "running node 3 (SaveImage)",
        "node 3 (SaveImage) produced output",
        "run finished",
    ]
    assert [e for e, _, _ in server.sent].count("executing") == 4
    assert all(sid == adapter.client_id for _, _, sid in server.sent)


async def test_older_comfyui_gets_five_item_queue_entries(server: FakePromptServer, nodes: SimpleNamespace, folder_paths: SimpleNamespace) -> None:
    execution = FakeExecutionOld(nodes)
    adapter = InProcessComfyAdapter(server, nodes_module=nodes, execution_module=execution, folder_paths_module=folder_paths)
    tools = {t.name: t for t in build_comfyui_skill(adapter, run_timeout=30.0).tools}
    out = await call(tools, "queue_workflow", graph=graph("cpu_ok"))
    await adapter.close()
    server.prompt_queue.join()
    assert not out.is_error
    [item] = server.prompt_queue.items
    assert len(item) == 5 and item[4] == ["3"]
    assert "MainThread" not in execution.threads


async def test_runtime_error_run_reports_node_exception_and_traceback(tools: dict[str, Tool]) -> None:
    out = await call(tools, "queue_workflow", graph=graph("runtime_error"))
    assert out.is_error
    error = payload(out)["error"]
    assert (error["node_id"], error["node_type"], error["exception_type"]) == ("1", "LoadImage", "PIL.UnidentifiedImageError")
    assert error["traceback"][-2:] == [
        "ComfyUI/node_helpers.py:31 in pillow: x = fn(arg)",
        "PIL/Image.py:3730 in open: raise UnidentifiedImageError(msg)",
    ]


async def test_run_result_from_events_when_history_is_not_written_yet(tools: dict[str, Tool], server: FakePromptServer) -> None:
    server.prompt_queue.record_history = False
    out = await call(tools, "queue_workflow", graph=graph("cpu_ok"))
    assert payload(out)["outputs"]["3"]["images"][0]["filename"] == SAVED_IMAGE


async def test_get_run_reads_the_history_and_the_queue(tools: dict[str, Tool], server: FakePromptServer) -> None:
    server.prompt_queue.history[ERROR_PROMPT_ID] = load("history_run_error.json")[ERROR_PROMPT_ID]
    out = await call(tools, "get_run", prompt_id=ERROR_PROMPT_ID)
    assert out.is_error and payload(out)["error"]["exception_message"].startswith("cannot identify image file")
    server.prompt_queue.running.append((3, "run-a", {}, {}, []))
    server.prompt_queue.pending.extend([(5, "run-c", {}, {}, [], {}), (4, "run-b", {}, {}, [], {})])
    assert payload(await call(tools, "get_run", prompt_id="run-a"))["status"] == "running"
    assert payload(await call(tools, "get_run", prompt_id="run-b")) == {"prompt_id": "run-b", "status": "pending", "position": 1, "queued": 2}
    assert (await call(tools, "get_run", prompt_id="zzz")).is_error


async def test_recent_runs_reads_copies_of_comfyuis_history(tools: dict[str, Tool], adapter: InProcessComfyAdapter,
                                                           server: FakePromptServer) -> None:
    history = server.prompt_queue.history
    history["earlier"] = load("history_run_ok.json")[OK_PROMPT_ID]
    history[ERROR_PROMPT_ID] = load("history_run_error.json")[ERROR_PROMPT_ID]
    [run] = json.loads((await call(tools, "recent_runs", limit=1)).content)["runs"]
    assert run["prompt_id"] == ERROR_PROMPT_ID and run["error"]["node_type"] == "LoadImage"
    # Without a prompt id ComfyUI hands out its own entries, which its execution thread updates.
    entries = await adapter.recent_history(5)
    assert list(entries) == ["earlier", ERROR_PROMPT_ID]
    entries[ERROR_PROMPT_ID]["status"]["messages"].clear()
    assert history[ERROR_PROMPT_ID]["status"]["messages"]


async def test_recent_history_of_a_comfyui_without_map_function(adapter: InProcessComfyAdapter, server: FakePromptServer) -> None:
    history = {"a": {"status": {"status_str": "success"}}, "b": {"status": {"status_str": "error"}}}
    server.prompt_queue.get_history = lambda prompt_id=None, max_items=None, offset=-1: dict(list(history.items())[-max_items:])
    entries = await adapter.recent_history(1)
    assert entries == {"b": history["b"]} and entries["b"] is not history["b"]


async def test_close_removes_the_send_sync_hook(adapter: InProcessComfyAdapter, server: FakePromptServer) -> None:
    await adapter._start_listening()
    assert "send_sync" in vars(server)
    await adapter.close()
    assert "send_sync" not in vars(server)
    server.send_sync("status", {"prompt_id": "x"})
    assert server.sent[-1] == ("status", {"prompt_id": "x"}, None)


# --------------------------------------------------------------------------- files


async def test_list_models_uses_folder_paths_off_the_loop(tools: dict[str, Tool], folder_paths: SimpleNamespace) -> None:
    assert payload(await call(tools, "list_models", folder="loras"))["files"] == ["detail.safetensors"]
    assert folder_paths.calls and "MainThread" not in folder_paths.calls
    out = await call(tools, "list_models", folder="nope")
    assert out.is_error and "unknown model folder 'nope'" in out.content and "upscale_models" in out.content


async def test_view_image_reads_from_comfyuis_folders(tools: dict[str, Tool], adapter: InProcessComfyAdapter) -> None:
    out = await call(tools, "view_image", filename=SAVED_IMAGE)
    assert out.images == [ImagePart(source="comfyui", filename=SAVED_IMAGE)]
    out = await call(tools, "view_image", filename="b.png", subfolder="sub")
    assert out.images[0].subfolder == "sub" and not out.is_error
    out = await call(tools, "view_image", filename="secret.png", subfolder="..")
    assert out.is_error and "must be a relative folder" in out.content
    out = await call(tools, "view_image", filename="nope.png", type="input")
    assert out.is_error and "ComfyUI has no file input/nope.png" in out.content
    data, mime = await adapter.load_image(ImagePart(source="comfyui", filename="b.png", subfolder="sub"))
    assert data == saved_png() and mime == "image/png"


async def test_view_refuses_a_symlink_out_of_the_folder(adapter: InProcessComfyAdapter, tmp_path: Path) -> None:
    (tmp_path / "comfy" / "output" / "link.png").symlink_to(tmp_path / "comfy" / "secret.png")
    with pytest.raises(ComfyError, match="outside ComfyUI's output folder"):
        await adapter.view("link.png")


async def test_cancel_deletes_pending_and_interrupts_running(adapter: InProcessComfyAdapter, server: FakePromptServer, nodes: SimpleNamespace) -> None:
    server.prompt_queue.pending.append((4, "run-b", {}, {}, [], {}))
    server.prompt_queue.running.append((3, "run-a", {}, {}, [], {}))
    assert await adapter.cancel("run-b") is True
    assert server.prompt_queue.pending == [] and nodes.interrupts == []
    assert await adapter.cancel("run-a") is True
    assert nodes.interrupts == [True]
    assert await adapter.cancel("zzz") is False


async def test_cancel_interrupts_only_while_its_run_is_the_one_running(
        adapter: InProcessComfyAdapter, server: FakePromptServer, nodes: SimpleNamespace) -> None:
    """The interrupt flag is global: a run ending between the check and the interrupt passed it on
    to the next prompt. ComfyUI's worker moves to the next prompt under the queue's lock."""
    queue = server.prompt_queue
    queue.mutex = threading.RLock()  # type: ignore[attr-defined]
    queue.running.append((3, "run-a", {}, {}, [], {}))
    interrupted_while: list[list[str]] = []
    nodes.interrupt_processing = lambda value=True: interrupted_while.append([i[1] for i in queue.running])
    check = queue.get_current_queue

    def next_prompt() -> None:  # ComfyUI's worker: run-a done, run-b starts
        with queue.mutex:  # type: ignore[attr-defined]
            queue.running[:] = [(4, "run-b", {}, {}, [], {})]

    def check_as_run_a_ends() -> tuple[list[Any], list[Any]]:
        seen = check()
        worker = threading.Thread(target=next_prompt)
        worker.start()
        worker.join(timeout=0.2)
        return seen

    queue.get_current_queue = check_as_run_a_ends  # type: ignore[method-assign]
    assert await adapter.cancel("run-a") is True
    assert interrupted_while == [["run-a"]]


async def test_cancel_uses_comfyuis_own_interrupt_if_running(
        adapter: InProcessComfyAdapter, server: FakePromptServer, nodes: SimpleNamespace) -> None:
    asked: list[str] = []
    server.prompt_queue.interrupt_if_running = lambda prompt_id: asked.append(prompt_id) or True  # type: ignore[attr-defined]
    server.prompt_queue.running.append((3, "run-a", {}, {}, [], {}))
    assert await adapter.cancel("run-a") is True
    assert asked == ["run-a"] and nodes.interrupts == []
