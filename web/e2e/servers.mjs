// Servers for the e2e run, all on 127.0.0.1: the real Opencode standalone server (a child process),
// a fake OpenAI-format LLM and a fake ComfyUI (its page, scripts, /object_info, and a proxy of
// /api/opencode/* — HTTP and WebSocket — to Opencode, the way ComfyUI mirrors the routes).
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, normalize, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));
export const WEB = resolve(HERE, "..");
export const ROOT = resolve(WEB, "..");
const HOST = "127.0.0.1";

export function listen(server) {
  return new Promise((ok, fail) => {
    server.once("error", fail);
    server.listen(0, HOST, () => ok(server.address().port));
  });
}

export async function freePort() {
  const s = net.createServer();
  const port = await listen(s);
  await new Promise((ok) => s.close(ok));
  return port;
}

async function waitFor(url, ms, child) {
  const until = Date.now() + ms;
  let last;
  while (Date.now() < until) {
    if (child && child.exitCode !== null) throw new Error(`server exited with ${child.exitCode}`);
    try {
      const r = await fetch(url);
      if (r.ok) return;
      last = `HTTP ${r.status}`;
    } catch (e) {
      last = e.message;
    }
    await new Promise((ok) => setTimeout(ok, 100)); // polling a starting process: there is nothing to await
  }
  throw new Error(`${url} not up after ${ms} ms (${last})`);
}

function opencodeCommand() {
  if (process.env.OPENCODE_AGENT_BIN) return [process.env.OPENCODE_AGENT_BIN];
  const venv = join(ROOT, ".venv", "bin", "opencode-agent");
  return [existsSync(venv) ? venv : "opencode-agent"];
}

/** Start `opencode-agent serve` on a free port with a fresh data dir. */
export async function startOpencode({ comfyuiUrl, echoDelay = 0.12 } = {}) {
  const port = await freePort();
  const dataDir = mkdtempSync(join(tmpdir(), "opencode-e2e-"));
  const [cmd, ...pre] = opencodeCommand();
  const args = [...pre, "serve", "--host", HOST, "--port", String(port), "--data-dir", dataDir, "--echo-delay", String(echoDelay)];
  if (comfyuiUrl) args.push("--comfyui-url", comfyuiUrl);
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (/_API_KEY$/.test(k)) delete env[k]; // no real keys near the test
  const child = spawn(cmd, args, { env, stdio: ["ignore", "pipe", "pipe"] });
  const log = [];
  child.stdout.on("data", (d) => log.push(String(d)));
  child.stderr.on("data", (d) => log.push(String(d)));
  const url = `http://${HOST}:${port}`;
  try {
    await waitFor(`${url}/opencode/health`, 30_000, child);
  } catch (e) {
    child.kill("SIGKILL");
    throw new Error(`${e.message}\n${log.join("")}`);
  }
  return {
    url,
    port,
    dataDir,
    log,
    async stop() {
      if (child.exitCode === null) {
        const done = new Promise((ok) => child.once("exit", ok));
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
        await done;
        clearTimeout(timer);
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** JSON call to the Opencode server from the test (no Origin: a local script, as the CLI is). */
export async function api(base, method, path, body) {
  const r = await fetch(base + path, {
    method,
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : undefined;
}

// ---------------------------------------------------------------------------------- fake LLM

const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

/**
 * An OpenAI Chat Completions server whose answers follow the conversation, so several tests can
 * share it: after a tool result it reports that result; a prompt mentioning "propose" calls
 * `propose_workflow`, one mentioning "canvas" calls `get_workflow`; anything else is answered in
 * words streamed slowly (so two roles visibly stream at once); one mentioning "cache" reports a
 * large prompt mostly served from the provider's cache. A chat request with a key in
 * `revokedKeys` is refused as a provider refuses a bad key (401). Records each request's headers.
 */
export async function startFakeLLM({ proposal, chunkMs = 90, revokedKeys = [] } = {}) {
  const requests = [];
  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const body = chunks.length ? JSON.parse(Buffer.concat(chunks).toString()) : {};
    requests.push({ method: req.method, url: req.url, headers: req.headers, body });
    if (req.method === "GET" && req.url.endsWith("/models")) {
      res.writeHead(200, { "Content-Type": "application/json" });
      res.end(JSON.stringify({ object: "list", data: [{ id: "fake-model", object: "model", created: 0, owned_by: "e2e" }] }));
      return;
    }
    if (!req.url.endsWith("/chat/completions")) {
      res.writeHead(404).end();
      return;
    }
    if (revokedKeys.some((key) => req.headers.authorization === `Bearer ${key}`)) {
      res.writeHead(401, { "Content-Type": "application/json" });
      res.end(JSON.stringify({ error: { message: "invalid x-api-key", type: "authentication_error", code: "invalid_api_key" } }));
      return;
    }
    res.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-cache" });
    const send = (obj) => res.write(`data: ${typeof obj === "string" ? obj : JSON.stringify(obj)}\n\n`);
    const chunk = (delta, finish = null, usage = null) =>
      send({ id: "chatcmpl-e2e", object: "chat.completion.chunk", created: 0, model: body.model, choices: delta ? [{ index: 0, delta, finish_reason: finish }] : [], usage });
    const messages = body.messages ?? [];
    const last = messages[messages.length - 1] ?? {};
    const userText = [...messages].reverse().find((m) => m.role === "user");
    const said = typeof userText?.content === "string" ? userText.content : JSON.stringify(userText?.content ?? "");
    chunk({ role: "assistant", content: "" });
    let call = null;
    let text = "";
    if (last.role === "tool") text = `Tool said: ${String(last.content).slice(0, 80)}`;
    else if (/propose/i.test(said)) call = { name: "propose_workflow", arguments: { graph: proposal, title: "Text to image" } };
    else if (/canvas/i.test(said)) call = { name: "get_workflow", arguments: {} };
    else text = `You said: **${said.replace(/^@\S+\s*/, "")}**. In a graph that is \`KSampler\` work:\n\n\`\`\`python\nsteps = 20  # more is slower\ncfg = 7.0\n\`\`\`\n`;
    for (const word of text.split(/(?<= )/)) {
      if (res.destroyed) return;
      chunk({ content: word });
      await sleep(chunkMs);
    }
    if (call) {
      chunk({ tool_calls: [{ index: 0, id: `call_${requests.length}`, type: "function", function: { name: call.name, arguments: "" } }] });
      chunk({ tool_calls: [{ index: 0, function: { arguments: JSON.stringify(call.arguments) } }] });
    }
    chunk({}, call ? "tool_calls" : "stop");
    chunk(null, null, /cache/i.test(said)
      ? { prompt_tokens: 4512, completion_tokens: 180, total_tokens: 4692, prompt_tokens_details: { cached_tokens: 3100 } }
      : { prompt_tokens: 120, completion_tokens: 30, total_tokens: 150 });
    send("[DONE]");
    res.end();
  });
  const port = await listen(server);
  return { url: `http://${HOST}:${port}/v1`, requests, close: () => new Promise((ok) => server.close(ok)) };
}

// ---------------------------------------------------------------------------------- fake ComfyUI

const TYPES = { ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".json": "application/json", ".png": "image/png" };

function loadFixture(name, fallback) {
  const p = join(ROOT, "tests", "fixtures", "comfyui", name);
  return existsSync(p) ? JSON.parse(readFileSync(p, "utf8")) : fallback;
}

export const PROPOSAL = loadFixture("workflow_api_txt2img.json", {
  1: { class_type: "EmptyLatentImage", inputs: { width: 512, height: 512, batch_size: 1 } },
});

/**
 * A stand-in for ComfyUI: `/` is the fake canvas page, `/scripts/*` its app and api modules,
 * `/extensions/opencode/opencode.js` the real bundle, `/api/opencode/*` proxied to Opencode
 * (path without `/api`), and the few backend routes the ComfyUI tools read.
 */
export async function startFakeComfy() {
  let target = null; // set once Opencode runs: { host, port }
  const objectInfo = loadFixture("object_info.json", { EmptyLatentImage: { input: { required: {} }, output: ["LATENT"] } });
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    if (url.pathname.startsWith("/api/opencode/")) return proxyHttp(req, res, url);
    const backend = {
      "/object_info": objectInfo,
      "/models": loadFixture("models_folders.json", []),
      "/queue": { queue_running: [], queue_pending: [] },
    }[url.pathname];
    if (backend !== undefined) return json(res, backend);
    if (url.pathname.startsWith("/models/")) return json(res, ["sd15.safetensors"]);
    const file =
      url.pathname === "/" ? join(HERE, "fake-comfy", "index.html")
      : url.pathname === "/extensions/opencode/opencode.js" ? join(WEB, "dist", "opencode.js")
      : url.pathname.startsWith("/scripts/") ? normalize(join(HERE, "fake-comfy", url.pathname))
      : null;
    if (!file || !file.startsWith(HERE) && !file.startsWith(join(WEB, "dist")) || !existsSync(file)) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "Content-Type": TYPES[file.slice(file.lastIndexOf("."))] ?? "application/octet-stream", "Cache-Control": "no-cache" });
    res.end(readFileSync(file));
  });

  function json(res, data) {
    res.writeHead(200, { "Content-Type": "application/json" });
    res.end(JSON.stringify(data));
  }

  // ComfyUI serves /api/<route> for every route; Opencode sees its own path and its own Host.
  function forwardHeaders(headers) {
    const out = { ...headers, host: `${target.host}:${target.port}` };
    if (out.origin) out.origin = `http://${target.host}:${target.port}`;
    return out;
  }

  function proxyHttp(req, res, url) {
    const up = http.request(
      { host: target.host, port: target.port, method: req.method, path: url.pathname.slice(4) + url.search, headers: forwardHeaders(req.headers) },
      (r) => {
        res.writeHead(r.statusCode, r.headers);
        r.pipe(res);
      },
    );
    up.on("error", () => res.writeHead(502).end());
    req.pipe(up);
  }

  server.on("upgrade", (req, socket, head) => {
    const url = new URL(req.url, "http://x");
    if (!url.pathname.startsWith("/api/opencode/") || !target) return socket.destroy();
    const up = net.connect(target.port, target.host, () => {
      const headers = forwardHeaders(req.headers);
      const lines = [`GET ${url.pathname.slice(4)}${url.search} HTTP/1.1`, ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`)];
      up.write(lines.join("\r\n") + "\r\n\r\n");
      if (head?.length) up.write(head);
      up.pipe(socket);
      socket.pipe(up);
    });
    up.on("error", () => socket.destroy());
    socket.on("error", () => up.destroy());
  });

  const port = await listen(server);
  return {
    url: `http://${HOST}:${port}`,
    proxyTo(opencodeUrl) {
      const u = new URL(opencodeUrl);
      target = { host: u.hostname, port: Number(u.port) };
    },
    close: () => new Promise((ok) => { server.closeAllConnections?.(); server.close(ok); }),
  };
}
