"""The recorded ComfyUI data in `tests/fixtures/comfyui/`, as the fakes replay it.

A `RecordedRun` is one real run: the graph that was queued, its prompt id, the `/ws` frames the
submitting client received after connecting, and the `/history` entry it left. `for_prompt_id`
re-labels a run for another prompt id (the in-process adapter makes its own ids).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "comfyui"
OK_PROMPT_ID = "f38a4950-0021-4a24-9c14-37f937a8b619"
ERROR_PROMPT_ID = "e92c9836-2829-47bd-8920-9c3bf5aedfef"
SAVED_IMAGE = "fixture_00001_.png"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def saved_png() -> bytes:
    return (FIXTURES / "saved_image_with_metadata.png").read_bytes()


def object_info() -> dict[str, Any]:
    """The recorded node definitions, with `corrupt.png` among LoadImage's choices (the input
    file the runtime-error run loads was put there after `/object_info` was recorded)."""
    info = load("object_info.json")
    info["LoadImage"]["input"]["required"]["image"][0].append("corrupt.png")
    return info


def object_info_0_33() -> dict[str, Any]:
    """Node definitions from ComfyUI 0.33.0, v3 input types among them (see the README)."""
    return load("object_info_0_33.json")


def graph(name: str) -> dict[str, Any]:
    return load(f"workflow_api_{name}.json")


@dataclass
class RecordedRun:
    name: str
    graph: dict[str, Any]
    prompt_id: str
    number: int
    greeting: dict[str, Any]  # the `status` frame a new socket gets
    frames: list[dict[str, Any]]  # everything after the greeting, in order
    history: dict[str, Any]  # the `/history/{prompt_id}` entry

    def for_prompt_id(self, prompt_id: str) -> "RecordedRun":
        def relabel(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: (prompt_id if k == "prompt_id" else relabel(v)) for k, v in value.items()}
            if isinstance(value, list):
                return [prompt_id if v == self.prompt_id else relabel(v) for v in value]
            return value

        return RecordedRun(
            self.name, copy.deepcopy(self.graph), prompt_id, self.number, copy.deepcopy(self.greeting),
            relabel(self.frames), relabel(self.history),
        )

    @property
    def body_frames(self) -> list[dict[str, Any]]:
        """Frames up to the end of the run (the run's terminal event excluded)."""
        return self.frames[: self.terminal_index]

    @property
    def tail_frames(self) -> list[dict[str, Any]]:
        """The terminal event and what follows it."""
        return self.frames[self.terminal_index :]

    @property
    def terminal_index(self) -> int:
        for i, frame in enumerate(self.frames):
            if frame["type"] in ("execution_success", "execution_error", "execution_interrupted"):
                return i
        return len(self.frames)


def recorded_runs() -> dict[str, RecordedRun]:
    runs = {}
    for name, graph_name, prompt_id in (("ok", "cpu_ok", OK_PROMPT_ID), ("error", "runtime_error", ERROR_PROMPT_ID)):
        frames = load(f"ws_events_run_{name}.json")
        history = load(f"history_run_{name}.json")[prompt_id]
        runs[name] = RecordedRun(
            name=name,
            graph=graph(graph_name),
            prompt_id=prompt_id,
            number=history["prompt"][0],
            greeting=frames[0],
            frames=frames[1:],
            history=history,
        )
    return runs


def match_run(runs: dict[str, RecordedRun], prompt: dict[str, Any]) -> RecordedRun | None:
    return next((r for r in runs.values() if r.graph == prompt), None)


def example_problems(info: dict[str, Any]) -> dict[str, list[str]]:
    """describe_node's example of every node of `info`, each link placeholder fed by a node that
    outputs the type, put through the local check: the problems of each node refused (a missing
    model file aside, which depends on the install, not the check)."""
    from opencode_agent.skills.comfyui import catalog
    from opencode_agent.skills.comfyui.graph import validate_graph

    producers: dict[str, tuple[str, int]] = {}
    for class_type, node_def in info.items():
        for index, type_name in enumerate(catalog.output_types(node_def)):
            for part in type_name.split(","):
                producers.setdefault(part.strip(), (class_type, index))
    refused = {}
    for class_type, node_def in info.items():
        example = catalog.example_node(class_type, node_def)
        graph: dict[str, Any] = {"1": example}
        specs = {s.name: s for s in catalog.expand_inputs(node_def, example["inputs"])}
        for name, value in example["inputs"].items():
            if value == ["<node id>", 0]:
                source = next((producers[t] for t in sorted(specs[name].accepts) if t in producers), None) or producers.get("*")
                if source is None:
                    example["inputs"][name] = "a value"  # a front-end widget: nothing outputs its type
                    continue
                graph[str(len(graph) + 1)] = {"class_type": source[0], "inputs": {}}
                example["inputs"][name] = [str(len(graph)), source[1]]
        problems = [str(e) for e in validate_graph(graph, info, require_output=False) if e.node_id == "1"]
        problems = [p for p in problems if "is not available (no choices" not in p]  # no model files installed
        if problems:
            refused[class_type] = problems
    return refused
