/**
 * Mount one panel (its own Vue app, Pinia and store) into an element; returns the unmount.
 * Builds the panel's `PanelDeps` from host.ts, and injects the stylesheet once per document.
 */
import { createPinia } from "pinia";
import { createApp, h, type Ref } from "vue";
import OpencodePanel from "./components/OpencodePanel.vue";
import { DEPS, safeGet, safeSet, type PanelBinding, type PanelDeps } from "./deps";
import * as host from "./host";
import { setLocale } from "./i18n";
import css from "./styles.css?inline";

export const TOKEN_KEY = "opencode.token";
/** The ComfyUI setting that mirrors the token: one value, whether typed there or in the banner. */
export const TOKEN_SETTING = "Opencode.Token";
const STYLE_ID = "opencode-panel-styles";

/** Panels mounted so far: each app's `useId` prefix, as a page may hold several (nodes, the sidebar tab). */
let panelsMounted = 0;

export function injectStyles(doc: Document = document): void {
  if (doc.getElementById(STYLE_ID)) return;
  const style = doc.createElement("style");
  style.id = STYLE_ID;
  style.textContent = css;
  doc.head.appendChild(style);
}

export function hostDeps(binding: PanelBinding): PanelDeps {
  return {
    transport: host.transport,
    binding,
    token: () => safeGet(TOKEN_KEY),
    setToken: (token) => {
      safeSet(TOKEN_KEY, token);
      // The standalone page has no ComfyUI settings (its shim would keep a second copy).
      if (!host.isStandalone) host.setSetting(TOKEN_SETTING, token);
    },
    notify: (severity, summary, detail) => host.toast(severity, summary, detail),
    currentWorkflow: host.currentWorkflow,
    loadWorkflow: host.loadWorkflow,
    applyWorkflow: host.applyWorkflow,
    canLoadWorkflow: host.canLoadWorkflow,
    imageUrl: host.imageUrl,
  };
}

/**
 * Keys typed in the panel belong to it, not to ComfyUI (Delete would delete the selected nodes,
 * space would pan, q/w toggle sidebar tabs, Ctrl+Enter queues). In a text field every key stays;
 * elsewhere Ctrl/Cmd shortcuts (Ctrl+S) still reach ComfyUI.
 */
export function keepKeysInPanel(ev: KeyboardEvent): void {
  const target = ev.target as HTMLElement | null;
  const typing = !!target && (target.tagName === "TEXTAREA" || target.tagName === "INPUT" || target.isContentEditable);
  if (typing || !(ev.ctrlKey || ev.metaKey)) ev.stopPropagation();
}

/** Every host (a node, the sidebar tab, the standalone page) gets the key guard on `el`. */
export function mountPanel(el: HTMLElement, deps: PanelDeps, fontSize: Ref<number>): () => void {
  injectStyles(el.ownerDocument);
  el.addEventListener("keydown", keepKeysInPanel);
  setLocale(host.locale());
  const app = createApp({ render: () => h(OpencodePanel, { fontSize: fontSize.value }) });
  // Apart, every app's `useId` counts from "v-0": ids (aria-controls, a label's error) would repeat
  // across the page's panels, and ComfyUI's own app uses that prefix too.
  app.config.idPrefix = `oc${++panelsMounted}`;
  app.use(createPinia());
  app.provide(DEPS, deps);
  app.mount(el);
  return () => {
    app.unmount();
    el.removeEventListener("keydown", keepKeysInPanel);
  };
}
