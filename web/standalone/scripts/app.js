// Standalone stand-in for ComfyUI's `scripts/app.js`: just the surface the Opencode bundle uses.
// The bundle registers its extension here; its sidebar tab renders into the whole page. There is
// no canvas, so `graphToPrompt` / `loadApiJson` are absent and the panel says so.

const PREFIX = "opencode.setting.";
const defaults = new Map();

function readSetting(id) {
  if (id === "Comfy.Locale") return new URLSearchParams(location.search).get("lang") || navigator.language;
  try {
    const raw = localStorage.getItem(PREFIX + id);
    if (raw !== null) return JSON.parse(raw);
  } catch {
    // storage off or a bad value: use the default
  }
  return defaults.get(id);
}

export const app = {
  opencodeStandalone: true,
  extensions: [],
  registerExtension(ext) {
    this.extensions.push(ext);
    for (const s of ext.settings ?? []) defaults.set(s.id, s.defaultValue);
    queueMicrotask(() => ext.setup?.(app));
  },
  extensionManager: {
    registerSidebarTab(tab) {
      const mount = () => tab.render(document.getElementById("opencode-root"));
      if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", mount, { once: true });
      else mount();
    },
    setting: {
      get: readSetting,
      set(id, value) {
        localStorage.setItem(PREFIX + id, JSON.stringify(value));
      },
    },
  },
  ui: { settings: { getSettingValue: (id, fallback) => readSetting(id) ?? fallback } },
};
