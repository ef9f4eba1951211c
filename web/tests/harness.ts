/** Mount components with a fresh Pinia, fake deps (transport, socket, binding) and no network. */
import { mount, type ComponentMountingOptions } from "@vue/test-utils";
import { createPinia } from "pinia";
import type { Component } from "vue";
import { DEPS, type PanelBinding, type PanelDeps } from "../src/deps";
import { FakeSocket, fakeTransport } from "./fakes";
import { session, skill } from "./fixtures";

export type Routes = Parameters<typeof fakeTransport>[0];

export function defaultRoutes(): Routes {
  return {
    "GET /opencode/version": () => [200, { name: "opencode", version: "0.1.0", protocol: 1, capabilities: ["send.client_id", "ui.reply.answer_id", "retry"] }],
    "GET /opencode/skills": () => [
      200,
      {
        skills: [
          skill(),
          skill({ id: "assistant", name: "Assistant", color: "#2563eb", engine: "llm", description: "General helper" }),
          skill({ id: "comfyui", name: "ComfyUI tools", kind: "tools", color: "#16a34a", description: "Canvas tools" }),
        ],
      },
    ],
    "GET /opencode/providers": () => [
      200,
      {
        providers: [
          { name: "openai", kind: "openai", base_url: "https://api.example/v1", default_model: "m1", key_env: null, models: {}, extra: {}, has_key: false, key_hint: null },
        ],
        presets: [],
      },
    ],
    "GET /opencode/providers/openai/models": () => [200, { models: [{ id: "m1", caps: null }, { id: "m2", caps: null }] }],
    "PUT /opencode/providers/openai/key": () => [
      200,
      { name: "openai", kind: "openai", base_url: "https://api.example/v1", default_model: "m1", key_env: null, models: {}, extra: {}, has_key: true, key_hint: "…wxyz" },
    ],
    "GET /opencode/sessions": () => [200, { sessions: [] }],
    "POST /opencode/sessions": () => [201, session()],
    "GET /opencode/sessions/ses_1": () => [200, session()],
  };
}

export function memoryBinding(kind: PanelBinding["kind"] = "sidebar", initial = ""): PanelBinding & { id: string; synced: unknown[] } {
  const b = {
    kind,
    id: initial,
    synced: [] as unknown[],
    sessionId: () => b.id,
    setSessionId: (id: string) => (b.id = id),
    defaults: () => ({ skills: ["echo"], provider: null, model: null }),
    syncConfig: (c: unknown) => b.synced.push(c),
  };
  return b;
}

export function makeDeps(routes: Routes = defaultRoutes(), over: Partial<PanelDeps> = {}) {
  const transport = fakeTransport(routes);
  let token: string | null = null;
  const toasts: string[] = [];
  const deps: PanelDeps = {
    transport,
    socket: (url) => new FakeSocket(url),
    binding: memoryBinding(),
    token: () => token,
    setToken: (t) => (token = t),
    notify: (_sev, summary, detail) => {
      toasts.push(detail ? `${summary}: ${detail}` : summary);
      return true;
    },
    currentWorkflow: async () => ({ "1": { class_type: "KSampler", inputs: {} } }),
    loadWorkflow: async () => undefined,
    canLoadWorkflow: () => true,
    imageUrl: (p) => `/view?filename=${p.filename}`,
    ...over,
  };
  return { deps, transport, toasts };
}

export function mountWith<C extends Component>(component: C, deps: PanelDeps, options: ComponentMountingOptions<C> = {}) {
  return mount(component, {
    attachTo: document.body,
    ...options,
    global: { plugins: [createPinia()], provide: { [DEPS as symbol]: deps }, ...(options.global ?? {}) },
  } as ComponentMountingOptions<C>);
}
