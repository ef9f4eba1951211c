/**
 * Accepting a `propose_workflow` graph edits the canvas in place, as a person would: the model's
 * proposal is an API-format graph (node id → {class_type, inputs}) whose ids, when it was built
 * from `get_workflow`, are the canvas's own. Diffed against what the canvas gives in API format
 * now (`graphToPrompt`, the same view the model had):
 *
 * - a node of the proposal whose id is a canvas node of the same class keeps its place, size,
 *   colour and title; only the inputs that differ change (a widget value, a link), so links
 *   through reroutes or bypassed nodes and widgets fed by a primitive stay as they were;
 * - a node with a new id (or an id the canvas holds with another class) is created and placed to
 *   the right of the node feeding it, clear of the others;
 * - a node graphToPrompt gives that the proposal leaves out is removed (the person accepted a
 *   graph without it), except the classes in `keepTypes` (the Opencode node holding the panel);
 * - everything graphToPrompt does not give (notes, groups, reroutes, muted and bypassed nodes,
 *   primitives) is left alone.
 *
 * All of it happens between `beginChange` and `endChange`: one undo step. What cannot be done in
 * place (a change to a node inside a subgraph or group node, an unknown class, a host without
 * LiteGraph) is checked before anything is touched, and comes back as a reason to load the graph
 * the old way (`app.loadApiJson`, which rebuilds the canvas).
 */
import type { Graph, GraphLink, GraphNode, GraphWidget } from "./host-types";

export type ApiGraph = Record<string, unknown>;

export interface ProposalHost {
  graph: Graph;
  /** A new, detached node of a backend class (`LiteGraph.createNode`). */
  createNode(classType: string): GraphNode | null | undefined;
  hasNodeType(classType: string): boolean;
  /** The canvas in API format now (`app.graphToPrompt().output`). */
  current(): Promise<ApiGraph>;
  /** Open and close one undo step around the edit. */
  beginChange?(): void;
  endChange?(): void;
  /** `LiteGraph.NODE_TITLE_HEIGHT`: a node's title bar sits above its `pos`. */
  titleHeight?: number;
}

export interface ApplyOptions {
  /** Classes never removed for being left out of the proposal. */
  keepTypes?: readonly string[];
}

export type FallbackReason = "host" | "subgraph" | "unknownType" | "link" | "failed";

export type ApplyOutcome =
  | { applied: true; changed: number; added: number; removed: number; skipped: string[] }
  | { applied: false; reason: FallbackReason; detail?: string };

type Link = [string | number, number];

interface ApiNode {
  class_type?: string;
  inputs: Record<string, unknown>;
  _meta?: { title?: unknown };
}

type Op =
  | { kind: "widget"; name: string; value: unknown }
  | { kind: "link"; name: string; from: string; slot: number }
  | { kind: "unlink"; name: string };

interface Target {
  id: string;
  /** The canvas node to edit; unset for a node to create. */
  node?: GraphNode;
  classType?: string;
  title?: string;
  ops: Op[];
}

export interface Plan {
  update: Target[];
  create: Target[];
  remove: GraphNode[];
  /** Proposal id → canvas node, for the nodes that stay. */
  kept: Map<string, GraphNode>;
  proposal: Map<string, ApiNode>;
}

type Fallback = { applied: false; reason: FallbackReason; detail?: string };

const GAP = 40;

export async function applyProposal(host: ProposalHost, proposal: ApiGraph, options: ApplyOptions = {}): Promise<ApplyOutcome> {
  let before: ApiGraph;
  try {
    before = await host.current();
  } catch (err) {
    return { applied: false, reason: "host", detail: message(err) };
  }
  const plan = planProposal(host, before, proposal, options);
  if ("reason" in plan) return plan;
  host.beginChange?.();
  try {
    const done = execute(host, plan);
    host.graph.setDirtyCanvas?.(true, true);
    host.graph.change?.();
    return { applied: true, ...done };
  } catch (err) {
    return { applied: false, reason: "failed", detail: message(err) };
  } finally {
    host.endChange?.();
  }
}

/** What applying `proposal` onto the canvas takes, or why it cannot be done in place. Touches nothing. */
export function planProposal(
  host: Pick<ProposalHost, "graph" | "hasNodeType">,
  before: ApiGraph,
  proposal: ApiGraph,
  options: ApplyOptions = {},
): Plan | Fallback {
  const canvas = indexNodes(host.graph);
  const was = apiNodes(before);
  const want = apiNodes(proposal);
  const keepTypes = new Set(options.keepTypes ?? []);

  // Which proposal ids are canvas nodes (same id, same class, seen by graphToPrompt) and which are new.
  const kept = new Map<string, GraphNode>();
  const innerKept = new Set<string>();
  const fresh: string[] = [];
  const replaced = new Set<string>();
  for (const [id, p] of want) {
    const old = was.get(id);
    if (isInner(id)) {
      if (!old || (p.class_type && p.class_type !== old.class_type)) return { applied: false, reason: "subgraph", detail: id };
      innerKept.add(id);
      continue;
    }
    const node = old ? canvas.get(id) : undefined;
    if (node && (!p.class_type || p.class_type === classOf(node))) {
      kept.set(id, node);
      continue;
    }
    if (!p.class_type || !host.hasNodeType(p.class_type)) return { applied: false, reason: "unknownType", detail: p.class_type ?? id };
    if (node) replaced.add(id);
    fresh.push(id);
  }

  const remove: GraphNode[] = [];
  const removed = new Set<GraphNode>();
  for (const id of was.keys()) {
    if (kept.has(id) || innerKept.has(id)) continue;
    if (isInner(id)) return { applied: false, reason: "subgraph", detail: id };
    const node = canvas.get(id);
    if (!node || keepTypes.has(classOf(node))) continue;
    remove.push(node);
    removed.add(node);
  }

  const update: Target[] = [];
  const create: Target[] = [];
  for (const id of innerKept) {
    // Inside a subgraph only what already is can stay: the same inputs, links to the same nodes.
    const p = want.get(id)!;
    const changed = diffInputs(was.get(id)!.inputs, p.inputs, replaced);
    if (changed.length) return { applied: false, reason: "subgraph", detail: id };
  }
  for (const [id, node] of kept) {
    const p = want.get(id)!;
    const ops = diffInputs(was.get(id)!.inputs, p.inputs, replaced);
    const title = typeof p._meta?.title === "string" && p._meta.title !== was.get(id)!._meta?.title ? p._meta.title : undefined;
    if (ops.length || title !== undefined) update.push({ id, node, ops, title });
  }
  for (const id of fresh) {
    const p = want.get(id)!;
    const ops: Op[] = Object.entries(p.inputs).map(([name, v]) =>
      isLink(v) ? { kind: "link", name, from: String(v[0]), slot: Number(v[1]) } : { kind: "widget", name, value: unwrap(v) },
    );
    create.push({ id, classType: p.class_type, title: typeof p._meta?.title === "string" ? p._meta.title : undefined, ops });
  }

  // Every new link must come from a node that will be there, and not from inside a subgraph.
  const freshIds = new Set(fresh);
  for (const t of [...update, ...create]) {
    for (const op of t.ops) {
      if (op.kind !== "link") continue;
      if (isInner(op.from)) return { applied: false, reason: "subgraph", detail: `${t.id}.${op.name} ← ${op.from}` };
      if (freshIds.has(op.from)) continue;
      const source = kept.get(op.from) ?? (want.has(op.from) ? undefined : canvas.get(op.from));
      if (!source || removed.has(source) || !source.outputs?.[op.slot]) {
        return { applied: false, reason: "link", detail: `${t.id}.${op.name} ← [${op.from}, ${op.slot}]` };
      }
    }
  }
  return { update, create, remove, kept, proposal: want };
}

function execute(host: ProposalHost, plan: Plan): { changed: number; added: number; removed: number; skipped: string[] } {
  const { graph } = host;
  for (const node of plan.remove) graph.remove(node);

  const byProposalId = new Map(plan.kept);
  const created: { id: string; node: GraphNode }[] = [];
  for (const t of plan.create) {
    const node = host.createNode(t.classType!);
    if (!node) throw new Error(`could not create a ${t.classType} node`);
    if (t.title !== undefined) node.title = t.title;
    graph.add(node);
    byProposalId.set(t.id, node);
    created.push({ id: t.id, node });
  }
  const canvas = indexNodes(graph);
  const source = (id: string) => byProposalId.get(id) ?? canvas.get(id);

  const skipped: string[] = [];
  const targets = [...plan.update, ...plan.create].map((t) => ({ t, node: byProposalId.get(t.id)! }));
  for (const { t, node } of targets) {
    if (t.node && t.title !== undefined) node.title = t.title;
    for (const op of t.ops) if (op.kind === "unlink") unlink(node, op.name);
  }
  for (const { t, node } of targets) {
    for (const op of t.ops) {
      if (op.kind !== "link") continue;
      const from = source(op.from);
      if (!from || !connect(graph, node, op.name, from, op.slot)) skipped.push(`${t.id}.${op.name}`);
    }
  }
  // Widgets last: linking a widget's socket must not undo a value set beside it.
  for (const { t, node } of targets) {
    for (const op of t.ops) {
      if (op.kind === "widget" && !setWidget(graph, canvas, node, op.name, op.value)) skipped.push(`${t.id}.${op.name}`);
    }
  }
  place(graph, created, plan.proposal, source, host.titleHeight ?? 30);
  return { changed: plan.update.length, added: created.length, removed: plan.remove.length, skipped };
}

// ------------------------------------------------------------------ editing one node

function inputIndex(node: GraphNode, name: string): number {
  return node.inputs?.findIndex((i) => i.name === name || i.widget?.name === name) ?? -1;
}

function linkOf(graph: Graph, id: number | string | null | undefined): GraphLink | undefined {
  if (id === null || id === undefined) return undefined;
  const viaGetter = graph.getLink?.(id);
  if (viaGetter) return viaGetter;
  const links = graph.links;
  if (links instanceof Map) return links.get(id) ?? links.get(Number(id));
  return links?.[String(id)];
}

function unlink(node: GraphNode, name: string): void {
  const i = inputIndex(node, name);
  if (i >= 0 && node.inputs![i].link != null) node.disconnectInput?.(i);
}

function connect(graph: Graph, node: GraphNode, name: string, from: GraphNode, slot: number): boolean {
  let i = node.inputs?.findIndex((inp) => inp.name === name) ?? -1;
  if (i < 0) {
    // Front ends before widget sockets: a widget becomes an input to take a link.
    const w = node.widgets?.find((x) => x.name === name);
    if (w && node.convertWidgetToInput?.(w)) i = node.inputs?.findIndex((inp) => inp.name === name) ?? -1;
  }
  if (i < 0 || !from.outputs?.[slot] || typeof from.connect !== "function") return false;
  const now = linkOf(graph, node.inputs![i].link);
  if (now && String(now.origin_id) === String(from.id) && Number(now.origin_slot) === slot) return true;
  from.connect(slot, node, i);
  return node.inputs![i].link != null;
}

/**
 * Set a widget by name. A widget whose socket is linked (graphToPrompt read its value through the
 * link, from a primitive) takes the value where it comes from when that primitive feeds only it;
 * otherwise the link goes, so the value set is the one that runs.
 */
function setWidget(graph: Graph, canvas: Map<string, GraphNode>, node: GraphNode, name: string, value: unknown): boolean {
  const w = node.widgets?.find((x) => x.name === name);
  if (!w) return false;
  const i = inputIndex(node, name);
  const link = i >= 0 ? linkOf(graph, node.inputs![i].link) : undefined;
  if (link) {
    const origin = canvas.get(String(link.origin_id));
    const feedsOnlyThis = (origin?.outputs?.[link.origin_slot]?.links?.length ?? 0) <= 1;
    const primitive = origin && !origin.comfyClass && origin.type === "PrimitiveNode" ? origin.widgets?.[0] : undefined;
    if (primitive && feedsOnlyThis) assign(primitive, value);
    else node.disconnectInput?.(i);
  }
  assign(w, value);
  return true;
}

function assign(w: GraphWidget, raw: unknown): void {
  const value = coerce(w.value, raw);
  w.value = value;
  try {
    w.callback?.(value);
  } catch {
    // a widget's own callback failing leaves its value set, as loadApiJson does
  }
}

/** A number or a boolean the model wrote as text, for a widget that holds one. */
function coerce(current: unknown, v: unknown): unknown {
  if (typeof current === "number" && typeof v === "string" && v.trim() !== "" && Number.isFinite(Number(v))) return Number(v);
  if (typeof current === "boolean" && (v === "true" || v === "false")) return v === "true";
  return v;
}

// ------------------------------------------------------------------ placing new nodes

type Rect = [number, number, number, number];

function rectOf(node: GraphNode, titleHeight: number): Rect {
  const [x, y] = [Number(node.pos[0]) || 0, Number(node.pos[1]) || 0];
  const [w, h] = [Number(node.size?.[0]) || 200, Number(node.size?.[1]) || 60];
  return [x, y - titleHeight, w, h + titleHeight];
}

function overlaps(a: Rect, b: Rect, margin: number): boolean {
  return a[0] < b[0] + b[2] + margin && b[0] < a[0] + a[2] + margin && a[1] < b[1] + b[3] + margin && b[1] < a[1] + a[3] + margin;
}

/**
 * New nodes, those feeding others first: right of the node feeding them (at its height), else left
 * of the node they feed, else below everything; then moved down until they overlap nothing.
 */
function place(
  graph: Graph,
  created: { id: string; node: GraphNode }[],
  proposal: Map<string, ApiNode>,
  source: (id: string) => GraphNode | undefined,
  titleHeight: number,
): void {
  if (!created.length) return;
  const unplaced = new Set(created.map((c) => c.node));
  const rects = allNodes(graph).filter((n) => !unplaced.has(n)).map((n) => rectOf(n, titleHeight));
  const placed = (n: GraphNode | undefined): n is GraphNode => !!n && !unplaced.has(n);
  for (const { id, node } of feedersFirst(created, proposal)) {
    const [w, h] = [Number(node.size?.[0]) || 200, Number(node.size?.[1]) || 60];
    const feeders = Object.values(proposal.get(id)!.inputs)
      .filter(isLink)
      .map((l) => source(String(l[0])))
      .filter(placed);
    let x: number;
    let y: number;
    if (feeders.length) {
      x = Math.max(...feeders.map((f) => Number(f.pos[0]) + Number(f.size[0]))) + GAP;
      y = Number(feeders[0].pos[1]);
    } else {
      const consumer = [...proposal]
        .filter(([, p]) => Object.values(p.inputs).some((v) => isLink(v) && String(v[0]) === id))
        .map(([cid]) => source(cid))
        .find(placed);
      if (consumer) {
        x = Number(consumer.pos[0]) - w - GAP;
        y = Number(consumer.pos[1]);
      } else if (rects.length) {
        x = Math.min(...rects.map((r) => r[0]));
        y = Math.max(...rects.map((r) => r[1] + r[3])) + GAP + titleHeight;
      } else {
        [x, y] = [100, 100];
      }
    }
    for (let tries = 0; tries < 1000; tries++) {
      const hit = rects.find((r) => overlaps(r, [x, y - titleHeight, w, h + titleHeight], GAP / 2));
      if (!hit) break;
      y = hit[1] + hit[3] + GAP + titleHeight;
    }
    node.pos = [Math.round(x), Math.round(y)];
    unplaced.delete(node);
    rects.push(rectOf(node, titleHeight));
  }
}

/** The new nodes in an order where a node comes after the new nodes feeding it. */
function feedersFirst(created: { id: string; node: GraphNode }[], proposal: Map<string, ApiNode>) {
  const ids = new Set(created.map((c) => c.id));
  const out: typeof created = [];
  const done = new Set<string>();
  const visiting = new Set<string>();
  const byId = new Map(created.map((c) => [c.id, c]));
  const visit = (id: string) => {
    if (done.has(id) || visiting.has(id)) return;
    visiting.add(id);
    for (const v of Object.values(proposal.get(id)?.inputs ?? {})) if (isLink(v) && ids.has(String(v[0]))) visit(String(v[0]));
    visiting.delete(id);
    done.add(id);
    out.push(byId.get(id)!);
  };
  for (const c of created) visit(c.id);
  return out;
}

// ------------------------------------------------------------------ reading graphs

function allNodes(graph: Graph): GraphNode[] {
  return [...(graph.nodes ?? graph._nodes ?? [])];
}

function indexNodes(graph: Graph): Map<string, GraphNode> {
  return new Map(allNodes(graph).map((n) => [String(n.id), n]));
}

function classOf(node: GraphNode): string {
  return node.comfyClass ?? node.type ?? "";
}

/** "5:3": a node inside subgraph (or group node) 5, as graphToPrompt names it. */
function isInner(id: string): boolean {
  return id.includes(":");
}

function apiNodes(graph: ApiGraph): Map<string, ApiNode> {
  const out = new Map<string, ApiNode>();
  for (const [id, v] of Object.entries(graph ?? {})) {
    if (!v || typeof v !== "object" || Array.isArray(v)) continue;
    const n = v as { class_type?: unknown; inputs?: unknown; _meta?: unknown };
    out.set(String(id), {
      class_type: typeof n.class_type === "string" ? n.class_type : undefined,
      inputs: n.inputs && typeof n.inputs === "object" && !Array.isArray(n.inputs) ? (n.inputs as Record<string, unknown>) : {},
      _meta: n._meta && typeof n._meta === "object" ? (n._meta as { title?: unknown }) : undefined,
    });
  }
  return out;
}

function isLink(v: unknown): v is Link {
  return Array.isArray(v) && v.length === 2 && (typeof v[0] === "string" || typeof v[0] === "number") && typeof v[1] === "number";
}

/** Widget values graphToPrompt wraps so a list is not read as a link: `{__value__: [...]}`. */
function unwrap(v: unknown): unknown {
  if (v && typeof v === "object" && !Array.isArray(v) && "__value__" in v) {
    const w = v as { __value__: unknown; __type__?: unknown };
    if (Array.isArray(w.__value__) || w.__type__ !== undefined) return w.__value__;
  }
  return v;
}

function diffInputs(was: Record<string, unknown>, want: Record<string, unknown>, replaced: Set<string>): Op[] {
  const ops: Op[] = [];
  for (const name of new Set([...Object.keys(was), ...Object.keys(want)])) {
    const a = was[name];
    const b = want[name];
    if (b === undefined) {
      if (isLink(a)) ops.push({ kind: "unlink", name });
    } else if (isLink(b)) {
      const same = isLink(a) && String(a[0]) === String(b[0]) && Number(a[1]) === Number(b[1]) && !replaced.has(String(b[0]));
      if (!same) ops.push({ kind: "link", name, from: String(b[0]), slot: Number(b[1]) });
    } else if (!equal(unwrap(a), unwrap(b))) {
      ops.push({ kind: "widget", name, value: unwrap(b) });
    }
  }
  return ops;
}

function equal(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a as object);
  const kb = Object.keys(b as object);
  return ka.length === kb.length && ka.every((k) => equal((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]));
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
