// Accepting a proposal edits the canvas in place, checked in a real ComfyUI front end.
//
// Loads ComfyUI's default workflow and edits it as a person would: moves the KSampler, renames
// and colours VAE Decode, adds a Note, a group, a bypassed node and a Preview Image. Adds an
// Opencode Agent node and, in its panel, asks a scripted model (an OpenAI-compatible server on
// loopback in this process) for an upscale step. The model calls get_workflow, then
// propose_workflow with what it read: a new seed for the KSampler, an ImageScaleBy between VAE
// Decode and Save Image, the Preview Image left out (and the Opencode node too, as a model may).
// The script allows the tool, accepts the proposal in the panel and checks that: the preview is
// gone; every other node kept its place, title and colour; the note, the group and the bypassed
// node are still there; the seed changed; the new node is wired VAE Decode → ImageScaleBy → Save
// Image, right of VAE Decode, overlapping nothing; the Opencode node and its panel are still
// there; graphToPrompt now gives the proposal; the workflow is marked modified; and one undo
// takes it all back. It removes the session and the provider it made.
//
//   NODE_PATH=/work/pw/node_modules node tests/real_comfyui/proposal.cjs http://127.0.0.1:8188 [shots/prefix]
//
// Writes <prefix>-before.png, <prefix>-after.png and <prefix>-undone.png (default prefix
// /tmp/opencode-proposal). VUE_NODES=1 runs it in Nodes 2.0. Exit 0 when every check passed,
// 4 when one failed (each failure is printed), 1 on any other error.
const http = require("node:http");
const { chromium } = require("playwright-core");

const url = (process.argv[2] || "http://127.0.0.1:8188").replace(/\/$/, "");
const prefix = process.argv[3] || "/tmp/opencode-proposal";
const vueNodes = process.env.VUE_NODES === "1";
const T = 60000;

// ------------------------------------------------------------------ the scripted model

const model = { classes: {}, objectInfo: {}, seen: null, proposal: null, seed: null, requests: 0 };

/** What the model proposes: the canvas it read, edited. */
function propose(canvas) {
  const graph = JSON.parse(JSON.stringify(canvas));
  for (const [id, node] of Object.entries(graph)) {
    if (!node.class_type) {
      // A node the front end could not build (1.27.10 fails on Load Checkpoint's combo here):
      // graphToPrompt gives no class and an `UNKNOWN` input. Named as describe_node would.
      node.class_type = model.classes[id];
      const info = model.objectInfo[node.class_type];
      if (info) {
        const names = info.input_order?.required ?? Object.keys(info.input?.required ?? {});
        const values = Object.values(node.inputs).filter((v) => !Array.isArray(v));
        node.inputs = Object.fromEntries(names.map((n, i) => [n, values[i]]).filter(([, v]) => v !== undefined));
      }
    }
    if (node.class_type === "OpencodeAgent") delete graph[id]; // a model may well leave it out
    if (node.class_type === "PreviewImage") delete graph[id]; // the preview goes
  }
  const find = (type) => Object.keys(graph).find((id) => graph[id].class_type === type);
  const [ks, dec, save] = [find("KSampler"), find("VAEDecode"), find("SaveImage")];
  const id = String(Math.max(...Object.keys(canvas).map(Number).filter(Number.isFinite)) + 1);
  model.seed = graph[ks].inputs.seed === 42 ? 4242 : 42; // 1.58's default workflow already has 42
  graph[ks].inputs.seed = model.seed;
  graph[id] = { class_type: "ImageScaleBy", inputs: { upscale_method: "nearest-exact", scale_by: 1.5, image: [dec, 0] } };
  graph[save].inputs.images = [id, 0];
  return graph;
}

function startModel() {
  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const body = chunks.length ? JSON.parse(Buffer.concat(chunks).toString()) : {};
    if (req.method === "GET" && req.url.endsWith("/models")) {
      res.writeHead(200, { "Content-Type": "application/json" });
      res.end(JSON.stringify({ object: "list", data: [{ id: "probe-model", object: "model", created: 0, owned_by: "probe" }] }));
      return;
    }
    if (!req.url.endsWith("/chat/completions")) return res.writeHead(404).end();
    model.requests += 1;
    const messages = body.messages ?? [];
    const tools = messages.filter((m) => m.role === "tool");
    let call = null;
    let text = "";
    if (tools.length === 0) call = { name: "get_workflow", arguments: {} };
    else if (tools.length === 1) {
      const said = String(tools[0].content);
      model.seen = JSON.parse(said.slice(said.indexOf("\n") + 1));
      model.proposal = propose(model.seen);
      call = { name: "propose_workflow", arguments: { graph: model.proposal, title: "Upscale before saving" } };
    } else text = `Tool said: ${String(tools.at(-1).content).slice(0, 120)}`;
    res.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-cache" });
    const send = (obj) => res.write(`data: ${typeof obj === "string" ? obj : JSON.stringify(obj)}\n\n`);
    const chunk = (delta, finish = null, usage = null) =>
      send({ id: "chatcmpl-probe", object: "chat.completion.chunk", created: 0, model: body.model, choices: delta ? [{ index: 0, delta, finish_reason: finish }] : [], usage });
    chunk({ role: "assistant", content: "" });
    if (text) chunk({ content: text });
    if (call) {
      chunk({ tool_calls: [{ index: 0, id: `call_${model.requests}`, type: "function", function: { name: call.name, arguments: "" } }] });
      chunk({ tool_calls: [{ index: 0, function: { arguments: JSON.stringify(call.arguments) } }] });
    }
    chunk({}, call ? "tool_calls" : "stop");
    chunk(null, null, { prompt_tokens: 100, completion_tokens: 20, total_tokens: 120 });
    send("[DONE]");
    res.end();
  });
  return new Promise((ok) => server.listen(0, "127.0.0.1", () => ok(server)));
}

// ------------------------------------------------------------------ the page

async function api(page, method, path, data) {
  const r = await page.request.fetch(`${url}${path}`, { method, data, failOnStatusCode: false });
  if (!r.ok()) throw new Error(`${method} ${path}: ${r.status()} ${await r.text()}`);
  const text = await r.text();
  return text ? JSON.parse(text) : undefined;
}

/** Places, titles, colours and modes of every node; groups; what graphToPrompt gives. */
const snapshot = (page) => page.evaluate(async () => {
  const g = window.app.graph;
  const nodes = {};
  for (const n of g.nodes) {
    nodes[n.id] = {
      type: n.type, title: n.title, color: n.color ?? null, mode: n.mode, pos: [n.pos[0], n.pos[1]], size: [n.size[0], n.size[1]],
      widgets: Object.fromEntries((n.widgets ?? []).filter((w) => typeof w.value !== "object").map((w) => [w.name, w.value])),
      inputs: Object.fromEntries((n.inputs ?? []).filter((i) => i.link != null).map((i) => {
        const l = g.getLink ? g.getLink(i.link) : g.links.get(i.link);
        return [i.name, l ? [String(l.origin_id), l.origin_slot] : null];
      })),
    };
  }
  const groups = (g.groups ?? g._groups ?? []).map((gr) => ({ title: gr.title, pos: [gr.pos[0], gr.pos[1]], size: [gr.size[0], gr.size[1]] }));
  const prompt = (await window.app.graphToPrompt()).output;
  return { nodes, groups, prompt, titleHeight: window.LiteGraph.NODE_TITLE_HEIGHT ?? 30 };
});

(async () => {
  const llm = await startModel();
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const page = await browser.newPage({ viewport: { width: 2000, height: 1250 } });
  const problems = [];
  page.on("pageerror", (e) => problems.push(`pageerror: ${e.message} @ ${(e.stack || "").split("\n").slice(0, 8).join(" < ")}`));
  const failures = [];
  const check = (ok, what) => {
    if (!ok) failures.push(what);
  };
  let provider = null;
  let sessionId = null;
  try {
    await page.request.post(`${url}/settings/Comfy.TutorialCompleted`, { data: true });
    await page.request.post(`${url}/settings/Comfy.VueNodes.Enabled`, { data: vueNodes });
    provider = `probe-${Math.random().toString(16).slice(2, 10)}`;
    await api(page, "POST", "/opencode/providers", {
      name: provider, kind: "openai", base_url: `http://127.0.0.1:${llm.address().port}/v1`,
      default_model: "probe-model", models: { "probe-model": { tools: true, vision: false, context_tokens: 128000 } },
    });
    await page.goto(url, { waitUntil: "networkidle", timeout: 120000 });
    await page.waitForFunction(() => window.app?.graph && window.LiteGraph?.registered_node_types?.OpencodeAgent && window.LiteGraph.registered_node_types.KSampler, null, { timeout: 120000 });
    await page.keyboard.press("Escape");

    // The default workflow, edited by hand.
    await page.evaluate(async () => {
      const { app, LiteGraph } = window;
      await app.loadGraphData();
      const g = app.graph;
      const byType = (t) => g.nodes.find((n) => n.type === t);
      const box = (n) => [n.pos[0], n.pos[1] - 30, n.pos[0] + n.size[0], n.pos[1] + n.size[1]];
      const ks = byType("KSampler");
      ks.pos = [ks.pos[0] + 40, ks.pos[1] - 60];
      const dec = byType("VAEDecode");
      dec.title = "My decoder";
      dec.color = "#335533";
      // A note right under the decoder, where a new node fed by it might land.
      const note = LiteGraph.createNode("Note");
      note.pos = [dec.pos[0], box(dec)[3] + 60];
      g.add(note);
      note.widgets[0].value = "keep me";
      // A group around the two prompts.
      const prompts = g.nodes.filter((n) => n.type === "CLIPTextEncode").map(box);
      const group = new LiteGraph.LGraphGroup("Prompts");
      const [gx, gy] = [Math.min(...prompts.map((b) => b[0])) - 10, Math.min(...prompts.map((b) => b[1])) - 40];
      group.pos = [gx, gy];
      group.size = [Math.max(...prompts.map((b) => b[2])) + 10 - gx, Math.max(...prompts.map((b) => b[3])) + 10 - gy];
      g.add(group);
      // A bypassed node fed by the decoder, right of everything.
      const bypassed = LiteGraph.createNode("ImageInvert");
      const right = Math.max(...g.nodes.map((n) => box(n)[2]));
      bypassed.pos = [right + 60, dec.pos[1]];
      g.add(bypassed);
      bypassed.mode = 4;
      dec.connect(0, bypassed, 0);
      // A preview the proposal removes.
      const preview = LiteGraph.createNode("PreviewImage");
      preview.pos = [right + 60, dec.pos[1] + 160];
      g.add(preview);
      dec.connect(0, preview, 0);
      // The Opencode node, left of everything.
      const agent = LiteGraph.createNode("OpencodeAgent");
      const left = Math.min(...g.nodes.map((n) => box(n)[0]));
      const top = Math.min(...g.nodes.map((n) => box(n)[1]));
      g.add(agent);
      agent.pos = [left - agent.size[0] - 80, top + 30];
      // Everything in view.
      const all = g.nodes.map(box);
      const [x0, y0, x1, y1] = [Math.min(...all.map((b) => b[0])), Math.min(...all.map((b) => b[1])), Math.max(...all.map((b) => b[2])), Math.max(...all.map((b) => b[3]))];
      const el = app.canvas.canvas;
      const scale = Math.min(1, (el.clientWidth - 160) / (x1 - x0), (el.clientHeight - 160) / (y1 - y0));
      app.canvas.ds.scale = scale;
      app.canvas.ds.offset = [100 / scale - x0, 100 / scale - y0];
      g.setDirtyCanvas(true, true);
    });
    const panel = page.locator(".oc-node-host").first();
    await panel.locator("textarea").waitFor({ timeout: T });
    await page.waitForFunction(() => /^ses_/.test(String(window.app.graph.nodes.find((n) => n.type === "OpencodeAgent").widgets.find((w) => w.name === "session_id").value)), null, { timeout: T });
    sessionId = await page.evaluate(() => window.app.graph.nodes.find((n) => n.type === "OpencodeAgent").widgets.find((w) => w.name === "session_id").value);
    await api(page, "PATCH", `/opencode/sessions/${sessionId}`, { skills: ["assistant", "comfyui"], provider, model: "probe-model" });
    await page.waitForFunction(() => window.app.graph.nodes.find((n) => n.type === "OpencodeAgent").widgets.find((w) => w.name === "provider").value !== "", null, { timeout: T });
    model.classes = await page.evaluate(() => Object.fromEntries(window.app.graph.nodes.map((n) => [n.id, n.type])));
    const unbuilt = await page.evaluate(() => window.app.graph.nodes.filter((n) => !n.comfyClass && n.has_errors).map((n) => n.type));
    for (const type of unbuilt) Object.assign(model.objectInfo, await api(page, "GET", `/object_info/${type}`));
    const before = await snapshot(page);
    await page.screenshot({ path: `${prefix}-before.png` });

    await panel.locator("textarea").fill("Add an upscale step before saving");
    await panel.getByRole("button", { name: "Send" }).click();
    await panel.locator("[data-testid=permission-card]").getByRole("button", { name: "Allow", exact: true }).click({ timeout: T });
    const card = panel.locator("[data-testid=proposal-card]");
    await card.waitFor({ timeout: T });
    await card.getByRole("button", { name: "Load into canvas" }).click();
    await page.waitForFunction(() => window.app.graph.nodes.some((n) => n.type === "ImageScaleBy"), null, { timeout: T });
    await panel.getByText("Tool said: The user accepted the workflow").waitFor({ timeout: T });
    const toast = await page.getByText("Applied to the canvas").first().innerText({ timeout: 5000 }).catch(() => "(no toast seen)");
    await page.waitForTimeout(500);
    await page.screenshot({ path: `${prefix}-after.png` });
    const after = await snapshot(page);

    // ---- checks
    const byType = (s, t) => Object.entries(s.nodes).find(([, n]) => n.type === t);
    check(JSON.stringify(Object.keys(model.seen).sort()) === JSON.stringify(Object.keys(before.prompt).sort()), "get_workflow gave the canvas's own node ids");
    const scale = Object.entries(after.nodes).find(([, n]) => n.type === "ImageScaleBy");
    check(!!scale, "an ImageScaleBy node was added");
    const [previewId] = byType(before, "PreviewImage");
    check(!after.nodes[previewId], "the Preview Image the proposal left out was removed");
    for (const [id, n] of Object.entries(before.nodes)) {
      if (id === previewId) continue;
      const now = after.nodes[id];
      if (!now) {
        failures.push(`node ${id} (${n.type}) is gone`);
        continue;
      }
      check(Math.abs(now.pos[0] - n.pos[0]) < 0.5 && Math.abs(now.pos[1] - n.pos[1]) < 0.5, `node ${id} (${n.type}) stayed at ${n.pos} (now ${now.pos})`);
      check(now.title === n.title && now.color === n.color && now.mode === n.mode, `node ${id} kept its title, colour and mode`);
    }
    check(byType(after, "Note")?.[1].widgets.text === "keep me", "the note is still there with its text");
    check(JSON.stringify(after.groups) === JSON.stringify(before.groups) && after.groups.length === 1, "the group is still there, unchanged");
    check(byType(after, "ImageInvert")?.[1].mode === 4, "the bypassed node is still there, bypassed");
    check(byType(after, "KSampler")?.[1].widgets.seed === model.seed, `the KSampler's seed is ${model.seed}`);
    check(byType(after, "KSampler")?.[1].widgets.control_after_generate === byType(before, "KSampler")?.[1].widgets.control_after_generate, "control_after_generate untouched");
    const [decId] = byType(after, "VAEDecode");
    if (scale) {
      const [scaleId, s] = scale;
      check(JSON.stringify(s.inputs.image) === JSON.stringify([decId, 0]), `ImageScaleBy is fed by VAE Decode (${JSON.stringify(s.inputs)})`);
      check(JSON.stringify(byType(after, "SaveImage")[1].inputs.images) === JSON.stringify([scaleId, 0]), "Save Image is fed by ImageScaleBy");
      check(s.widgets.scale_by === 1.5, "ImageScaleBy's scale_by is 1.5");
      const th = after.titleHeight;
      const box = (n) => [n.pos[0], n.pos[1] - th, n.size[0], n.size[1] + th];
      const a = box(s);
      for (const [id, n] of Object.entries(after.nodes)) {
        if (id === scaleId) continue;
        const o = box(n);
        const hit = a[0] < o[0] + o[2] && o[0] < a[0] + a[2] && a[1] < o[1] + o[3] && o[1] < a[1] + a[3];
        check(!hit, `ImageScaleBy at ${s.pos} overlaps node ${id} (${n.type}) at ${n.pos}`);
      }
      check(s.pos[0] > after.nodes[decId].pos[0], "ImageScaleBy sits right of VAE Decode");
      // The canvas now gives what was proposed (the new node under its canvas id).
      const expected = JSON.parse(JSON.stringify(model.proposal).replaceAll(`"${Object.keys(model.proposal).at(-1)}"`, `"${scaleId}"`));
      const got = JSON.parse(JSON.stringify(after.prompt));
      for (const [id, n] of Object.entries(got)) {
        delete n._meta;
        if (!n.class_type) delete got[id]; // a node the front end could not build: nothing to compare
      }
      for (const [id, n] of Object.entries(expected)) {
        delete n._meta;
        if (unbuilt.includes(n.class_type) && model.classes[id] === n.class_type) delete expected[id];
      }
      const agentId = byType(after, "OpencodeAgent")?.[0];
      delete got[agentId];
      for (const [id, n] of Object.entries(expected)) {
        const g = got[id];
        if (!g) failures.push(`graphToPrompt lacks proposal node ${id}`);
        else for (const [k, v] of Object.entries(n.inputs)) if (JSON.stringify(g.inputs[k]) !== JSON.stringify(v)) failures.push(`graphToPrompt ${id}.${k} is ${JSON.stringify(g.inputs[k])}, proposed ${JSON.stringify(v)}`);
      }
      check(Object.keys(got).length === Object.keys(expected).length, `graphToPrompt gives ${Object.keys(got).length} nodes besides the agent, the proposal ${Object.keys(expected).length}`);
    }
    check(!!byType(after, "OpencodeAgent"), "the Opencode node is still there");
    check(await panel.locator("textarea").isVisible(), "its panel is still mounted");
    const modified = await page.evaluate(() => window.app.extensionManager?.workflow?.activeWorkflow?.isModified ?? null);
    check(modified === true, `the workflow is marked modified (${modified})`);

    // One undo takes the whole edit back.
    await page.evaluate(() => window.app.extensionManager.workflow.activeWorkflow.changeTracker.undo());
    await page.waitForTimeout(500);
    const undone = await snapshot(page);
    await page.screenshot({ path: `${prefix}-undone.png` });
    check(!byType(undone, "ImageScaleBy"), "after one undo there is no ImageScaleBy");
    check(!!byType(undone, "PreviewImage"), "after one undo the Preview Image is back");
    check(byType(undone, "KSampler")?.[1].widgets.seed === byType(before, "KSampler")?.[1].widgets.seed, "after one undo the seed is back");
    check(JSON.stringify(byType(undone, "SaveImage")?.[1].inputs.images) === JSON.stringify([decId, 0]), "after one undo Save Image is fed by VAE Decode again");

    const frontEnd = await page.evaluate(() => window.__COMFYUI_FRONTEND_VERSION__ ?? null);
    console.log(JSON.stringify({
      frontEnd, vueNodes, toast, added: scale && { id: scale[0], pos: scale[1].pos, size: scale[1].size },
      shots: [`${prefix}-before.png`, `${prefix}-after.png`, `${prefix}-undone.png`], failures, problems,
    }, null, 1));
  } catch (e) {
    // Where it stopped: the page and what the panel said.
    await page.screenshot({ path: `${prefix}-error.png` }).catch(() => undefined);
    const said = await page.locator(".oc-node-host").first().innerText({ timeout: 2000 }).catch(() => "(no panel)");
    console.error(`stopped: see ${prefix}-error.png; the panel said:\n${said.slice(-1500)}\npage errors: ${problems.join(" | ")}`);
    throw e;
  } finally {
    if (sessionId) await api(page, "DELETE", `/opencode/sessions/${sessionId}`).catch(() => undefined);
    if (provider) await api(page, "DELETE", `/opencode/providers/${provider}`).catch(() => undefined);
    await browser.close();
    llm.close();
  }
  process.exit(failures.length ? 4 : 0);
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
