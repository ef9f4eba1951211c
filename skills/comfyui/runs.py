"""Runs: what a queued graph became, from its `/history` entry or from its progress events.

`RunTracker` follows a run's events (for progress lines and for a result when the history entry
is not there yet); `summarize_history` reads a finished run's history entry. Both give the same
shape: `{prompt_id, status, outputs, error?}` with outputs per node (images as file names) and,
for a failed run, the failing node, the exception and the last lines of its traceback.
Pure functions; no IO.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .adapter import ComfyEvent

TRACEBACK_FRAMES = 4
MAX_OUTPUT_CHARS = 2000
MAX_BRIEF_IMAGES = 4
MAX_BRIEF_MESSAGE_CHARS = 300
_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)')


def traceback_tail(frames: Any, count: int = TRACEBACK_FRAMES) -> list[str]:
    """The last frames of a ComfyUI traceback, one line each: `file:line in func: code`."""
    if not isinstance(frames, list):
        return []
    lines: list[str] = []
    for frame in frames[-count:]:
        text = str(frame)
        rows = [r.strip() for r in text.splitlines() if r.strip() and not set(r.strip()) <= set("^~ ")]
        match = _FRAME.search(text)
        if match:
            path = match["file"].replace("\\", "/")
            short = "/".join(path.split("/")[-2:])
            code = rows[1] if len(rows) > 1 else ""
            line = f"{short}:{match['line']} in {match['func']}" + (f": {code}" if code else "")
        else:
            line = " ".join(rows)
        lines.append(line if len(line) <= 300 else line[:297] + "...")
    return lines


def failure(data: dict[str, Any]) -> dict[str, Any]:
    """The readable part of an `execution_error` (or `execution_interrupted`) event."""
    out: dict[str, Any] = {
        "node_id": data.get("node_id"),
        "node_type": data.get("node_type"),
    }
    if "exception_type" in data:
        out["exception_type"] = data.get("exception_type")
        out["exception_message"] = str(data.get("exception_message") or "").strip()
        out["traceback"] = traceback_tail(data.get("traceback"))
    return out


def summarize_outputs(outputs: Any, graph: dict[str, Any] | None = None) -> dict[str, Any]:
    """Outputs per node: images as `{filename, subfolder, type}`, anything else shortened."""
    result: dict[str, Any] = {}
    if not isinstance(outputs, dict):
        return result
    for node_id, node_out in outputs.items():
        if not isinstance(node_out, dict):
            continue
        entry: dict[str, Any] = {}
        node = (graph or {}).get(str(node_id))
        if isinstance(node, dict) and node.get("class_type"):
            entry["class_type"] = node["class_type"]
        for key, value in node_out.items():
            if key in ("images", "gifs", "videos", "audio", "3d") and isinstance(value, list):
                entry[key] = [
                    {k: v.get(k, "") for k in ("filename", "subfolder", "type")} for v in value if isinstance(v, dict)
                ]
            else:
                text = json.dumps(value, ensure_ascii=False, default=str)
                entry[key] = value if len(text) <= MAX_OUTPUT_CHARS else text[:MAX_OUTPUT_CHARS] + "... (truncated)"
        result[str(node_id)] = entry
    return result


def _duration(messages: list[tuple[str, dict[str, Any]]]) -> float | None:
    stamps = {name: data.get("timestamp") for name, data in messages if isinstance(data.get("timestamp"), (int, float))}
    start = stamps.get("execution_start")
    end = next((stamps[n] for n in ("execution_success", "execution_error", "execution_interrupted") if n in stamps), None)
    return round((end - start) / 1000, 3) if start is not None and end is not None else None


def summarize_history(prompt_id: str, entry: dict[str, Any]) -> dict[str, Any]:
    """A finished run's history entry as `{prompt_id, status, outputs, error?, duration_s?}`."""
    prompt = entry.get("prompt")
    graph = prompt[2] if isinstance(prompt, (list, tuple)) and len(prompt) > 2 and isinstance(prompt[2], dict) else None
    status = entry.get("status") if isinstance(entry.get("status"), dict) else {}
    messages = [
        (str(m[0]), m[1]) for m in status.get("messages") or [] if isinstance(m, (list, tuple)) and len(m) == 2 and isinstance(m[1], dict)
    ]
    result: dict[str, Any] = {"prompt_id": prompt_id, "status": "success", "outputs": summarize_outputs(entry.get("outputs"), graph)}
    for name, data in messages:
        if name == "execution_error":
            result["status"] = "error"
            result["error"] = failure(data)
        elif name == "execution_interrupted":
            result["status"] = "interrupted"
            result["error"] = failure(data)
    if result["status"] == "success" and status.get("status_str") == "error":
        result["status"] = "error"
    duration = _duration(messages)
    if duration is not None:
        result["duration_s"] = duration
    return result


def _end_time(messages: list[tuple[str, dict[str, Any]]]) -> float | None:
    """When the run ended, in seconds since the epoch (ComfyUI stamps events in milliseconds)."""
    for name, data in messages:
        if name in ("execution_success", "execution_error", "execution_interrupted") and isinstance(data.get("timestamp"), (int, float)):
            return data["timestamp"] / 1000
    return None


def brief_run(prompt_id: str, entry: dict[str, Any], now: float) -> dict[str, Any]:
    """A finished run in a few fields, for a list of recent runs: its status, how long ago it
    ended, its images or its error without the traceback (`get_run` gives the whole run)."""
    result = summarize_history(prompt_id, entry)
    status = entry.get("status") if isinstance(entry.get("status"), dict) else {}
    messages = [(str(m[0]), m[1]) for m in status.get("messages") or [] if isinstance(m, (list, tuple)) and len(m) == 2 and isinstance(m[1], dict)]
    prompt = entry.get("prompt")
    graph = prompt[2] if isinstance(prompt, (list, tuple)) and len(prompt) > 2 and isinstance(prompt[2], dict) else {}
    out: dict[str, Any] = {"prompt_id": prompt_id, "status": result["status"], "nodes": len(graph)}
    ended = _end_time(messages)
    if ended is not None:
        out["ended_s_ago"] = max(0, round(now - ended))
    if "duration_s" in result:
        out["duration_s"] = result["duration_s"]
    images = image_files(result)
    if images:
        out["images"] = images[:MAX_BRIEF_IMAGES] + ([f"... {len(images) - MAX_BRIEF_IMAGES} more"] if len(images) > MAX_BRIEF_IMAGES else [])
    error = result.get("error")
    if error:
        brief = {k: v for k, v in error.items() if k != "traceback"}
        message = str(brief.get("exception_message") or "")
        if len(message) > MAX_BRIEF_MESSAGE_CHARS:
            brief["exception_message"] = message[: MAX_BRIEF_MESSAGE_CHARS - 3] + "..."
        out["error"] = brief
    return out


@dataclass
class RunTracker:
    """Follows one run's events: progress lines to relay, and the result they imply."""

    prompt_id: str
    graph: dict[str, Any]
    outputs: dict[str, Any] = field(default_factory=dict)
    status: str = "queued"
    error: dict[str, Any] | None = None
    _progress_step: dict[str, int] = field(default_factory=dict)

    def _label(self, node_id: Any) -> str:
        node = self.graph.get(str(node_id))
        class_type = node.get("class_type") if isinstance(node, dict) else None
        return f"node {node_id}" + (f" ({class_type})" if class_type else "")

    def update(self, event: ComfyEvent) -> str | None:
        """Take one event; return a progress line worth showing, if any."""
        data = event.data
        if event.type == "execution_start":
            self.status = "running"
            return f"run {self.prompt_id} started"
        if event.type == "execution_cached":
            cached = data.get("nodes") or []
            return f"{len(cached)} node(s) reused from cache" if cached else None
        if event.type == "executing":
            if data.get("node") is None:
                self.status = "success" if self.status in ("running", "queued") else self.status
                return None
            return f"running {self._label(data.get('node'))}"
        if event.type == "progress":
            value, maximum = data.get("value"), data.get("max")
            if isinstance(value, (int, float)) and isinstance(maximum, (int, float)) and maximum > 0:
                node = str(data.get("node"))
                quarter = int(4 * value / maximum)
                if quarter > self._progress_step.get(node, 0):  # at most every 25%
                    self._progress_step[node] = quarter
                    return f"{self._label(node)}: step {int(value)}/{int(maximum)}"
            return None
        if event.type == "executed":
            self.outputs[str(data.get("node"))] = data.get("output") or {}
            return f"{self._label(data.get('node'))} produced output"
        if event.type == "execution_success":
            self.status = "success"
            return "run finished"
        if event.type == "execution_error":
            self.status = "error"
            self.error = failure(data)
            return f"run failed in {self._label(data.get('node_id'))}"
        if event.type == "execution_interrupted":
            self.status = "interrupted"
            self.error = failure(data)
            return "run interrupted"
        return None

    def summary(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "prompt_id": self.prompt_id,
            "status": self.status,
            "outputs": summarize_outputs(self.outputs, self.graph),
        }
        if self.error is not None:
            result["error"] = self.error
        return result


def image_files(summary: dict[str, Any]) -> list[str]:
    """`subfolder/filename` of every image a run produced, for a one-line answer."""
    names = []
    for entry in summary.get("outputs", {}).values():
        for image in entry.get("images", []):
            sub = image.get("subfolder")
            names.append(f"{sub}/{image['filename']}" if sub else image["filename"])
    return names
