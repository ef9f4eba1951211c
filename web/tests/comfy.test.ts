import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { flushPromises } from "@vue/test-utils";
import { ref } from "vue";
import type { ComfyDomWidget, ComfyNode, ComfyWidget, SidebarTab } from "../src/host-types";
import { app, registered } from "./stubs/comfy-app";
import { api } from "./stubs/comfy-api";
import { fakeTransport, FakeSocket } from "./fakes";
import { defaultRoutes } from "./harness";
import { session, snapshot } from "./fixtures";
import "../src/main"; // registers the extension with the stub app, once

vi.mock("dompurify", () => ({ default: () => ({ addHook: () => undefined, sanitize: (html: string) => html }) }));

function fakeNode(values: Record<string, string> = {}) {
  const widgets: ComfyWidget[] = ["session_id", "skills", "provider", "model"].map((name) => ({
    name, type: "text", value: values[name] ?? "", callback: vi.fn(),
    options: { advanced: undefined, hidden: undefined }, // as the front end creates STRING widgets
  }));
  type Dom = ComfyDomWidget & { removedWith?: unknown };
  const dom: { name: string; el: HTMLElement; options: Record<string, unknown>; widget: Dom }[] = [];
  const node: ComfyNode & { dom: typeof dom } = {
    type: "OpencodeAgent",
    comfyClass: "OpencodeAgent",
    size: [200, 100],
    widgets,
    dom,
    addDOMWidget(name, _type, el, options) {
      document.body.appendChild(el);
      // Like ComfyUI's DOM widget: its own onRemove reads `this`.
      const widget: Dom = {
        name,
        element: el,
        onRemove(this: Dom) {
          this.removedWith = this.element;
          this.element!.remove();
        },
      };
      dom.push({ name, el, options, widget });
      return widget;
    },
    setSize(size) {
      node.size = size;
    },
    setDirtyCanvas: vi.fn(),
  };
  return node;
}

const toasts: unknown[] = [];
let tabs: SidebarTab[] = [];

beforeEach(() => {
  FakeSocket.reset();
  sessionStorage.clear(); // drafts: each test starts with an empty box
  vi.stubGlobal("WebSocket", FakeSocket);
  toasts.length = 0;
  tabs = [];
  app.extensionManager = {
    registerSidebarTab: (tab) => tabs.push(tab),
    toast: { add: (t) => toasts.push(t) },
    setting: { get: (id: string) => ({ "Comfy.Locale": "zh-CN", "Opencode.DefaultSkills": "echo" } as Record<string, unknown>)[id] },
  };
  const transport = fakeTransport(defaultRoutes());
  api.fetchImpl = (route, init) => transport.fetch(route, init ?? {});
});

afterEach(() => {
  vi.unstubAllGlobals();
  document.body.innerHTML = "";
});

describe("the ComfyUI extension", () => {
  it("registers opencode.agent with its settings", () => {
    expect(registered).toHaveLength(1);
    const ext = registered[0];
    expect(ext.name).toBe("opencode.agent");
    expect(ext.settings?.map((s) => s.id)).toEqual([
      "Opencode.DefaultProvider", "Opencode.DefaultSkills", "Opencode.FontSize", "Opencode.Token",
    ]);
  });

  it("adds a sidebar tab that mounts and unmounts the panel", async () => {
    await registered[0].setup?.(app);
    expect(tabs.map((t) => [t.id, t.icon, t.type])).toEqual([["opencode", "pi pi-comments", "custom"]]);
    const el = document.createElement("div");
    document.body.appendChild(el);
    tabs[0].render(el);
    await flushPromises();
    expect(el.querySelector("[data-testid=opencode-panel]")).not.toBeNull();
    expect(el.textContent).toContain("新对话"); // ComfyUI's locale is zh-CN
    tabs[0].destroy?.();
    expect(el.querySelector("[data-testid=opencode-panel]")).toBeNull();
  });

  it("the sidebar tab keeps keys in its panel, as a node does", async () => {
    await registered[0].setup?.(app);
    const el = document.createElement("div");
    document.body.appendChild(el);
    tabs[0].render(el);
    await flushPromises();
    const seen: string[] = [];
    const spy = (ev: KeyboardEvent) => seen.push(`${(ev.target as HTMLElement).tagName}:${ev.ctrlKey ? "ctrl+" : ""}${ev.key}`);
    window.addEventListener("keydown", spy); // ComfyUI's keybindings listen on the window
    const select = el.querySelector("select")!;
    const button = el.querySelector("button")!;
    const press = (t: HTMLElement, key: string, ctrlKey = false) => t.dispatchEvent(new KeyboardEvent("keydown", { key, ctrlKey, bubbles: true }));
    for (const key of ["Delete", "Backspace", "q", "w", "Escape"]) press(select, key);
    press(button, "Delete");
    press(button, "Enter", true);
    tabs[0].destroy?.();
    press(el, "Delete"); // unmounted: the guard left with the panel
    window.removeEventListener("keydown", spy);
    expect(seen).toEqual(["BUTTON:ctrl+Enter", "DIV:Delete"]);
  });

  it("puts the panel in OpencodeAgent nodes only, hides the bound widgets and writes a new session id", async () => {
    vi.useFakeTimers();
    const other = fakeNode();
    other.type = other.comfyClass = "KSampler";
    registered[0].nodeCreated?.(other, app);
    expect(other.dom).toHaveLength(0);

    const node = fakeNode({ skills: "echo" });
    const registeredOptions = node.widgets!.map((w) => w.options); // what Nodes 2.0's widget store keeps
    registered[0].nodeCreated?.(node, app);
    expect(node.dom.map((d) => [d.name, d.options.serialize])).toEqual([["opencode_panel", false]]);
    // Nodes 2.0 leaves wheel events inside a focused data-capture-wheel element alone
    expect([node.dom[0].el.dataset.captureWheel, node.dom[0].el.tabIndex]).toEqual(["true", -1]);
    expect(node.widgets!.every((w) => w.hidden)).toBe(true);
    // Nodes 2.0 merges the registered options over the current ones: hidden must be on those too.
    expect(node.widgets!.every((w, i) => ({ ...w.options, ...registeredOptions[i] }).hidden === true)).toBe(true);
    expect(node.size![0]).toBeGreaterThanOrEqual(460);
    await vi.runOnlyPendingTimersAsync(); // the panel starts after the node's values are loaded
    vi.useRealTimers();
    await flushPromises();
    expect(node.widgets![0].value).toBe("ses_1");
    expect(node.widgets![0].callback).toHaveBeenCalledWith("ses_1");
    const ws = FakeSocket.last();
    expect(ws.url).toBe("ws://localhost:3000/api/opencode/ws");
    ws.open();
    await flushPromises();
    ws.receive(snapshot({ session: session({ skills: ["echo", "assistant"], provider: "openai", model: "m1" }) }));
    await flushPromises();
    expect(node.widgets!.map((w) => w.value)).toEqual(["ses_1", "echo,assistant", "openai", "m1"]);
    const reached: string[] = [];
    const spy = (ev: KeyboardEvent) => reached.push(ev.key);
    window.addEventListener("keydown", spy);
    node.dom[0].el.querySelector("button")!.dispatchEvent(new KeyboardEvent("keydown", { key: "Delete", bubbles: true }));
    window.removeEventListener("keydown", spy);
    expect(reached).toEqual([]); // the node's panel keeps its keys too
    const widget = node.dom[0].widget;
    widget.onRemove?.call(widget); // ComfyUI calls it as a method
    expect(widget.removedWith).toBe(node.dom[0].el);
    expect(node.dom[0].el.querySelector("[data-testid=opencode-panel]")).toBeNull();
    node.onRemoved?.(); // and then the node's hook: releasing twice is harmless
  });

  it("a node whose session is gone recreates it under the same id", async () => {
    const routes = defaultRoutes();
    const created: unknown[] = [];
    routes["GET /opencode/sessions/ses_lost"] = () => [404, { error: { code: "not_found", message: "no", details: {} } }];
    routes["POST /opencode/sessions"] = (body) => {
      created.push(body);
      return [201, session({ id: "ses_lost" })];
    };
    let calls = 0;
    const transport = fakeTransport({
      ...routes,
      "GET /opencode/sessions/ses_lost": () => (++calls === 1 ? routes["GET /opencode/sessions/ses_lost"](undefined) : [200, session({ id: "ses_lost" })]),
    });
    api.fetchImpl = (route, init) => transport.fetch(route, init ?? {});
    vi.useFakeTimers();
    const node = fakeNode({ session_id: "ses_lost", skills: "echo" });
    registered[0].nodeCreated?.(node, app);
    await vi.runOnlyPendingTimersAsync();
    vi.useRealTimers();
    await flushPromises();
    expect(created).toEqual([{ id: "ses_lost", skills: ["echo"], provider: null, model: null }]);
    expect(node.widgets![0].value).toBe("ses_lost");
    expect(transport.calls.every((c) => !c.path.startsWith("/api"))).toBe(true); // the prefix is api.fetchApi's job
  });
});

describe("two panels on one page (a node's and the sidebar tab's)", () => {
  it("give their ids apart: each app has its own useId prefix", async () => {
    const { mountPanel } = await import("../src/mount");
    const { makeDeps } = await import("./harness");
    const hosts = [document.createElement("div"), document.createElement("div")];
    const unmounts = hosts.map((el) => {
      document.body.appendChild(el);
      return mountPanel(el, makeDeps().deps, ref(13));
    });
    await flushPromises();
    // Each panel's list of chats in turn (the second one's filter takes the focus, closing the first).
    const lists: { list: string; controls: string | null }[] = [];
    for (const el of hosts) {
      el.querySelector<HTMLElement>(".oc-anchor > button")!.click();
      await flushPromises();
      lists.push({ list: el.querySelector("[role=listbox]")!.id, controls: el.querySelector("[role=combobox]")!.getAttribute("aria-controls") });
    }
    expect(lists.map((l) => l.controls)).toEqual(lists.map((l) => l.list));
    expect(lists[0].list).toMatch(/^oc\d+-/);
    expect(lists[0].list).not.toBe(lists[1].list);
    for (const unmount of unmounts) unmount();
  });
});

describe("keys in a node's panel", () => {
  it("stay in the panel, except Ctrl/Cmd shortcuts outside text fields", async () => {
    const { keepKeysInPanel } = await import("../src/node");
    const host = document.createElement("div");
    const area = document.createElement("textarea");
    const button = document.createElement("button");
    host.append(area, button);
    document.body.appendChild(host);
    host.addEventListener("keydown", keepKeysInPanel);
    const seen: string[] = [];
    const spy = (ev: KeyboardEvent) => seen.push(`${(ev.target as HTMLElement).tagName}:${ev.ctrlKey ? "ctrl+" : ""}${ev.key}`);
    document.addEventListener("keydown", spy);
    const press = (el: HTMLElement, key: string, ctrlKey = false) => el.dispatchEvent(new KeyboardEvent("keydown", { key, ctrlKey, bubbles: true }));
    press(area, "Delete");
    press(area, "s", true);
    press(button, "Delete");
    press(button, "s", true);
    document.removeEventListener("keydown", spy);
    expect(seen).toEqual(["BUTTON:ctrl+s"]);
  });
});

describe("the Opencode.Token setting", () => {
  const KEY = "opencode.token";
  const setting = () => registered[0].settings!.find((s) => s.id === "Opencode.Token")!;
  afterEach(() => localStorage.removeItem(KEY));

  it("at each page load fills an empty stored token but never overwrites the banner's newer one", () => {
    setting().onChange!("FROM-SETTINGS", undefined); // ComfyUI registering the setting
    expect(localStorage.getItem(KEY)).toBe("FROM-SETTINGS");
    localStorage.setItem(KEY, "NEW-from-banner");
    setting().onChange!("OLD-from-settings", undefined);
    expect(localStorage.getItem(KEY)).toBe("NEW-from-banner");
    setting().onChange!("", undefined);
    expect(localStorage.getItem(KEY)).toBe("NEW-from-banner");
  });

  it("a change made in the settings is taken, and an emptied setting clears the token", () => {
    localStorage.setItem(KEY, "A");
    setting().onChange!(" B ", "A");
    expect(localStorage.getItem(KEY)).toBe("B");
    setting().onChange!("", "B");
    expect(localStorage.getItem(KEY)).toBeNull();
  });

  it("a token pasted in the banner is written into the setting too", async () => {
    const set = vi.fn();
    app.extensionManager = { ...app.extensionManager, setting: { get: () => undefined, set } };
    const { hostDeps } = await import("../src/mount");
    const { memoryBinding } = await import("./harness");
    hostDeps(memoryBinding()).setToken("PASTED");
    expect(localStorage.getItem(KEY)).toBe("PASTED");
    expect(set).toHaveBeenCalledWith("Opencode.Token", "PASTED");
  });
});

describe("applying a proposal through ComfyUI's app", () => {
  afterEach(() => {
    delete app.graph;
    delete app.graphToPrompt;
    delete app.canvas;
  });

  it("edits app.graph with LiteGraph.createNode inside one change-tracker step", async () => {
    const { applyWorkflow } = await import("../src/host");
    const { DEFS, defaultWorkflow, FakeNode } = await import("./fakeGraph");
    expect(await applyWorkflow({}, [])).toEqual({ applied: false, reason: "host" }); // no graph, no LiteGraph

    const g = defaultWorkflow();
    const events: string[] = [];
    app.graph = g;
    app.graphToPrompt = async () => ({ output: g.prompt() });
    app.canvas = { emitBeforeChange: () => events.push("before"), emitAfterChange: () => events.push("after") };
    expect(await applyWorkflow({}, [])).toEqual({ applied: false, reason: "host" }); // still no window.LiteGraph
    vi.stubGlobal("LiteGraph", {
      createNode: (type: string) => new FakeNode(type),
      registered_node_types: Object.fromEntries(Object.keys(DEFS).map((k) => [k, {}])),
      NODE_TITLE_HEIGHT: 30,
    });
    const p = g.prompt() as Record<string, { class_type: string; inputs: Record<string, unknown> }>;
    p["10"] = { class_type: "ImageScaleBy", inputs: { image: ["8", 0], upscale_method: "nearest-exact", scale_by: 2 } };
    p["9"].inputs.images = ["10", 0];
    expect(await applyWorkflow(p, ["OpencodeAgent"])).toEqual({ applied: true, changed: 1, added: 1, removed: 0, skipped: [] });
    expect(events).toEqual(["before", "after"]);
    expect(g.nodes.filter((n) => n.type === "ImageScaleBy")).toHaveLength(1);
  });
});
