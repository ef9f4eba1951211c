// Open a real ComfyUI's front end in Debian's Chromium, add an OpencodeAgent node, send a message
// in its panel (echo skill: no model needed) and save a screenshot of the canvas; then remove the
// node and exit 2 if that throws. Also opens the Opencode sidebar tab (exit 3 if its panel does
// not show; a 4th argument saves a picture of it).
// VUE_NODES=1 switches the front end to Nodes 2.0 (setting Comfy.VueNodes.Enabled) first;
// otherwise the classic canvas is set. The setting is stored on the server, like the tutorial flag.
// Needs playwright-core installed OUTSIDE the repo (see README.md in this folder):
//   NODE_PATH=/work/pw/node_modules node tests/real_comfyui/screenshot.cjs http://127.0.0.1:8188 out.png [sidebar.png]
const { chromium } = require("playwright-core");

const url = process.argv[2] || "http://127.0.0.1:8188";
const out = process.argv[3] || "docs/screenshots/node-in-comfyui.png";
const sidebarOut = process.argv[4];
const vueNodes = process.env.VUE_NODES === "1";

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
  await page.request.post(`${url}/settings/Comfy.VueNodes.Enabled`, { data: vueNodes });
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
  const frontEnd = await page.evaluate(() => ({
    version: window.__COMFYUI_FRONTEND_VERSION__ ?? null,
    vueNodes: window.app.extensionManager?.setting?.get?.("Comfy.VueNodes.Enabled") ?? null,
    vueNodeElements: document.querySelectorAll("[data-node-id]").length,
    // Nodes 2.0 rows besides the panel's: none expected (the bound widgets are hidden)
    otherWidgetRows: [...document.querySelectorAll("[data-node-id] [data-testid=node-widget]")]
      .filter((e) => !e.querySelector(".oc-node-host")).map((e) => e.textContent.trim().slice(0, 30)),
  }));
  // The same panel as a sidebar tab.
  let sidebar = "not found";
  // class up to 1.49, data-testid in 1.58
  const tabButton = page.locator(".opencode-tab-button, [data-testid=opencode-tab-button]").first();
  if (await tabButton.count()) {
    await tabButton.click();
    const side = page.locator("[data-testid=opencode-panel]").filter({ hasNot: page.locator(".oc-node-host") });
    try {
      await page.waitForFunction(() => [...document.querySelectorAll("[data-testid=opencode-panel]")]
        .some((e) => !e.closest(".oc-node-host") && e.getBoundingClientRect().width > 100), null, { timeout: 15000 });
      sidebar = "ok";
      if (sidebarOut) await page.screenshot({ path: sidebarOut });
    } catch (e) {
      sidebar = `no panel: ${e.message.split("\n")[0]} (${await side.count()})`;
    }
    await tabButton.click();
  }
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
  console.log(JSON.stringify({ frontEnd, panelText: text.slice(0, 400), sidebar, removal, problems }, null, 1));
  await browser.close();
  if (removal !== "ok") process.exit(2);
  if (sidebar !== "ok") process.exit(3);
})().catch((e) => { console.error(e); process.exit(1); });
