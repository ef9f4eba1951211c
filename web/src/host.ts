/**
 * The only file that touches ComfyUI's `scripts/app.js` and `scripts/api.js`.
 *
 * Inside ComfyUI the routes are reached through `api.fetchApi` (which mirrors them under `/api`)
 * and the socket at `/api/opencode/ws`; standalone, the shim modules answer with `/opencode/…`
 * directly. Every ComfyUI member is feature-detected so front ends 1.27 → 1.58, Nodes 2.0 and the
 * shim all work.
 */
import { app } from "comfyui:app";
import { api } from "comfyui:api";
import { applyProposal, type ApplyOutcome } from "./applyProposal";
import type { Transport } from "./client";
import type { ComfyApp, ComfyExtension, LiteGraphGlobal, SidebarTab } from "./host-types";
import type { ImagePart } from "./protocol";

export type { ComfyApp };

export const comfyApp: ComfyApp = app;

export const isStandalone = Boolean(app?.opencodeStandalone);

function apiURL(route: string): string {
  return typeof api?.apiURL === "function" ? api.apiURL(route) : route;
}

export const transport: Transport = {
  fetch(path, init) {
    if (typeof api?.fetchApi === "function") return api.fetchApi(path, init);
    return fetch(apiURL(path), init);
  },
  wsUrl(path) {
    const url = new URL(apiURL(path), window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return url.toString();
  },
};

export function registerExtension(ext: ComfyExtension): void {
  app?.registerExtension?.(ext);
}

export function getSetting<T>(id: string, fallback: T): T {
  try {
    const viaManager = app?.extensionManager?.setting?.get?.(id);
    if (viaManager !== undefined && viaManager !== null) return viaManager as T;
    const viaUi = app?.ui?.settings?.getSettingValue?.(id, undefined);
    if (viaUi !== undefined && viaUi !== null) return viaUi as T;
  } catch {
    // settings not ready yet (very early) or not offered by this front end
  }
  return fallback;
}

/** Write a setting (ComfyUI saves it, and calls its `onChange`); false when this host can't. */
export function setSetting(id: string, value: unknown): boolean {
  try {
    const viaManager = app?.extensionManager?.setting?.set;
    if (typeof viaManager === "function") {
      void Promise.resolve(viaManager.call(app.extensionManager!.setting, id, value)).catch(() => undefined);
      return true;
    }
    const viaUi = app?.ui?.settings?.setSettingValue;
    if (typeof viaUi === "function") {
      viaUi.call(app.ui!.settings, id, value);
      return true;
    }
  } catch {
    // settings not ready, or refused: the token still lives in this browser
  }
  return false;
}

/** ComfyUI's `Comfy.Locale`, else the browser's language. */
export function locale(): string {
  const set = getSetting<string>("Comfy.Locale", "");
  return set || (typeof navigator !== "undefined" ? navigator.language : "en");
}

export function canToast(): boolean {
  return typeof app?.extensionManager?.toast?.add === "function";
}

export function toast(severity: "success" | "info" | "warn" | "error", summary: string, detail?: string): boolean {
  if (!canToast()) return false;
  app.extensionManager!.toast!.add!({ severity, summary, detail, life: severity === "error" ? 8000 : 4000 });
  return true;
}

export function registerSidebarTab(tab: SidebarTab): boolean {
  const reg = app?.extensionManager?.registerSidebarTab;
  if (typeof reg !== "function") return false;
  reg.call(app.extensionManager, tab);
  return true;
}

/** The graph open in the canvas, in API format. */
export async function currentWorkflow(): Promise<Record<string, unknown>> {
  if (typeof app?.graphToPrompt !== "function") throw new Error("this page has no canvas");
  const prompt = await app.graphToPrompt();
  return prompt.output ?? {};
}

/** Load an API-format graph into the canvas. */
export async function loadWorkflow(graph: Record<string, unknown>): Promise<void> {
  if (typeof app?.loadApiJson === "function") {
    await app.loadApiJson(graph, "opencode-proposal.json");
    return;
  }
  throw new Error("this version of ComfyUI cannot load an API-format workflow; update the front end");
}

/**
 * Apply an API-format graph onto the canvas in place (see applyProposal.ts), keeping `keepTypes`
 * nodes the graph leaves out; `applied: false` with a reason when only `loadWorkflow` can load it.
 */
export async function applyWorkflow(graph: Record<string, unknown>, keepTypes: readonly string[]): Promise<ApplyOutcome> {
  const lg = (globalThis as { LiteGraph?: LiteGraphGlobal }).LiteGraph;
  const root = app?.graph;
  const canvas = app?.canvas;
  if (!root || typeof lg?.createNode !== "function" || typeof app?.graphToPrompt !== "function" || typeof root.add !== "function") {
    return { applied: false, reason: "host" };
  }
  return applyProposal(
    {
      graph: root,
      createNode: (type) => lg.createNode!(type),
      hasNodeType: (type) => !!lg.registered_node_types?.[type],
      current: currentWorkflow,
      // The change tracker takes everything between these two as one undo step.
      beginChange: () => canvas?.emitBeforeChange?.(),
      endChange: () => canvas?.emitAfterChange?.(),
      titleHeight: lg.NODE_TITLE_HEIGHT,
    },
    graph,
    { keepTypes },
  );
}

export function canLoadWorkflow(): boolean {
  return typeof app?.loadApiJson === "function";
}

/** Where the browser can fetch an image part. */
export function imageUrl(part: ImagePart): string {
  const q = new URLSearchParams({ filename: part.filename, subfolder: part.subfolder, type: part.folder_type });
  if (part.source === "comfyui" && !isStandalone) return apiURL(`/view?${q}`);
  return apiURL(`/opencode/files?${q}&source=${part.source}`);
}

export function redrawCanvas(): void {
  // Through the canvas only: newer front ends log an error when `app.graph` is read too early.
  app?.canvas?.setDirty?.(true, true);
}
