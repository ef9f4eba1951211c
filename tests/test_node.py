"""The OpencodeAgent node: declaration, the no-input path, send-and-wait, interrupt and timeout.

The node runs on a worker thread; the service runs on a real event loop in another thread, as
ComfyUI's server loop does.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Iterator

import pytest

from opencode_agent.core.config import Config
from opencode_agent.core.protocol import SendBody
from opencode_agent.core.service import OpencodeService
from opencode_agent.node import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, NodeBridge, OpencodeAgent


class ServerLoop:
    """A service on its own loop thread, like ComfyUI's PromptServer loop."""

    def __init__(self, config: Config) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.service = OpencodeService(config)
        self.call(self.service.start())

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def close(self) -> None:
        self.call(self.service.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture
def server(config: Config) -> Iterator[ServerLoop]:
    s = ServerLoop(config)
    OpencodeAgent.bridge = NodeBridge(loop=s.loop, service=lambda: s.service)
    OpencodeAgent.fed_by_link.clear()
    yield s
    OpencodeAgent.bridge = None
    s.close()


def test_declaration() -> None:
    assert NODE_CLASS_MAPPINGS == {"OpencodeAgent": OpencodeAgent}
    assert NODE_DISPLAY_NAME_MAPPINGS["OpencodeAgent"] == "Opencode Agent"
    types = OpencodeAgent.INPUT_TYPES()
    assert set(types["required"]) == {"session_id", "skills", "provider", "model"}
    # Not widgets: nothing lands in the workflow.
    assert types["hidden"] == {"unique_id": "UNIQUE_ID", "prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    assert types["optional"]["text"][0] == "STRING" and types["optional"]["image"][0] == "IMAGE"
    assert OpencodeAgent.RETURN_TYPES == ("STRING", "STRING")
    assert OpencodeAgent.RETURN_NAMES == ("reply", "session_id")
    assert OpencodeAgent.CATEGORY == "Opencode"
    # Nothing secret can be a widget: no key/token/password input exists.
    names = " ".join(types["required"]) + " ".join(types["optional"])
    assert not any(w in names for w in ("key", "token", "password", "secret"))


def test_send_and_wait_then_no_input_returns_last_reply(server: ServerLoop) -> None:
    node = OpencodeAgent()
    reply, sid = node.run(session_id="ses_node1", skills="echo", text="a cat in the rain")
    assert reply == "a cat in the rain" and sid == "ses_node1"
    again, sid2 = node.run(session_id="ses_node1", skills="echo")
    assert again == "a cat in the rain" and sid2 == "ses_node1"
    # Unfed, re-execution is keyed on the session's last reply (a chat in the panel changes it).
    key1 = OpencodeAgent.IS_CHANGED(session_id="ses_node1", skills="echo")
    assert OpencodeAgent.IS_CHANGED(session_id="ses_node1", skills="echo") == key1
    server.call(_send_from_the_panel(server.service, "ses_node1", "from the panel"))
    assert OpencodeAgent.IS_CHANGED(session_id="ses_node1", skills="echo") != key1
    assert node.run(session_id="ses_node1", skills="echo")[0] == "from the panel"


def test_a_node_fed_by_a_link_runs_again_only_when_its_widgets_or_inputs_change(server: ServerLoop) -> None:
    """ComfyUI calls IS_CHANGED with the widgets only (linked inputs are left out) and re-runs a
    node whose upstream changed by itself. Folding in the session's last reply made the node's
    own reply change the key, so every queue sent the same connected text again."""
    widgets = {"session_id": "ses_fed", "skills": "echo", "provider": "", "model": ""}
    node, sends, key = OpencodeAgent(), 0, None
    for _ in range(3):  # three queues of an unchanged graph, as ComfyUI's cache decides them
        now = OpencodeAgent.IS_CHANGED(**widgets)  # what ComfyUI passes: no `text`
        if now != key:
            node.run(**widgets, text="the same connected text")
            sends += 1
        key = now
    assert sends == 1
    page = server.call(server.service.sessions.messages("ses_fed", None, 50))
    assert [m.role for m in page.messages] == ["user", "assistant"]
    assert OpencodeAgent.IS_CHANGED(**{**widgets, "skills": "echo,assistant"}) != key  # a widget changed


def test_while_the_node_waits_its_session_holds_comfyuis_worker(server: ServerLoop, monkeypatch: Any) -> None:
    """The node blocks ComfyUI's only worker while it waits: a workflow its reply queued could not
    start before the reply ended, and `queue_workflow` waited for it until its timeout."""
    from opencode_agent.skills.comfyui import worker

    sessions = server.service.sessions
    held_while_waiting: list[bool] = []
    wait_runs = sessions.wait_runs

    async def watched(session_id: str, run_ids: list[str]) -> Any:
        held_while_waiting.append(worker.held_by(session_id))
        return await wait_runs(session_id, run_ids)

    monkeypatch.setattr(sessions, "wait_runs", watched)
    assert OpencodeAgent().run(session_id="ses_held", skills="echo", text="one two")[0] == "one two"
    assert held_while_waiting == [True] and not worker.held_by("ses_held")  # let go once the reply is in


def test_two_nodes_on_one_session_keep_their_own_rule(server: ServerLoop) -> None:
    """A copied node keeps its session: with the rule kept per session, whichever node ran last
    decided for both, and the fed one sent its text at every queue again."""
    fed = {"session_id": "ses_two", "skills": "echo", "provider": "", "model": "", "unique_id": "1"}
    unfed = {**fed, "unique_id": "2"}
    node, sends, keys = OpencodeAgent(), 0, {"1": None, "2": None}
    for _ in range(3):  # three queues of an unchanged graph holding both nodes
        now = {n: OpencodeAgent.IS_CHANGED(**w) for n, w in (("1", fed), ("2", unfed))}
        if now["1"] != keys["1"]:
            node.run(**fed, text="the fed node's text")
            sends += 1
        if now["2"] != keys["2"]:
            node.run(**unfed)
        keys = now
    assert sends == 1
    before = OpencodeAgent.IS_CHANGED(**unfed)
    server.call(_send_from_the_panel(server.service, "ses_two", "from the panel"))
    assert OpencodeAgent.IS_CHANGED(**unfed) != before  # the unfed node still follows the chat
    assert OpencodeAgent.IS_CHANGED(**fed) == keys["1"]


async def _send_from_the_panel(svc: OpencodeService, sid: str, text: str) -> None:
    sent = await svc.sessions.send(sid, SendBody(text=text))
    await svc.sessions.wait_runs(sid, sent.run_ids)


def test_two_roles_are_joined_and_labelled(server: ServerLoop) -> None:
    server.call(_add_second_echo(server.service))
    reply, _ = OpencodeAgent().run(session_id="ses_node2", skills="echo,echo2", text="hi there")
    assert reply == "[echo]\nhi there\n\n[echo2]\nhi there"


async def _add_second_echo(svc: OpencodeService) -> None:
    import dataclasses

    echo = svc.skills.get("echo")
    svc.skills.register(dataclasses.replace(echo, id="echo2", name="Echo 2"))


def test_no_input_and_no_session_outputs_empty(server: ServerLoop) -> None:
    assert OpencodeAgent().run(session_id="") == ("", "")


def interrupting(server: ServerLoop, pressed: threading.Event) -> type[Exception]:
    """Install a bridge whose interrupt check raises once `pressed` is set; the exception type."""
    class Interrupted(Exception):
        pass

    def check() -> None:
        if pressed.is_set():
            raise Interrupted()

    OpencodeAgent.bridge = NodeBridge(loop=server.loop, service=lambda: server.service, check_interrupt=check)
    return Interrupted


def test_interrupt_aborts_the_run(server: ServerLoop) -> None:
    server.service.sessions.deps.echo_delay = 0.05
    pressed = threading.Event()
    Interrupted = interrupting(server, pressed)
    timer = threading.Timer(0.3, pressed.set)
    timer.start()
    with pytest.raises(Interrupted):
        OpencodeAgent().run(session_id="ses_node3", skills="echo", text="word " * 200)
    page = server.call(server.service.sessions.messages("ses_node3", None, 10))
    assert page.messages[-1].role == "assistant" and page.messages[-1].status == "aborted"


def test_timeout_aborts_the_run(server: ServerLoop) -> None:
    server.service.sessions.deps.echo_delay = 0.05
    OpencodeAgent.bridge = NodeBridge(loop=server.loop, service=lambda: server.service, timeout=0.3)
    with pytest.raises(TimeoutError):
        OpencodeAgent().run(session_id="ses_node4", skills="echo", text="word " * 200)
    page = server.call(server.service.sessions.messages("ses_node4", None, 10))
    assert page.messages[-1].status == "aborted"


def test_image_input_is_attached(server: ServerLoop) -> None:
    np = pytest.importorskip("numpy")
    pytest.importorskip("PIL")
    image = np.zeros((1, 8, 8, 3), dtype=np.float32)
    reply, sid = OpencodeAgent().run(session_id="ses_node5", skills="echo", text="look", image=image)
    assert reply == "look"
    page = server.call(server.service.sessions.messages(sid, None, 10))
    user = page.messages[0]
    assert [p.type for p in user.parts] == ["text", "image"]
    assert (server.service.data_dir / "uploads" / user.parts[1].filename).is_file()


def test_a_cancel_while_the_message_commits_still_stops_its_run(server: ServerLoop) -> None:
    """Cancel pressed while the node's message is being saved (slow disk): its run has started by
    then, and must be found and stopped, not left to answer."""
    server.service.sessions.deps.echo_delay = 0.05
    pressed = threading.Event()
    Interrupted = interrupting(server, pressed)
    store = server.service.store
    save = store.save_message

    async def slow_save(message: Any) -> None:
        if message.role == "user":
            pressed.set()
            await asyncio.sleep(0.5)
        await save(message)

    store.save_message = slow_save  # type: ignore[method-assign]
    try:
        with pytest.raises(Interrupted):
            OpencodeAgent().run(session_id="ses_node_commit", skills="echo", text="word " * 200)
    finally:
        store.save_message = save  # type: ignore[method-assign]
    page = server.call(server.service.sessions.messages("ses_node_commit", None, 10))
    assert page.messages[-1].role == "assistant" and page.messages[-1].status == "aborted"


def test_a_reply_stopped_in_the_panel_is_an_error_not_a_cut_off_text(server: ServerLoop) -> None:
    server.service.sessions.deps.echo_delay = 0.05

    async def stop_it_soon() -> None:
        await asyncio.sleep(0.3)
        await server.service.sessions.abort("ses_node_stop")

    asyncio.run_coroutine_threadsafe(stop_it_soon(), server.loop)
    with pytest.raises(RuntimeError, match="the reply was stopped before it finished"):
        OpencodeAgent().run(session_id="ses_node_stop", skills="echo", text="word " * 200)


def test_a_batch_over_four_images_says_what_was_left_out(server: ServerLoop, caplog: Any) -> None:
    """A batch of 6 arrived as 4 and nobody was told: the model answered about "the images"."""
    np = pytest.importorskip("numpy")
    pytest.importorskip("PIL")
    batch = np.zeros((6, 16, 16, 4), dtype=np.float32)  # RGBA, as JoinImageWithAlpha makes
    with caplog.at_level("WARNING", logger="opencode.node"):
        OpencodeAgent().run(session_id="ses_batch", skills="echo", text="describe these", image=batch)
    user = server.call(server.service.sessions.messages("ses_batch", None, 10)).messages[0]
    assert [p.type for p in user.parts] == ["text"] + ["image"] * 4
    assert user.parts[0].text == "describe these\n\n[Opencode node's image input: only the first 4 of its 6 images are attached.]"
    assert "the image input held 6 images: the first 4 are sent" in caplog.text


def test_a_big_image_is_scaled_and_compressed_for_the_model(server: ServerLoop) -> None:
    """A 2048x2048 noisy image went out as a 7.6 MB PNG, over Anthropic's 5 MB an image."""
    np = pytest.importorskip("numpy")
    Image = pytest.importorskip("PIL.Image")
    from opencode_agent.core.images import MODEL_IMAGE_BYTES

    noisy = np.random.default_rng(5).random((1, 2048, 2048, 3), dtype=np.float32)
    OpencodeAgent().run(session_id="ses_big", skills="echo", text="what is this", image=noisy)
    user = server.call(server.service.sessions.messages("ses_big", None, 10)).messages[0]
    assert user.parts[0].text.endswith("[Opencode node's image input: it was 2048x2048, scaled down to fit 1568 px.]")
    part = user.parts[1]
    stored = server.service.data_dir / "uploads" / part.filename
    assert part.mime_type == "image/jpeg" and stored.suffix == ".jpg"
    assert stored.stat().st_size <= MODEL_IMAGE_BYTES and Image.open(stored).size == (1568, 1568)


def session_ids(server: ServerLoop) -> list[str]:
    return [s.id for s in server.call(server.service.sessions.list())]


def test_a_node_without_a_session_id_keeps_one_session_per_node(server: ServerLoop) -> None:
    """An API graph has no panel to set the id: every run made a new session, one left per run."""
    graph = {"1": {"class_type": "PrimitiveString"}, "2": {"class_type": "OpencodeAgent"}}
    node = OpencodeAgent()
    first = node.run(session_id="", skills="echo", text="one", unique_id="2", prompt=graph)
    second = node.run(session_id=" ", skills="echo", text="two", unique_id="2", prompt=graph)
    assert first == ("one", first[1]) and second == ("two", first[1]) and first[1].startswith("ses_node_")
    assert session_ids(server) == [first[1]]
    other_node = node.run(session_id="", skills="echo", text="x", unique_id="3", prompt={**graph, "3": graph["2"]})[1]
    workflow = {"workflow": {"id": "3f1c9a52-0d1e-4c55-9d0b-1d2c3b4a5f60", "nodes": []}}
    on_canvas = node.run(session_id="", skills="echo", text="x", unique_id="2", prompt=graph, extra_pnginfo=workflow)[1]
    edited = node.run(session_id="", skills="echo", text="y", unique_id="2", prompt={**graph, "9": graph["1"]},
                      extra_pnginfo=workflow)[1]
    assert len({first[1], other_node, on_canvas}) == 3 and edited == on_canvas  # a workflow keeps its id


def test_a_node_s_own_session_that_failed_at_its_first_run_is_not_left_behind(server: ServerLoop) -> None:
    """The reviewer's provider failures left a session each; a session the panel named stays."""
    graph = {"2": {"class_type": "OpencodeAgent"}}
    with pytest.raises(RuntimeError, match="no provider is chosen"):
        OpencodeAgent().run(session_id="", skills="assistant", text="hi", unique_id="2", prompt=graph)
    assert session_ids(server) == []
    with pytest.raises(RuntimeError, match="no provider is chosen"):
        OpencodeAgent().run(session_id="ses_panel", skills="assistant", text="hi", unique_id="2", prompt=graph)
    assert session_ids(server) == ["ses_panel"]


async def _broken_abort() -> None:
    raise RuntimeError("the store is gone")


@pytest.mark.parametrize("abort", [lambda: asyncio.sleep(0.3), _broken_abort], ids=["slow", "failing"])
def test_an_abort_slow_or_failing_does_not_turn_an_interrupt_into_an_error(
        server: ServerLoop, monkeypatch: Any, abort: Any) -> None:
    """An abort over its wait raised TimeoutError (a failing one its own error) in place of
    ComfyUI's interrupt: the prompt showed as failed, not interrupted."""
    from opencode_agent import node as node_module

    monkeypatch.setattr(node_module, "ABORT_WAIT", 0.1, raising=False)
    pressed = threading.Event()
    Interrupted = interrupting(server, pressed)
    pressed.set()
    with pytest.raises(Interrupted):
        OpencodeAgent.bridge.call(lambda: asyncio.sleep(5), on_cancel=abort)  # type: ignore[union-attr]
    server.call(asyncio.sleep(0.4))  # the slow abort goes on meanwhile: let it end before the loop does


def test_a_linked_session_id_does_not_break_is_changed(server: ServerLoop) -> None:
    """ComfyUI passes None for a linked input: `.strip()` raised, ComfyUI logged a warning and
    counted the node as changed at every queue."""
    widgets = {"session_id": None, "skills": "echo", "provider": "", "model": "", "unique_id": "2"}
    assert OpencodeAgent.IS_CHANGED(**widgets) == OpencodeAgent.IS_CHANGED(**widgets)
