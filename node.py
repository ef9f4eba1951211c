"""The `OpencodeAgent` node: its widgets configure a session; its inputs feed it; `reply` leaves it.

The node function runs on ComfyUI's worker thread (each prompt on its own event loop), while
sessions live on the server loop. So the node only hands coroutines to that loop with
`asyncio.run_coroutine_threadsafe` and waits on the future in short slices, checking ComfyUI's
interrupt flag between them: an interrupt or a timeout aborts the session's runs. No widget holds
anything secret: widget values end up in the workflow JSON and in every saved PNG.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, TypeVar

from .core.images import MODEL_IMAGE_SIDE, encode_for_model, save_upload
from .core.protocol import SendBody, SessionCreate, SessionPatch
from .core.service import OpencodeService
from .core.sessions import join_replies
from .skills.comfyui import worker

log = logging.getLogger("opencode.node")

T = TypeVar("T")
WAIT_SLICE = 0.1
DEFAULT_TIMEOUT = 600.0
ABORT_WAIT = 5.0  # seconds the worker waits for an interrupted reply to be stopped
# Images of a batch attached to one message: each costs the model about 1,600 tokens at full
# size, and four stay well within a request's size limit (Anthropic's is 32 MB).
MAX_NODE_IMAGES = 4


@dataclass
class NodeBridge:
    """How the node reaches the server loop and the service (set when Opencode is mounted)."""

    loop: asyncio.AbstractEventLoop
    service: Callable[[], OpencodeService]
    # Raises ComfyUI's InterruptProcessingException when the user pressed Cancel.
    check_interrupt: Callable[[], None] = lambda: None
    timeout: float = DEFAULT_TIMEOUT

    def call(self, make: Callable[[], Awaitable[T]], on_cancel: Callable[[], Awaitable[Any]] | None = None) -> T:
        """Run a coroutine on the server loop and wait for it here, honouring interrupt and timeout."""
        future = asyncio.run_coroutine_threadsafe(_as_coro(make), self.loop)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return future.result(timeout=WAIT_SLICE)
            except concurrent.futures.TimeoutError:
                pass
            try:
                self.check_interrupt()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Opencode did not answer within {self.timeout:.0f} s")
            except BaseException:
                future.cancel()
                if on_cancel is not None:
                    self._abort(on_cancel)
                raise

    def _abort(self, on_cancel: Callable[[], Awaitable[Any]]) -> None:
        """Stop what the call started, waiting `ABORT_WAIT` seconds at most. Slow or failing, it
        must not replace the interrupt or timeout being raised: ComfyUI would report an error
        rather than an interrupted prompt. A slow abort goes on on the loop."""
        try:
            asyncio.run_coroutine_threadsafe(_as_coro(on_cancel), self.loop).result(timeout=ABORT_WAIT)
        except Exception as exc:  # noqa: BLE001 - logged; the interrupt is what the caller must see
            log.warning("Opencode: stopping the node's reply did not finish in %.0f s: %r", ABORT_WAIT, exc)


async def _as_coro(make: Callable[[], Awaitable[T]]) -> T:
    return await make()


def parse_skills(text: str) -> list[str]:
    return [s.strip() for s in text.replace(";", ",").split(",") if s.strip()]


class OpencodeAgent:
    """Chat with Opencode in the node's panel; connect `text`/`image` to send from the graph."""

    bridge: NodeBridge | None = None

    CATEGORY = "Opencode"
    DESCRIPTION = ("A persistent AI agent. Chat in the panel; connect text or an image to ask from the graph; "
                   "`reply` outputs the answer (or the session's last reply when nothing is connected).")
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("reply", "session_id")
    OUTPUT_TOOLTIPS = ("The roles' reply (several roles: joined and labelled).", "The session's id.")
    FUNCTION = "run"
    # An output node: a graph holding only this node (fed by a text node) still runs and answers.
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "session_id": ("STRING", {"default": "", "tooltip": "The Opencode session (set by the panel)."}),
                "skills": ("STRING", {"default": "", "tooltip": "Selected skills, comma-separated."}),
                "provider": ("STRING", {"default": "", "tooltip": "Provider profile name (keys stay on the server)."}),
                "model": ("STRING", {"default": "", "tooltip": "Model id."}),
            },
            "optional": {
                "text": ("STRING", {"forceInput": True, "tooltip": "Sent as a user message when connected."}),
                "image": ("IMAGE", {"tooltip": "Attached to the message (for vision models)."}),
            },
            # The node's id in the graph: two nodes on one session are told apart (`fed_by_link`);
            # with the graph and its workflow, it names the session of a node whose id is empty.
            "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    # (node id, session id) → whether that node's last run was fed by a link (`text` or `image`).
    # Per node: a copied node keeps its session, and one fed and one unfed node on a session
    # must each keep their own rule.
    fed_by_link: dict[tuple[str, str], bool] = {}

    @classmethod
    def IS_CHANGED(cls, session_id: str | None = "", skills: str = "", provider: str = "", model: str = "",
                   text: str | None = None, image: Any = None, unique_id: str | None = None,
                   prompt: Any = None, extra_pnginfo: Any = None) -> str:
        """Re-run when the widgets change; unfed, also when the session got a new reply.

        ComfyUI passes only constants here: linked inputs are left out (`IsChangedCache`), and a
        change upstream already re-runs the node through its cache key. So a node fed by a link
        must not fold in the session's last reply, or its own reply would make every queue send
        the same text again (a model call each time). Whether it is fed is known from its last run;
        before any run there is no output cached to keep fresh, so the widgets alone decide.
        """
        h = hashlib.sha256(f"{session_id}|{skills}|{provider}|{model}|{text}".encode())
        if image is not None:
            h.update(_image_fingerprint(image))
        if session_id is None:  # linked: unknown here (it raised), and a change upstream re-runs the node
            return h.hexdigest()
        fed = text is not None or image is not None or cls.fed_by_link.get((str(unique_id), session_id.strip()), True)
        if not fed and cls.bridge is not None and session_id:
            try:
                _, last_id = cls.bridge.call(lambda: cls.bridge.service().sessions.last_reply(session_id))  # type: ignore[union-attr]
                h.update(str(last_id).encode())
            except Exception:  # noqa: BLE001 - a missing session just means "changed"
                h.update(str(time.time()).encode())
        return h.hexdigest()

    def run(self, session_id: str, skills: str = "", provider: str = "", model: str = "",
            text: str | None = None, image: Any = None, unique_id: str | None = None,
            prompt: Any = None, extra_pnginfo: Any = None) -> tuple[str, str]:
        bridge = self.bridge
        if bridge is None:
            raise RuntimeError("Opencode is not running inside this ComfyUI (its routes failed to mount)")
        svc = bridge.service
        session_id = session_id.strip()
        type(self).fed_by_link[(str(unique_id), session_id)] = text is not None or image is not None
        if text is None and image is None:
            if not session_id:
                return "", ""
            reply, _ = bridge.call(lambda: svc().sessions.last_reply(session_id))
            return reply, session_id
        images, note = _attached_images(svc().data_dir, image)
        settings = SessionCreate(id=session_id or node_session_id(unique_id, prompt, extra_pnginfo),
                                 skills=parse_skills(skills), provider=provider or None, model=model or None)
        body = SendBody(text=(text or "") + note, images=images)
        return _send_and_wait(bridge, settings, body, own=not session_id)


def _send_and_wait(bridge: NodeBridge, settings: SessionCreate, body: SendBody, *, own: bool) -> tuple[str, str]:
    """Send `body` to the node's session and wait for the reply, on the server loop.

    `own`: the session is the node's own (its widget empty). Created by this run and failed, it
    is deleted again: it holds nothing but the failure, which ComfyUI already shows."""
    svc = bridge.service
    result: dict[str, Any] = {}

    async def send_and_wait() -> tuple[str, str]:
        sid, created = await ensure_session(svc(), settings)
        result["sid"] = sid
        try:
            with worker.holding(sid):  # the node holds ComfyUI's worker: nothing queued runs till this returns
                # Shielded: a Cancel must not cut the send short while its message commits, or the
                # runs it has already started could not be found (by `abort`) to be stopped.
                sending = result["sending"] = asyncio.ensure_future(svc().sessions.send(sid, body))
                sent = await asyncio.shield(sending)
                return await wait_replies(svc(), sid, sent.run_ids), sid
        except Exception:
            if created and own:
                await _delete_quietly(svc(), sid)
            raise

    async def abort() -> None:
        sending = result.get("sending")
        if sending is None:
            return
        try:
            sent = await sending  # it is committing: then its runs are known
        except Exception:  # noqa: BLE001 - the send failed: it started nothing
            return
        for run_id in sent.run_ids:
            try:
                await svc().sessions.abort(result["sid"], run_id)
            except Exception:  # noqa: BLE001 - already finished
                pass

    return bridge.call(send_and_wait, on_cancel=abort)


def node_session_id(unique_id: str | None, prompt: Any, extra_pnginfo: Any) -> str:
    """The session of a node whose `session_id` is empty: one per node of a workflow.

    The panel sets the id; a graph queued over the API (a script's, the agent's) has none. A new
    session each run left one behind per run (and per failure); one per node keeps its runs in one
    chat, as the panel's node does. A workflow from the canvas is known by its id, an API graph by
    its nodes' ids and types (the same script's graph with other values is the same graph)."""
    workflow = extra_pnginfo.get("workflow") if isinstance(extra_pnginfo, dict) else None
    workflow_id = workflow.get("id") if isinstance(workflow, dict) else None
    if isinstance(workflow_id, str) and workflow_id:
        graph = f"workflow {workflow_id}"
    else:
        nodes = prompt.items() if isinstance(prompt, dict) else ()
        graph = json.dumps(sorted((str(k), str(v.get("class_type"))) for k, v in nodes if isinstance(v, dict)))
    return "ses_node_" + hashlib.sha256(f"{graph}|node {unique_id}".encode()).hexdigest()[:24]


async def _delete_quietly(svc: OpencodeService, session_id: str) -> None:
    try:
        await svc.sessions.delete(session_id)
    except Exception as exc:  # noqa: BLE001 - the node's own error is the one to report
        log.warning("could not delete the node's failed session %s: %s", session_id, exc)


async def ensure_session(svc: OpencodeService, settings: SessionCreate) -> tuple[str, bool]:
    """The node's session, created with its widgets' settings if it does not exist yet; whether
    it was created now."""
    from .core.errors import Conflict, NotFound

    session_id = settings.id
    if not session_id:
        raise ValueError("the node's session needs an id")
    try:
        current = await svc.sessions.get(session_id)
    except NotFound:
        try:
            return (await svc.sessions.create(settings)).id, True
        except Conflict:  # another node made it meanwhile
            current = await svc.sessions.get(session_id)
    wanted = {"skills": settings.skills, "provider": settings.provider, "model": settings.model}
    changes = {k: v for k, v in wanted.items() if v and getattr(current, k) != v}
    if changes:
        await svc.sessions.patch(session_id, SessionPatch(**changes))
    return session_id, False


async def wait_replies(svc: OpencodeService, session_id: str, run_ids: list[str]) -> str:
    """Wait for these runs and return their replies joined; an error run raises its message."""
    replies = await svc.sessions.wait_runs(session_id, run_ids)
    failed = [m for m in replies if m.status == "error"]
    if failed and len(failed) == len(replies):
        raise RuntimeError(f"Opencode: {failed[0].error}")
    finished = [m for m in replies if m.status == "completed"]
    if not finished and not failed:  # a cut-off or missing reply must not flow on as if it were one
        raise RuntimeError("Opencode: the reply was stopped before it finished (in the panel, by an interrupting "
                           "message, or its chat was deleted); queue the prompt again")
    return join_replies(replies)


def _image_fingerprint(image: Any) -> bytes:
    try:
        return hashlib.sha256(image.cpu().numpy().tobytes()).digest()
    except Exception:  # noqa: BLE001 - unknown type: fall back to its identity
        return str(id(image)).encode()


def _attached_images(data_dir: Any, image: Any) -> tuple[list[Any], str]:
    """The IMAGE input saved as uploads, and a note for the message when the model gets less than
    was connected (images left out, or scaled down): it must not judge what it was not shown."""
    if image is None:
        return [], ""
    encoded, count, size = _images_for_model(image)
    parts = [save_upload(data_dir, data, mime) for data, mime in encoded]
    said = []
    if count > len(parts):
        log.warning("the image input held %d images: the first %d are sent", count, len(parts))
        said.append(f"only the first {len(parts)} of its {count} images are attached")
    if max(size) > MODEL_IMAGE_SIDE:
        said.append(f"{'they were' if len(parts) > 1 else 'it was'} {size[0]}x{size[1]}, "
                    f"scaled down to fit {MODEL_IMAGE_SIDE} px")
    return parts, (f"\n\n[Opencode node's image input: {'; '.join(said)}.]" if said else "")


def _images_for_model(image: Any) -> tuple[list[tuple[bytes, str]], int, tuple[int, int]]:
    """ComfyUI IMAGE (a [B,H,W,C] float tensor in 0..1) → (bytes, mime type) for each of the first
    `MAX_NODE_IMAGES` items, fitted for the providers (`encode_for_model`); the batch's size; the
    items' width and height."""
    import numpy as np
    from PIL import Image

    array = image.cpu().numpy() if hasattr(image, "cpu") else np.asarray(image)
    if array.ndim == 3:
        array = array[None]
    if array.shape[-1] == 1:  # one channel: a grey image
        array = array[..., 0]
    out = []
    for item in array[:MAX_NODE_IMAGES]:
        pixels = np.clip(item * 255.0, 0, 255).astype(np.uint8)
        out.append(encode_for_model(Image.fromarray(pixels)))
    return out, len(array), (int(array.shape[2]), int(array.shape[1]))


# The name `queue_workflow` looks for in a graph (`worker.nodes_sending_to`).
NODE_CLASS_MAPPINGS = {worker.AGENT_NODE_CLASS: OpencodeAgent}
NODE_DISPLAY_NAME_MAPPINGS = {worker.AGENT_NODE_CLASS: "Opencode Agent"}

__all__ = ["OpencodeAgent", "NodeBridge", "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
