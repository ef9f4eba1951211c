/**
 * What one panel instance needs from its surroundings, injected so tests can pass fakes:
 * the server transport, the token, notifications, the canvas, and where its session id lives
 * (a node's widgets, or this browser's storage for the sidebar and the standalone page).
 */
import type { InjectionKey } from "vue";
import type { SocketFactory, Transport } from "./client";
import type { ApplyOutcome } from "./applyProposal";
import type { ImagePart } from "./protocol";

export interface SessionConfig {
  skills: string[];
  provider: string | null;
  model: string | null;
}

export interface PanelBinding {
  kind: "node" | "sidebar" | "standalone";
  /** The session this panel shows; "" when it has none yet. */
  sessionId(): string;
  setSessionId(id: string): void;
  /** What a new session starts with (node widgets, else the extension's settings). */
  defaults(): SessionConfig;
  /** Mirror the session's choices outward (a node's widgets, so they save with the workflow). */
  syncConfig(config: SessionConfig): void;
}

export interface PanelDeps {
  transport: Transport;
  socket?: SocketFactory;
  binding: PanelBinding;
  token(): string | null;
  setToken(token: string): void;
  /** Show a toast; returns false when the host has none (the panel shows its own). */
  notify(severity: "success" | "info" | "warn" | "error", summary: string, detail?: string): boolean;
  currentWorkflow(): Promise<Record<string, unknown>>;
  loadWorkflow(graph: Record<string, unknown>): Promise<void>;
  /**
   * Apply an accepted proposal onto the canvas in place, never removing `keepTypes` nodes it
   * leaves out. Absent, or `applied: false`, and the panel falls back to `loadWorkflow`.
   */
  applyWorkflow?(graph: Record<string, unknown>, keepTypes: readonly string[]): Promise<ApplyOutcome>;
  canLoadWorkflow(): boolean;
  imageUrl(part: ImagePart): string;
}

export const DEPS: InjectionKey<PanelDeps> = Symbol("opencode-deps");

/** A binding kept in this browser's localStorage under `key` (sidebar, standalone page). */
export function storageBinding(kind: "sidebar" | "standalone", key: string, defaults: () => SessionConfig): PanelBinding {
  return {
    kind,
    sessionId: () => safeGet(key) ?? "",
    setSessionId: (id) => safeSet(key, id),
    defaults,
    syncConfig: () => undefined,
  };
}

export function safeGet(key: string): string | null {
  try {
    return window.localStorage.getItem(key);
  } catch {
    return null;
  }
}

export function safeSet(key: string, value: string): void {
  try {
    if (value) window.localStorage.setItem(key, value);
    else window.localStorage.removeItem(key);
  } catch {
    // storage disabled: the choice lasts for this page only
  }
}
