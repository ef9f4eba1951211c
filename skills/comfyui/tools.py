"""The ComfyUI tools a model calls: find and explain nodes, read and propose the canvas's
workflow, queue graphs and follow them, inspect runs, look at images, list model files.

Each tool is a closure over one `ComfyAdapter`, built by `build_tools(adapter)`. Failures the
model can act on raise `ToolError` (a `ComfyError` is one) so they come back as readable errors.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
from typing import Any, Literal

from ...core.protocol import ImagePart
from ...core.tools import Tool, ToolContext, ToolError, ToolOutput, tool
from . import catalog, worker
from .adapter import ComfyAdapter, ComfyValidationError, check_image_ref, format_node_errors, image_mime
from .graph import (
    SUMMARY_VALUE_CHARS,
    UI_FORMAT_MESSAGE,
    cut_nodes,
    looks_like_ui_format,
    summarize_api_graph,
    summarize_ui_graph,
    validate_graph,
    value_warnings,
)
from .runs import RunTracker, brief_run, image_files, summarize_history

log = logging.getLogger("opencode.comfyui.tools")

MAX_GRAPH_JSON_CHARS = 16_000
MAX_CHOSEN_JSON_CHARS = 64_000  # get_workflow(node_ids=...): nodes a summary cut, asked for whole
MAX_CUT_IDS_NAMED = 30
MAX_MODEL_FILES = 300
MAX_RECENT_RUNS = 20
HISTORY_SAVE_WAIT = 2.0  # seconds a finished run's history may take to appear (`_history_once_saved`)


def _compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    return None


def _api_graph(graph: Any, tool_name: str) -> dict[str, Any]:
    if looks_like_ui_format(graph):
        raise ToolError(f"{tool_name}: {UI_FORMAT_MESSAGE}")
    if not isinstance(graph, dict) or not graph:
        raise ToolError(f"{tool_name}: the graph must be a non-empty API-format object")
    return graph


def build_tools(adapter: ComfyAdapter, *, run_timeout: float = 600.0, propose_timeout: float = 600.0) -> list[Tool]:
    """The ComfyUI tools over `adapter`. `run_timeout` caps how long `queue_workflow` follows a run;
    `propose_timeout` how long `propose_workflow` waits for the user to accept or reject."""

    @tool(permission="read")
    async def search_nodes(ctx: ToolContext, query: str, limit: int = 20) -> dict[str, Any]:
        """Find ComfyUI node types by words in their name, display name, search aliases, category
        or description (e.g. "upscale", "load lora", "img2img"). Returns class types, best match
        first, with the types of their link inputs and outputs. Use describe_node for a node's full
        inputs."""
        if not query.strip():
            raise ToolError("give one or more words to search for, e.g. 'upscale image'")
        limit = max(1, min(limit, 50))
        results, total = catalog.search(await adapter.object_info(), query, limit)
        if not results:
            raise ToolError(f"no node matches '{query}'; try fewer or broader words")
        return {"query": query, "matches": total, "shown": len(results), "results": results}

    @tool(permission="read")
    async def describe_node(ctx: ToolContext, class_type: str, input: str = "") -> dict[str, Any]:
        """Everything about one node type: its inputs (type, default, min/max, allowed choices,
        whether it takes a link), its outputs with their indexes, its category and description,
        and an example of the node in API format. Long lists of choices show their first 25:
        give `input` (an input's name, e.g. "sampler_name") for that input alone with every choice."""
        info = await adapter.object_info()
        found = catalog.find_class(info, class_type)
        if found is None:
            info = await adapter.object_info(refresh=True)  # a custom node may have been added
            found = catalog.find_class(info, class_type)
        if found is None:
            hint = catalog.close_matches(info, class_type)
            raise ToolError(
                f"unknown node type '{class_type}'"
                + (f"; did you mean {', '.join(hint)}?" if hint else "; use search_nodes to find it")
            )
        if input.strip():
            return _describe_one_input(found, info[found], input.strip())
        return catalog.describe(found, info[found])

    @tool(permission="read")
    async def get_workflow(ctx: ToolContext, node_ids: list[str | int] | None = None) -> str:
        """The workflow currently on the user's ComfyUI canvas, in API format (node id ->
        class_type and inputs; a link is [node id, output index]). A large workflow comes back as
        a one-line-per-node summary with long values cut: give `node_ids` to get those nodes
        whole (do that before changing or queueing them, or a cut value goes back cut)."""
        reply = await ctx.ui_request("get_workflow", {})
        prompt = reply.get("prompt") or reply.get("output")
        workflow = reply.get("workflow")
        if node_ids:
            return _chosen_nodes(prompt, workflow, [str(i) for i in node_ids])
        if isinstance(prompt, dict) and prompt:
            text = _compact_json(prompt)
            if len(text) <= MAX_GRAPH_JSON_CHARS:
                return f"Workflow on the canvas ({len(prompt)} nodes, API format):\n{text}"
            return (
                f"Workflow on the canvas ({len(prompt)} nodes, API format, summarised: "
                f"`id ClassType: input=value, input<-node.output`):\n{summarize_api_graph(prompt)}"
                + _cut_note(cut_nodes(prompt))
            )
        if isinstance(workflow, dict) and workflow.get("nodes"):
            return (
                f"Workflow on the canvas ({len(workflow['nodes'])} nodes, UI format summarised: "
                f"`id Type: input<-node.output, widgets=[...]`):\n{summarize_ui_graph(workflow)}"
                + _cut_note(cut_nodes(workflow))
            )
        return "The canvas is empty."

    @tool(permission="edit")
    async def propose_workflow(ctx: ToolContext, graph: dict[str, Any], title: str = "") -> str:
        """Show an API-format graph to the user, who can accept it onto the canvas or reject it.
        `graph` maps node ids to {"class_type": ..., "inputs": {...}}, links are
        ["<node id>", <output index>]. To change the workflow on the canvas, start from
        get_workflow's graph: keep the ids of the nodes you keep and give new nodes new ids;
        accepting then edits the canvas in place (changed values and links set, new nodes added,
        nodes you left out removed; layout, notes and groups stay). `title` says in a few words
        what the workflow does. Returns whether the user accepted."""
        graph = _api_graph(graph, "propose_workflow")
        info = await adapter.object_info()
        errors = validate_graph(graph, info, require_output=False, check_values=False)
        if errors:
            info = await adapter.object_info(refresh=True)
            errors = validate_graph(graph, info, require_output=False, check_values=False)
        if errors:
            raise ToolError(format_node_errors(errors, "The workflow was not shown to the user; fix these first"))
        warnings = value_warnings(graph, info)
        reply = await ctx.ui_request("propose_workflow", {"graph": graph, "title": title}, timeout=propose_timeout)
        note = ("\n" + format_node_errors(warnings, "Values to check before running")) if warnings else ""
        if reply.get("accepted"):
            return "The user accepted the workflow; it is now on the canvas." + note
        reason = str(reply.get("reason") or "").strip()
        return "The user rejected the proposed workflow" + (f": {reason}" if reason else ".") + note

    @tool(permission="run")
    async def queue_workflow(ctx: ToolContext, graph: dict[str, Any]) -> ToolOutput:
        """Run an API-format graph in ComfyUI and wait for it to finish. The graph is validated
        first: problems come back per node and nothing runs. Returns the run's status and its
        outputs (images as file names, viewable with view_image); for a failed run, the failing
        node and the error."""
        graph = _api_graph(graph, "queue_workflow")
        errors = await adapter.validate(graph)
        if errors:
            return ToolOutput(format_node_errors(errors, "The workflow is not valid; nothing was queued"), is_error=True)
        try:
            prompt_id = await adapter.queue(graph)
        except ComfyValidationError as exc:
            return ToolOutput(format_node_errors(exc.errors, "ComfyUI rejected the workflow; nothing was queued"), is_error=True)
        ctx.log("info", f"queued ComfyUI prompt {prompt_id}")
        await ctx.emit_status(f"queued as {prompt_id}")
        feeding = worker.nodes_sending_to(graph, ctx.session_id)
        if feeding or worker.held_by(ctx.session_id):  # it could not finish before this reply: no wait
            return ToolOutput(worker.not_waiting_note(prompt_id, feeding))
        tracker = RunTracker(prompt_id, graph)

        async def follow() -> None:
            async for event in adapter.events(prompt_id):
                line = tracker.update(event)
                if line:
                    await ctx.emit_status(line)

        try:
            if not await worker.unless_held(ctx.session_id, asyncio.wait_for(follow(), run_timeout)):
                return ToolOutput(worker.not_waiting_note(prompt_id))
        except asyncio.CancelledError:
            # The user stopped the answer: stop its run too, rather than leave it holding the GPU.
            try:
                stopped = await asyncio.wait_for(asyncio.shield(adapter.cancel(prompt_id)), 10.0)
                ctx.log("info", f"{'stopped' if stopped else 'could not stop'} ComfyUI prompt {prompt_id}")
            except Exception as exc:
                log.warning("could not stop ComfyUI prompt %s: %s", prompt_id, exc)
            raise
        except asyncio.TimeoutError:
            return ToolOutput(
                f"Run {prompt_id} is still going after {run_timeout:.0f} s; it stays in ComfyUI's queue. "
                f"Call get_run(\"{prompt_id}\") later for its result."
            )
        entry = await _history_once_saved(adapter, prompt_id)
        result = summarize_history(prompt_id, entry) if entry is not None else tracker.summary()
        return _run_output(result)

    @tool(permission="read")
    async def get_run(ctx: ToolContext, prompt_id: str) -> ToolOutput:
        """Status and result of a ComfyUI run by its prompt id: outputs (images as file names), or
        for a failed run the failing node id and type, the exception and the last traceback lines."""
        prompt_id = prompt_id.strip()
        if not prompt_id:
            raise ToolError("give the prompt id of a run (queue_workflow returns it; recent_runs lists the latest runs with theirs)")
        entry = await adapter.history(prompt_id)
        if entry is not None:
            return _run_output(summarize_history(prompt_id, entry))
        state = await adapter.queue_state()
        if prompt_id in state["running"]:
            return ToolOutput(_compact_json({"prompt_id": prompt_id, "status": "running"}))
        if prompt_id in state["pending"]:
            position = state["pending"].index(prompt_id) + 1
            return ToolOutput(_compact_json({"prompt_id": prompt_id, "status": "pending", "position": position, "queued": len(state["pending"])}))
        # ComfyUI takes a finished run off its queue and then saves its history: read between
        # the two, it is in neither, so the history is asked once more.
        entry = await adapter.history(prompt_id)
        if entry is not None:
            return _run_output(summarize_history(prompt_id, entry))
        raise ToolError(
            f"no run '{prompt_id}' in ComfyUI's queue or history (history is lost when ComfyUI restarts); "
            "recent_runs lists the latest runs with their prompt ids"
        )

    @tool(permission="read")
    async def recent_runs(ctx: ToolContext, limit: int = 5) -> dict[str, Any]:
        """ComfyUI's latest finished runs, newest first, the ones the user queued from ComfyUI
        itself included: each with its prompt id, status, how long ago it ended, its images or,
        for a failed run, the failing node and the error; and the runs running or waiting now.
        Use it when the user asks about their run or why their workflow fails (they never see a
        prompt id); get_run(prompt_id) gives one run in full, traceback included."""
        limit = max(1, min(limit, MAX_RECENT_RUNS))
        entries = await adapter.recent_history(limit)
        state = await adapter.queue_state()
        now = time.time()
        runs = [brief_run(prompt_id, entry, now) for prompt_id, entry in reversed(list(entries.items()))]
        result: dict[str, Any] = {"runs": runs, "running": state["running"], "pending": len(state["pending"])}
        if not runs:
            result["note"] = "no finished run in ComfyUI's history (ComfyUI forgets it when it restarts)"
        return result

    @tool(permission="read")
    async def view_image(
        ctx: ToolContext, filename: str, subfolder: str = "", type: Literal["output", "input", "temp"] = "output"
    ) -> ToolOutput:
        """Look at an image from ComfyUI's output, input or temp folder (e.g. one a run produced):
        it is attached so you can see it. `filename` is a plain file name; `subfolder` the folder
        inside output/input/temp that a run reported, if any."""
        filename, subfolder = check_image_ref(filename, subfolder, type)
        data = await adapter.view(filename, subfolder, type)
        mime = image_mime(data)
        if not mime.startswith("image/"):
            raise ToolError(f"{filename} is not an image ComfyUI can show (PNG, JPEG, WebP or GIF)")
        size = _png_size(data)
        dims = f"{size[0]}x{size[1]} " if size else ""
        image = ImagePart(source="comfyui", filename=filename, subfolder=subfolder, folder_type=type, mime_type=mime)
        return ToolOutput(f"Attached {type}/{subfolder + '/' if subfolder else ''}{filename} ({dims}{mime}, {len(data)} bytes).", images=[image])

    @tool(permission="read")
    async def list_models(ctx: ToolContext, folder: str) -> dict[str, Any]:
        """Model files ComfyUI has in one folder: checkpoints, loras, vae, controlnet,
        upscale_models, embeddings, clip_vision, text_encoders, diffusion_models, ... Use the
        names exactly as listed in node inputs such as ckpt_name or lora_name."""
        files = await adapter.models(folder.strip())
        result: dict[str, Any] = {"folder": folder, "count": len(files), "files": files[:MAX_MODEL_FILES]}
        if len(files) > MAX_MODEL_FILES:
            result["note"] = f"showing {MAX_MODEL_FILES} of {len(files)}"
        if not files:
            result["note"] = f"no files: put model files in ComfyUI's models/{folder} folder and refresh ComfyUI"
        return result

    return [search_nodes, describe_node, get_workflow, propose_workflow, queue_workflow, get_run, recent_runs, view_image, list_models]


def _cut_note(node_ids: list[str]) -> str:
    """Which nodes a summary cut and how to get them whole: a graph queued from the summary would
    send the cut values, "..." and all."""
    if not node_ids:
        return ""
    shown = ", ".join(f'"{n}"' for n in node_ids[:MAX_CUT_IDS_NAMED]) + (", ..." if len(node_ids) > MAX_CUT_IDS_NAMED else "")
    return (
        f"\nValues over {SUMMARY_VALUE_CHARS} characters are cut (they end in ...) in nodes {shown}: call "
        f"get_workflow with node_ids=[...] to get those nodes whole before changing or queueing them."
    )


def _chosen_nodes(prompt: Any, workflow: Any, node_ids: list[str]) -> str:
    """The canvas's nodes of these ids, whole: in API format, or in the UI format when the panel
    sent only that. Up to `MAX_CHOSEN_JSON_CHARS`; the first node always, however long."""
    if isinstance(prompt, dict) and prompt:
        nodes, kind = prompt, "API format"
    elif isinstance(workflow, dict) and isinstance(workflow.get("nodes"), list):
        nodes = {str(n.get("id")): n for n in workflow["nodes"] if isinstance(n, dict)}
        kind = "UI format"
    else:
        return "The canvas is empty."
    found: dict[str, Any] = {}
    left: list[str] = []
    size = 0
    for node_id in dict.fromkeys(node_ids):
        if node_id not in nodes:
            continue
        text = _compact_json(nodes[node_id])
        if found and size + len(text) > MAX_CHOSEN_JSON_CHARS:
            left.append(node_id)
            continue
        found[node_id], size = nodes[node_id], size + len(text)
    missing = [n for n in dict.fromkeys(node_ids) if n not in nodes]
    if not found:
        raise ToolError(f"no node {', '.join(missing)} on the canvas; its node ids: {', '.join(list(nodes)[:50])}")
    notes = ([f"not on the canvas: {', '.join(missing)}"] if missing else []) + (
        [f"left out to keep this short, ask for them next: {', '.join(left)}"] if left else []
    )
    return f"Nodes {', '.join(found)} of the canvas's workflow, whole ({kind}):\n{_compact_json(found)}" + "".join(f"\n({n})" for n in notes)


def _describe_one_input(class_type: str, node_def: dict[str, Any], name: str) -> dict[str, Any]:
    """One input of a node with every one of its choices, for when describe_node's list was cut."""
    spec = catalog.find_input(node_def, name)
    if spec is None:
        names = ", ".join(s.name for s in catalog.node_inputs(node_def)) or "none"
        raise ToolError(f"{class_type} has no input '{name}'; its inputs: {names}")
    return {"class_type": class_type, "input": catalog.describe_input(spec, catalog.MAX_CHOICES_ASKED)}


async def _history_once_saved(adapter: ComfyAdapter, prompt_id: str) -> dict[str, Any] | None:
    """A finished run's history entry. ComfyUI sends a run's last event a moment before it saves the
    run's history and takes it off the running queue: read in between, the result would come from
    the events alone and a `get_run` right after would still say "running". So while ComfyUI lists
    the run as running, its history is asked again, for `HISTORY_SAVE_WAIT` seconds at most."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HISTORY_SAVE_WAIT
    while True:
        entry = await adapter.history(prompt_id)
        if entry is not None or loop.time() >= deadline:
            return entry
        if prompt_id not in (await adapter.queue_state())["running"]:
            return await adapter.history(prompt_id)  # saved meanwhile, or never will be
        await asyncio.sleep(0.02)


def _run_output(result: dict[str, Any]) -> ToolOutput:
    images = image_files(result)
    if result["status"] == "success":
        head = f"Run {result['prompt_id']} finished" + (f"; images: {', '.join(images)}" if images else "") + "."
        return ToolOutput(f"{head}\n{_compact_json(result)}")
    error = result.get("error") or {}
    where = f"node {error.get('node_id')} ({error.get('node_type')})" if error.get("node_id") else "an unknown node"
    if result["status"] == "interrupted":
        return ToolOutput(f"Run {result['prompt_id']} was interrupted at {where}.\n{_compact_json(result)}", is_error=True)
    what = f"{error.get('exception_type')}: {error.get('exception_message')}" if error.get("exception_type") else "an error"
    return ToolOutput(f"Run {result['prompt_id']} failed in {where} with {what}\n{_compact_json(result)}", is_error=True)
