"""`queue_workflow` never waits for a run that waits for its own reply (ComfyUI's one worker).

The reviewer's case: the canvas holds text → Opencode node (this very session) → ...; the user
asks in the panel to run it; the model queues the canvas graph. The graph's node sends to the
session whose reply waits in `queue_workflow`: each waited for the other, ComfyUI's worker held
for 600 s. Tools are called as the agent calls them, against the loopback fake ComfyUI.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from opencode_agent.core.tools import Tool, ToolOutput
from opencode_agent.node import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from opencode_agent.skills.comfyui import HttpComfyAdapter, InProcessComfyAdapter, build_comfyui_skill, worker
from opencode_agent.tests.fakes.comfyui_data import graph
from opencode_agent.tests.fakes.comfyui_http import FakeComfyUI
from opencode_agent.tests.fakes.tool_context import FakeToolContext


@pytest.fixture
async def comfy(aiohttp_server: Any) -> FakeComfyUI:
    fake = FakeComfyUI()
    nodes = SimpleNamespace(NODE_CLASS_MAPPINGS=NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS=NODE_DISPLAY_NAME_MAPPINGS)
    fake.object_info["OpencodeAgent"] = InProcessComfyAdapter(None, nodes_module=nodes)._describe_class("OpencodeAgent")
    fake.server = await aiohttp_server(fake.app(), host="127.0.0.1")
    return fake


def tools(adapter: HttpComfyAdapter, run_timeout: float = 30.0) -> dict[str, Tool]:
    return {t.name: t for t in build_comfyui_skill(adapter, run_timeout=run_timeout).tools}


def with_agent_node(session_id: str, **links: Any) -> dict[str, Any]:
    """A graph the fake ComfyUI queues and never runs, holding an Opencode node on `session_id`."""
    g = graph("cpu_ok")
    g["3"]["inputs"]["filename_prefix"] = "other"
    g["10"] = {"class_type": "PrimitiveString", "inputs": {"value": "a red square"}}
    g["11"] = {"class_type": "OpencodeAgent",
               "inputs": {"session_id": session_id, "skills": "assistant", "provider": "", "model": "", **links}}
    g["12"] = {"class_type": "PreviewAny", "inputs": {"source": ["11", 0]}}
    return g


async def queue(tools: dict[str, Tool], ctx: FakeToolContext, g: dict[str, Any]) -> ToolOutput:
    return await asyncio.wait_for(tools["queue_workflow"].call(ctx, {"graph": g}), 5)


async def test_a_graph_whose_node_sends_to_this_session_is_queued_not_waited_for(
        adapter: HttpComfyAdapter, comfy: FakeComfyUI) -> None:
    ctx = FakeToolContext()
    out = await queue(tools(adapter), ctx, with_agent_node(f" {ctx.session_id} ", text=["10", 0]))
    prompt_id = comfy.queue["queue_pending"][0][1]
    assert not out.is_error and out.content.startswith(f"Queued as {prompt_id}. Not waited for")
    assert "node 11 sends to this very conversation" in out.content and f'get_run("{prompt_id}")' in out.content


@pytest.mark.parametrize("session, links", [
    ("ses_other", {"text": ["10", 0]}),  # another conversation: its answer does not wait for this one
    ("ses_test", {}),  # unfed: the node reads the chat's last reply, it sends nothing
])
async def test_other_graphs_with_an_opencode_node_are_followed(
        adapter: HttpComfyAdapter, session: str, links: dict[str, Any]) -> None:
    out = await queue(tools(adapter, run_timeout=0.2), FakeToolContext(), with_agent_node(session, **links))
    assert "is still going after 0 s" in out.content  # it was followed until the timeout


async def test_a_node_that_starts_waiting_on_this_session_stops_the_follow(adapter: HttpComfyAdapter) -> None:
    """Any graph ahead of the run may hold a node on this session (one the user queued from the
    canvas, or one whose session_id is a link): its message queues behind this very reply."""
    held = worker.holding("ses_test")
    loop = asyncio.get_running_loop()
    # The node starts to wait a moment after the run was queued: the tool is following it by then.
    ctx = FakeToolContext(on_status=lambda line: loop.call_later(0.2, held.__enter__) if line.startswith("queued as") else None)
    try:
        out = await queue(tools(adapter), ctx, with_agent_node("ses_other", text=["10", 0]))
    finally:
        held.__exit__(None, None, None)
    assert out.content.startswith("Queued as") and "a running graph is waiting for this conversation" in out.content
    assert worker._followers == {}


async def test_unless_held_finishes_raises_and_cancels_like_what_it_follows() -> None:
    assert await worker.unless_held("s", asyncio.sleep(0)) is True

    async def broken() -> None:
        raise asyncio.TimeoutError()

    with pytest.raises(asyncio.TimeoutError):
        await worker.unless_held("s", broken())
    followed = asyncio.get_running_loop().create_future()
    outer = asyncio.ensure_future(worker.unless_held("s", followed))
    await asyncio.sleep(0.01)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert followed.cancelled() and worker._followers == {}


async def test_following_a_run_stops_when_cancelled_as_an_event_arrives(adapter: HttpComfyAdapter) -> None:
    """Seen in a real ComfyUI: the node started waiting just as the run's next event came in, and
    the follow went on to the run's end. On Python < 3.12, `asyncio.wait_for` returns an inner
    result that is ready when it is cancelled, and the cancel is lost."""
    from opencode_agent.skills.comfyui import ComfyEvent

    async def follow() -> None:
        async for _ in adapter.events("p1"):
            pass

    task = asyncio.ensure_future(follow())
    await asyncio.sleep(0.1)  # it waits for the run's next event
    adapter._hub.publish(ComfyEvent("executing", {"prompt_id": "p1", "node": "2"}))
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=1)
    assert task in done and task.cancelled()


def test_nodes_sending_to_reads_any_graph() -> None:
    graph: dict[str, Any] = {"1": "not a node", "2": {"class_type": "OpencodeAgent"},
                             "3": {"class_type": "OpencodeAgent", "inputs": {"session_id": "s", "image": ["1", 0]}},
                             "4": {"class_type": "OpencodeAgent", "inputs": {"session_id": ["1", 0], "text": ["1", 0]}}}
    assert worker.nodes_sending_to(graph, "s") == ["3"]
