// Open a real ComfyUI's front end in Debian's Chromium, add an OpencodeAgent node, send a message
// in its panel (echo skill: no model needed) and save a screenshot of the canvas; then remove the
// node and exit 2 if that throws.
// Needs playwright-core installed OUTSIDE the repo (see README.md in this folder):
//   NODE_PATH=/work/pw/node_modules node tests/real_comfyui/screenshot.cjs http://127.0.0.1:8188 out.png
const { chromium } = require("playwright-core");

const url = process.argv[2] || "http://127.0.0.1:8188";
const out = process.argv[3] || "docs/screenshots/node-in-comfyui.png";

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const problems = [];
  page.on("pageerror", (e) => problems.push(`pageerror: ${e.message} ${(e.stack || "").split("\n").slice(1, 4).join(" | ")}`));
  page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()} ${m.location().url || ""}`); });
  page.on("response", (r) => { if (r.status() >= 400) problems.push(`HTTP ${r.status()} ${r.url()}`); });
  // No first-run template dialog: that is a setting on the server.
  await page.request.post(`${url}/settings/Comfy.TutorialCompleted`, { data: true });
  await page.goto(url, { waitUntil: "networkidle", timeout: 120000 });
  await page.waitForFunction(() => window.app && window.app.graph && window.LiteGraph, null, { timeout: 120000 });
  // Wait until ComfyUI has registered the node types from /object_info (our extension included).
  await page.waitForFunction(() => !!window.LiteGraph.registered_node_types["OpencodeAgent"], null, { timeout: 60000 });
  await page.keyboard.press("Escape");
  await page.evaluate(() => {
    const app = window.app;
    app.graph.clear();
    const node = window.LiteGraph.createNode("OpencodeAgent");
    node.pos = [120, 110];
    app.graph.add(node);
    const widget = node.widgets.find((w) => w.name === "skills");
    widget.value = "echo";
    widget.callback?.("echo");
    app.canvas.ds.offset = [0, 0];
    app.canvas.ds.scale = 1;
    app.graph.setDirtyCanvas(true, true);
  });
  // The panel mounts inside the node as a DOM widget.
  const panel = page.locator(".oc-node-host");
  await panel.first().waitFor({ state: "visible", timeout: 30000 });
  const box = panel.locator("textarea").first();
  if (await box.count()) {
    await box.fill("Hello from a real ComfyUI");
    await panel.getByRole("button", { name: "Send" }).click();
    await panel.getByText("Hello from a real ComfyUI").nth(1).waitFor({ timeout: 30000 }); // the echo reply
  }
  await page.waitForTimeout(500);
  await page.screenshot({ path: out });
  const text = await panel.first().innerText();
  // After the picture: removing the node (what deleting it or opening another workflow does)
  // must not throw; ComfyUI's DOM widget onRemove needs its `this`.
  const removal = await page.evaluate(() => {
    const node = window.app.graph._nodes.find((n) => n.type === "OpencodeAgent");
    try {
      window.app.graph.remove(node);
      return "ok";
    } catch (e) {
      return `threw: ${e.message}`;
    }
  });
  console.log(JSON.stringify({ panelText: text.slice(0, 400), removal, problems }, null, 1));
  await browser.close();
  if (removal !== "ok") process.exit(2);
})().catch((e) => { console.error(e); process.exit(1); });
