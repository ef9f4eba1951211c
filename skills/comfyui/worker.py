"""Which sessions hold ComfyUI's worker: an Opencode node in a running graph waiting for their answer.

ComfyUI runs one prompt at a time on one worker thread. While the `OpencodeAgent` node waits for
a session's reply, that thread is blocked, so a workflow the reply queues cannot start until the
reply is over: `queue_workflow` waiting for it would wait for itself (until its timeout, 600 s).
The node marks its session here for the length of its wait, and the tool then queues without
waiting. Touched only on the server's event loop (the node's wait runs there), so no lock.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import Iterator

_waiting: Counter[str] = Counter()


@contextmanager
def holding(session_id: str) -> Iterator[None]:
    """Mark `session_id` as awaited by a graph run (nodes may nest: each adds one)."""
    _waiting[session_id] += 1
    try:
        yield
    finally:
        _waiting[session_id] -= 1
        if _waiting[session_id] <= 0:
            del _waiting[session_id]


def held_by(session_id: str) -> bool:
    """Whether a running graph's node is waiting for this session's answer."""
    return _waiting.get(session_id, 0) > 0
