"""Session export as JSON or Markdown, with anything that looks like a secret redacted.

Imports protocol only; the caller passes its redactor (which knows every configured key).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Callable, Sequence

from .protocol import ImagePart, Message, Session, TextPart, ToolCallPart, ToolResultPart, Usage, cache_note

Redact = Callable[[str], str]


def export_json(session: Session, messages: Sequence[Message], redact: Redact) -> str:
    doc = {"format": "opencode.session.v1", "session": session.model_dump(mode="json"),
           "messages": [m.model_dump(mode="json") for m in messages]}
    return redact(json.dumps(doc, ensure_ascii=False, indent=2))


def export_markdown(session: Session, messages: Sequence[Message], redact: Redact) -> str:
    lines = [f"# {session.title or session.id}", "",
             f"- session: `{session.id}`", f"- skills: {', '.join(session.skills) or 'default'}",
             f"- model: {session.provider or '-'} / {session.model or '-'}",
             f"- tokens: {_tokens(session.usage)}; cost ${session.usage.cost:.4f}",
             ""]
    for m in messages:
        when = datetime.fromtimestamp(m.created_at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        who = "You" if m.role == "user" else (m.skill or "assistant")
        status = "" if m.status == "completed" else f" _({m.status})_"
        lines += [f"## {who} · {when}{status}", ""]
        for part in m.parts:
            lines += _part_lines(part)
        if m.error:
            lines += [f"> error: {m.error}", ""]
    return redact("\n".join(lines) + "\n")


def _tokens(usage: Usage) -> str:
    """"1200 in (900 cached, 200 written to the cache), 300 out"."""
    return f"{usage.input_tokens} in{cache_note(usage.cache_read_tokens, usage.cache_write_tokens)}, {usage.output_tokens} out"


def _part_lines(part: object) -> list[str]:
    if isinstance(part, TextPart):
        return [part.text, ""]
    if isinstance(part, ImagePart):
        return [f"![image]({part.folder_type}/{part.subfolder + '/' if part.subfolder else ''}{part.filename})", ""]
    if isinstance(part, ToolCallPart):
        args = json.dumps(part.arguments, ensure_ascii=False, indent=2)
        return [f"<details><summary>tool {part.name} ({part.status})</summary>", "", "```json", args, "```",
                "", "</details>", ""]
    if isinstance(part, ToolResultPart):
        return ["```text", part.content[:4000], "```", ""]
    return []
