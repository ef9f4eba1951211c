// Debian's Chromium driven by playwright-core (never `playwright install`): headless, loopback only.
import { existsSync } from "node:fs";
import { chromium } from "playwright-core";

export const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";

export async function launch() {
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM}: apt-get install -y chromium (or set CHROMIUM_PATH)`);
  // `launch` gives every run a fresh temporary user-data-dir; contexts are isolated from each other.
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
}

/** Everything a page sends: HTTP requests (with bodies and headers) and WebSocket frames. */
export function recordTraffic(page) {
  const traffic = { requests: [], frames: [], responses: [] };
  page.on("request", (r) => traffic.requests.push({ method: r.method(), url: r.url(), body: r.postData() ?? "", headers: r.headers() }));
  page.on("response", async (r) => {
    try {
      traffic.responses.push({ url: r.url(), body: await r.text() });
    } catch {
      // a redirect or an aborted body has no text
    }
  });
  page.on("websocket", (ws) => {
    traffic.frames.push({ url: ws.url(), payload: "" });
    ws.on("framesent", (f) => traffic.frames.push({ url: ws.url(), payload: String(f.payload) }));
  });
  return traffic;
}
