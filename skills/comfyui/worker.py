"""Which sessions hold ComfyUI's worker: an Opencode node in a running graph waiting for their answer.

ComfyUI runs one prompt at a time on one worker thread. While the `OpencodeAgent` node waits for
a session's reply, that thread is blocked, so a workflow the reply queues cannot start until the
reply is over: `queue_workflow` waiting for it would wait for itself (until its timeout, 600 s).
The node marks its session here for the length of its wait, and the tool then queues without
waiting. A tool already following a run when a node starts to wait on its session stops following
(`unless_held`): the node's message queues behind the very reply that waits, whichever graph the
node is in. And a graph that holds such a node itself is known before it is queued
(`nodes_sending_to`). Touched only on the server's event loop (the node's wait runs there), so no
lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from contextlib import contextmanager
from typing import Any, Awaitable, Iterator

# The node's class name in `NODE_CLASS_MAPPINGS` (node.py uses this one).
AGENT_NODE_CLASS = "OpencodeAgent"
# A node sends (and waits) only when one of these inputs is linked; unfed, it just reads.
_FEEDING_INPUTS = ("text", "image")

_waiting: Counter[str] = Counter()
_followers: dict[str, set[asyncio.Event]] = {}


@contextmanager
def holding(session_id: str) -> Iterator[None]:
    """Mark `session_id` as awaited by a graph run (nodes may nest: each adds one)."""
    _waiting[session_id] += 1
    for event in _followers.get(session_id, ()):
        event.set()
    try:
        yield
    finally:
        _waiting[session_id] -= 1
        if _waiting[session_id] <= 0:
            del _waiting[session_id]


def held_by(session_id: str) -> bool:
    """Whether a running graph's node is waiting for this session's answer."""
    return _waiting.get(session_id, 0) > 0


def nodes_sending_to(graph: dict[str, Any], session_id: str) -> list[str]:
    """Ids of the graph's Opencode nodes that would send to `session_id` and wait for its answer.

    Queued from that session's own reply, such a graph deadlocks if the reply waits for it: its
    node's message is answered only after the reply ends, while ComfyUI's worker is held."""
    found = []
    for node_id, node in graph.items():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict) or node.get("class_type") != AGENT_NODE_CLASS:
            continue
        target = inputs.get("session_id")
        if isinstance(target, str) and target.strip() == session_id and any(k in inputs for k in _FEEDING_INPUTS):
            found.append(str(node_id))
    return found


async def unless_held(session_id: str, follow: Awaitable[Any]) -> bool:
    """Await `follow`, unless a graph's node starts waiting for `session_id` first.

    True: `follow` finished (its exception is raised). False: a node now holds ComfyUI's worker
    waiting for this session, so `follow` (which needs the worker) was cancelled."""
    held = asyncio.Event()
    _followers.setdefault(session_id, set()).add(held)
    task = asyncio.ensure_future(follow)
    watch = asyncio.ensure_future(held.wait())
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
            return True
        return False
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        followers = _followers.get(session_id)
        if followers is not None:
            followers.discard(held)
            if not followers:
                del _followers[session_id]


def not_waiting_note(prompt_id: str, feeding: list[str] | None = None) -> str:
    """What `queue_workflow` answers when it queued but must not wait for the run."""
    if feeding:
        why = (f"the graph's Opencode node {', '.join(feeding)} sends to this very conversation, and its "
               f"message can only be answered after this reply ends, so the run cannot finish before then")
    else:
        why = ("an Opencode node in a running graph is waiting for this conversation's answer and holds "
               "ComfyUI's worker, so the run cannot finish before this reply ends")
    return (f"Queued as {prompt_id}. Not waited for: {why}. Do not wait for it; finish this reply and tell "
            f"the user, who can follow it in ComfyUI's queue or ask for get_run(\"{prompt_id}\") later.")
