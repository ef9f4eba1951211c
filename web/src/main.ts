/**
 * Entry of `dist/opencode.js`: registers the `opencode.agent` extension with ComfyUI (or the
 * standalone shim): the panel inside every `OpencodeAgent` node, the same panel as a sidebar tab,
 * and the extension's settings.
 */
import { ref } from "vue";
import { safeGet, safeSet, storageBinding, type SessionConfig } from "./deps";
import * as host from "./host";
import { setLocale, t } from "./i18n";
import { hostDeps, mountPanel, TOKEN_KEY, TOKEN_SETTING } from "./mount";
import { attachToNode, isOpencodeNode } from "./node";

const S = {
  provider: "Opencode.DefaultProvider",
  skills: "Opencode.DefaultSkills",
  fontSize: "Opencode.FontSize",
  token: TOKEN_SETTING,
};

const fontSize = ref(13);

function defaults(): SessionConfig {
  const skills = String(host.getSetting(S.skills, "") ?? "").split(",").map((s) => s.trim()).filter(Boolean);
  return { skills, provider: String(host.getSetting(S.provider, "") ?? "") || null, model: null };
}

setLocale(host.locale());

host.registerExtension({
  name: "opencode.agent",
  settings: [
    { id: S.provider, name: t("settings.provider"), type: "text", defaultValue: "", category: ["Opencode", "Defaults", "Provider"] },
    { id: S.skills, name: t("settings.skills"), type: "text", defaultValue: "", category: ["Opencode", "Defaults", "Skills"] },
    {
      id: S.fontSize,
      name: t("settings.fontSize"),
      type: "number",
      defaultValue: 13,
      attrs: { min: 10, max: 22, step: 1 },
      category: ["Opencode", "Panel", "Font size"],
      onChange: (v) => (fontSize.value = Number(v) || 13),
    },
    {
      id: S.token,
      name: t("settings.token"),
      type: "text",
      defaultValue: "",
      category: ["Opencode", "Connection", "Token"],
      onChange: (v, old) => {
        const token = typeof v === "string" ? v.trim() : "";
        // ComfyUI calls this with no old value when it registers the setting, at every page load:
        // that must not overwrite a token the banner stored since (the setting may be older).
        if (old === undefined) {
          if (token && !safeGet(TOKEN_KEY)) safeSet(TOKEN_KEY, token);
          return;
        }
        safeSet(TOKEN_KEY, token); // an emptied setting clears the stored token
      },
    },
  ],
  setup() {
    setLocale(host.locale());
    fontSize.value = Number(host.getSetting(S.fontSize, 13)) || 13;
    let unmount: (() => void) | null = null;
    const kind = host.isStandalone ? "standalone" : "sidebar";
    host.registerSidebarTab({
      id: "opencode",
      icon: "pi pi-comments",
      title: t("app.title"),
      label: t("app.title"),
      tooltip: t("app.tooltip"),
      type: "custom",
      render: (el) => {
        unmount?.();
        el.style.height = "100%";
        unmount = mountPanel(el, hostDeps(storageBinding(kind, `opencode.${kind}.session`, defaults)), fontSize);
      },
      destroy: () => {
        unmount?.();
        unmount = null;
      },
    });
  },
  nodeCreated(node) {
    if (isOpencodeNode(node)) attachToNode(node, defaults, fontSize);
  },
});
