/** Stand-in for ComfyUI's `scripts/app.js` in Vitest: a plain object each test fills in. */
import type { ComfyApp, ComfyExtension } from "../../src/host-types";

export const registered: ComfyExtension[] = [];

export const app: ComfyApp & Record<string, unknown> = {
  registerExtension(ext: ComfyExtension) {
    registered.push(ext);
  },
};
