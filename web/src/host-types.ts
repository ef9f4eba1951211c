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

/**
 * The LiteGraph surface `applyProposal.ts` edits a canvas through (LGraph / LGraphNode in front
 * ends 1.27 → 1.58). Narrower than the real classes on purpose: Vitest drives it with a fake graph.
 */
export type GraphNodeId = number | string;

export interface GraphSlot {
  name: string;
  type?: unknown;
  /** An input's link id, null when unlinked. */
  link?: number | string | null;
  /** An output's link ids. */
  links?: (number | string)[] | null;
  /** Set on the input socket that stands for a widget (front ends 1.16+). */
  widget?: { name?: string };
}

export interface GraphWidget {
  name: string;
  type?: string;
  value: unknown;
  options?: Record<string, unknown>;
  callback?: (value: unknown) => void;
}

export interface GraphLink {
  origin_id: GraphNodeId;
  origin_slot: number;
  target_id: GraphNodeId;
  target_slot: number;
}

export interface GraphNode {
  id: GraphNodeId;
  type?: string;
  /** The backend class (`class_type`); unset on virtual nodes (Note, Reroute, PrimitiveNode). */
  comfyClass?: string;
  title?: string;
  /** 0 always, 2 never (muted), 4 bypassed. */
  mode?: number;
  /** Body top-left; the title bar sits above it. Assigning a new pair moves the node. */
  pos: ArrayLike<number>;
  size: ArrayLike<number>;
  inputs?: GraphSlot[];
  outputs?: GraphSlot[];
  widgets?: GraphWidget[];
  connect?: (slot: number, target: GraphNode, targetSlot: number) => unknown;
  disconnectInput?: (slot: number) => unknown;
  /** Front ends before widget sockets (< 1.16): turn a widget into an input to link it. */
  convertWidgetToInput?: (widget: GraphWidget) => unknown;
}

export interface Graph {
  /** 1.27+: a getter over `_nodes`. */
  nodes?: GraphNode[];
  _nodes?: GraphNode[];
  getNodeById?: (id: GraphNodeId) => GraphNode | null | undefined;
  getLink?: (id: number | string) => GraphLink | null | undefined;
  links?: Map<number | string, GraphLink> | Record<string, GraphLink>;
  add: (node: GraphNode) => unknown;
  remove: (node: GraphNode) => unknown;
  setDirtyCanvas?: (fg: boolean, bg?: boolean) => void;
  change?: () => void;
}

/** `window.LiteGraph`, which ComfyUI's front end still sets for extensions. */
export interface LiteGraphGlobal {
  createNode?: (type: string) => GraphNode | null | undefined;
  registered_node_types?: Record<string, unknown>;
  NODE_TITLE_HEIGHT?: number;
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
  /** The root graph (`app.rootGraph` in 1.58, which logs an error when read before it exists). */
  graph?: Graph;
  canvas?: {
    setDirty?: (fg: boolean, bg?: boolean) => void;
    /** Open and close one undo step: the change tracker listens for these (1.27 → 1.58). */
    emitBeforeChange?: () => void;
    emitAfterChange?: () => void;
  };
  /** Set by the standalone shim only. */
  opencodeStandalone?: boolean;
}

export interface ComfyApi {
  fetchApi?: (route: string, init?: RequestInit) => Promise<Response>;
  apiURL?: (route: string) => string;
}
