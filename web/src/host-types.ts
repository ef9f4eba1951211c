/**
 * Loose types for the ComfyUI surfaces host.ts touches. Members are optional on purpose: each is
 * checked before use so the panel runs on old and new front ends and in the standalone shim.
 */

export interface ComfyWidget {
  name: string;
  type?: string;
  value: unknown;
  hidden?: boolean;
  options?: Record<string, unknown>;
  computeSize?: (width?: number) => [number, number];
  callback?: (value: unknown) => void;
}

export interface ComfyDomWidget {
  name: string;
  element?: HTMLElement;
  onRemove?: (this: ComfyDomWidget) => void;
}

export interface ComfyNode {
  id?: number | string;
  type?: string;
  comfyClass?: string;
  size?: [number, number];
  widgets?: ComfyWidget[];
  graph?: unknown;
  addDOMWidget?: (name: string, type: string, el: HTMLElement, options: Record<string, unknown>) => ComfyDomWidget;
  setSize?: (size: [number, number]) => void;
  setDirtyCanvas?: (fg: boolean, bg?: boolean) => void;
  onRemoved?: () => void;
  onConfigure?: (info: unknown) => void;
}

export interface ComfyNodeDef {
  name: string;
}

export interface ComfySettingDef {
  id: string;
  name: string;
  type: string;
  defaultValue: unknown;
  category?: string[];
  tooltip?: string;
  attrs?: Record<string, unknown>;
  onChange?: (value: unknown, old?: unknown) => void;
}

export interface ComfyExtension {
  name: string;
  settings?: ComfySettingDef[];
  setup?: (app: ComfyApp) => void | Promise<void>;
  nodeCreated?: (node: ComfyNode, app: ComfyApp) => void;
  loadedGraphNode?: (node: ComfyNode, app: ComfyApp) => void;
  beforeRegisterNodeDef?: (nodeType: { prototype: ComfyNode }, nodeData: ComfyNodeDef, app: ComfyApp) => void;
}

export interface SidebarTab {
  id: string;
  icon: string;
  title: string;
  tooltip?: string;
  label?: string;
  type: "custom";
  render: (el: HTMLElement) => void;
  destroy?: () => void;
}

export interface ComfyApp {
  registerExtension?: (ext: ComfyExtension) => void;
  graphToPrompt?: () => Promise<{ output: Record<string, unknown>; workflow?: unknown }>;
  loadApiJson?: (graph: Record<string, unknown>, fileName?: string) => unknown;
  extensionManager?: {
    registerSidebarTab?: (tab: SidebarTab) => void;
    toast?: { add?: (t: { severity: string; summary?: string; detail?: string; life?: number }) => void };
    setting?: { get?: (id: string) => unknown; set?: (id: string, v: unknown) => unknown };
  };
  ui?: { settings?: { getSettingValue?: (id: string, def?: unknown) => unknown; setSettingValue?: (id: string, v: unknown) => void } };
  canvas?: { setDirty?: (fg: boolean, bg?: boolean) => void };
  /** Set by the standalone shim only. */
  opencodeStandalone?: boolean;
}

export interface ComfyApi {
  fetchApi?: (route: string, init?: RequestInit) => Promise<Response>;
  apiURL?: (route: string) => string;
}
