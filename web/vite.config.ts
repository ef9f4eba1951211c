/// <reference types="vitest/config" />
/**
 * Builds the one file ComfyUI loads: `dist/opencode.js`.
 *
 * ComfyUI imports every .js under `web/dist`, so the output is a single ES module: Vue, Pinia and
 * the CSS (injected at run time from `styles.css?inline`) are bundled in; ComfyUI's own
 * `scripts/app.js` and `scripts/api.js` stay external at `../../scripts/…` (relative to
 * `/extensions/<folder>/opencode.js` in ComfyUI, to `/opencode/static/dist/opencode.js` standalone).
 * No chunks, no sourcemaps, no hashes: a rebuild is byte-identical, so CI can diff it.
 */
import { defineConfig, type Plugin } from "vite";
import vue from "@vitejs/plugin-vue";
import { fileURLToPath } from "node:url";

// The only imports that leave the bundle; `src/host.ts` is their only user.
const HOST_MODULES: Record<string, string> = {
  "comfyui:app": "../../scripts/app.js",
  "comfyui:api": "../../scripts/api.js",
};

function comfyExternals(): Plugin {
  return {
    name: "opencode-comfy-externals",
    enforce: "pre",
    apply: "build",
    resolveId(id) {
      const target = HOST_MODULES[id];
      return target ? { id: target, external: true } : null;
    },
  };
}

export default defineConfig(({ command }) => ({
  plugins: [comfyExternals(), vue()],
  // Vitest gets stand-ins for ComfyUI's modules (tests/stubs), configured by each test.
  resolve: command === "build" ? {} : {
    alias: {
      "comfyui:app": fileURLToPath(new URL("./tests/stubs/comfy-app.ts", import.meta.url)),
      "comfyui:api": fileURLToPath(new URL("./tests/stubs/comfy-api.ts", import.meta.url)),
    },
  },
  // Production Vue for the bundle only: Vitest (command "serve") keeps dev Vue for test-utils.
  define: command !== "build" ? {} : {
    "process.env.NODE_ENV": JSON.stringify("production"),
    __VUE_OPTIONS_API__: "false",
    __VUE_PROD_DEVTOOLS__: "false",
    __VUE_PROD_HYDRATION_MISMATCH_DETAILS__: "false",
  },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    sourcemap: false,
    copyPublicDir: false,
    reportCompressedSize: false,
    cssCodeSplit: false,
    target: "es2022",
    minify: true,
    modulePreload: false,
    assetsInlineLimit: 0,
    rolldownOptions: {
      input: "src/main.ts",
      // The entry only registers the extension; it exports nothing.
      preserveEntrySignatures: false,
      output: {
        format: "es",
        entryFileNames: "opencode.js",
        codeSplitting: false,
        comments: { legal: false },
      },
    },
  },
  test: {
    environment: "happy-dom",
    include: ["tests/**/*.test.ts"],
  },
}));
