// End-to-end: the real bundle in Debian's Chromium against the real standalone server, a fake
// OpenAI-format LLM and a fake ComfyUI canvas. Run: `node e2e/run.mjs` (after `npm run build`).
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { launch, recordTraffic } from "./browser.mjs";
import { api, PROPOSAL, startFakeComfy, startFakeLLM, startOpencode, WEB } from "./servers.mjs";

const SHOTS = join(WEB, "e2e", "screenshots");
const T = 30_000;
const REVOKED_KEY = "sk-e2e-revoked-0000";
let llm, comfy, oc, browser;

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  llm = await startFakeLLM({ proposal: PROPOSAL, revokedKeys: [REVOKED_KEY] });
  comfy = await startFakeComfy();
  oc = await startOpencode({ comfyuiUrl: comfy.url });
  comfy.proxyTo(oc.url);
  await api(oc.url, "POST", "/opencode/providers", { name: "fake", kind: "openai", base_url: llm.url, default_model: "fake-model" });
  await api(oc.url, "PUT", "/opencode/providers/fake/key", { key: "sk-setup-0000" });
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await oc?.stop();
  await comfy?.close();
  await llm?.close();
});

/** `it`, with the pages' transcripts and the server's last log lines added to any failure. */
const pages = new Set();
function scenario(name, fn) {
  it(name, async () => {
    pages.clear();
    try {
      await fn();
    } catch (e) {
      const seen = [];
      for (const p of pages) seen.push(await p.locator(".oc-transcript").first().innerText({ timeout: 1000 }).catch(() => "(closed)"));
      e.message += `\n--- transcripts\n${seen.join("\n---\n")}\n--- server log\n${oc.log.join("").split("\n").slice(-25).join("\n")}`;
      throw e;
    }
  });
}

async function newSession(body) {
  return (await api(oc.url, "POST", "/opencode/sessions", body)).id;
}

/** A fresh browser context whose standalone panel opens `sessionId`. */
async function standalone(sessionId, { dark = false, width = 900, height = 760 } = {}) {
  const ctx = await browser.newContext({ viewport: { width, height }, colorScheme: dark ? "dark" : "light" });
  await ctx.addInitScript(([k, v]) => localStorage.setItem(k, v), ["opencode.standalone.session", sessionId]);
  const page = await openPage(ctx, `${oc.url}/opencode/`);
  return { ctx, page };
}

async function openPage(ctx, url) {
  const page = await ctx.newPage();
  pages.add(page);
  page.on("pageerror", (e) => console.error("pageerror:", e.message));
  await page.goto(url);
  await ready(page);
  return page;
}

/** Connected, and the session's snapshot is in. */
async function ready(page) {
  await page.locator("[data-testid=connection][data-state=open]").waitFor({ timeout: T });
  await page.locator("[data-testid=opencode-panel][data-phase=ready]").waitFor({ timeout: T });
}

async function send(page, text) {
  await page.locator("textarea").fill(text);
  await page.locator("textarea").press("Enter");
}

const replies = (page) => page.locator("article.oc-msg--assistant");
const lastReply = (page) => replies(page).last();

/** Send, then return the locator of the first reply that did not exist before. */
async function sendForReply(page, text) {
  const before = await replies(page).count();
  await send(page, text);
  const reply = replies(page).nth(before);
  await reply.waitFor({ timeout: T });
  return reply;
}

async function waitStatus(locator, status) {
  try {
    await locator.and(locator.page().locator(`[data-status=${status}]`)).waitFor({ timeout: T });
  } catch (e) {
    const now = await locator.evaluate((el) => `${el.dataset.status}: ${el.textContent}`, null, { timeout: 1000 }).catch(() => "gone");
    throw new Error(`waiting for ${status}, the message is ${now}\n${e.message}`);
  }
}

describe("standalone panel", () => {
  scenario("streams a reply, Stop aborts it, and a reload restores the history", async () => {
    const id = await newSession({ skills: ["echo"] });
    const { ctx, page } = await standalone(id);
    const words = Array.from({ length: 60 }, (_, i) => `word${i}`).join(" ");
    await send(page, words);
    const reply = lastReply(page);
    await waitStatus(reply, "streaming");
    await reply.locator(".oc-md", { hasText: "word0 word1" }).waitFor({ timeout: T });
    await page.getByRole("button", { name: "Stop", exact: true }).click();
    await waitStatus(reply, "aborted");
    assert.equal(await reply.locator("[data-testid=message-status]").innerText(), "stopped");
    const partial = (await reply.locator(".oc-md").innerText()).trim();
    assert.ok(partial.startsWith("word0 word1") && partial.length < words.length, `partial reply: ${partial}`);
    assert.equal(await page.getByRole("button", { name: "Stop", exact: true }).count(), 0);

    await page.reload();
    await ready(page);
    const restored = lastReply(page);
    await waitStatus(restored, "aborted");
    assert.equal((await restored.locator(".oc-md").innerText()).trim(), partial);
    assert.equal(await page.locator("article.oc-msg--user .oc-bubble").last().innerText(), words);
    await ctx.close();
  });

  scenario("a second tab sees the same stream live, without duplicated text", async () => {
    const id = await newSession({ skills: ["echo"] });
    const { ctx, page: first } = await standalone(id);
    const second = await openPage(ctx, `${oc.url}/opencode/`);
    const text = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu";
    await send(first, text);
    await waitStatus(lastReply(second), "streaming"); // live in the other tab, not after the fact
    await waitStatus(lastReply(second), "completed");
    await waitStatus(lastReply(first), "completed");
    assert.equal((await lastReply(second).locator(".oc-md").innerText()).trim(), text);
    assert.equal((await lastReply(first).locator(".oc-md").innerText()).trim(), text);
    await ctx.close();
  });

  scenario("a permission request is approved in the panel", async () => {
    const id = await newSession({ skills: ["assistant", "comfyui"], provider: "fake", model: "fake-model" });
    const { ctx, page } = await standalone(id);
    await send(page, "Please propose a workflow for a cat picture");
    const card = page.locator("[data-testid=permission-card]");
    await card.waitFor({ timeout: T });
    assert.match(await card.innerText(), /Assistant wants to use propose_workflow/);
    assert.match(await card.innerText(), /edit/);
    await card.getByRole("button", { name: "Allow", exact: true }).click();
    await card.getByText("Allowed", { exact: true }).waitFor({ timeout: T });
    // Allowed: the proposal reaches the panel; the standalone page has no canvas to load it into.
    const proposal = page.locator("[data-testid=proposal-card]");
    await proposal.waitFor({ timeout: T });
    assert.match(await proposal.innerText(), /Proposed workflow: 7 nodes/);
    assert.equal(await proposal.getByRole("button", { name: "Load into canvas" }).isDisabled(), true);
    await proposal.getByRole("button", { name: "Reject" }).click();
    const reply = lastReply(page);
    await waitStatus(reply, "completed");
    assert.match(await reply.innerText(), /Tool said: The user rejected the proposed workflow/);
    assert.match(await reply.locator("[data-testid=tool-card] summary").innerText(), /propose_workflow[\s\S]*done/);
    // The run's server log reached the debug drawer live.
    await page.getByRole("button", { name: "Debug" }).click();
    await page.locator(".oc-log", { hasText: "propose_workflow" }).first().waitFor({ timeout: T });
    await ctx.close();
  });

  scenario("two roles stream side by side", async () => {
    const id = await newSession({ skills: ["echo", "assistant"], provider: "fake", model: "fake-model", title: "Two roles" });
    const { ctx, page } = await standalone(id, { dark: true, width: 1100, height: 720 });
    await send(page, "Both of you, answer at the same time so we can compare how you stream");
    const grid = page.locator(".oc-turn-replies").last();
    await grid.waitFor({ timeout: T });
    await page.waitForFunction(
      () => {
        const g = [...document.querySelectorAll(".oc-turn-replies")].pop();
        const live = g ? [...g.querySelectorAll("article[data-status=streaming]")] : [];
        return live.length === 2 && live.every((a) => (a.querySelector(".oc-md")?.textContent ?? "").length > 0);
      },
      null,
      { timeout: T, polling: 20 },
    );
    assert.deepEqual(await grid.locator(".oc-role").allInnerTexts(), ["Echo", "Assistant"]);
    await waitStatus(grid.locator("article").nth(0), "completed");
    await waitStatus(grid.locator("article").nth(1), "completed");
    await page.locator("[data-testid=usage]").waitFor({ timeout: T });
    await page.screenshot({ path: join(SHOTS, "standalone.png") });
    await ctx.close();
  });

  scenario("an API key goes to the key route only and is left nowhere in the page", async () => {
    const KEY = "sk-e2e-SECRET-7Q2Z";
    const id = await newSession({ skills: ["assistant"], provider: "fake", model: "fake-model" });
    const { ctx, page } = await standalone(id);
    const traffic = recordTraffic(page);
    await page.getByRole("button", { name: "Providers" }).click();
    const section = page.locator("[data-provider=fake]");
    const field = section.locator("input[type=password]");
    await field.fill(KEY);
    await section.getByRole("button", { name: "Save" }).click();
    await section.locator("[data-testid=key-hint]", { hasText: "7Q2Z" }).waitFor({ timeout: T });
    assert.equal(await field.inputValue(), "");
    await page.getByRole("button", { name: "Close" }).click();

    await waitStatus(await sendForReply(page, "hello with the new key"), "completed");
    assert.equal(llm.requests.at(-1).headers.authorization, `Bearer ${KEY}`); // the key works

    const carrying = traffic.requests.filter((r) => r.body.includes(KEY) || r.url.includes(KEY) || JSON.stringify(r.headers).includes(KEY));
    assert.deepEqual(carrying.map((r) => `${r.method} ${new URL(r.url).pathname}`), ["PUT /opencode/providers/fake/key"]);
    assert.deepEqual(traffic.frames.filter((f) => f.payload.includes(KEY)), []);
    assert.deepEqual(traffic.responses.filter((r) => r.body.includes(KEY)).map((r) => r.url), []);
    const left = await page.evaluate((key) => {
      const values = [...document.querySelectorAll("input, textarea")].map((e) => e.value);
      const storage = [localStorage, sessionStorage].flatMap((s) => Object.keys(s).map((k) => s.getItem(k)));
      return [document.documentElement.outerHTML, ...values, ...storage].filter((v) => String(v).includes(key)).length;
    }, KEY);
    assert.equal(left, 0);
    await ctx.close();
  });

  scenario("a reply refused for its key offers the fix beside the error: the key field, then Retry (narrow panel)", async () => {
    await api(oc.url, "POST", "/opencode/providers", { name: "revoked", kind: "openai", base_url: llm.url, default_model: "fake-model" });
    await api(oc.url, "PUT", "/opencode/providers/revoked/key", { key: REVOKED_KEY });
    const id = await newSession({ skills: ["assistant"], provider: "revoked", model: "fake-model" });
    const { ctx, page } = await standalone(id, { width: 400, height: 700 });
    await page.locator(".oc-root--narrow").waitFor({ timeout: T });
    const failed = await sendForReply(page, "hello with a revoked key");
    await waitStatus(failed, "error");
    const error = failed.locator("[data-testid=message-error]");
    assert.equal(await error.getAttribute("data-code"), "provider_auth");
    assert.match(await error.innerText(), /invalid x-api-key/);
    const fix = failed.getByRole("button", { name: "Check the API key" });
    const retry = failed.getByRole("button", { name: "Retry" });
    // Under the error's words, side by side, inside the reply: nothing squeezed or cut at 400 px.
    const [words, fixBox, retryBox, bubble] = await Promise.all([
      error.locator(".oc-msg-error-text").boundingBox(), fix.boundingBox(), retry.boundingBox(), failed.locator(".oc-bubble").boundingBox(),
    ]);
    assert.ok(fixBox.y >= words.y + words.height - 1 && Math.abs(fixBox.y - retryBox.y) <= 1 && retryBox.x >= fixBox.x + fixBox.width, JSON.stringify({ words, fixBox, retryBox }));
    assert.ok(retryBox.x + retryBox.width <= bubble.x + bubble.width + 1, JSON.stringify({ retryBox, bubble }));
    for (const b of [fix, retry]) assert.equal(await b.evaluate((el) => el.scrollWidth <= el.clientWidth), true, "a button's label overflows it");

    await fix.click();
    const section = page.locator(".oc-dialog [data-provider=revoked]");
    await section.waitFor({ timeout: T });
    assert.deepEqual(await focusInfo(page), { tag: "INPUT", label: "API key (revoked)", inPanel: true, inDialog: true });
    await page.keyboard.type("sk-e2e-renewed-5678");
    await page.keyboard.press("Enter");
    await section.locator("[data-testid=key-hint]", { hasText: "5678" }).waitFor({ timeout: T });
    await page.keyboard.press("Escape");
    assert.equal(await page.locator(".oc-dialog").count(), 0);
    assert.equal(await page.evaluate(() => document.activeElement?.textContent?.trim()), "Check the API key"); // back where it left
    await page.keyboard.press("Tab"); // the keyboard alone: on to Retry, and press it
    assert.equal(await page.evaluate(() => document.activeElement?.textContent?.trim()), "Retry");
    const before = await replies(page).count();
    await page.keyboard.press("Enter");
    const again = replies(page).nth(before);
    await waitStatus(again, "completed");
    assert.match(await again.innerText(), /You said: hello with a revoked key/);
    assert.equal(llm.requests.filter((r) => r.url.endsWith("/chat/completions")).at(-1).headers.authorization, "Bearer sk-e2e-renewed-5678");
    await ctx.close();
  });

  scenario("a message too long for its model's declared context: the fix opens the model's form, a larger context and Retry answer it", async () => {
    await api(oc.url, "POST", "/opencode/providers", {
      name: "small", kind: "openai", base_url: llm.url, default_model: "fake-model", models: { "fake-model": { context_tokens: 1024 } },
    });
    await api(oc.url, "PUT", "/opencode/providers/small/key", { key: "sk-e2e-small-0000" });
    const id = await newSession({ skills: ["assistant"], provider: "small", model: "fake-model" });
    const { ctx, page } = await standalone(id);
    const chats = () => llm.requests.filter((r) => r.url.endsWith("/chat/completions")).length;
    const sentBefore = chats();
    // About 750 tokens (4 characters a token) in a few long words, which the fake streams back one at a time.
    const long = Array.from({ length: 24 }, (_, i) => `part${i}${"abcdefghij".repeat(12)}`).join(" ");
    const failed = await sendForReply(page, long);
    await waitStatus(failed, "error");
    assert.equal(await failed.locator("[data-testid=message-error]").getAttribute("data-code"), "context_exceeded");
    assert.equal(chats(), sentBefore); // refused before any request
    await failed.getByRole("button", { name: "Set the model's context" }).click();
    const form = page.locator(".oc-dialog [data-provider=small] form[aria-label='Model fake-model']");
    await form.waitFor({ timeout: T });
    assert.equal(await page.evaluate(() => document.activeElement?.getAttribute("name")), "context_tokens");
    assert.equal(await form.locator("[name=context_tokens]").inputValue(), "1024");
    await page.keyboard.press("Control+A");
    await page.keyboard.type("10");
    await page.keyboard.press("Enter");
    await form.getByRole("alert").filter({ hasText: "A whole number from 512 to 100,000,000" }).waitFor({ timeout: T });
    await page.keyboard.press("Control+A");
    await page.keyboard.type("200000");
    await page.keyboard.press("Enter");
    await form.waitFor({ state: "detached", timeout: T });
    assert.equal((await api(oc.url, "GET", "/opencode/providers/small")).models["fake-model"].context_tokens, 200_000);
    await page.locator(".oc-dialog [data-provider=small] [data-model=fake-model]", { hasText: "200,000" }).waitFor({ timeout: T });
    await page.locator("select[aria-label=Model] option", { hasText: "fake-model — 200.0k context" }).waitFor({ state: "attached", timeout: T });
    await page.keyboard.press("Escape"); // the models
    await page.keyboard.press("Escape"); // the dialog
    assert.equal(await page.locator(".oc-dialog").count(), 0);
    const before = await replies(page).count();
    await failed.getByRole("button", { name: "Retry" }).click();
    const again = replies(page).nth(before);
    await waitStatus(again, "completed");
    assert.match(await again.innerText(), /You said: part0abcdefghij/);
    await ctx.close();
  });

  scenario("adds, edits and deletes a provider profile; the server's refusal shows beside the form", async () => {
    const id = await newSession({ skills: ["echo"] });
    const { ctx, page } = await standalone(id);
    const traffic = recordTraffic(page);
    await page.getByRole("button", { name: "Providers" }).click();
    const dialog = page.locator(".oc-dialog");
    await dialog.getByRole("button", { name: "Custom…" }).click();
    const form = dialog.locator("[data-testid=provider-form]");
    await form.locator("[name=name]").fill("e2e-local");
    await form.locator("[name=kind]").selectOption("ollama");
    await form.locator("[name=base_url]").fill("ftp://nowhere");
    await form.locator("[name=default_model]").fill("tiny");
    await form.getByRole("button", { name: "Add" }).click();
    const error = form.locator("[data-testid=provider-form-error]");
    await error.waitFor({ timeout: T });
    assert.match(await error.innerText(), /base_url must be an http\(s\) URL/);
    await form.locator("[name=base_url]").fill(llm.url);
    await form.getByRole("button", { name: "Add" }).click();
    const section = dialog.locator("[data-provider=e2e-local]");
    await section.waitFor({ timeout: T });
    assert.equal(await form.count(), 0);
    assert.equal((await api(oc.url, "GET", "/opencode/providers/e2e-local")).default_model, "tiny");

    await section.getByRole("button", { name: "Edit e2e-local" }).click();
    await section.locator("[name=default_model]").fill("tinier");
    await section.locator("[data-testid=provider-form]").getByRole("button", { name: "Save" }).click();
    await section.locator("[data-testid=provider-form]").waitFor({ state: "detached", timeout: T });
    assert.equal((await api(oc.url, "GET", "/opencode/providers/e2e-local")).default_model, "tinier");

    await section.getByRole("button", { name: "Delete", exact: true }).click();
    await section.getByRole("button", { name: "Confirm" }).click();
    await section.waitFor({ state: "detached", timeout: T });
    const names = (await api(oc.url, "GET", "/opencode/providers")).providers.map((p) => p.name);
    assert.ok(!names.includes("e2e-local"), names.join(","));
    const writes = traffic.requests.filter((r) => r.method !== "GET").map((r) => `${r.method} ${new URL(r.url).pathname}`);
    assert.deepEqual(writes.filter((w) => w.includes("/providers")), [
      "POST /opencode/providers", "POST /opencode/providers", "PATCH /opencode/providers/e2e-local", "DELETE /opencode/providers/e2e-local",
    ]);
    assert.ok(traffic.requests.every((r) => !/"key"/.test(r.body)), "a profile request carried a key");
    await ctx.close();
  });

  scenario("a model saved after another panel changed the profile: refused with the server's message, read again, and saved again with both changes", async () => {
    await api(oc.url, "POST", "/opencode/providers", {
      name: "shared", kind: "openai", base_url: llm.url, default_model: "fake-model", models: { "fake-model": { context_tokens: 8192 } },
    });
    const id = await newSession({ skills: ["echo"] });
    const { ctx, page } = await standalone(id);
    const traffic = recordTraffic(page);
    await page.getByRole("button", { name: "Providers" }).click();
    const section = page.locator(".oc-dialog [data-provider=shared]");
    await section.getByRole("button", { name: "Models of shared" }).click();
    await section.getByRole("button", { name: "Edit model fake-model" }).click();
    const form = section.locator("form[aria-label='Model fake-model']");
    await form.waitFor({ timeout: T });
    await form.locator("[name=input_price]").fill("2.5");
    // Meanwhile another panel (or a script, without If-Match) declares a model in the same profile.
    await api(oc.url, "PATCH", "/opencode/providers/shared", { models: { "fake-model": { context_tokens: 8192 }, "other-model": { context_tokens: 4096 } } });
    await form.getByRole("button", { name: "Save" }).click();
    const error = form.locator("[data-testid=model-form-error]");
    await error.waitFor({ timeout: T });
    assert.match(await error.innerText(), /changed elsewhere since you loaded it; reload it and apply your change again/);
    await section.locator("[data-model=other-model]").waitFor({ timeout: T }); // read again
    assert.equal(await form.locator("[name=input_price]").inputValue(), "2.5"); // what was typed stays
    await form.getByRole("button", { name: "Save" }).click();
    await form.waitFor({ state: "detached", timeout: T });
    const stored = (await api(oc.url, "GET", "/opencode/providers/shared")).models;
    assert.deepEqual(Object.keys(stored), ["fake-model", "other-model"]);
    assert.equal(stored["fake-model"].input_price, 2.5);
    const ifMatch = traffic.requests.filter((r) => r.method === "PATCH").map((r) => r.headers["if-match"] ?? "");
    assert.equal(ifMatch.length, 2);
    assert.ok(ifMatch.every((h) => /^"[0-9a-f]{20}"$/.test(h)) && ifMatch[0] !== ifMatch[1], ifMatch.join(" "));
    await ctx.close();
    await api(oc.url, "DELETE", "/opencode/providers/shared");
  });

  scenario("finds a chat among thirty: the list refreshes on opening, the filter narrows it, arrows and Enter switch", async () => {
    const kinds = ["Flux landscape", "SDXL portrait", "风景 工作流"];
    const ids = [];
    for (let i = 0; i < 30; i++) ids.push(await newSession({ skills: ["echo"], title: `${kinds[i % 3]} #${i}` }));
    const { ctx, page } = await standalone(ids[0]);
    await newSession({ skills: ["echo"], title: "Made in another tab" }); // after the page read the list
    await page.getByRole("button", { name: "Chats" }).click();
    const filter = page.getByRole("combobox", { name: "Filter chats" });
    assert.ok(await filter.evaluate((el) => el === document.activeElement), "the filter has the focus");
    const list = page.getByRole("listbox", { name: "Chats" });
    const options = list.getByRole("option");
    // The list opens as last read, then the server's listing (its snapshot) replaces it: wait for that.
    await options.first().locator("[data-testid=chat-title]", { hasText: "Made in another tab" }).waitFor({ timeout: T });
    assert.equal(await options.first().locator("[data-testid=chat-title]").innerText(), "Made in another tab");
    await filter.pressSequentially("sdxl");
    const titles = await options.locator("[data-testid=chat-title]").allInnerTexts();
    assert.deepEqual(titles, [28, 25, 22, 19, 16, 13, 10, 7, 4, 1].map((i) => `SDXL portrait #${i}`)); // last active first
    await filter.press("ArrowDown");
    const activeId = await filter.getAttribute("aria-activedescendant");
    assert.equal(await page.locator(`[id="${activeId}"] [data-testid=chat-title]`).innerText(), "SDXL portrait #25");
    await filter.press("Enter");
    await page.locator("[data-testid=session-title]", { hasText: "SDXL portrait #25" }).waitFor({ timeout: T });
    await ready(page);
    assert.equal(await list.count(), 0);
    assert.equal(await page.evaluate(() => document.activeElement?.getAttribute("aria-label")), "Chats");
    assert.equal(await page.evaluate(() => localStorage.getItem("opencode.standalone.session")), ids[25]);
    await ctx.close();
  });

  scenario("an open list of chats follows another tab live: a chat made, renamed and deleted there", async () => {
    const id = await newSession({ skills: ["echo"], title: "Watching the list" });
    const { ctx, page } = await standalone(id);
    const { ctx: otherCtx, page: other } = await standalone(id); // another browser profile
    await page.getByRole("button", { name: "Chats" }).click();
    const filter = page.getByRole("combobox", { name: "Filter chats" });
    const titles = page.getByRole("listbox", { name: "Chats" }).getByRole("option").locator("[data-testid=chat-title]");
    await page.waitForFunction(() => document.querySelector("[role=option] [data-testid=chat-title]")?.textContent === "Watching the list");

    await other.getByRole("button", { name: "New chat" }).click();
    await other.locator("[data-testid=session-title]", { hasText: "New chat" }).waitFor({ timeout: T });
    await titles.first().filter({ hasText: "New chat" }).waitFor({ timeout: T }); // on top, the list still open
    await filter.pressSequentially("lighthouse");
    await page.getByText("No chat matches “lighthouse”.").waitFor({ timeout: T });
    await other.getByRole("button", { name: "Rename" }).click();
    await other.getByRole("textbox", { name: "Rename" }).fill("Lighthouse sketches");
    await other.getByRole("textbox", { name: "Rename" }).press("Enter");
    await titles.filter({ hasText: "Lighthouse sketches" }).waitFor({ timeout: T });
    assert.deepEqual(await titles.allInnerTexts(), ["Lighthouse sketches"]);
    assert.equal(await filter.inputValue(), "lighthouse");
    assert.ok(await filter.evaluate((el) => el === document.activeElement), "the filter keeps the focus");

    await other.getByRole("button", { name: "Delete" }).click();
    await other.getByRole("button", { name: "Confirm" }).click();
    await page.getByText("No chat matches “lighthouse”.").waitFor({ timeout: T });
    await filter.fill("");
    assert.equal(await titles.first().innerText(), "Watching the list");
    assert.ok(await filter.evaluate((el) => el === document.activeElement), "the filter keeps the focus");
    await otherCtx.close();
    await ctx.close();
  });

  scenario("sanitizes what it renders (in a real browser)", async () => {
    const id = await newSession({ skills: ["echo"] });
    const { ctx, page } = await standalone(id);
    await send(page, '<img src=x onerror="window.__xss=1"> **bold** [bad](javascript:window.__xss=2) <script>window.__xss=3</script> <button data-copy-code onclick="window.__xss=4">steal</button>');
    const reply = lastReply(page);
    await waitStatus(reply, "completed");
    assert.equal(await reply.locator("strong").innerText(), "bold");
    assert.equal(await reply.locator("img, script").count(), 0);
    assert.equal(await reply.locator("a[href^=javascript]").count(), 0);
    assert.equal(await reply.locator(".oc-md button, .oc-md [onclick]").count(), 0); // only code blocks get a (copy) button
    await reply.locator(".oc-md", { hasText: "steal" }).click();
    assert.equal(await page.evaluate(() => window.__xss), undefined);
    await ctx.close();
  });

  scenario("copies a reply's code block, and the whole reply as markdown with the keyboard (narrow panel)", async () => {
    const id = await newSession({ skills: ["assistant"], provider: "fake", model: "fake-model" });
    const { ctx, page } = await standalone(id, { width: 400, height: 700 });
    await ctx.grantPermissions(["clipboard-read", "clipboard-write"], { origin: oc.url });
    await page.locator(".oc-root--narrow").waitFor({ timeout: T });
    const keys = await recordKeysReachingComfy(page);
    const reply = await sendForReply(page, "How many steps?");
    await waitStatus(reply, "completed");
    const code = reply.locator(".oc-code");
    const copyCode = code.locator("button[data-copy-code]");
    assert.equal(await copyCode.getAttribute("title"), "Copy this code");
    // In the code block's head, inside the reply, at 400 px.
    const [button, block, bubble] = await Promise.all([copyCode.boundingBox(), code.boundingBox(), reply.locator(".oc-bubble").boundingBox()]);
    assert.ok(button.width > 0 && button.x + button.width <= block.x + block.width && block.x + block.width <= bubble.x + bubble.width + 1, JSON.stringify({ button, block, bubble }));
    await copyCode.click();
    await code.getByRole("button", { name: "Copied" }).waitFor({ timeout: T });
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), "steps = 20  # more is slower\ncfg = 7.0");

    await reply.getByRole("button", { name: "Copy message (markdown)" }).focus();
    await page.keyboard.press("Enter");
    await reply.locator("header [role=status]", { hasText: "Copied" }).waitFor({ timeout: T });
    assert.equal(
      await page.evaluate(() => navigator.clipboard.readText()),
      "You said: **How many steps?**. In a graph that is `KSampler` work:\n\n```python\nsteps = 20  # more is slower\ncfg = 7.0\n```\n",
    );
    assert.deepEqual(await keys.take(), [], "Enter on a copy button reached the page");
    await ctx.close();
  });
});

/** Everything in `root` (a locator) that a panel too narrow for it would cut: elements wider than
 * their box (scrolling sideways, a label cut), and `boxed` elements reaching past their `within`
 * (else past `root`). */
async function overflows(root, boxed, within) {
  return root.evaluate((el, [boxedSel, withinSel]) => {
    const name = (e) => `${e.tagName.toLowerCase()}.${[...e.classList].join(".")}${e.getAttribute("aria-label") ? `[${e.getAttribute("aria-label")}]` : ""}${e.textContent.trim() ? ` "${e.textContent.trim().slice(0, 24)}"` : ""}`;
    // Not counted: what is cut on purpose (an ellipsis, a visually hidden label), text fields.
    const shown = (e) => e.getBoundingClientRect().width > 1;
    const wide = [el, ...el.querySelectorAll("*")]
      .filter((e) => shown(e) && !["INPUT", "TEXTAREA", "SELECT"].includes(e.tagName) && getComputedStyle(e).display !== "inline")
      .filter((e) => e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).textOverflow !== "ellipsis")
      .map((e) => `${name(e)} ${e.scrollWidth}>${e.clientWidth}`);
    const outside = [...el.querySelectorAll(boxedSel)].filter(shown).flatMap((e) => {
      const box = e.getBoundingClientRect();
      const frame = (e.closest(withinSel) ?? el).getBoundingClientRect();
      return box.left < frame.left - 1 || box.right > frame.right + 1 ? [`${name(e)} ${Math.round(box.left)}-${Math.round(box.right)} outside ${Math.round(frame.left)}-${Math.round(frame.right)}`] : [];
    });
    return [...wide, ...outside];
  }, [boxed, within]);
}

/** Whether each element `selector` finds in `root` is on one line and shown whole. */
async function oneLineEach(root, selector) {
  return root.locator(selector).evaluateAll((els) => els.map((e) => {
    const lineHeight = parseFloat(getComputedStyle(e).lineHeight);
    return { text: e.textContent.trim(), oneLine: e.getBoundingClientRect().height <= lineHeight * 1.3, whole: e.scrollWidth <= e.clientWidth };
  }));
}

describe("narrow panels: a 300 px node, a 224 px sidebar, and the node's default 460 px", () => {
  const LONG_ID = "meta-llama/llama-3.3-70b-instruct-turbo";
  let sessionId;
  before(async () => {
    await api(oc.url, "POST", "/opencode/providers", {
      name: "narrow", kind: "openai", base_url: llm.url, default_model: "fake-model",
      models: {
        "fake-model": { context_tokens: 32_000, tools: true, vision: true, input_price: 0.15, output_price: 0.6, cache_read_price: 0.075 },
        [LONG_ID]: { context_tokens: 131_072, input_price: 0.88, output_price: 0.88 },
      },
    });
    await api(oc.url, "PUT", "/opencode/providers/narrow/key", { key: "sk-e2e-narrow-1234" });
    sessionId = await newSession({ skills: ["assistant"], provider: "narrow", model: "fake-model" });
    await api(oc.url, "PATCH", `/opencode/sessions/${sessionId}`, { budget: { max_tokens: 40_000 } });
  });

  for (const width of [224, 300, 440]) {
    scenario(`the provider settings fit ${width} px: each profile's buttons wrap, nothing scrolls sideways, every model's Edit and Remove in view`, async () => {
      const { ctx, page } = await standalone(sessionId, { width: width + 24, height: 760 });
      await page.getByRole("button", { name: "Providers" }).click();
      const dialog = page.locator(".oc-dialog");
      const section = dialog.locator("[data-provider=narrow]");
      await section.getByRole("button", { name: "Models of narrow" }).click();
      await section.locator(`[data-model="${LONG_ID}"]`).waitFor({ timeout: T });
      const buttons = ".oc-provider-head button, [data-model] button";
      assert.deepEqual(await overflows(dialog, buttons, ".oc-provider"), []);
      for (const label of ["Delete", "Edit narrow", "Models of narrow", `Remove model ${LONG_ID}`, "Edit model fake-model", "Remove model fake-model"]) {
        const b = section.getByRole("button", { name: label, exact: true });
        await b.scrollIntoViewIfNeeded();
        const box = await b.boundingBox();
        const hit = await page.evaluate(([x, y]) => {
          const b = document.elementFromPoint(x, y)?.closest("button");
          return b?.getAttribute("aria-label") || b?.textContent.trim();
        }, [box.x + box.width / 2, box.y + box.height / 2]);
        assert.equal(hit, label, `${label} is covered or cut at ${width} px`);
      }
      // A profile's form and a remove's confirm fit as well.
      await section.getByRole("button", { name: "Edit narrow" }).click();
      await section.locator("[data-testid=provider-form]").waitFor({ timeout: T });
      await section.getByRole("button", { name: "Remove model fake-model" }).click();
      await section.getByRole("alertdialog").waitFor({ timeout: T });
      assert.deepEqual(await overflows(dialog, "button, input", ".oc-provider"), []);
      await ctx.close();
    });
  }

  scenario("a reply's head and the status bar at 300 and 224 px: the name and time never wrap, the usage gives way, the budget stays", async () => {
    const { ctx, page } = await standalone(sessionId, { width: 524, height: 700 });
    await waitStatus(await sendForReply(page, "hello with a cache"), "completed");
    const reply = lastReply(page);
    await reply.locator("[data-testid=message-usage]").waitFor({ timeout: T });
    await page.locator("[data-testid=usage]", { hasText: "of 40.0k" }).waitFor({ timeout: T });
    assert.equal(await reply.locator("[data-testid=message-usage]").getAttribute("title"), "4.5k in (3.1k cached) · 180 out · $0.00055");
    for (const width of [460, 300, 224]) {
      await page.setViewportSize({ width: width + 24, height: 700 });
      const head = reply.locator(".oc-msg-head");
      await page.waitForFunction((w) => document.querySelector(".oc-root").getBoundingClientRect().width === w, width);
      assert.deepEqual((await oneLineEach(head, ".oc-role, .oc-msg-time")).filter((e) => !e.oneLine || !e.whole), [], `at ${width} px`);
      assert.deepEqual(await overflows(head, ".oc-msg-usage, button", ".oc-msg-head"), [], `at ${width} px`);
      const bar = page.locator(".oc-statusbar");
      assert.deepEqual(await overflows(bar, "span, button", ".oc-statusbar"), [], `at ${width} px`);
      const max = bar.locator(".oc-usage-max");
      assert.equal((await max.innerText()).trim(), "of 40.0k");
      assert.deepEqual((await oneLineEach(bar, ".oc-usage-max, [data-testid=cost]")).filter((e) => !e.oneLine || !e.whole), [], `at ${width} px`);
      const [maxBox, barBox] = await Promise.all([max.boundingBox(), bar.boundingBox()]);
      assert.ok(maxBox.width > 20 && maxBox.x + maxBox.width <= barBox.x + barBox.width, JSON.stringify({ width, maxBox, barBox }));
    }
    await ctx.close();
  });

  scenario("after a model is saved the provider dialog keeps its title and close button in view", async () => {
    const { ctx, page } = await standalone(sessionId, { width: 464, height: 520 });
    await page.getByRole("button", { name: "Providers" }).click();
    const dialog = page.locator(".oc-dialog");
    const section = dialog.locator("[data-provider=narrow]");
    await section.getByRole("button", { name: "Models of narrow" }).click();
    await section.getByRole("button", { name: "Edit model fake-model" }).click();
    const form = section.locator("form[aria-label='Model fake-model']");
    await form.waitFor({ timeout: T });
    await form.getByRole("button", { name: "Save" }).scrollIntoViewIfNeeded();
    await page.keyboard.press("Control+A");
    await page.keyboard.type("64000");
    await page.keyboard.press("Enter");
    await form.waitFor({ state: "detached", timeout: T });
    await section.locator("[data-model=fake-model]", { hasText: "64,000" }).waitFor({ timeout: T });
    const seen = await page.evaluate(() => {
      const d = document.querySelector(".oc-dialog");
      const head = d.querySelector(".oc-dialog-head").getBoundingClientRect();
      const close = d.querySelector("[aria-label=Close]").getBoundingClientRect();
      const body = d.querySelector(".oc-dialog-body").getBoundingClientRect();
      const focus = document.activeElement.getBoundingClientRect();
      return {
        dialogScrolled: d.scrollTop, rootScrolled: d.closest(".oc-root").scrollTop,
        headShown: head.top >= d.getBoundingClientRect().top - 1 && document.elementFromPoint(close.x + close.width / 2, close.y + close.height / 2)?.closest("[aria-label=Close]") !== null,
        focused: document.activeElement.getAttribute("aria-label"),
        focusShown: focus.top >= body.top - 1 && focus.bottom <= body.bottom + 1,
      };
    });
    assert.deepEqual(seen, { dialogScrolled: 0, rootScrolled: 0, headShown: true, focused: "Edit model fake-model", focusShown: true });
    await ctx.close();
  });
});

/** At the node's default width the config bar keeps its controls on one line. */
async function oneLineConfig(node) {
  const boxes = await node.locator(".oc-config").first().evaluate((bar) => [...bar.children]
    .filter((c) => !c.classList.contains("oc-budget"))
    .flatMap((c) => (c.classList.contains("oc-config-tools") ? [...c.children] : [c]))
    .map((c) => { const r = c.getBoundingClientRect(); return { middle: Math.round(r.top + r.height / 2), left: Math.round(r.left), width: Math.round(r.width) }; }));
  const middles = boxes.map((b) => b.middle);
  assert.ok(boxes.length >= 5 && Math.max(...middles) - Math.min(...middles) <= 2, `config bar wraps: ${JSON.stringify(boxes)}`);
}

/** Record the keys that reach ComfyUI's window keydown handler (which, like ComfyUI's, leaves plain
 * keys typed in a text field alone and acts on the rest: Delete deletes the selected nodes). */
async function recordKeysReachingComfy(page) {
  await page.evaluate(() => {
    window.reached = [];
    window.addEventListener("keydown", (e) => {
      const t = e.composedPath()[0];
      const typing = t.tagName === "TEXTAREA" || t.tagName === "INPUT" || t.isContentEditable;
      if (!(e.ctrlKey || e.altKey || e.metaKey) && typing) return;
      window.reached.push(`${e.ctrlKey ? "Ctrl+" : ""}${e.key}<-${t.tagName}${t.getAttribute?.("aria-label") ? `[${t.getAttribute("aria-label")}]` : ""}`);
    });
  });
  return {
    take: () => page.evaluate(() => window.reached.splice(0)),
  };
}

/** Render the sidebar tab, as ComfyUI does when it is opened, into a `#side` box `width` px wide. */
const openSidebar = (page, width) => page.evaluate((w) => {
  const side = document.createElement("div");
  side.id = "side";
  side.style.cssText = `position:fixed;left:0;top:36px;bottom:0;width:${w}px;z-index:50;`;
  document.body.appendChild(side);
  window.fakeComfy.sidebarTabs[0].render(side);
}, width);

/** Where the focus is: inside which panel host, inside the dialog. */
const focusInfo = (page) => page.evaluate(() => {
  const e = document.activeElement;
  return { tag: e?.tagName, label: e?.getAttribute("aria-label") ?? "", inPanel: !!e?.closest(".oc-root"), inDialog: !!e?.closest(".oc-dialog") };
});

describe("inside a (fake) ComfyUI canvas", () => {
  scenario("lives in its node, reads the canvas and loads an accepted proposal", async () => {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, colorScheme: "dark" });
    const page = await openPage(ctx, `${comfy.url}/?skills=echo`);
    const node = page.locator(".node[data-node-type=OpencodeAgent]");
    await node.locator("[data-testid=opencode-panel]").waitFor({ timeout: T });
    const widgets = () => page.evaluate(() => Object.fromEntries(window.fakeComfy.graph.nodes.find((n) => n.type === "OpencodeAgent").widgets.map((w) => [w.name, w.value])));
    await page.waitForFunction(() => window.fakeComfy.graph.nodes.find((n) => n.type === "OpencodeAgent").widgets[0].value !== "");
    const sessionId = (await widgets()).session_id;
    assert.match(sessionId, /^ses_/); // a new node made its session and wrote the id into its widget
    await oneLineConfig(node);

    await waitStatus(await sendForReply(node, "Hello from inside the canvas"), "completed");

    await api(oc.url, "PATCH", `/opencode/sessions/${sessionId}`, { skills: ["assistant", "comfyui"], provider: "fake", model: "fake-model" });
    await page.waitForFunction(() => window.fakeComfy.graph.nodes.find((n) => n.type === "OpencodeAgent").widgets.find((w) => w.name === "provider").value === "fake");
    assert.deepEqual(await widgets(), { session_id: sessionId, skills: "assistant,comfyui", provider: "fake", model: "fake-model" });

    const read = await sendForReply(node, "What is on my canvas right now?");
    await waitStatus(read, "completed");
    assert.match(await read.innerText(), /Tool said: Workflow on the canvas \(3 nodes/);

    const proposing = await sendForReply(node, "Now propose a better workflow");
    const card = node.locator("[data-testid=permission-card]").last();
    await card.getByRole("button", { name: "Allow", exact: true }).click();
    const proposal = node.locator("[data-testid=proposal-card]");
    await proposal.getByRole("button", { name: "Load into canvas" }).click();
    await page.locator(".node[data-node-type=SaveImage]").waitFor({ timeout: T });
    await waitStatus(proposing, "completed");
    assert.match(await proposing.innerText(), /Tool said: The user accepted the workflow/);
    await oneLineConfig(node); // still one line with two roles, a provider and a model chosen
    assert.equal(await page.locator(".node[data-node-type=KSampler]").count(), 1);
    await page.screenshot({ path: join(SHOTS, "canvas.png") });
    await ctx.close();
  });

  scenario("an Escape belongs to the dialog it is pressed in: not to the canvas's, not to another panel's", async () => {
    const ctx = await browser.newContext({ viewport: { width: 1400, height: 800 } });
    const page = await openPage(ctx, `${comfy.url}/?skills=echo`);
    await openSidebar(page, 224);
    const side = page.locator("#side");
    const node = page.locator(".node[data-node-type=OpencodeAgent]");
    await side.locator("[data-testid=opencode-panel][data-phase=ready]").waitFor({ timeout: T });
    for (const root of [node, side]) {
      await root.getByRole("button", { name: "Providers" }).click();
      await root.locator(".oc-dialog").waitFor({ timeout: T });
    }
    await node.locator(".oc-dialog").getByRole("button", { name: "Custom…" }).click();
    const name = node.locator("[data-testid=provider-form] [name=name]");
    await name.fill("half-typed");
    await page.mouse.click(1360, 770); // the empty canvas
    await page.keyboard.press("Escape");
    await page.keyboard.press("Escape");
    assert.deepEqual([await side.locator(".oc-dialog").count(), await node.locator(".oc-dialog").count(), await name.inputValue()], [1, 1, "half-typed"]);
    // Pressed after a click on the sidebar dialog's title: that dialog closes, the node's stays as it was.
    await side.locator(".oc-dialog-head span").click();
    await page.keyboard.press("Escape");
    assert.deepEqual([await side.locator(".oc-dialog").count(), await node.locator(".oc-dialog").count(), await name.inputValue()], [0, 1, "half-typed"]);
    // In the node's dialog, one step at a time: its form, then the dialog.
    await name.focus();
    await page.keyboard.press("Escape");
    assert.deepEqual([await name.count(), await node.locator(".oc-dialog").count()], [0, 1]);
    await page.keyboard.press("Escape");
    assert.equal(await node.locator(".oc-dialog").count(), 0);
    await ctx.close();
  });

  scenario("a profile added in the sidebar's panel is in the node's provider menu and dialog", async () => {
    const ctx = await browser.newContext({ viewport: { width: 1400, height: 800 } });
    const page = await openPage(ctx, `${comfy.url}/?skills=echo`);
    await openSidebar(page, 440);
    const side = page.locator("#side");
    const node = page.locator(".node[data-node-type=OpencodeAgent]");
    for (const root of [side, node]) await root.locator("[data-testid=opencode-panel][data-phase=ready]").waitFor({ timeout: T });
    const name = `side-${Date.now()}`;
    await side.getByRole("button", { name: "Providers" }).click();
    await side.locator(".oc-dialog").getByRole("button", { name: "Custom…" }).click();
    const form = side.locator("[data-testid=provider-form]");
    await form.locator("[name=name]").fill(name);
    await form.locator("[name=base_url]").fill("http://127.0.0.1:1234/v1");
    await form.locator("[name=default_model]").fill("local-model");
    await form.locator("button[type=submit]").click();
    await side.locator(`.oc-provider[data-provider="${name}"]`).waitFor({ timeout: T });

    const menu = node.locator("select[aria-label=Provider]");
    assert.equal(await menu.locator(`option[value="${name}"]`).count(), 0); // the node's panel read the profiles before
    await menu.focus();
    await menu.locator(`option[value="${name}"]`).waitFor({ state: "attached", timeout: T });
    await node.getByRole("button", { name: "Providers" }).click();
    await node.locator(`.oc-dialog .oc-provider[data-provider="${name}"]`).waitFor({ timeout: T });
    await api(oc.url, "DELETE", `/opencode/providers/${name}`);
    await ctx.close();
  });

  scenario("the sidebar tab and the node keep their keys, and the focus never falls out of the panel", async () => {
    const ctx = await browser.newContext({ viewport: { width: 1400, height: 800 } });
    const page = await openPage(ctx, `${comfy.url}/?skills=echo`);
    await openSidebar(page, 440);
    const keys = await recordKeysReachingComfy(page);
    for (const where of ["#side", ".node[data-node-type=OpencodeAgent]"]) {
      const root = page.locator(where);
      await root.locator("[data-testid=opencode-panel][data-phase=ready]").waitFor({ timeout: T });
      await root.locator("select[aria-label=Provider]").focus();
      for (const k of ["Backspace", "Delete", "q", "w", "Escape"]) await page.keyboard.press(k);
      await root.locator("[data-testid=budget-button]").focus();
      await page.keyboard.press("Delete");
      await page.keyboard.press("Enter"); // opens the budget form
      await root.locator("[data-testid=budget-form] input").first().focus();
      await page.keyboard.press("Control+Enter"); // ComfyUI: queue the prompt
      await page.keyboard.press("Enter"); // Save: the form goes, the focus stays in the panel
      assert.deepEqual(await focusInfo(page), { tag: "BUTTON", label: "", inPanel: true, inDialog: false });
      await page.keyboard.press("Delete");
      assert.deepEqual(await keys.take(), [], `keys from ${where} reached ComfyUI`);
    }

    const side = page.locator("#side");
    // A chat picked from the list with the keyboard: the focus goes back to the Chats button.
    await side.getByRole("button", { name: "Chats" }).focus();
    await page.keyboard.press("Enter");
    await side.locator(".oc-menu-item").first().focus();
    await page.keyboard.press("Enter");
    assert.deepEqual(await focusInfo(page), { tag: "BUTTON", label: "Chats", inPanel: true, inDialog: false });
    // The provider dialog takes the focus, keeps Tab inside, and gives it back on Escape.
    await side.getByRole("button", { name: "Providers" }).focus();
    await page.keyboard.press("Enter");
    await side.locator(".oc-dialog").waitFor();
    assert.equal((await focusInfo(page)).inDialog, true);
    for (let i = 0; i < 12; i++) {
      await page.keyboard.press(i % 4 === 3 ? "Shift+Tab" : "Tab");
      assert.equal((await focusInfo(page)).inDialog, true, `Tab ${i + 1} left the dialog`);
    }
    await page.keyboard.press("Escape");
    assert.equal(await side.locator(".oc-dialog").count(), 0);
    assert.deepEqual(await focusInfo(page), { tag: "BUTTON", label: "Providers", inPanel: true, inDialog: false });
    await page.keyboard.press("Delete");
    assert.deepEqual(await keys.take(), []);
    await ctx.close();
  });
});
