// Fake ComfyUI `scripts/api.js`: routes live under /api, as in ComfyUI.
export const api = {
  api_base: "",
  user: "e2e",
  apiURL(route) {
    return `/api${route}`;
  },
  fetchApi(route, options = {}) {
    const headers = { ...(options.headers ?? {}), "Comfy-User": this.user };
    return fetch(this.apiURL(route), { cache: "no-cache", ...options, headers });
  },
};
