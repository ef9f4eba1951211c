import { describe, expect, it } from "vitest";
import { applyProposal, type ApiGraph, type ProposalHost } from "../src/applyProposal";
import { DEFS, defaultWorkflow, FakeGraph, FakeNode } from "./fakeGraph";

type Prompt = Record<string, { class_type: string; inputs: Record<string, unknown>; _meta?: { title: string } }>;

function hostFor(g: FakeGraph, over: Partial<ProposalHost> = {}) {
  const log: string[] = [];
  const host: ProposalHost = {
    graph: g,
    createNode: (type) => (DEFS[type] ? new FakeNode(type) : null),
    hasNodeType: (type) => type in DEFS,
    current: async () => g.prompt(),
    beginChange: () => log.push("begin"),
    endChange: () => log.push("end"),
    titleHeight: 30,
    ...over,
  };
  return { host, log };
}

/** The canvas as get_workflow showed it, for the test to edit into a proposal. */
function seen(g: FakeGraph): Prompt {
  return JSON.parse(JSON.stringify(g.prompt()));
}

const places = (g: FakeGraph) => Object.fromEntries(g.nodes.map((n) => [n.id, [...n.pos]]));
const node = (g: FakeGraph, id: number | string) => g.getNodeById(id)!;
const inputFrom = (g: FakeGraph, n: FakeNode, name: string) => {
  const link = g.getLink(n.inputs.find((i) => i.name === name)!.link!);
  return link ? [String(link.origin_id), link.origin_slot] : null;
};
const widget = (n: FakeNode, name: string) => n.widgets.find((w) => w.name === name)!.value;

function rect(n: FakeNode) {
  return { x: n.pos[0], y: n.pos[1] - 30, w: n.size[0], h: n.size[1] + 30 };
}
function overlap(a: FakeNode, b: FakeNode) {
  const [p, q] = [rect(a), rect(b)];
  return p.x < q.x + q.w && q.x < p.x + p.w && p.y < q.y + q.h && q.y < p.y + p.h;
}

describe("applyProposal", () => {
  it("changes a seed and puts an upscale between VAEDecode and SaveImage, keeping places, notes, groups' nodes and muted nodes", async () => {
    const g = defaultWorkflow();
    node(g, 3).at(900, 150); // moved by the person
    const note = g.put(20, "Note", [1300, 320]);
    note.widgets[0].value = "my note";
    const muted = g.put(21, "ImageInvert", [1250, 600], 2);
    g.wire(node(g, 8), 0, muted, "image");
    const before = places(g);

    const p = seen(g);
    p["3"].inputs.seed = 42;
    p["10"] = { class_type: "ImageScaleBy", inputs: { upscale_method: "lanczos", scale_by: 2, image: ["8", 0] } };
    p["9"].inputs.images = ["10", 0];
    const { host, log } = hostFor(g);
    const outcome = await applyProposal(host, p);

    expect(outcome).toEqual({ applied: true, changed: 2, added: 1, removed: 0, skipped: [] });
    expect(log).toEqual(["begin", "end"]); // one undo step
    expect(g.changes).toBe(1);
    const after = places(g);
    for (const [id, pos] of Object.entries(before)) expect(after[id]).toEqual(pos);
    expect(widget(node(g, 3), "seed")).toBe(42);
    expect(widget(node(g, 3), "control_after_generate")).toBe("randomize");
    expect(node(g, 3).callbacks).toEqual([["seed", 42]]);
    expect(widget(note, "text")).toBe("my note");
    expect(inputFrom(g, muted, "image")).toEqual(["8", 0]); // the muted node keeps its link

    const scale = g.nodes.find((n) => n.type === "ImageScaleBy")!;
    expect(inputFrom(g, scale, "image")).toEqual(["8", 0]);
    expect(inputFrom(g, node(g, 9), "images")).toEqual([String(scale.id), 0]);
    expect(widget(scale, "upscale_method")).toBe("lanczos");
    expect(widget(scale, "scale_by")).toBe(2);
    // Right of VAEDecode, clear of every other node.
    expect(scale.pos[0]).toBeGreaterThan(node(g, 8).pos[0] + node(g, 8).size[0]);
    for (const other of g.nodes) if (other !== scale) expect(overlap(scale, other)).toBe(false);

    // What the canvas now gives is the proposal, but for the new node's id.
    const now = g.prompt();
    const { 10: added, ...rest } = p;
    expect(now[String(scale.id)].inputs).toEqual(added.inputs);
    expect({ ...now, [String(scale.id)]: undefined, 9: { ...now["9"], inputs: { ...now["9"].inputs, images: ["10", 0] } } }).toEqual({
      ...rest, [String(scale.id)]: undefined,
    });
  });

  it("removes executable nodes the proposal leaves out, never an Opencode node, a note or a muted node", async () => {
    const g = defaultWorkflow();
    const agent = g.put(30, "OpencodeAgent", [0, 900]);
    g.put(31, "Note", [0, 1200]);
    g.put(32, "ImageInvert", [0, 1300], 4);
    const p = seen(g);
    delete p["9"]; // SaveImage
    delete p["30"]; // the agent
    p["11"] = { class_type: "ImageInvert", inputs: { image: ["8", 0] } };
    const outcome = await applyProposal(hostFor(g).host, p, { keepTypes: ["OpencodeAgent"] });
    expect(outcome).toMatchObject({ applied: true, added: 1, removed: 1 });
    expect(g.getNodeById(9)).toBeUndefined();
    expect(g.getNodeById(30)).toBe(agent);
    expect(g.getNodeById(31)?.type).toBe("Note");
    expect(g.getNodeById(32)?.mode).toBe(4);
  });

  it("leaves links through reroutes and bypassed nodes as they are when the proposal keeps them", async () => {
    const g = defaultWorkflow();
    const reroute = g.put(40, "Reroute", [1100, 400]);
    const bypassed = g.put(41, "ImageInvert", [1300, 400], 4);
    g.unlink(node(g, 9).inputs[0].link!);
    g.wire(node(g, 8), 0, reroute, "");
    g.link(reroute, 0, bypassed, 0);
    g.wire(bypassed, 0, node(g, 9), "images");
    const p = seen(g);
    expect(p["9"].inputs.images).toEqual(["8", 0]); // graphToPrompt looks through both
    p["3"].inputs.steps = 30;
    const outcome = await applyProposal(hostFor(g).host, p);
    expect(outcome).toMatchObject({ applied: true, changed: 1 });
    expect(inputFrom(g, node(g, 9), "images")).toEqual(["41", 0]);
    expect(inputFrom(g, bypassed, "image")).toEqual(["40", 0]);
    expect(widget(node(g, 3), "steps")).toBe(30);
  });

  it("sets a value fed by a primitive at the primitive; unlinks a widget socket fed by another node", async () => {
    const g = defaultWorkflow();
    const prim = g.put(50, "PrimitiveNode", [600, 0]);
    prim.widgets[0].value = 7;
    g.wire(prim, 0, node(g, 3), "seed");
    const steps = g.put(51, "EmptyLatentImage", [600, 900]); // anything with an output, standing in for a PrimitiveInt
    g.link(steps, 0, node(g, 3), node(g, 3).inputs.findIndex((i) => i.name === "steps"));
    const p = seen(g);
    expect(p["3"].inputs.seed).toBe(7);
    expect(p["3"].inputs.steps).toEqual(["51", 0]);
    p["3"].inputs.seed = 99;
    p["3"].inputs.steps = 25;
    await applyProposal(hostFor(g).host, p);
    expect(prim.widgets[0].value).toBe(99);
    expect(inputFrom(g, node(g, 3), "seed")).toEqual(["50", 0]); // still fed by its primitive
    expect(inputFrom(g, node(g, 3), "steps")).toBeNull();
    expect(widget(node(g, 3), "steps")).toBe(25);
    expect(g.prompt()["3"].inputs).toMatchObject({ seed: 99, steps: 25 });
  });

  it("unlinks an input the proposal drops, links a widget socket, takes titles, wrapped lists and numbers as text", async () => {
    const g = defaultWorkflow();
    g.put(60, "Tags", [0, 900]);
    const p = seen(g) as Record<string, { class_type: string; inputs: Record<string, unknown>; _meta?: { title: string } }>;
    delete p["9"].inputs.images;
    p["3"].inputs.denoise = ["60", 0] as unknown as number; // a link into a widget's socket
    p["3"].inputs.cfg = "6.5";
    p["3"]._meta = { title: "Main sampler" };
    p["60"].inputs.tags = { __value__: ["a", "b"] };
    const outcome = await applyProposal(hostFor(g).host, p);
    expect(outcome).toMatchObject({ applied: true, changed: 3, skipped: [] });
    expect(inputFrom(g, node(g, 9), "images")).toBeNull();
    expect(inputFrom(g, node(g, 3), "denoise")).toEqual(["60", 0]);
    expect(widget(node(g, 3), "cfg")).toBe(6.5);
    expect(node(g, 3).title).toBe("Main sampler");
    expect(widget(node(g, 60), "tags")).toEqual(["a", "b"]);
  });

  it("replaces a node whose id the proposal gives another class, and relinks what it fed", async () => {
    const g = defaultWorkflow();
    const p = seen(g);
    p["5"] = { class_type: "LoadImage", inputs: { image: "cat.png" } }; // was EmptyLatentImage
    p["3"].inputs.latent_image = ["5", 0];
    const outcome = await applyProposal(hostFor(g).host, p);
    expect(outcome).toMatchObject({ applied: true, added: 1, removed: 1 });
    const img = g.nodes.find((n) => n.type === "LoadImage")!;
    expect(g.nodes.some((n) => n.type === "EmptyLatentImage")).toBe(false);
    expect(inputFrom(g, node(g, 3), "latent_image")).toEqual([String(img.id), 0]);
    expect(widget(img, "image")).toBe("cat.png");
    // It feeds KSampler and nothing feeds it: to the KSampler's left, clear of the others.
    expect(img.pos[0] + img.size[0]).toBeLessThan(node(g, 3).pos[0]);
    for (const other of g.nodes) if (other !== img) expect(overlap(img, other)).toBe(false);
  });

  it("a whole new graph replaces the executable nodes and is laid out left to right below what stays", async () => {
    const g = defaultWorkflow();
    const note = g.put(70, "Note", [0, 0]);
    const fresh: ApiGraph = {
      a: { class_type: "LoadImage", inputs: { image: "x.png" } },
      b: { class_type: "ImageInvert", inputs: { image: ["a", 0] } },
      c: { class_type: "SaveImage", inputs: { filename_prefix: "inv", images: ["b", 0] } },
    };
    const outcome = await applyProposal(hostFor(g).host, fresh);
    expect(outcome).toMatchObject({ applied: true, added: 3, removed: 7, changed: 0 });
    expect(g.nodes.map((n) => n.type).sort()).toEqual(["ImageInvert", "LoadImage", "Note", "SaveImage"]);
    const [a, b, c] = ["LoadImage", "ImageInvert", "SaveImage"].map((t) => g.nodes.find((n) => n.type === t)!);
    expect(a.pos[1]).toBeGreaterThan(note.pos[1] + note.size[1]);
    expect(b.pos[0]).toBeGreaterThan(a.pos[0] + a.size[0]);
    expect(c.pos[0]).toBeGreaterThan(b.pos[0] + b.size[0]);
    expect(inputFrom(g, c, "images")).toEqual([String(b.id), 0]);
  });

  describe("falls back, touching nothing, when it cannot be done in place", () => {
    async function refused(p: ApiGraph, g = defaultWorkflow(), over: Partial<ProposalHost> = {}) {
      const snapshot = JSON.stringify(g.prompt());
      const { host, log } = hostFor(g, over);
      const outcome = await applyProposal(host, p);
      expect(JSON.stringify(g.prompt())).toBe(snapshot);
      expect(log).toEqual([]);
      return outcome;
    }

    it("a change inside a subgraph, an unknown class, a link from nowhere, a host that cannot read the canvas", async () => {
      const g = defaultWorkflow();
      const inner = () => ({ ...seen(g), "12:3": { class_type: "KSampler", inputs: { seed: 1 } } });
      const withInner = { current: async () => inner() };
      expect(await refused({ ...inner(), "12:3": { class_type: "KSampler", inputs: { seed: 2 } } }, g, withInner)).toEqual({
        applied: false, reason: "subgraph", detail: "12:3",
      });
      expect(await refused(seen(g), g, withInner)).toMatchObject({ reason: "subgraph" }); // left out: it would have to go
      expect(await refused({ ...seen(g), 10: { class_type: "Upscaler9000", inputs: {} } })).toEqual({
        applied: false, reason: "unknownType", detail: "Upscaler9000",
      });
      const dangling = seen(g);
      dangling["9"].inputs.images = ["77", 0];
      expect(await refused(dangling)).toMatchObject({ reason: "link", detail: "9.images ← [77, 0]" });
      const badSlot = seen(g);
      badSlot["9"].inputs.images = ["8", 5];
      expect(await refused(badSlot)).toMatchObject({ reason: "link" });
      expect(await refused(seen(g), g, { current: async () => Promise.reject(new Error("no canvas")) })).toEqual({
        applied: false, reason: "host", detail: "no canvas",
      });
    });

    it("but a subgraph's nodes the proposal keeps as they were do not stop it", async () => {
      const g = defaultWorkflow();
      const inner = { "12:3": { class_type: "KSampler", inputs: { seed: 1, model: ["4", 0] } } };
      const { host } = hostFor(g, { current: async () => ({ ...g.prompt(), ...inner }) });
      const p: Prompt = { ...seen(g), ...inner };
      p["3"].inputs.seed = 5;
      expect(await applyProposal(host, p)).toMatchObject({ applied: true, changed: 1 });
      expect(widget(node(g, 3), "seed")).toBe(5);
    });
  });

  it("a proposal equal to the canvas changes nothing but still makes one (empty) step", async () => {
    const g = defaultWorkflow();
    const before = JSON.stringify({ p: g.prompt(), places: places(g) });
    const { host, log } = hostFor(g);
    expect(await applyProposal(host, seen(g))).toEqual({ applied: true, changed: 0, added: 0, removed: 0, skipped: [] });
    expect(JSON.stringify({ p: g.prompt(), places: places(g) })).toBe(before);
    expect(log).toEqual(["begin", "end"]);
  });

  it("an error half way reports failed, and the undo step is still closed", async () => {
    const g = defaultWorkflow();
    const p = seen(g);
    p["10"] = { class_type: "ImageScaleBy", inputs: { image: ["8", 0] } };
    const { host, log } = hostFor(g, { createNode: () => null });
    expect(await applyProposal(host, p)).toEqual({ applied: false, reason: "failed", detail: "could not create a ImageScaleBy node" });
    expect(log).toEqual(["begin", "end"]);
  });
});
