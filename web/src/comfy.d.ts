/**
 * The small part of ComfyUI's `scripts/app.js` and `scripts/api.js` the panel uses, typed loosely:
 * front ends 1.27 → 1.58 differ, so every member is optional and feature-detected in host.ts.
 * The build maps `comfyui:app` / `comfyui:api` to `../../scripts/*.js` (see vite.config.ts).
 */
declare module "comfyui:app" {
  export const app: import("./host-types").ComfyApp;
}
declare module "comfyui:api" {
  export const api: import("./host-types").ComfyApi;
}
