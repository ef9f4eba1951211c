// Standalone stand-in for ComfyUI's `scripts/api.js`: the standalone server answers `/opencode/…`
// directly (ComfyUI mirrors them under `/api`), so routes are used as they are.

export const api = {
  apiURL(route) {
    return route;
  },
  fetchApi(route, init = {}) {
    return fetch(route, { cache: "no-cache", ...init });
  },
};
