"""The `comfyui` tools skill: ComfyUI's nodes, canvas, queue, runs, images and model files.

`build_comfyui_skill(adapter)` returns the `Skill` the service registers at mount time, with an
`InProcessComfyAdapter` inside ComfyUI or an `HttpComfyAdapter` when run standalone.
"""

from __future__ import annotations

from ...core.skills import Skill
from .adapter import ComfyAdapter, ComfyError, ComfyEvent, ComfyUnavailable, ComfyValidationError
from .graph import NodeError
from .http_adapter import HttpComfyAdapter
from .inprocess_adapter import InProcessComfyAdapter
from .tools import build_tools

SKILL_ID = "comfyui"

INSTRUCTIONS = """\
# ComfyUI tools

You can see and drive the ComfyUI this conversation runs in.

## API-format graphs

ComfyUI runs graphs in *API format*: an object mapping node ids (strings) to nodes.

```json
{
  "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
  "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse at dusk", "clip": ["4", 1]}},
  "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
  "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
  "3": {"class_type": "KSampler", "inputs": {"seed": 42, "steps": 25, "cfg": 6.0, "sampler_name": "euler",
        "scheduler": "normal", "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0],
        "negative": ["7", 0], "latent_image": ["5", 0]}},
  "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
  "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "opencode"}}
}
```

- `class_type` is the node's class name (not its display name): find it with `search_nodes`.
- An input is either a value (numbers, text, one of the allowed choices) or a link
  `["<node id>", <output index>]` to another node's output; output indexes start at 0 and are
  listed by `describe_node` (Load Checkpoint: 0 MODEL, 1 CLIP, 2 VAE).
- Some newer nodes have inputs named with dots: a choice that brings inputs of its own
  (`"resize_type": "scale by multiplier"` with `"resize_type.multiplier": 2.0`) or a growing list
  (`"images.image0"`, `"images.image1"`); `describe_node` lists them and its example shows them.
- Every required input needs a value or a link. A graph needs an output node (`SaveImage` or
  `PreviewImage`) to produce anything.
- Model file names (`ckpt_name`, `lora_name`, `vae_name`, ...) must be files that exist: check with
  `list_models` and copy the name exactly. Never invent one.

## Recommended flow

1. `search_nodes` to find node types, `describe_node` for their inputs, outputs and allowed values.
2. `get_workflow` to start from what is on the canvas when the user refers to it; keep their node
   ids and change only what is needed. A large canvas comes back summarised with long values cut:
   get the nodes you change or send back whole with `get_workflow(node_ids=[...])`.
3. `propose_workflow` to put a new or changed graph on the user's canvas (they accept or reject),
   or `queue_workflow` to run it directly. Both check the graph first and name each problem:
   fix those and retry rather than guessing.
4. `get_run` with the prompt id for a run's outputs or its error; `recent_runs` for the latest
   runs and their ids (the user's own runs from ComfyUI's Queue button too); `view_image` to look
   at an output image.

Running a workflow uses the user's GPU and time: run what they asked for, not variations they
did not ask for.

An `OpencodeAgent` node in a graph (often the canvas's own) sends its `text`/`image` to an
Opencode conversation and waits for the answer while ComfyUI runs nothing else. When it sends to
this conversation, its message can only be answered after your reply ends: `queue_workflow` then
queues the graph without waiting and says so. End your reply telling the user it is queued; do
not wait for it or ask `get_run` again and again in the same reply.
"""


def build_comfyui_skill(adapter: ComfyAdapter, *, run_timeout: float = 600.0, propose_timeout: float = 600.0) -> Skill:
    """The `comfyui` tools skill over `adapter` (the caller owns the adapter and closes it)."""
    return Skill(
        id=SKILL_ID,
        name="ComfyUI",
        description="Find and explain nodes, read and propose the canvas's workflow, run workflows and inspect their results, view images, list model files.",
        kind="tools",
        instructions=INSTRUCTIONS,
        tools=build_tools(adapter, run_timeout=run_timeout, propose_timeout=propose_timeout),
        color="#0891b2",
        origin="python",
    )


__all__ = [
    "SKILL_ID",
    "build_comfyui_skill",
    "ComfyAdapter",
    "ComfyError",
    "ComfyEvent",
    "ComfyUnavailable",
    "ComfyValidationError",
    "HttpComfyAdapter",
    "InProcessComfyAdapter",
    "NodeError",
]
