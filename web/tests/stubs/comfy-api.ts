/** Stand-in for ComfyUI's `scripts/api.js` in Vitest: `/api` prefixed routes, fetch set by the test. */
import type { ComfyApi } from "../../src/host-types";

export const api: ComfyApi & { fetchImpl?: (route: string, init?: RequestInit) => Promise<Response> } = {
  apiURL: (route: string) => `/api${route}`,
  fetchApi(route: string, init?: RequestInit) {
    if (!api.fetchImpl) throw new Error("set api.fetchImpl in the test");
    return api.fetchImpl(route, init);
  },
};
