/**
 * The panel inside an `OpencodeAgent` node: a DOM widget that grows with the node, bound to the
 * node's Python widgets `session_id`, `skills`, `provider`, `model` (so the choice saves with the
 * workflow; nothing secret lives there). Those widgets are hidden; the panel edits them.
 */
import type { Ref } from "vue";
import type { PanelBinding, SessionConfig } from "./deps";
import type { ComfyDomWidget, ComfyNode, ComfyWidget } from "./host-types";
import { redrawCanvas } from "./host";
import { hostDeps, mountPanel } from "./mount";

export { keepKeysInPanel } from "./mount";

export const NODE_TYPE = "OpencodeAgent";
const BOUND = ["session_id", "skills", "provider", "model"] as const;
const MIN_SIZE: [number, number] = [460, 620];

export function isOpencodeNode(node: ComfyNode): boolean {
  return node.comfyClass === NODE_TYPE || node.type === NODE_TYPE;
}

function widget(node: ComfyNode, name: string): ComfyWidget | undefined {
  return node.widgets?.find((w) => w.name === name);
}

function setValue(node: ComfyNode, name: string, value: string): void {
  const w = widget(node, name);
  if (!w || w.value === value) return;
  w.value = value;
  w.callback?.(value);
  node.setDirtyCanvas?.(true, true);
}

function hide(w: ComfyWidget): void {
  // `hidden` for current front ends, a zero size for older LiteGraph drawing; the value still saves.
  w.hidden = true;
  // On the widget's own options object, not a copy: Nodes 2.0 (front end 1.49) merges in the
  // options the widget was registered with, which already carry `hidden: undefined`.
  if (w.options) w.options.hidden = true;
  else w.options = { hidden: true };
  w.computeSize = () => [0, -4];
}

export function nodeBinding(node: ComfyNode, defaults: () => SessionConfig): PanelBinding {
  const read = (name: string) => String(widget(node, name)?.value ?? "").trim();
  return {
    kind: "node",
    sessionId: () => read("session_id"),
    setSessionId: (id) => setValue(node, "session_id", id),
    defaults: () => {
      const d = defaults();
      const skills = read("skills").split(",").map((s) => s.trim()).filter(Boolean);
      return { skills: skills.length ? skills : d.skills, provider: read("provider") || d.provider, model: read("model") || d.model };
    },
    syncConfig: (c) => {
      setValue(node, "skills", c.skills.join(","));
      setValue(node, "provider", c.provider ?? "");
      setValue(node, "model", c.model ?? "");
    },
  };
}

export function attachToNode(node: ComfyNode, defaults: () => SessionConfig, fontSize: Ref<number>): void {
  if (typeof node.addDOMWidget !== "function") return;
  for (const name of BOUND) {
    const w = widget(node, name);
    if (w) hide(w);
  }
  const el = document.createElement("div");
  el.className = "oc-node-host";
  el.style.cssText = "width:100%;height:100%;min-height:0;display:flex;outline:none;";
  // Nodes 2.0 (front end 1.49+) sends wheel events over a node to the canvas (zoom) unless they
  // happen inside a `data-capture-wheel` element holding the focus: once clicked, the panel scrolls.
  el.dataset.captureWheel = "true";
  el.tabIndex = -1;
  const domWidget = node.addDOMWidget("opencode_panel", "opencode", el, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: () => 360,
    getMaxHeight: () => 100000,
    margin: 6,
  });
  const size = node.size ?? [0, 0];
  if (size[0] < MIN_SIZE[0] || size[1] < MIN_SIZE[1]) node.setSize?.([Math.max(size[0], MIN_SIZE[0]), Math.max(size[1], MIN_SIZE[1])]);

  // A node loaded from a workflow gets its widget values right after it is created: start later.
  let unmount: (() => void) | null = null;
  let removed = false;
  setTimeout(() => {
    if (!removed) unmount = mountPanel(el, hostDeps(nodeBinding(node, defaults)), fontSize);
    redrawCanvas();
  }, 0);
  const release = () => {
    removed = true;
    unmount?.();
    unmount = null;
  };
  const onRemoved = node.onRemoved;
  node.onRemoved = function (this: ComfyNode) {
    release();
    return onRemoved?.apply(this);
  };
  if (domWidget) {
    // ComfyUI's own `onRemove` needs its `this` (the widget): keep it bound.
    const onRemove = domWidget.onRemove;
    domWidget.onRemove = function (this: ComfyDomWidget) {
      release();
      return onRemove?.call(this ?? domWidget);
    };
  }
}
