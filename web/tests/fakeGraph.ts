/**
 * A small LiteGraph stand-in for applyProposal.ts: nodes with sockets, widget sockets and widgets,
 * links in a Map, and `prompt()`, which reads it the way ComfyUI's graphToPrompt does (executable
 * nodes only; links followed through Reroute, bypassed nodes and PrimitiveNode values; inputs
 * from muted nodes dropped).
 */
import type { Graph, GraphLink, GraphNode, GraphSlot, GraphWidget } from "../src/host-types";

interface Def {
  inputs?: [string, string][];
  widgets?: [string, unknown][];
  outputs?: string[];
  /** Adds ComfyUI's `control_after_generate` widget after the first widget (not serialized). */
  control?: boolean;
  virtual?: boolean;
}

export const DEFS: Record<string, Def> = {
  CheckpointLoaderSimple: { widgets: [["ckpt_name", "sd15.safetensors"]], outputs: ["MODEL", "CLIP", "VAE"] },
  CLIPTextEncode: { inputs: [["clip", "CLIP"]], widgets: [["text", ""]], outputs: ["CONDITIONING"] },
  EmptyLatentImage: { widgets: [["width", 512], ["height", 512], ["batch_size", 1]], outputs: ["LATENT"] },
  KSampler: {
    inputs: [["model", "MODEL"], ["positive", "CONDITIONING"], ["negative", "CONDITIONING"], ["latent_image", "LATENT"]],
    widgets: [["seed", 0], ["steps", 20], ["cfg", 8], ["sampler_name", "euler"], ["scheduler", "normal"], ["denoise", 1]],
    outputs: ["LATENT"],
    control: true,
  },
  VAEDecode: { inputs: [["samples", "LATENT"], ["vae", "VAE"]], outputs: ["IMAGE"] },
  SaveImage: { inputs: [["images", "IMAGE"]], widgets: [["filename_prefix", "ComfyUI"]] },
  ImageScaleBy: { inputs: [["image", "IMAGE"]], widgets: [["upscale_method", "nearest-exact"], ["scale_by", 1]], outputs: ["IMAGE"] },
  LoadImage: { widgets: [["image", "example.png"]], outputs: ["IMAGE", "MASK"] },
  ImageInvert: { inputs: [["image", "IMAGE"]], outputs: ["IMAGE"] },
  OpencodeAgent: { widgets: [["session_id", ""], ["skills", ""], ["provider", ""], ["model", ""]], outputs: ["STRING"] },
  Tags: { widgets: [["tags", []]], outputs: ["STRING"] },
  Note: { widgets: [["text", ""]], virtual: true },
  Reroute: { inputs: [["", "*"]], outputs: ["*"], virtual: true },
  PrimitiveNode: { widgets: [["value", 0]], outputs: ["*"], virtual: true },
};

export class FakeNode implements GraphNode {
  id: number | string = -1;
  type: string;
  comfyClass?: string;
  title: string;
  mode = 0;
  pos: number[] = [10, 10];
  size: number[];
  inputs: GraphSlot[];
  outputs: GraphSlot[];
  widgets: GraphWidget[];
  graph: FakeGraph | null = null;
  callbacks: [string, unknown][] = [];

  constructor(type: string) {
    const def = DEFS[type];
    if (!def) throw new Error(`no such fake type ${type}`);
    this.type = type;
    if (!def.virtual) this.comfyClass = type;
    this.title = type;
    this.widgets = [];
    for (const [i, [name, value]] of (def.widgets ?? []).entries()) {
      this.widgets.push(this.widget(name, value));
      if (i === 0 && def.control) this.widgets.push({ name: "control_after_generate", type: "combo", value: "randomize", options: { serialize: false } });
    }
    this.inputs = [
      ...(def.inputs ?? []).map(([name, t]) => ({ name, type: t, link: null })),
      // Widget sockets, as front ends 1.16+ give every widget (virtual nodes have none).
      ...(def.virtual ? [] : (def.widgets ?? []).map(([name]) => ({ name, type: "*", link: null, widget: { name } }))),
    ];
    this.outputs = (def.outputs ?? []).map((t) => ({ name: t, type: t, links: [] }));
    this.size = [200, 30 + 24 * (this.inputs.length + this.widgets.length)];
  }

  private widget(name: string, value: unknown): GraphWidget {
    const w: GraphWidget = { name, type: "text", value, options: {} };
    w.callback = (v) => this.callbacks.push([name, v]);
    return w;
  }

  at(x: number, y: number): this {
    this.pos = [x, y];
    return this;
  }

  connect(slot: number, target: GraphNode, targetSlot: number): GraphLink | null {
    if (!this.graph) throw new Error("connect: not in a graph");
    return this.graph.link(this, slot, target as FakeNode, targetSlot);
  }

  disconnectInput(slot: number): boolean {
    const id = this.inputs[slot]?.link;
    if (id == null || !this.graph) return false;
    this.graph.unlink(id);
    return true;
  }
}

export class FakeGraph implements Graph {
  nodes: FakeNode[] = [];
  links = new Map<number, GraphLink & { id: number }>();
  private nextNode = 1;
  private nextLink = 1;
  setDirtyCanvas = (_fg: boolean, _bg?: boolean) => undefined;
  changes = 0;

  change(): void {
    this.changes += 1;
  }

  getNodeById(id: number | string): FakeNode | undefined {
    return this.nodes.find((n) => String(n.id) === String(id));
  }

  getLink(id: number | string) {
    return this.links.get(Number(id));
  }

  add(node: GraphNode): FakeNode {
    const n = node as FakeNode;
    if (n.id === -1 || this.getNodeById(n.id)) n.id = this.nextNode;
    this.nextNode = Math.max(this.nextNode, Number(n.id) + 1);
    n.graph = this;
    this.nodes.push(n);
    return n;
  }

  /** A node of `type` at `id`, placed at `pos`. */
  put(id: number, type: string, pos: [number, number] = [0, 0], mode = 0): FakeNode {
    const n = new FakeNode(type);
    n.id = id;
    n.mode = mode;
    n.pos = [...pos];
    return this.add(n);
  }

  remove(node: GraphNode): void {
    const n = node as FakeNode;
    for (const inp of n.inputs) if (inp.link != null) this.unlink(inp.link);
    for (const out of n.outputs) for (const id of [...(out.links ?? [])]) this.unlink(id);
    this.nodes = this.nodes.filter((x) => x !== n);
    n.graph = null;
  }

  link(from: FakeNode, slot: number, to: FakeNode, toSlot: number) {
    const old = to.inputs[toSlot].link;
    if (old != null) this.unlink(old);
    const link = { id: this.nextLink++, origin_id: from.id, origin_slot: slot, target_id: to.id, target_slot: toSlot };
    this.links.set(link.id, link);
    from.outputs[slot].links!.push(link.id);
    to.inputs[toSlot].link = link.id;
    return link;
  }

  unlink(id: number | string): void {
    const link = this.links.get(Number(id));
    if (!link) return;
    this.links.delete(link.id);
    const from = this.getNodeById(link.origin_id);
    const to = this.getNodeById(link.target_id);
    if (from) from.outputs[link.origin_slot].links = from.outputs[link.origin_slot].links!.filter((l) => l !== link.id);
    if (to) to.inputs[link.target_slot].link = null;
  }

  /** Link `from`'s output `slot` into `to`'s input called `name`. */
  wire(from: FakeNode, slot: number, to: FakeNode, name: string): void {
    this.link(from, slot, to, to.inputs.findIndex((i) => i.name === name));
  }

  /** What ComfyUI's graphToPrompt would give for this graph. */
  prompt(): Record<string, { class_type: string; inputs: Record<string, unknown>; _meta: { title: string } }> {
    const out: ReturnType<FakeGraph["prompt"]> = {};
    for (const n of this.nodes) {
      if (!n.comfyClass || n.mode !== 0) continue;
      const inputs: Record<string, unknown> = {};
      for (const w of n.widgets) if (w.options?.serialize !== false) inputs[w.name] = Array.isArray(w.value) ? { __value__: w.value } : w.value;
      for (const inp of n.inputs) {
        const r = this.resolve(inp.link);
        if (r === undefined) continue;
        inputs[inp.name] = r;
      }
      out[String(n.id)] = { class_type: n.comfyClass, inputs, _meta: { title: n.title } };
    }
    return out;
  }

  private resolve(linkId: number | string | null | undefined): unknown {
    const link = linkId == null ? undefined : this.links.get(Number(linkId));
    if (!link) return undefined;
    const origin = this.getNodeById(link.origin_id)!;
    if (origin.type === "Reroute") return this.resolve(origin.inputs[0].link);
    if (origin.type === "PrimitiveNode") return origin.widgets[0].value;
    if (origin.mode === 2) return undefined;
    if (origin.mode === 4) {
      const type = origin.outputs[link.origin_slot].type;
      const through = origin.inputs.find((i) => i.type === type && i.link != null);
      return through ? this.resolve(through.link) : undefined;
    }
    return [String(origin.id), link.origin_slot];
  }
}

/** ComfyUI's default workflow (ids and places as the front end lays it out). */
export function defaultWorkflow(): FakeGraph {
  const g = new FakeGraph();
  const ckpt = g.put(4, "CheckpointLoaderSimple", [26, 474]);
  const pos = g.put(6, "CLIPTextEncode", [415, 186]);
  const neg = g.put(7, "CLIPTextEncode", [413, 389]);
  const latent = g.put(5, "EmptyLatentImage", [473, 609]);
  const ks = g.put(3, "KSampler", [863, 186]);
  const dec = g.put(8, "VAEDecode", [1209, 188]);
  const save = g.put(9, "SaveImage", [1451, 189]);
  pos.widgets[0].value = "a bottle";
  neg.widgets[0].value = "text, watermark";
  ks.widgets[0].value = 156680208700286;
  g.wire(ckpt, 1, pos, "clip");
  g.wire(ckpt, 1, neg, "clip");
  g.wire(ckpt, 0, ks, "model");
  g.wire(pos, 0, ks, "positive");
  g.wire(neg, 0, ks, "negative");
  g.wire(latent, 0, ks, "latent_image");
  g.wire(ks, 0, dec, "samples");
  g.wire(ckpt, 2, dec, "vae");
  g.wire(dec, 0, save, "images");
  return g;
}
