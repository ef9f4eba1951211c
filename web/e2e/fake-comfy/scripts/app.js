// Fake ComfyUI `scripts/app.js`: a few LiteGraph-like nodes drawn as boxes, the extension hooks
// (`registerExtension`, `nodeCreated`, settings, toasts, sidebar tabs), `graphToPrompt` and
// `loadApiJson`. Just enough for the Opencode bundle to live in a node as it does in ComfyUI.

const extensions = [];
const settings = new Map([["Comfy.Locale", new URLSearchParams(location.search).get("lang") || "en"]]);
let nextId = 1;

class FakeNode {
  constructor(type, title, pos, size, { inputs = [], widgets = [], apiInputs = {} } = {}) {
    this.id = nextId++;
    this.type = type;
    this.comfyClass = type;
    this.title = title;
    this.pos = pos;
    this.size = size;
    this.apiInputs = apiInputs;
    this.widgets = widgets.map(([name, value]) => ({ name, type: "text", value, options: {} }));
    this.el = document.createElement("div");
    this.el.className = "node";
    this.el.dataset.nodeType = type;
    this.el.innerHTML = `<div class="title"></div><div class="body"></div>`;
    this.el.querySelector(".title").textContent = title;
    this.body = this.el.querySelector(".body");
    for (const name of inputs) {
      const slot = document.createElement("div");
      slot.className = "slot";
      slot.textContent = name;
      this.body.appendChild(slot);
    }
    this.widgetEls = this.widgets.map((w) => {
      const row = document.createElement("div");
      row.className = "widget";
      row.dataset.widget = w.name;
      this.body.appendChild(row);
      return row;
    });
    this.draw();
  }

  draw() {
    Object.assign(this.el.style, { left: `${this.pos[0]}px`, top: `${this.pos[1]}px`, width: `${this.size[0]}px`, height: `${this.size[1]}px` });
    this.widgets.forEach((w, i) => {
      const row = this.widgetEls[i];
      row.style.display = w.hidden ? "none" : "flex";
      row.innerHTML = "<span></span><span></span>";
      row.children[0].textContent = w.name;
      row.children[1].textContent = String(w.value ?? "");
    });
  }

  addDOMWidget(name, type, element, options) {
    element.style.flex = "1";
    element.style.minHeight = `${options?.getMinHeight?.() ?? 0}px`;
    this.body.appendChild(element);
    const widget = { name, type, element, options };
    this.domWidget = widget;
    return widget;
  }

  setSize(size) {
    this.size = size;
    this.draw();
  }

  setDirtyCanvas() {
    this.draw();
  }
}

function toast(t) {
  const el = document.createElement("div");
  el.className = `toast ${t.severity ?? ""}`;
  el.setAttribute("role", "status");
  el.textContent = [t.summary, t.detail].filter(Boolean).join(": ");
  document.getElementById("toasts").appendChild(el);
  setTimeout(() => el.remove(), t.life ?? 4000);
}

const canvas = () => document.getElementById("canvas");

function add(node) {
  app.graph.nodes.push(node);
  canvas().appendChild(node.el);
  for (const ext of extensions) ext.nodeCreated?.(node, app);
  node.draw();
  return node;
}

function remove(node) {
  node.onRemoved?.();
  node.el.remove();
  app.graph.nodes = app.graph.nodes.filter((n) => n !== node);
}

const SLOTS = {
  CheckpointLoaderSimple: ["MODEL", "CLIP", "VAE"], CLIPTextEncode: ["clip"], EmptyLatentImage: [],
  KSampler: ["model", "positive", "negative", "latent_image"], VAEDecode: ["samples", "vae"], SaveImage: ["images"],
};

function addApiNode(id, def, pos) {
  const widgets = Object.entries(def.inputs ?? {}).filter(([, v]) => !Array.isArray(v)).slice(0, 4);
  const h = 40 + 22 * ((SLOTS[def.class_type]?.length ?? 0) + widgets.length);
  const node = new FakeNode(def.class_type, def.class_type, pos, [220, h], { inputs: SLOTS[def.class_type] ?? [], widgets, apiInputs: def.inputs ?? {} });
  node.apiId = String(id);
  return add(node);
}

function layout(graph) {
  let i = 0;
  for (const [id, def] of Object.entries(graph)) {
    addApiNode(id, def, [30 + 240 * Math.floor(i / 3), 30 + 215 * (i % 3)]);
    i += 1;
  }
}

export const app = {
  graph: { nodes: [] },
  canvas: { setDirty() {} },
  registerExtension(ext) {
    extensions.push(ext);
  },
  async graphToPrompt() {
    const output = {};
    for (const n of app.graph.nodes) if (n.apiId) output[n.apiId] = { class_type: n.type, inputs: n.apiInputs };
    return { output, workflow: { nodes: app.graph.nodes.map((n) => ({ id: n.id, type: n.type })) } };
  },
  async loadApiJson(graph) {
    for (const n of [...app.graph.nodes]) if (n.apiId) remove(n);
    layout(graph);
  },
  extensionManager: {
    toast: { add: toast },
    setting: { get: (id) => settings.get(id) },
    registerSidebarTab(tab) {
      app.sidebarTabs = [...(app.sidebarTabs ?? []), tab];
    },
  },
  ui: { settings: { getSettingValue: (id, fallback) => settings.get(id) ?? fallback } },
};

/** Run the extensions' setup and put a small graph and one Opencode Agent node on the canvas. */
export async function boot() {
  for (const ext of extensions) for (const s of ext.settings ?? []) if (!settings.has(s.id)) settings.set(s.id, s.defaultValue);
  for (const ext of extensions) await ext.setup?.(app);
  const q = new URLSearchParams(location.search);
  layout({
    4: { class_type: "CheckpointLoaderSimple", inputs: { ckpt_name: "sd15.safetensors" } },
    6: { class_type: "CLIPTextEncode", inputs: { text: "a lighthouse at dusk", clip: ["4", 1] } },
    3: { class_type: "KSampler", inputs: { seed: 7, steps: 20, model: ["4", 0], positive: ["6", 0] } },
  });
  add(
    new FakeNode("OpencodeAgent", "Opencode Agent", [770, 20], [300, 200], {
      widgets: [["session_id", q.get("session") ?? ""], ["skills", q.get("skills") ?? ""], ["provider", q.get("provider") ?? ""], ["model", ""]],
    }),
  );
}
