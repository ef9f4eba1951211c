import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { flushPromises, type VueWrapper } from "@vue/test-utils";
import MessageView from "../src/components/MessageView.vue";
import OpencodePanel from "../src/components/OpencodePanel.vue";
import { setLocale } from "../src/i18n";
import { defaultRoutes, makeDeps, memoryBinding, mountWith } from "./harness";
import { FakeSocket } from "./fakes";
import { ev, message, reply, run, session, SID, snapshot } from "./fixtures";
import type { ModelCaps, ProviderProfile } from "../src/protocol";

const OPENAI = { name: "openai", kind: "openai", base_url: "https://api.example/v1", default_model: "m1", key_env: null, models: {}, extra: {}, has_key: false, key_hint: null };

vi.mock("dompurify", () => ({ default: () => ({ addHook: () => undefined, sanitize: (html: string) => html }) }));

beforeEach(() => {
  FakeSocket.reset();
  setLocale("en");
  sessionStorage.clear(); // drafts: each test starts with an empty box
});
afterEach(() => {
  document.body.innerHTML = "";
});

/** Escape as a browser delivers it: to the focused element (or `at`), bubbling. */
async function pressEscape(at: Element | null = document.activeElement): Promise<void> {
  (at ?? document.body).dispatchEvent(new KeyboardEvent("keydown", { key: "Escape", bubbles: true, cancelable: true }));
  await flushPromises();
}

/** Mount the panel, open its socket and take the first chat's snapshot; `prepare` may change the
 * deps first (hold some requests, say). */
async function started(opts: Parameters<typeof makeDeps> = [], prepare?: (made: ReturnType<typeof makeDeps>) => void) {
  const made = makeDeps(...opts);
  prepare?.(made);
  const w = mountWith(OpencodePanel, made.deps);
  await flushPromises();
  const ws = FakeSocket.last();
  ws.open();
  await flushPromises();
  ws.receive(snapshot({ session: session({ last_seq: 1 }), messages: [message()] }));
  await flushPromises();
  return { ...made, w, ws };
}

/** Hold the requests `when` picks until the returned function is called (a slow answer). */
function holdRequests(made: ReturnType<typeof makeDeps>, when: (path: string, init: RequestInit) => boolean): () => void {
  let release!: () => void;
  const gate = new Promise<void>((ok) => (release = ok));
  const base = made.deps.transport;
  made.deps.transport = {
    wsUrl: base.wsUrl,
    async fetch(path, init) {
      if (when(path, init)) await gate;
      return base.fetch(path, init);
    },
  };
  return () => release();
}

function button(w: VueWrapper, text: string) {
  const b = w.findAll("button").find((x) => x.text().trim() === text);
  if (!b) throw new Error(`no button “${text}” in: ${w.findAll("button").map((x) => x.text()).join(" | ")}`);
  return b;
}

/** Open the list of chats and click the one titled `title`. */
async function pickChat(w: VueWrapper, title: string) {
  await w.find("[aria-label=Chats]").trigger("click");
  await flushPromises();
  const item = w.findAll(".oc-menu-item").find((b) => b.text().startsWith(title));
  if (!item) throw new Error(`no chat “${title}” in: ${w.findAll(".oc-menu-item").map((x) => x.text()).join(" | ")}`);
  await item.trigger("click");
}

describe("OpencodePanel", () => {
  it("creates a session when it has none, writes its id, joins it and shows the history", async () => {
    const { w, ws, deps, transport } = await started();
    expect(transport.calls.some((c) => c.method === "POST" && c.path === "/opencode/sessions")).toBe(true);
    expect(deps.binding.sessionId()).toBe(SID);
    expect(ws.commands("join")[0]).toMatchObject({ session_id: SID });
    expect(w.find("[data-testid=session-title]").text()).toBe("Chat");
    expect(w.text()).toContain("hello");
    expect(w.find("[data-testid=connection]").text()).toBe("Connected");
  });

  it("a node with a session id joins that session instead of creating one", async () => {
    const binding = memoryBinding("node", SID);
    const { transport, ws } = await started([defaultRoutes(), { binding }]);
    expect(transport.calls.some((c) => c.method === "POST" && c.path === "/opencode/sessions")).toBe(false);
    expect(ws.commands("join")[0]).toMatchObject({ session_id: SID });
    ws.receive(ev("session.updated", 2, { session: session({ skills: ["echo", "assistant"], provider: "openai", model: "m2", last_seq: 2 }) }));
    await flushPromises();
    expect(binding.synced.at(-1)).toEqual({ skills: ["echo", "assistant"], provider: "openai", model: "m2" });
  });

  it("Enter sends over the socket, Shift+Enter does not; streamed text appears; Stop aborts", async () => {
    const { w, ws } = await started();
    const area = w.find("textarea");
    await area.setValue("line one");
    await area.trigger("keydown", { key: "Enter", shiftKey: true });
    expect(ws.commands("send")).toHaveLength(0);
    await area.trigger("keydown", { key: "Enter" });
    expect(ws.commands("send")[0]).toMatchObject({ session_id: SID, text: "line one", mode: "queue" });
    ws.ack("send", { message_id: "msg_u2", run_id: "run_1", run_ids: ["run_1"], queued: false });
    await flushPromises();
    expect((area.element as HTMLTextAreaElement).value).toBe("");

    ws.receive(ev("message.created", 2, { message: message({ id: "msg_u2", parts: [{ type: "text", text: "line one" }] }) }));
    ws.receive(ev("run.status", 3, { run: run() }));
    ws.receive(ev("message.created", 4, { message: reply() }));
    ws.receive(ev("message.delta", 5, { message_id: "msg_a1", run_id: "run_1", skill: "echo", text: "line " }));
    ws.receive(ev("message.delta", 6, { message_id: "msg_a1", run_id: "run_1", skill: "echo", text: "one" }));
    await flushPromises();
    expect(w.find("[data-message-id=msg_a1]").text()).toContain("line one");
    expect(w.find("[data-message-id=msg_a1] .oc-role").text()).toBe("Echo");

    await button(w, "Stop").trigger("click");
    expect(ws.commands("abort")[0]).toMatchObject({ session_id: SID });
    ws.ack("abort", { aborted: ["run_1"] });
    ws.receive(ev("run.status", 7, { run: run({ status: "aborted" }) }));
    await flushPromises();
    expect(w.find("[data-message-id=msg_a1]").attributes("data-status")).toBe("aborted");
    expect(w.find("[data-message-id=msg_a1] [data-testid=message-status]").text()).toBe("stopped");
    expect(w.findAll("button").some((b) => b.text() === "Stop")).toBe(false);
  });

  it("a send handed back after a failure keeps its name when sent again unchanged, and only then", async () => {
    const { w, ws } = await started();
    const area = w.find("textarea");
    await area.setValue("order one pizza");
    await area.trigger("keydown", { key: "Enter" });
    const first = ws.commands("send")[0];
    expect(first.client_id).toMatch(/^snd_/);
    ws.receive({ type: "error", id: first.id, error: { code: "store_unavailable", message: "the disk is full", details: {} } });
    await flushPromises();
    expect((area.element as HTMLTextAreaElement).value).toBe("order one pizza"); // handed back
    await area.trigger("keydown", { key: "Enter" });
    const second = ws.commands("send")[1];
    expect(second.client_id).toBe(first.client_id); // if the server had it after all, it is not sent twice
    ws.ack("send", { message_id: "msg_u2", run_id: "run_1", run_ids: ["run_1"], queued: false });
    await flushPromises();
    await area.setValue("order one pizza");
    await area.trigger("keydown", { key: "Enter" });
    expect(ws.commands("send")[2].client_id).not.toBe(first.client_id); // a new message, a new name
  });

  it("shows a send on its way as a pending bubble until the server has it", async () => {
    const { w, ws } = await started();
    const area = w.find("textarea");
    await area.setValue("on its way");
    await area.trigger("keydown", { key: "Enter" });
    await flushPromises();
    expect((area.element as HTMLTextAreaElement).value).toBe("");
    const pending = () => w.findAll("[data-testid=pending-send]");
    expect(pending().map((b) => b.text())).toEqual([expect.stringContaining("on its way")]);
    expect(pending()[0].text()).toContain("sending…");
    // The server's own copy comes in before the answer to the send: shown once, not twice.
    ws.receive(ev("message.created", 2, { message: message({ id: "msg_u2", parts: [{ type: "text", text: "on its way" }] }) }));
    await flushPromises();
    expect(pending()).toHaveLength(0);
    expect(w.findAll("article").filter((a) => a.text().includes("on its way"))).toHaveLength(1);
    ws.ack("send", { message_id: "msg_u2", run_id: "run_1", run_ids: ["run_1"], queued: false });
    await flushPromises();
    expect(pending()).toHaveLength(0);
  });

  it("a send that fails gives its words back above what was typed since, and says so plainly", async () => {
    const { w, ws, toasts } = await started();
    const area = w.find("textarea");
    await area.setValue("an important prompt");
    await area.trigger("keydown", { key: "Enter" });
    await area.setValue("second thought");
    // The server is not answering: the send is tried three times, then given up.
    for (let i = 0; i < 3; i++) {
      const cmd = ws.commands("send")[i];
      expect(cmd.client_id).toBe(ws.commands("send")[0].client_id);
      ws.receive({ type: "error", id: cmd.id, error: { code: "timeout", message: "No answer to send", details: {} } });
      await flushPromises();
    }
    expect((area.element as HTMLTextAreaElement).value).toBe("an important prompt\n\nsecond thought");
    expect(w.findAll("[data-testid=pending-send]")).toHaveLength(0);
    expect(toasts).toEqual(["Could not reach the server; your message was not sent. It is back in the message box."]);
  });

  it("keeps the box, and a send on its way, for a reload of the tab", async () => {
    const first = await started();
    await first.w.find("textarea").setValue("a send the reload cuts off");
    await first.w.find("textarea").trigger("keydown", { key: "Enter" });
    await first.w.find("textarea").setValue("half a thought");
    await flushPromises();
    const again = await started(); // the tab reloads before the server answers (the old page says no more)
    expect((again.w.find("textarea").element as HTMLTextAreaElement).value).toBe("a send the reload cuts off\n\nhalf a thought");
    await again.w.find("textarea").setValue("");
    await flushPromises();
    expect(sessionStorage.length).toBe(0); // an empty box keeps nothing
  });

  it("a panel closed with a send on its way keeps its words for the next one", async () => {
    const first = await started();
    await first.w.find("textarea").setValue("sent as the node was removed");
    await first.w.find("textarea").trigger("keydown", { key: "Enter" });
    first.w.unmount(); // the send fails as the panel's socket closes
    await flushPromises();
    const again = await started();
    expect((again.w.find("textarea").element as HTMLTextAreaElement).value).toBe("sent as the node was removed");
  });

  it("a chat picked while New is still making one wins; the new chat is only listed", async () => {
    const routes = defaultRoutes();
    routes["GET /opencode/sessions"] = () => [200, { sessions: [session(), session({ id: "ses_C", title: "Cee", updated_at: 998 })] }];
    routes["GET /opencode/sessions/ses_C"] = () => [200, session({ id: "ses_C", title: "Cee" })];
    routes["POST /opencode/sessions"] = () => [201, session({ id: "ses_NEW", title: "Brand new" })];
    routes["GET /opencode/sessions/ses_NEW"] = () => [200, session({ id: "ses_NEW", title: "Brand new" })];
    let gated = false;
    let releaseCreate!: () => void;
    const { w, deps } = await started([routes], (made) => {
      releaseCreate = holdRequests(made, (path, init) => gated && init.method === "POST" && path === "/opencode/sessions");
    });
    gated = true;
    await button(w, "New chat").trigger("click"); // its answer is slow
    await pickChat(w, "Cee"); // picked last
    await flushPromises();
    releaseCreate();
    await flushPromises();
    expect(deps.binding.sessionId()).toBe("ses_C");
    await w.find("[aria-label=Chats]").trigger("click");
    expect(w.findAll(".oc-menu-item").some((b) => b.text().startsWith("Brand new"))).toBe(true);
    w.unmount();
  });

  it("a role toggle still waiting in one chat does not carry into the chat switched to", async () => {
    const routes = defaultRoutes();
    routes["GET /opencode/sessions"] = () => [200, { sessions: [session(), session({ id: "ses_B", title: "Bee", updated_at: 999, skills: ["echo"] })] }];
    routes["GET /opencode/sessions/ses_B"] = () => [200, session({ id: "ses_B", title: "Bee", skills: ["echo"] })];
    const { w, ws } = await started([routes]);
    await w.find("[data-testid=skill-picker]").trigger("click");
    await w.find('input[aria-label="Assistant"]').setValue(true); // in the first chat; its answer is slow
    await pickChat(w, "Bee");
    await flushPromises();
    ws.ack("leave");
    ws.ack("join");
    ws.receive(snapshot({ session: session({ id: "ses_B", title: "Bee", skills: ["echo"], last_seq: 2 }) }));
    await flushPromises();
    if (!w.find('input[aria-label="ComfyUI tools"]').exists()) await w.find("[data-testid=skill-picker]").trigger("click");
    await w.find('input[aria-label="ComfyUI tools"]').setValue(true); // in Bee
    const last = ws.commands("configure").at(-1)!;
    expect(last.session_id).toBe("ses_B");
    expect((last.patch as { skills: string[] }).skills).toEqual(["echo", "comfyui"]);
    w.unmount();
  });

  it("marks a message sent while busy as queued until its run starts", async () => {
    const { w, ws } = await started();
    ws.receive(ev("run.status", 2, { run: run() }));
    await flushPromises();
    expect(w.text()).toContain("Busy: Queue sends your message when the replies finish");
    await w.find("textarea").setValue("later");
    await w.find("textarea").trigger("keydown", { key: "Enter" });
    ws.ack("send", { message_id: "msg_q", run_id: "run_2", run_ids: ["run_2"], queued: true });
    ws.receive(ev("message.created", 3, { message: message({ id: "msg_q", parts: [{ type: "text", text: "later" }], status: "queued" }) }));
    await flushPromises();
    expect(w.find("[data-message-id=msg_q] [data-testid=message-status]").text()).toBe("queued");
    // What the server sends as the queued message starts: the prompt again, completed, then
    // its run, whose `message_id` is the reply's.
    ws.receive(ev("message.created", 4, { message: message({ id: "msg_q", parts: [{ type: "text", text: "later" }], status: "completed" }) }));
    ws.receive(ev("run.status", 5, { run: run({ id: "run_2", message_id: "msg_r2", status: "working" }) }));
    await flushPromises();
    expect(w.find("[data-message-id=msg_q] [data-testid=message-status]").exists()).toBe(false);
  });

  it("a queued message that started while the socket was down is not labelled queued after the resync", async () => {
    const { w, ws } = await started();
    ws.receive(ev("run.status", 2, { run: run() }));
    await w.find("textarea").setValue("later");
    await w.find("textarea").trigger("keydown", { key: "Enter" });
    ws.receive(ev("message.created", 3, { message: message({ id: "msg_q", parts: [{ type: "text", text: "later" }], status: "queued" }) }));
    ws.ack("send", { message_id: "msg_q", run_id: "run_2", run_ids: ["run_2"], queued: true });
    await flushPromises();
    const label = () => w.find("[data-message-id=msg_q] [data-testid=message-status]");
    expect(label().text()).toBe("queued");
    ws.drop();
    await new Promise((r) => setTimeout(r, 600)); // the first reconnect waits 500 ms
    const again = FakeSocket.last();
    again.open();
    await flushPromises();
    again.receive(snapshot({
      session: session({ last_seq: 40 }),
      messages: [message(), message({ id: "msg_q", parts: [{ type: "text", text: "later" }] }), reply({ id: "msg_r2", run_id: "run_2", status: "completed" })],
    }, "session.resync"));
    await flushPromises();
    expect(w.find("[data-message-id=msg_q]").attributes("data-status")).toBe("completed");
    expect(label().exists()).toBe(false);
  });

  it("shows the replies to queued prompts under the prompts they answer", async () => {
    const { w, ws } = await started();
    const ask = (id: string, text: string) => message({ id, parts: [{ type: "text", text }] });
    const answer = (id: string, to: string, text: string) => reply({ id, reply_to: to, status: "completed", parts: [{ type: "text", text }] });
    ws.receive(snapshot({
      session: session({ last_seq: 9 }),
      messages: [ask("u1", "first"), answer("a1", "u1", "one"), ask("u2", "second"), ask("u3", "third"), answer("a2", "u2", "two"), answer("a3", "u3", "three")],
    }, "session.resync"));
    await flushPromises();
    expect(w.findAll("section.oc-turn").map((s) => s.findAll("article").map((a) => a.attributes("data-message-id")))).toEqual([["u1", "a1"], ["u2", "a2"], ["u3", "a3"]]);
  });

  it("a delta re-renders the reply it grows, not the finished turns above it", async () => {
    // Which messages MessageView renders (its render function is read as each view mounts).
    const rendered: string[] = [];
    const view = MessageView as unknown as { render: (...args: unknown[]) => unknown };
    const render = view.render;
    const spy = vi.spyOn(view, "render").mockImplementation(function (this: unknown, ...args: unknown[]) {
      rendered.push((args[2] as { message: { id: string } }).message.id);
      return render.apply(this, args);
    });
    // And how often the transcript builds a turn: each message it lays out reads `imageUrl`.
    let built = 0;
    const { w, ws } = await started([], ({ deps }) => {
      const imageUrl = deps.imageUrl;
      Object.defineProperty(deps, "imageUrl", { get: () => (built++, imageUrl) });
    });
    ws.receive(snapshot({
      session: session({ last_seq: 9 }),
      messages: [
        message({ id: "u1" }), reply({ id: "a1", reply_to: "u1", status: "completed" }),
        message({ id: "u2" }), reply({ id: "a2", reply_to: "u2", status: "completed" }),
        message({ id: "u3" }), reply({ id: "a3", reply_to: "u3" }),
      ],
    }, "session.resync"));
    await flushPromises();
    rendered.length = 0;
    built = 0;
    ws.receive(ev("message.delta", 10, { message_id: "a3", run_id: "run_1", skill: "echo", text: "more" }));
    await flushPromises();
    spy.mockRestore();
    expect(w.find("[data-message-id=a3]").text()).toContain("more");
    expect(rendered).toEqual(["a3"]);
    expect(built).toBe(2); // the live turn's prompt and reply; the finished turns were left as they were
  });

  it("completes @role from the role skills", async () => {
    const { w } = await started();
    const area = w.find("textarea");
    await area.setValue("@as");
    (area.element as HTMLTextAreaElement).setSelectionRange(3, 3);
    await area.trigger("input");
    const options = w.findAll("[role=option]");
    expect(options.map((o) => o.text())).toEqual([expect.stringContaining("@assistant")]);
    await area.trigger("keydown", { key: "Enter" });
    expect((area.element as HTMLTextAreaElement).value).toBe("@assistant ");
  });

  it("two roles answering one prompt stand side by side", async () => {
    const { w, ws } = await started();
    ws.receive(ev("message.created", 2, { message: reply({ id: "a1", skill: "echo", run_id: "r1" }) }));
    ws.receive(ev("message.created", 3, { message: reply({ id: "a2", skill: "assistant", run_id: "r2" }) }));
    await flushPromises();
    const grid = w.find(".oc-turn-replies");
    expect(grid.findAll(".oc-role").map((r) => r.text())).toEqual(["Echo", "Assistant"]);
  });

  it("answers a permission request from its card", async () => {
    const { w, ws } = await started();
    ws.receive(ev("message.created", 2, { message: reply() }));
    ws.receive(ev("permission.requested", 3, {
      request_id: "perm_1", run_id: "run_1", skill: "echo", tool: "queue_workflow", permission_class: "run",
      summary: "Queue 1 prompt", arguments: {}, expires_at: Date.now() / 1000 + 60,
    }));
    await flushPromises();
    const card = w.find("[data-message-id=msg_a1] [data-testid=permission-card]");
    expect(card.text()).toContain("Echo wants to use queue_workflow");
    await card.findAll("button").find((b) => b.text() === "Always allow")!.trigger("click");
    expect(ws.commands("permission.reply")[0]).toMatchObject({ session_id: SID, request_id: "perm_1", decision: "allow", remember: true });
    ws.ack("permission.reply");
    ws.receive(ev("permission.resolved", 4, { request_id: "perm_1", decision: "allow", remember: true }));
    await flushPromises();
    expect(w.find("[data-testid=permission-card]").text()).toContain("Always allowed");
  });

  it("a permission answer that fails puts the card's buttons back on, to be answered again", async () => {
    const { w, ws, toasts } = await started();
    ws.receive(ev("message.created", 2, { message: reply() }));
    ws.receive(ev("permission.requested", 3, {
      request_id: "perm_1", run_id: "run_1", skill: "echo", tool: "write_file", permission_class: "edit",
      summary: "{}", arguments: {}, expires_at: Date.now() / 1000 + 60,
    }));
    await flushPromises();
    const buttons = () => w.find("[data-testid=permission-card]").findAll("button").map((b) => b.attributes("disabled") !== undefined);
    await button(w, "Allow").trigger("click");
    await flushPromises();
    expect(buttons()).toEqual([true, true, true]);
    await button(w, "Deny").trigger("click"); // off while the first answer is out
    expect(ws.commands("permission.reply")).toHaveLength(1);
    const cmd = ws.commands("permission.reply")[0];
    ws.receive({ type: "error", id: cmd.id, error: { code: "internal_error", message: "database is locked" } });
    await flushPromises();
    expect(toasts).toEqual([expect.stringContaining("database is locked")]);
    expect(buttons()).toEqual([false, false, false]);
    await button(w, "Allow").trigger("click");
    expect(ws.commands("permission.reply")).toHaveLength(2);
  });

  it("a permission the server timed out says so, not just Denied", async () => {
    const { w, ws } = await started();
    ws.receive(ev("message.created", 2, { message: reply() }));
    ws.receive(ev("permission.requested", 3, {
      request_id: "perm_1", run_id: "run_1", skill: "echo", tool: "write_file", permission_class: "edit",
      summary: "{}", arguments: {}, expires_at: Date.now() / 1000 + 1,
    }));
    ws.receive(ev("permission.resolved", 4, { request_id: "perm_1", decision: "deny", remember: false, reason: "no answer before the timeout" }));
    await flushPromises();
    expect(w.find("[data-testid=permission-card]").text()).toContain("Timed out (denied)");
  });

  it("answers get_workflow with the canvas graph and a proposal with accepted", async () => {
    let repliesWhenLoaded = -1;
    // eslint-disable-next-line prefer-const
    let wsRef: { commands: (t: string) => unknown[] } | undefined;
    const loadWorkflow = vi.fn().mockImplementation(async () => {
      repliesWhenLoaded = wsRef!.commands("ui.reply").length;
    });
    const { w, ws } = await started([defaultRoutes(), { loadWorkflow }]);
    wsRef = ws;
    ws.receive(ev("ui.request", 2, { request_id: "ui_1", run_id: null, action: "get_workflow", payload: {} }));
    await flushPromises();
    expect(ws.commands("ui.reply")[0]).toMatchObject({
      request_id: "ui_1", ok: true, result: { prompt: { "1": { class_type: "KSampler", inputs: {} } } },
    });
    const graph = { "1": { class_type: "SaveImage", inputs: {} } };
    ws.receive(ev("ui.request", 3, { request_id: "ui_2", run_id: null, action: "propose_workflow", payload: { graph, title: "Save it" } }));
    await flushPromises();
    expect(w.find("[data-testid=proposal-card]").text()).toContain("Save it");
    await button(w, "Load into canvas").trigger("click");
    await flushPromises();
    expect(loadWorkflow).not.toHaveBeenCalled(); // until the server takes the answer
    ws.ack("ui.reply");
    await flushPromises();
    expect(loadWorkflow).toHaveBeenCalledWith(graph);
    expect(ws.commands("ui.reply")[1]).toMatchObject({ request_id: "ui_2", ok: true, result: { accepted: true } });
    // The answer goes out before loading replaces the canvas (and this panel with it).
    expect(repliesWhenLoaded).toBe(2);
    expect(w.find("[data-testid=proposal-card]").exists()).toBe(false);
  });

  it("a proposal whose run ended leaves; one answered elsewhere, or whose answer is not taken, never loads", async () => {
    const loadWorkflow = vi.fn().mockResolvedValue(undefined);
    const { w, ws, toasts } = await started([defaultRoutes(), { loadWorkflow }]);
    const propose = (seq: number, id: string, runId: string | null) =>
      ws.receive(ev("ui.request", seq, { request_id: id, run_id: runId, action: "propose_workflow", payload: { graph: { "1": { class_type: "SaveImage", inputs: {} } } } }));
    ws.receive(ev("run.status", 2, { run: run() }));
    propose(3, "ui_1", "run_1");
    await flushPromises();
    expect(w.find("[data-testid=proposal-card]").exists()).toBe(true);
    ws.receive(ev("run.status", 4, { run: run({ status: "completed" }) })); // it timed out on the server
    await flushPromises();
    expect(w.find("[data-testid=proposal-card]").exists()).toBe(false);

    propose(5, "ui_2", null); // another panel answers it first
    await flushPromises();
    await button(w, "Load into canvas").trigger("click");
    const cmd = ws.commands("ui.reply").at(-1)!;
    ws.receive({ type: "error", id: cmd.id, error: { code: "not_found", message: "no open UI request ui_2 in this session; it may have timed out", details: {} } });
    await flushPromises();
    expect(toasts).toEqual(["This proposal is no longer open (it timed out or another panel answered it); the canvas was not changed."]);

    propose(6, "ui_3", null); // the server never answers: the same answer goes three times in all
    await flushPromises();
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    try {
      await button(w, "Load into canvas").trigger("click");
      await vi.advanceTimersByTimeAsync(5000);
      expect(w.find("[data-testid=proposal-card]").exists()).toBe(true); // still there while it is tried again
      await vi.advanceTimersByTimeAsync(10000);
    } finally {
      vi.useRealTimers();
    }
    await flushPromises();
    const tries = ws.commands("ui.reply").filter((c) => c.request_id === "ui_3");
    expect(tries.map(({ id: _, ...rest }) => rest)).toEqual(Array(3).fill(tries.map(({ id: _, ...rest }) => rest)[0]));
    expect(toasts.at(-1)).toBe("Something went wrong: No answer to ui.reply");
    expect(w.find("[data-testid=proposal-card]").exists()).toBe(false);
    expect(loadWorkflow).not.toHaveBeenCalled();
  });

  it("an Accept whose ack was lost is sent again once the socket is back, and then loads", async () => {
    const loadWorkflow = vi.fn().mockResolvedValue(undefined);
    const { w, ws } = await started([defaultRoutes(), { loadWorkflow }]);
    ws.receive(ev("ui.request", 2, { request_id: "ui_9", run_id: null, action: "propose_workflow", payload: { graph: { "1": { class_type: "SaveImage", inputs: {} } } } }));
    await flushPromises();
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    try {
      await button(w, "Load into canvas").trigger("click");
      expect(ws.commands("ui.reply")).toHaveLength(1); // it reached the server; its ack did not come back
      const first = ws.commands("ui.reply")[0];
      expect(first.answer_id).toMatch(/^snd_/);
      ws.drop();
      await vi.advanceTimersByTimeAsync(600); // the panel reconnects
      const again = FakeSocket.last();
      again.open();
      await vi.advanceTimersByTimeAsync(0);
      const repeat = again.commands("ui.reply");
      expect(repeat).toHaveLength(1);
      expect(repeat[0]).toMatchObject({ request_id: "ui_9", ok: true, result: { accepted: true }, answer_id: first.answer_id });
      again.ack("ui.reply", {}); // the server took the same answer again as the one it had
    } finally {
      vi.useRealTimers();
    }
    await flushPromises();
    expect(loadWorkflow).toHaveBeenCalledTimes(1);
    w.unmount();
  });

  it("a panel inside a node brings its node into an accepted proposal", async () => {
    const loadWorkflow = vi.fn().mockResolvedValue(undefined);
    const binding = memoryBinding("node", SID);
    const { w, ws } = await started([defaultRoutes(), { loadWorkflow, binding }]);
    const graph = { "1": { class_type: "SaveImage", inputs: {} } };
    ws.receive(ev("ui.request", 3, { request_id: "ui_9", run_id: null, action: "propose_workflow", payload: { graph } }));
    await flushPromises();
    await button(w, "Load into canvas").trigger("click");
    ws.ack("ui.reply");
    await flushPromises();
    const loaded = loadWorkflow.mock.calls[0][0] as Record<string, { class_type: string; inputs: Record<string, unknown> }>;
    expect(loaded["1"]).toEqual(graph["1"]);
    const own = Object.values(loaded).filter((n) => n.class_type === "OpencodeAgent");
    expect(own).toHaveLength(1);
    expect(own[0].inputs.session_id).toBe(SID);
  });

  it("an accepted proposal is applied onto the canvas in place when the host can, else loaded with a word why", async () => {
    const loadWorkflow = vi.fn().mockResolvedValue(undefined);
    const applyWorkflow = vi.fn()
      .mockResolvedValueOnce({ applied: true, changed: 1, added: 1, removed: 0, skipped: [] })
      .mockResolvedValueOnce({ applied: true, changed: 1, added: 0, removed: 0, skipped: ["3.steps"] })
      .mockResolvedValueOnce({ applied: false, reason: "subgraph", detail: "5:3" });
    const binding = memoryBinding("node", SID);
    const { w, ws, toasts } = await started([defaultRoutes(), { loadWorkflow, applyWorkflow, binding }]);
    const graph = { "3": { class_type: "KSampler", inputs: { seed: 42 } } };
    for (const [seq, id] of [[3, "ui_1"], [4, "ui_2"], [5, "ui_3"]] as const) {
      ws.receive(ev("ui.request", seq, { request_id: id, run_id: null, action: "propose_workflow", payload: { graph } }));
      await flushPromises();
      await button(w, "Load into canvas").trigger("click");
      ws.ack("ui.reply");
      await flushPromises();
    }
    expect(applyWorkflow).toHaveBeenCalledTimes(3);
    expect(applyWorkflow).toHaveBeenCalledWith(graph, ["OpencodeAgent"]); // as proposed: this node is kept, not added
    expect(toasts).toEqual([
      "Applied to the canvas: 1 changed, 1 added, 0 removed (Ctrl+Z undoes it)",
      "Applied to the canvas: 1 changed, 0 added, 0 removed (Ctrl+Z undoes it): not set: 3.steps",
      "The proposal replaced the whole canvas (layout, notes and groups were not kept): it changes nodes inside a subgraph or group node (5:3)",
    ]);
    // Only the one that could not be applied in place was loaded the old way, this node brought along.
    expect(loadWorkflow).toHaveBeenCalledTimes(1);
    const loaded = loadWorkflow.mock.calls[0][0] as Record<string, { class_type: string }>;
    expect(Object.values(loaded).map((n) => n.class_type).sort()).toEqual(["KSampler", "OpencodeAgent"]);
  });

  it("shows usage and cost from usage.updated", async () => {
    const { w, ws } = await started();
    ws.receive(ev("usage.updated", 2, { usage: { input_tokens: 1500, output_tokens: 20, cost: 0.0123 }, message_id: null }));
    await flushPromises();
    expect(w.find("[data-testid=usage]").text()).toBe("1.5k in · 20 out");
    expect(w.find("[data-testid=cost]").text()).toBe("$0.0123");
    // What the provider's prompt cache served, where it served some.
    ws.receive(ev("usage.updated", 3, { usage: { input_tokens: 152_000, output_tokens: 900, cache_read_tokens: 148_000,
      cache_write_tokens: 3000, cost: 0.07 }, message_id: null }));
    await flushPromises();
    expect(w.find("[data-testid=usage]").text()).toBe("152.0k in (148.0k cached) · 900 out");
  });

  it("warns when the server speaks another protocol", async () => {
    const routes = defaultRoutes();
    routes["GET /opencode/version"] = () => [200, { name: "opencode", version: "9", protocol: 2, capabilities: [] }];
    const { w } = await started([routes]);
    expect(w.find("[role=alert]").text()).toContain("Server speaks protocol 2, this panel 1");
  });

  it("asks for a token after a 401 and retries with it", async () => {
    const routes = defaultRoutes();
    let calls = 0;
    routes["GET /opencode/skills"] = () => (++calls === 1 ? [401, { error: { code: "unauthorized", message: "token", details: {} } }] : [200, { skills: [] }]);
    const { deps, transport } = makeDeps(routes);
    const w = mountWith(OpencodePanel, deps);
    await flushPromises();
    const input = w.find("input[type=password]");
    expect(w.text()).toContain("needs an access token");
    await input.setValue("s3cret");
    await w.find("form.oc-banner").trigger("submit");
    await flushPromises();
    expect(deps.token()).toBe("s3cret");
    expect(transport.calls.filter((c) => c.path === "/opencode/skills").at(-1)!.headers["X-Opencode-Token"]).toBe("s3cret");
    expect(FakeSocket.last().url).toContain("token=s3cret");
    expect(w.text()).not.toContain("needs an access token");
  });

  it("sends an API key only to the key route, clears the field and shows only the hint", async () => {
    const { w, transport } = await started();
    await w.find("[aria-label=Providers]").trigger("click");
    const field = w.find("input[type=password]");
    await field.setValue("sk-secret-wxyz");
    await w.find(".oc-dialog form").trigger("submit");
    expect((field.element as HTMLInputElement).value).toBe("");
    await flushPromises();
    const carrying = transport.calls.filter((c) => JSON.stringify(c).includes("sk-secret-wxyz"));
    expect(carrying.map((c) => `${c.method} ${c.path}`)).toEqual(["PUT /opencode/providers/openai/key"]);
    expect(w.find("[data-testid=key-hint]").text()).toBe("…wxyz");
    expect(document.body.innerHTML).not.toContain("sk-secret");
  });

  it("shows the access token only on request, and rotates it after a confirm", async () => {
    const routes = defaultRoutes();
    routes["GET /opencode/token"] = () => [200, { token: "tok-one", header: "X-Opencode-Token" }];
    routes["POST /opencode/token/rotate"] = () => [200, { token: "tok-two", header: "X-Opencode-Token" }];
    const { w, transport } = await started([routes]);
    await w.find("[aria-label=Providers]").trigger("click");
    const section = () => w.find("[data-testid=access-token]");
    expect(section().text()).not.toContain("tok-one");
    expect(transport.calls.some((c) => c.path === "/opencode/token")).toBe(false);
    await button(w, "Show access token").trigger("click");
    await flushPromises();
    expect((section().find("input").element as HTMLInputElement).value).toBe("tok-one");
    await button(w, "Rotate").trigger("click");
    expect(section().text()).toContain("Replace the access token?");
    expect(transport.calls.some((c) => c.path === "/opencode/token/rotate")).toBe(false);
    await button(w, "Confirm").trigger("click");
    await flushPromises();
    expect((section().find("input").element as HTMLInputElement).value).toBe("tok-two");
  });

  it("renames and deletes with a confirm", async () => {
    const routes = defaultRoutes();
    routes["PATCH /opencode/sessions/ses_1"] = (body) => [200, session({ title: (body as { title: string }).title, updated_at: 1005 })];
    routes["DELETE /opencode/sessions/ses_1"] = () => [200, { deleted: SID }];
    const { w, transport } = await started([routes]);
    await w.find("[aria-label=Rename]").trigger("click");
    const input = w.find("input[aria-label=Rename]");
    await input.setValue("My chat");
    await input.trigger("keydown", { key: "Enter" });
    await flushPromises();
    expect(w.find("[data-testid=session-title]").text()).toBe("My chat");
    await w.find("[aria-label=Delete]").trigger("click");
    expect(w.text()).toContain("Delete “My chat” and its history?");
    await button(w, "Confirm").trigger("click");
    await flushPromises();
    expect(transport.calls.some((c) => c.method === "DELETE" && c.path === "/opencode/sessions/ses_1")).toBe(true);
  });

  it("filters, searches and copies the debug log", async () => {
    const writeText = vi.fn().mockResolvedValue(undefined);
    Object.defineProperty(navigator, "clipboard", { value: { writeText }, configurable: true });
    const { w, ws } = await started();
    ws.receive(ev("log", 2, { level: "debug", module: "opencode.agent", message: "tiny detail", time: 0, run_id: null }));
    ws.receive(ev("log", 3, { level: "warning", module: "opencode.providers", message: "slow answer", time: 0, run_id: "run_1" }));
    ws.receive(ev("log", 4, { level: "info", module: "opencode.agent", message: "run started", time: 0, run_id: "run_1" }));
    await flushPromises();
    await button(w, "Debug").trigger("click");
    const lines = () => w.findAll(".oc-log").map((l) => l.text());
    expect(lines()).toHaveLength(3); // every line by default, debug ones included
    await w.find("select[aria-label='Level']").setValue("info");
    expect(lines()).toHaveLength(2);
    await w.find("input[type=search]").setValue("slow");
    expect(lines()).toEqual([expect.stringContaining("WARNING opencode.providers [run_1] slow answer")]);
    await button(w, "Copy as text").trigger("click");
    await flushPromises();
    expect(writeText.mock.calls[0][0]).toContain("slow answer");
  });
});

describe("a narrow panel", () => {
  afterEach(() => vi.unstubAllGlobals());

  it("packs itself tighter under 420 px, and only there", async () => {
    // A ResizeObserver by hand, reporting the width a test gives it.
    const observers: ((entries: { contentRect: { width: number } }[]) => void)[] = [];
    vi.stubGlobal("ResizeObserver", class {
      constructor(cb: (entries: { contentRect: { width: number } }[]) => void) {
        observers.push(cb);
      }
      observe() {}
      disconnect() {}
    });
    const { w } = await started();
    const resize = async (width: number) => {
      observers.forEach((cb) => cb([{ contentRect: { width } }]));
      await flushPromises();
    };
    const root = () => w.find("[data-testid=opencode-panel]");
    await resize(344);
    expect(root().classes()).toContain("oc-root--narrow");
    await resize(900);
    expect(root().classes()).not.toContain("oc-root--narrow");
  });
});

describe("closing with Escape", () => {
  it("closes the skill list and the provider dialog", async () => {
    const { w } = await started();
    await w.find("[data-testid=skill-picker]").trigger("click");
    expect(w.find("[role=group][aria-label='Roles & skills']").exists()).toBe(true);
    const box = w.find("[role=group][aria-label='Roles & skills'] input").element as HTMLElement;
    box.focus();
    await pressEscape(box);
    expect(w.find("[role=group][aria-label='Roles & skills']").exists()).toBe(false);
    expect(document.activeElement).toBe(w.find("[data-testid=skill-picker]").element); // not <body>, outside the key guard
    await w.find("[aria-label=Providers]").trigger("click");
    await flushPromises();
    expect(w.find("[role=dialog]").exists()).toBe(true);
    await pressEscape();
    expect(w.find("[role=dialog]").exists()).toBe(false);
  });

  it("only from inside: an Escape on the page (the canvas) leaves the list, the dialog and a half-typed model alone", async () => {
    const { w } = await started();
    const list = () => w.find("[role=group][aria-label='Roles & skills']");
    await w.find("[data-testid=skill-picker]").trigger("click");
    await pressEscape(document.body);
    expect(list().exists()).toBe(true);
    await w.find("[data-testid=skill-picker]").trigger("click");

    await w.find("[aria-label=Providers]").trigger("click");
    await flushPromises();
    await w.find("[aria-label='Models of openai']").trigger("click");
    await flushPromises();
    await w.find("input[aria-label='Model id']").setValue("m2");
    await w.find(".oc-models form").trigger("submit");
    await flushPromises();
    const context = () => w.find("form[aria-label='Model m2'] [name=context_tokens]");
    await context().setValue("65536");
    (document.activeElement as HTMLElement).blur(); // a click on the canvas
    await pressEscape(document.body);
    await pressEscape(document.body);
    expect(w.find("[role=dialog]").exists()).toBe(true);
    expect((context().element as HTMLInputElement).value).toBe("65536");
    // From inside, one level at a time as ever: the model's form first.
    await pressEscape(context().element);
    expect(context().exists()).toBe(false);
    expect(w.find("[role=dialog]").exists()).toBe(true);
  });

  it("the list of chats closes on an Escape from inside it, not on one from the page", async () => {
    const { w } = await started();
    const list = () => w.find("[role=listbox][aria-label=Chats]");
    await w.find("[aria-label=Chats]").trigger("click");
    await flushPromises();
    expect(list().exists()).toBe(true);
    await pressEscape(document.body); // the canvas, or the other panel
    expect(list().exists()).toBe(true);
    await pressEscape(w.find("[role=combobox]").element);
    expect(list().exists()).toBe(false);
    expect(document.activeElement).toBe(w.find("[aria-label=Chats]").element); // not <body>, outside the key guard
  });

  it("two panels (a node and the sidebar), both dialogs open: an Escape in one closes that one only", async () => {
    const node = await started();
    const side = await started();
    for (const { w } of [node, side]) {
      await w.find("[aria-label=Providers]").trigger("click");
      await flushPromises();
    }
    await pressEscape(side.w.find("[role=dialog] [aria-label=Close]").element);
    expect(side.w.find("[role=dialog]").exists()).toBe(false);
    expect(node.w.find("[role=dialog]").exists()).toBe(true);
    await pressEscape(node.w.find("[role=dialog]").element); // a click on its text parks the focus on the dialog itself
    expect(node.w.find("[role=dialog]").exists()).toBe(false);
  });
});

describe("retrying a reply", () => {
  it("answers a failed reply's prompt again once the chat is idle, and says why when the server refuses", async () => {
    const { w, ws, toasts } = await started();
    ws.receive(ev("message.created", 2, { message: reply({ id: "a1", skill: "echo", run_id: "r1" }) }));
    ws.receive(ev("run.status", 3, { run: run({ id: "r1", message_id: "a1" }) }));
    await flushPromises();
    expect(w.find("[data-message-id=a1] [data-testid=message-retry]").exists()).toBe(false); // still streaming
    ws.receive(ev("message.completed", 4, { message: reply({ id: "a1", skill: "echo", run_id: "r1", status: "error", error: "429" }) }));
    ws.receive(ev("run.status", 5, { run: run({ id: "r1", message_id: "a1", status: "error" }) }));
    await flushPromises();
    const button = w.find("[data-message-id=a1] [data-testid=message-retry]");
    expect(button.attributes("disabled")).toBeUndefined();
    // Another reply starts: the old turn (memoised) must still see that the chat is busy.
    ws.receive(ev("run.status", 6, { run: run({ id: "r9", message_id: "a9" }) }));
    await flushPromises();
    expect(w.find("[data-message-id=a1] [data-testid=message-retry]").attributes("disabled")).toBeDefined();
    ws.receive(ev("run.status", 7, { run: run({ id: "r9", message_id: "a9", status: "completed" }) }));
    await flushPromises();
    expect(w.find("[data-message-id=a1] [data-testid=message-retry]").attributes("disabled")).toBeUndefined();
    await button.trigger("click");
    expect(ws.commands("retry")[0]).toMatchObject({ session_id: SID, message_id: "a1" });
    const cmd = ws.commands("retry")[0];
    ws.receive({ type: "error", id: cmd.id, error: { code: "busy", message: "replies are running in this chat: retry once they end (or stop them)", details: {} } });
    await flushPromises();
    expect(toasts).toEqual([expect.stringContaining("retry once they end")]);
  });
});

describe("a failed reply's fix", () => {
  /** A reply of `echo` that streams, then fails with `code` (the turn above it is memoised). */
  async function failing(ws: FakeSocket, code: string, error = "invalid x-api-key (HTTP 401)") {
    ws.receive(ev("message.created", 2, { message: reply({ id: "a1", run_id: "r1" }) }));
    ws.receive(ev("run.status", 3, { run: run({ id: "r1", message_id: "a1" }) }));
    await flushPromises();
    ws.receive(ev("message.completed", 4, { message: reply({ id: "a1", run_id: "r1", status: "error", error, error_code: code }) }));
    ws.receive(ev("run.status", 5, { run: run({ id: "r1", message_id: "a1", status: "error", error, error_code: code }) }));
    await flushPromises();
  }
  const onProvider = (provider: string | null) =>
    ev("session.updated", 6, { session: session({ provider, model: provider ? "m1" : null, last_seq: 6 }) });
  const focused = () => document.activeElement as HTMLElement | null;

  it("“Check the API key” opens the provider settings at the session's profile, in its key field", async () => {
    const { w, ws } = await started();
    await failing(ws, "provider_auth");
    ws.receive(onProvider("openai"));
    await flushPromises();
    expect(w.find("[role=dialog]").exists()).toBe(false);
    await button(w, "Check the API key").trigger("click");
    await flushPromises();
    expect(w.find("[role=dialog]").exists()).toBe(true);
    expect(focused()?.getAttribute("aria-label")).toBe("API key (openai)");
  });

  it("“Check the base URL” opens the profile's form, in its base URL", async () => {
    const { w, ws } = await started();
    await failing(ws, "provider_unreachable", "cannot connect to https://api.example/v1");
    ws.receive(onProvider("openai"));
    await flushPromises();
    await button(w, "Check the base URL").trigger("click");
    await flushPromises();
    expect(w.find("[role=dialog] form[aria-label='Edit openai']").exists()).toBe(true);
    expect(focused()?.getAttribute("name")).toBe("base_url");
  });

  it("on the server's default provider it opens the settings as the gear does", async () => {
    const { w, ws } = await started();
    await failing(ws, "provider_context_exceeded", "too long. Declare the model's context_tokens");
    ws.receive(onProvider(null));
    await flushPromises();
    await button(w, "Set the model's context").trigger("click");
    await flushPromises();
    expect(w.find("[role=dialog]").exists()).toBe(true);
    expect(focused()?.getAttribute("aria-label")).toBe("Close");
  });

  /** The openai profile, m1 undeclared and listed with the caps in effect; a PATCH of `models`
   * is stored, and the list read after it has the caps declared. */
  function declaring(routes = defaultRoutes()) {
    const inEffect: ModelCaps = { tools: true, vision: true, context_tokens: 8192, input_price: 0.4, output_price: 1.6, cache_read_price: 0.2, cache_write_price: 0.4 };
    const state = { models: {} as Record<string, ModelCaps> };
    routes["GET /opencode/providers/openai/models"] = () => [200, { models: [{ id: "m1", caps: state.models.m1 ?? inEffect }, { id: "m2", caps: null }] }];
    routes["PATCH /opencode/providers/openai"] = (body) => {
      state.models = (body as { models: Record<string, ModelCaps> }).models;
      return [200, { ...OPENAI, models: state.models }];
    };
    return routes;
  }
  const modelOption = (w: VueWrapper, id: string) => w.findAll("select[aria-label=Model] option").find((o) => o.attributes("value") === id)?.text();

  it("“Set the model's context” opens the session model's form, in its context field, prefilled with the caps in use; saved, the model picker shows them", async () => {
    const { w, ws, transport } = await started([declaring()]);
    await failing(ws, "context_exceeded", "this message is about 9,000 tokens, more than m1 has room for");
    ws.receive(onProvider("openai"));
    await flushPromises();
    expect(modelOption(w, "m1")).toBe("m1 — 8.2k context · tools · vision");
    await button(w, "Set the model's context").trigger("click");
    await flushPromises();
    const form = w.find("[role=dialog] form[aria-label='Model m1']");
    expect(form.exists()).toBe(true);
    expect(focused()).toBe(form.find("[name=context_tokens]").element);
    const value = (name: string) => (form.find(`[name=${name}]`).element as HTMLInputElement).value;
    expect(["context_tokens", "input_price", "output_price", "cache_read_price", "cache_write_price"].map(value)).toEqual(["8192", "0.4", "1.6", "", ""]);
    await form.find("[name=context_tokens]").setValue("200000");
    await form.trigger("submit");
    await flushPromises();
    const patches = transport.calls.filter((c) => c.method === "PATCH").map((c) => c.body);
    expect(patches).toEqual([{ models: { m1: { tools: true, vision: true, context_tokens: 200_000, input_price: 0.4, output_price: 1.6, cache_read_price: null, cache_write_price: null } } }]);
    expect(w.find("[data-provider=openai] li[data-model]").text()).toContain("200,000");
    expect(modelOption(w, "m1")).toBe("m1 — 200.0k context · tools · vision");
  });

  it("a session on its profile's default model opens that model's form", async () => {
    const { w, ws } = await started([declaring()]);
    await failing(ws, "provider_context_exceeded", "the server says the prompt is too long");
    ws.receive(ev("session.updated", 6, { session: session({ provider: "openai", model: null, last_seq: 6 }) }));
    await flushPromises();
    await button(w, "Set the model's context").trigger("click");
    await flushPromises();
    expect(focused()).toBe(w.find("[role=dialog] form[aria-label='Model m1'] [name=context_tokens]").element);
  });

  it("a model list read before a save that answers after it does not bring back the caps it replaced", async () => {
    const routes = declaring();
    let held: (() => void) | null = null;
    const { w, ws } = await started([routes], (made) => {
      const base = made.deps.transport;
      made.deps.transport = {
        wsUrl: base.wsUrl,
        async fetch(path, init) {
          const answer = base.fetch(path, init); // answered now, delivered when released
          if (path.endsWith("/models") && !held) await new Promise<void>((ok) => (held = ok));
          return answer;
        },
      };
    });
    ws.receive(onProvider("openai"));
    await flushPromises();
    expect(held).not.toBeNull(); // the first read, with 8192 tokens, is still on its way
    await w.find("[aria-label=Providers]").trigger("click");
    await flushPromises();
    await w.find("[aria-label='Models of openai']").trigger("click");
    await w.find("input[aria-label='Model id']").setValue("m1");
    await w.find("[role=dialog] .oc-models form").trigger("submit");
    await flushPromises();
    await w.find("form[aria-label='Model m1'] [name=context_tokens]").setValue("65536");
    await w.find("form[aria-label='Model m1']").trigger("submit");
    await flushPromises();
    // Declared while the list was on its way: from ModelCaps' defaults (no vision), as saved.
    expect(modelOption(w, "m1")).toBe("m1 — 65.5k context · tools");
    held!();
    await flushPromises();
    expect(modelOption(w, "m1")).toBe("m1 — 65.5k context · tools");
  });

  it("“Change the budget” opens the session's budget form, in its first field; the run's end alone is enough to offer it", async () => {
    const { w, ws } = await started();
    ws.receive(ev("message.created", 2, { message: reply({ id: "a1", run_id: "r1" }) }));
    await flushPromises();
    const error = "this session's budget ran out";
    ws.receive(ev("run.status", 3, { run: run({ id: "r1", message_id: "a1", status: "error", error, error_code: "budget_exceeded" }) }));
    await flushPromises();
    expect(w.find("[data-testid=budget-form]").exists()).toBe(false);
    await button(w, "Change the budget").trigger("click");
    await flushPromises();
    expect(w.find("[data-testid=budget-form]").exists()).toBe(true);
    expect(focused()).toBe(w.find("[data-testid=budget-form] input").element);
    await button(w, "Change the budget").trigger("click"); // again: the form stays open
    await flushPromises();
    expect(w.find("[data-testid=budget-form]").exists()).toBe(true);
  });
});

describe("retrying on an older server", () => {
  it("offers no Retry when the server does not say it can (`retry` capability)", async () => {
    const routes = defaultRoutes();
    routes["GET /opencode/version"] = () => [200, { name: "opencode", version: "0.1.0", protocol: 1, capabilities: ["send.client_id"] }];
    const { w, ws } = await started([routes]);
    ws.receive(ev("message.created", 2, { message: reply({ id: "a1", skill: "echo", run_id: "r1", status: "error", error: "429" }) }));
    await flushPromises();
    expect(w.find("[data-message-id=a1] [data-testid=message-status]").text()).toBe("failed");
    expect(w.find("[data-message-id=a1] [data-testid=message-retry]").exists()).toBe(false);
  });
});

describe("stopping and interrupting", () => {
  it("stops one role's reply from its header and Ctrl+Enter interrupts while busy", async () => {
    const { w, ws } = await started();
    ws.receive(ev("message.created", 2, { message: reply({ id: "a1", skill: "echo", run_id: "r1" }) }));
    ws.receive(ev("message.created", 3, { message: reply({ id: "a2", skill: "assistant", run_id: "r2" }) }));
    ws.receive(ev("run.status", 4, { run: run({ id: "r1", message_id: "a1" }) }));
    ws.receive(ev("run.status", 5, { run: run({ id: "r2", message_id: "a2", skill: "assistant" }) }));
    await flushPromises();
    await w.find("[data-message-id=a2] [aria-label='Stop this reply']").trigger("click");
    expect(ws.commands("abort")[0]).toMatchObject({ session_id: SID, run_id: "r2" });

    await w.find("textarea").setValue("change of plan");
    await w.find("textarea").trigger("keydown", { key: "Enter", ctrlKey: true });
    expect(ws.commands("send")[0]).toMatchObject({ text: "change of plan", mode: "interrupt" });
  });

  it("offers Send now beside Queue while replies run, and refuses an overlong message before sending", async () => {
    const { w, ws } = await started();
    expect(w.find("[data-testid=send-now]").exists()).toBe(false);
    ws.receive(ev("run.status", 2, { run: run() }));
    await flushPromises();
    await w.find("textarea").setValue("stop and do this");
    await w.find("[data-testid=send-now]").trigger("click");
    await flushPromises();
    expect(ws.commands("send")[0]).toMatchObject({ text: "stop and do this", mode: "interrupt" });
    await w.find("textarea").setValue("x".repeat(100_001));
    expect(w.find("[data-testid=too-long]").text()).toContain("at most 100,000");
    expect(w.find("button[type=submit]").attributes("disabled")).toBeDefined();
  });

  it("shows spend against the budget", async () => {
    const { w, ws } = await started();
    ws.receive(ev("session.updated", 2, { session: session({ budget: { max_tokens: null, max_cost: 2 }, usage: { input_tokens: 1, output_tokens: 1, cost: 0.5 }, last_seq: 2 }) }));
    await flushPromises();
    expect(w.find("[data-testid=cost]").text()).toBe("$0.50 of $2.00");
    // A small budget and a small spend never read "$0.00"; a token budget shows beside the tokens.
    ws.receive(ev("session.updated", 3, { session: session({ budget: { max_tokens: 200_000, max_cost: 0.001 }, usage: { input_tokens: 1200, output_tokens: 300, cost: 0.0048 }, last_seq: 3 }) }));
    await flushPromises();
    expect(w.find("[data-testid=cost]").text()).toBe("$0.0048 of $0.001");
    expect(w.find("[data-testid=usage]").text()).toBe("1.2k in · 300 out of 200.0k");
    // The budget apart, so a narrow panel cuts what is used, never it; the cached note apart, so it can go first.
    ws.receive(ev("usage.updated", 4, { usage: { input_tokens: 4512, output_tokens: 180, cache_read_tokens: 3100, cost: 0.0048 }, message_id: null }));
    await flushPromises();
    const usage = w.find("[data-testid=usage]");
    expect([usage.find(".oc-usage-cached").text(), usage.find(".oc-usage-max").text(), usage.attributes("title")])
      .toEqual(["(3.1k cached)", "of 200.0k", "4.5k in (3.1k cached) · 180 out of 200.0k"]);
    setLocale("zh");
    await flushPromises();
    expect([usage.text(), usage.find(".oc-usage-cached").text(), usage.find(".oc-usage-max").text()]).toEqual(["输入 4.5k（缓存 3.1k） · 输出 180 / 200.0k", "（缓存 3.1k）", "/ 200.0k"]);
  });

  it("shows what each finished reply used", async () => {
    const { w, ws } = await started();
    ws.receive(ev("message.created", 2, { message: reply({ id: "a1", skill: "echo", run_id: "r1", status: "completed",
      parts: [{ type: "text", text: "hi" }], usage: { input_tokens: 1200, output_tokens: 300, cost: 0.0048 } }) }));
    ws.receive(ev("message.created", 3, { message: reply({ id: "a2", skill: "echo", run_id: "r2", status: "streaming",
      parts: [{ type: "text", text: "go" }], usage: { input_tokens: 10, output_tokens: 1, cost: 0 } }) }));
    ws.receive(ev("message.created", 4, { message: reply({ id: "a3", skill: "echo", run_id: "r3", status: "completed",
      parts: [{ type: "text", text: "again" }], usage: { input_tokens: 1300, output_tokens: 20, cache_read_tokens: 1200,
        cache_write_tokens: 0, cost: 0.0007 } }) }));
    await flushPromises();
    expect(w.find("[data-message-id=a1] [data-testid=message-usage]").text()).toBe("1.2k in · 300 out · $0.0048");
    expect(w.find("[data-message-id=a3] [data-testid=message-usage]").text()).toBe("1.3k in (1.2k cached) · 20 out · $0.0007");
    // The cached note apart (a narrow head drops it first), the whole line in the title.
    expect(w.find("[data-message-id=a3] .oc-usage-cached").text()).toBe("(1.2k cached)");
    expect(w.find("[data-message-id=a3] [data-testid=message-usage]").attributes("title")).toBe("1.3k in (1.2k cached) · 20 out · $0.0007");
    expect(w.find("[data-message-id=a2] [data-testid=message-usage]").exists()).toBe(false);  // still streaming
  });
});

describe("a server that is back", () => {
  it("a panel mounted while the server was unreachable loads once the socket opens", async () => {
    let down = true;
    const made = makeDeps();
    const base = made.deps.transport;
    made.deps.transport = { wsUrl: base.wsUrl, async fetch(p, i) { if (down) throw new TypeError("Failed to fetch"); return base.fetch(p, i); } };
    vi.useFakeTimers();
    try {
      const w = mountWith(OpencodePanel, made.deps);
      await vi.runAllTicks();
      await flushPromises();
      expect(made.toasts).toEqual([expect.stringContaining("Failed to fetch")]);
      FakeSocket.last().drop(); // connection refused
      down = false;
      await vi.advanceTimersByTimeAsync(5000); // the reconnect delay
      const ws = FakeSocket.last();
      expect(FakeSocket.all).toHaveLength(2);
      ws.open();
      await flushPromises();
      await vi.advanceTimersByTimeAsync(0);
      expect(ws.commands("join")).toHaveLength(1);
      ws.receive(snapshot({ session: session({ last_seq: 1 }), messages: [message()] }));
      await flushPromises();
      expect(w.find("[data-testid=opencode-panel]").attributes("data-phase")).toBe("ready");
      expect(made.transport.calls.filter((c) => c.path === "/opencode/version")).toHaveLength(1); // its capabilities too
    } finally {
      vi.useRealTimers();
    }
  });
});

describe("a provider's key", () => {
  it("once saved, reads the model list of the session's provider again", async () => {
    let hasKey = false;
    const routes = defaultRoutes();
    routes["GET /opencode/sessions/ses_1"] = () => [200, session({ provider: "openai" })];
    routes["POST /opencode/sessions"] = () => [201, session({ provider: "openai" })];
    routes["GET /opencode/providers/openai/models"] = () => hasKey
      ? [200, { models: [{ id: "gpt-x", caps: null }, { id: "gpt-y", caps: null }] }]
      : [502, { error: { code: "provider_error", message: "401 no API key", details: {} } }];
    const saveKey = routes["PUT /opencode/providers/openai/key"];
    routes["PUT /opencode/providers/openai/key"] = (b) => { hasKey = true; return saveKey(b); };
    routes["DELETE /opencode/providers/openai/key"] = () => { hasKey = false; return [200, {}]; };
    const made = makeDeps(routes);
    const w = mountWith(OpencodePanel, made.deps);
    await flushPromises();
    FakeSocket.last().open();
    FakeSocket.last().receive(snapshot({ session: session({ last_seq: 1, provider: "openai" }) }));
    await flushPromises();
    const options = () => w.find("select[aria-label=Model]").findAll("option").map((o) => o.text());
    expect(options()).toEqual(["Default model"]);
    await w.find("[aria-label=Providers]").trigger("click");
    await w.find("input[type=password]").setValue("sk-test-1234abcd");
    await w.find("[data-provider=openai] form").trigger("submit");
    await flushPromises();
    expect(options()).toEqual(["Default model", "gpt-x", "gpt-y"]);
  });
});

describe("removing a provider's key", () => {
  it("takes a confirm; Cancel keeps it, Confirm removes it and reads the models again", async () => {
    const routes = defaultRoutes();
    const stored = { name: "openai", kind: "openai", base_url: "https://api.example/v1", default_model: "m1", key_env: null, models: {}, extra: {}, has_key: true, key_hint: "…wxyz" };
    let hasKey = true;
    routes["GET /opencode/providers"] = () => [200, { providers: [{ ...stored, has_key: hasKey, key_hint: hasKey ? "…wxyz" : null }], presets: [] }];
    routes["DELETE /opencode/providers/openai/key"] = () => { hasKey = false; return [200, {}]; };
    routes["GET /opencode/sessions/ses_1"] = () => [200, session({ provider: "openai" })];
    routes["POST /opencode/sessions"] = () => [201, session({ provider: "openai" })];
    const made = makeDeps(routes);
    const w = mountWith(OpencodePanel, made.deps);
    await flushPromises();
    FakeSocket.last().open();
    FakeSocket.last().receive(snapshot({ session: session({ last_seq: 1, provider: "openai" }) }));
    await flushPromises();
    const deletes = () => made.transport.calls.filter((c) => c.method === "DELETE").map((c) => c.path);
    const modelReads = () => made.transport.calls.filter((c) => c.path.endsWith("/models")).length;
    await w.find("[aria-label=Providers]").trigger("click");
    await button(w, "Remove").trigger("click");
    await flushPromises();
    expect(deletes()).toEqual([]);
    expect(w.text()).toContain("Remove the stored key of openai?");
    expect(document.activeElement?.textContent?.trim()).toBe("Cancel");
    await button(w, "Cancel").trigger("click");
    await flushPromises();
    expect(deletes()).toEqual([]);
    expect(document.activeElement?.textContent?.trim()).toBe("Remove");
    const before = modelReads();
    await button(w, "Remove").trigger("click");
    await button(w, "Confirm").trigger("click");
    await flushPromises();
    expect(deletes()).toEqual(["/opencode/providers/openai/key"]);
    expect(w.find("[data-testid=key-hint]").exists()).toBe(false);
    expect(modelReads()).toBe(before + 1);
    expect(w.find("[role=dialog]").element.contains(document.activeElement)).toBe(true);
  });
});

describe("which chat a panel opens", () => {
  it("the sidebar falls back to the newest chat when its remembered one is gone", async () => {
    const routes = defaultRoutes();
    routes["GET /opencode/sessions"] = () => [200, { sessions: [session({ id: "ses_old", updated_at: 1 }), session({ id: SID, updated_at: 5 })] }];
    const binding = memoryBinding("sidebar", "ses_gone");
    const { transport } = await started([routes, { binding }]);
    expect(binding.id).toBe(SID);
    expect(transport.calls.some((c) => c.method === "POST")).toBe(false);
  });

  it("a provider whose models cannot be listed says so and offers the models its profile declares", async () => {
    const routes = defaultRoutes();
    delete routes["GET /opencode/providers/openai/models"];
    const caps = { tools: true, vision: false, context_tokens: 128_000, input_price: 0, output_price: 0 };
    const listed = routes["GET /opencode/providers"](undefined)[1] as { providers: { models: Record<string, unknown> }[] };
    listed.providers[0].models = { "declared-model": caps };
    routes["GET /opencode/providers"] = () => [200, listed];
    routes["GET /opencode/sessions/ses_1"] = () => [200, session({ provider: "openai" })];
    const { w, toasts, ws } = await started([routes]);
    ws.receive(ev("session.updated", 2, { session: session({ provider: "openai", last_seq: 2 }) }));
    await flushPromises();
    expect(toasts).toEqual([expect.stringContaining("Could not list the models of openai")]);
    expect(w.findAll("select[aria-label=Model] option").map((o) => o.text()))
      .toEqual(["Default model", "declared-model — 128.0k context · tools"]);
  });

  it("sets the session's budget", async () => {
    const { w, ws } = await started();
    await w.find("[data-testid=budget-button]").trigger("click");
    const inputs = w.findAll("[data-testid=budget-form] input");
    await inputs[0].setValue("200000");
    await inputs[1].setValue("0.5");
    await w.find("[data-testid=budget-form]").trigger("submit");
    await flushPromises();
    expect(ws.commands("configure")[0]).toMatchObject({ session_id: SID, patch: { budget: { max_tokens: 200000, max_cost: 0.5 } } });
    expect(w.find("[data-testid=budget-form]").exists()).toBe(false);
  });

  it("a budget form left open closes when another chat is picked, so it never saves into that one", async () => {
    const routes = defaultRoutes();
    const other = session({ id: "ses_2", title: "Other", updated_at: 900 });
    const first = session({ budget: { max_tokens: 5000, max_cost: 2 } });
    routes["GET /opencode/sessions"] = () => [200, { sessions: [first, other] }];
    routes["GET /opencode/sessions/ses_1"] = () => [200, first];
    routes["GET /opencode/sessions/ses_2"] = () => [200, other];
    const { w, ws } = await started([routes]);
    await w.find("[data-testid=budget-button]").trigger("click");
    expect(w.find("[data-testid=budget-form]").exists()).toBe(true);
    await pickChat(w, "Other");
    await flushPromises();
    ws.receive(snapshot({ session: other }));
    await flushPromises();
    expect(w.find("[data-testid=session-title]").text()).toBe("Other");
    expect(w.find("[data-testid=budget-form]").exists()).toBe(false);
    expect(ws.commands("configure")).toEqual([]);
  });

  it("a budget of any whole number of tokens and any cost is a valid entry", async () => {
    const { w } = await started();
    await w.find("[data-testid=budget-button]").trigger("click");
    const inputs = w.findAll("[data-testid=budget-form] input");
    await inputs[0].setValue("1500");
    await inputs[1].setValue("0.001");
    // A browser refuses to submit a form with a field off its step.
    expect(inputs.map((i) => (i.element as HTMLInputElement).validity.stepMismatch)).toEqual([false, false]);
    await inputs[0].setValue("-1");
    expect((inputs[0].element as HTMLInputElement).validity.rangeUnderflow).toBe(true);
  });
});

describe("changing the session's setup", () => {
  it("two quick role toggles both count, and a refused one is unticked again", async () => {
    const { w, ws } = await started();
    await w.find("[data-testid=skill-picker]").trigger("click");
    const box = (name: string) => w.find(`input[aria-label="${name}"]`);
    const ticked = (name: string) => (box(name).element as HTMLInputElement).checked;
    await box("Assistant").setValue(true);
    await box("ComfyUI tools").setValue(true); // before the first answer
    const [first, second] = ws.commands("configure");
    expect((second.patch as { skills: string[] }).skills).toEqual(["echo", "assistant", "comfyui"]);
    ws.receive({ type: "ack", id: first.id, data: { session: session({ skills: ["echo", "assistant"], updated_at: 1001 }) } });
    ws.receive({ type: "ack", id: second.id, data: { session: session({ skills: ["echo", "assistant", "comfyui"], updated_at: 1002 }) } });
    await flushPromises();
    expect([ticked("Echo"), ticked("Assistant"), ticked("ComfyUI tools")]).toEqual([true, true, true]);

    await box("Echo").setValue(false);
    const refused = ws.commands("configure").at(-1)!;
    ws.receive({ type: "error", id: refused.id, error: { code: "bad_request", message: "a session needs a role", details: {} } });
    await flushPromises();
    expect(ticked("Echo")).toBe(true);
  });

  it("the provider menu, focused, lists a profile another panel added since", async () => {
    const routes = defaultRoutes();
    const listed = routes["GET /opencode/providers"];
    let added = false;
    routes["GET /opencode/providers"] = (body) => {
      const [status, list] = listed(body) as [number, { providers: ProviderProfile[] }];
      return [status, added ? { ...list, providers: [...list.providers, { ...list.providers[0], name: "lmstudio" }] } : list];
    };
    const { w } = await started([routes]);
    const options = () => w.find("select[aria-label=Provider]").findAll("option").map((o) => o.attributes("value"));
    expect(options()).toEqual(["", "openai"]);
    added = true; // in the sidebar's panel, say
    await w.find("select[aria-label=Provider]").trigger("focus");
    await flushPromises();
    expect(options()).toEqual(["", "openai", "lmstudio"]);
  });

  it("a refused provider change puts the select back on the session's provider", async () => {
    const { w, ws, toasts } = await started();
    const select = w.find("select[aria-label=Provider]");
    await select.setValue("openai");
    const cmd = ws.commands("configure").at(-1)!;
    ws.receive({ type: "error", id: cmd.id, error: { code: "unknown_provider", message: "no provider profile openai", details: {} } });
    await flushPromises();
    expect(toasts).toEqual(["Something went wrong: no provider profile openai"]);
    expect((select.element as HTMLSelectElement).value).toBe("");
  });
});

describe("switching chats", () => {
  it("the last chat picked wins over an earlier pick whose answer comes later", async () => {
    const routes = defaultRoutes();
    routes["GET /opencode/sessions"] = () => [200, { sessions: [session(), session({ id: "ses_B", title: "Bee", updated_at: 999 }), session({ id: "ses_C", title: "Cee", updated_at: 998 })] }];
    routes["GET /opencode/sessions/ses_B"] = () => [200, session({ id: "ses_B", title: "Bee" })];
    routes["GET /opencode/sessions/ses_C"] = () => [200, session({ id: "ses_C", title: "Cee" })];
    let releaseB!: () => void;
    const { w, ws, deps } = await started([routes], (made) => {
      releaseB = holdRequests(made, (path) => path === "/opencode/sessions/ses_B");
    });
    await pickChat(w, "Bee"); // its answer is slow
    await pickChat(w, "Cee");
    await flushPromises();
    ws.ack("leave");
    ws.ack("join");
    ws.receive(snapshot({ session: session({ id: "ses_C", title: "Cee", last_seq: 2 }) }));
    await flushPromises();
    releaseB();
    await flushPromises();
    // Even a snapshot of B (a join sent before the switch) leaves the panel on C.
    ws.receive(snapshot({ session: session({ id: "ses_B", title: "Bee", last_seq: 2 }) }));
    await flushPromises();
    expect(w.find("[data-testid=session-title]").text()).toBe("Cee");
    expect(deps.binding.sessionId()).toBe("ses_C");
    expect(ws.commands("join").map((c) => c.session_id)).toEqual([SID, "ses_C"]);
  });
  it("a chat that cannot be opened or created is a notice; one deleted elsewhere leaves the list", async () => {
    const routes = defaultRoutes();
    routes["GET /opencode/sessions"] = () => [200, { sessions: [session(), session({ id: "ses_gone", title: "Gone chat", updated_at: 900 })] }];
    routes["GET /opencode/sessions/ses_gone"] = () => [404, { error: { code: "not_found", message: "no session ses_gone", details: {} } }];
    const { w, toasts } = await started([routes]);
    await pickChat(w, "Gone chat");
    await flushPromises();
    expect(toasts).toEqual(["Could not load: no session ses_gone"]);
    expect(w.find("[data-testid=session-title]").text()).toBe("Chat");
    routes["GET /opencode/sessions"] = () => [200, { sessions: [session()] }];
    await w.find("[aria-label=Chats]").trigger("click");
    expect(w.findAll(".oc-menu-item").map((b) => b.text())).toEqual([expect.stringContaining("Chat")]);

    routes["POST /opencode/sessions"] = () => [400, { error: { code: "unknown_provider", message: "no provider profile x", details: {} } }];
    await button(w, "New chat").trigger("click");
    await flushPromises();
    expect(toasts.at(-1)).toBe("Something went wrong: no provider profile x");
  });
});

describe("history", () => {
  it("loads earlier messages above the ones shown", async () => {
    const routes = defaultRoutes();
    const pages: string[] = [];
    routes["GET /opencode/sessions/ses_1/messages"] = () => [200, { messages: [message({ id: "msg_0", parts: [{ type: "text", text: "the very first" }] })], has_more: false, next_before: null }];
    const made = makeDeps(routes);
    const w = mountWith(OpencodePanel, made.deps);
    await flushPromises();
    const ws = FakeSocket.last();
    ws.open();
    await flushPromises();
    ws.receive(snapshot({ session: session({ last_seq: 1 }), messages: [message()], has_more: true }));
    await flushPromises();
    await button(w, "Load earlier messages").trigger("click");
    await flushPromises();
    pages.push(...made.transport.calls.filter((c) => c.path.includes("/messages")).map((c) => c.path));
    expect(pages).toEqual(["/opencode/sessions/ses_1/messages?before=msg_u1&limit=50"]);
    expect(w.findAll("article").map((a) => a.attributes("data-message-id"))).toEqual(["msg_0", "msg_u1"]);
    expect(w.text()).not.toContain("Load earlier messages");
  });

  it("keeps the reader's place when an older page comes in above", async () => {
    const routes = defaultRoutes();
    const layout = { scrollHeight: 1000 };
    routes["GET /opencode/sessions/ses_1/messages"] = () => {
      layout.scrollHeight = 1600; // what the older page will add above
      return [200, { messages: [message({ id: "msg_0" })], has_more: true, next_before: "msg_0" }];
    };
    const { w } = await started([routes]);
    const ws = FakeSocket.last();
    ws.receive(snapshot({ session: session({ last_seq: 1 }), messages: [message()], has_more: true }, "session.resync"));
    await flushPromises();
    const box = w.find(".oc-transcript").element as HTMLElement;
    Object.defineProperty(box, "scrollHeight", { get: () => layout.scrollHeight });
    box.scrollTop = 40; // reading near the top, by the button
    await button(w, "Load earlier messages").trigger("click");
    await flushPromises();
    expect(w.findAll("article").map((a) => a.attributes("data-message-id"))).toEqual(["msg_0", "msg_u1"]);
    expect(box.scrollTop).toBe(640); // the same message in view: 600 px of older history above it
  });

  it("an older page that answers after a switch to another chat is dropped, not shown in it", async () => {
    const routes = defaultRoutes();
    routes["GET /opencode/sessions"] = () => [200, { sessions: [session(), session({ id: "ses_2", title: "Other chat", updated_at: 900 })] }];
    routes["GET /opencode/sessions/ses_2"] = () => [200, session({ id: "ses_2", title: "Other chat" })];
    const made = makeDeps(routes);
    let release!: () => void;
    const gate = new Promise<void>((ok) => (release = ok));
    const base = made.deps.transport;
    made.deps.transport = {
      wsUrl: base.wsUrl,
      async fetch(path, init) {
        if (!path.startsWith("/opencode/sessions/ses_1/messages")) return base.fetch(path, init);
        await gate;
        const page = { messages: [message({ id: "msg_old", parts: [{ type: "text", text: "from the first chat" }] })], has_more: false };
        return new Response(JSON.stringify(page), { status: 200 });
      },
    };
    const w = mountWith(OpencodePanel, made.deps);
    await flushPromises();
    const ws = FakeSocket.last();
    ws.open();
    await flushPromises();
    ws.receive(snapshot({ session: session({ last_seq: 1 }), messages: [message()], has_more: true }));
    await flushPromises();
    await button(w, "Load earlier messages").trigger("click");
    await pickChat(w, "Other chat");
    await flushPromises();
    ws.ack("leave");
    ws.ack("join", { session_id: "ses_2" });
    ws.receive(snapshot({ session: session({ id: "ses_2", title: "Other chat", last_seq: 3 }), messages: [message({ id: "msg_b1", session_id: "ses_2" })] }));
    await flushPromises();
    release();
    await flushPromises();
    expect(w.find("[data-testid=session-title]").text()).toBe("Other chat");
    expect(w.findAll("article").map((a) => a.attributes("data-message-id"))).toEqual(["msg_b1"]);
    expect(w.text()).not.toContain("from the first chat");
  });
});

/** What holds the focus: an element inside the panel, never <body> (outside the key guard). */
const focused = () => document.activeElement as HTMLElement;

describe("where the focus goes", () => {
  it("back to the Chats button after a chat is picked from the list", async () => {
    const routes = defaultRoutes();
    routes["GET /opencode/sessions"] = () => [200, { sessions: [session(), session({ id: "ses_2", title: "Other chat", updated_at: 900 })] }];
    routes["GET /opencode/sessions/ses_2"] = () => [200, session({ id: "ses_2", title: "Other chat" })];
    const { w } = await started([routes]);
    await w.find("[aria-label=Chats]").trigger("click");
    await flushPromises();
    const item = w.findAll(".oc-menu-item").find((b) => b.text().startsWith("Other chat"))!;
    (item.element as HTMLElement).focus();
    await item.trigger("click");
    await flushPromises();
    expect(w.find(".oc-menu-item").exists()).toBe(false);
    expect(focused().getAttribute("aria-label")).toBe("Chats");
  });

  it("to the Budget button after Save, and to Delete or Chats after the delete confirm", async () => {
    const routes = defaultRoutes();
    routes["DELETE /opencode/sessions/ses_1"] = () => [200, { deleted: SID }];
    const { w } = await started([routes]);
    await w.find("[data-testid=budget-button]").trigger("click");
    (w.find("[data-testid=budget-form] input").element as HTMLElement).focus();
    await w.find("[data-testid=budget-form]").trigger("submit");
    await flushPromises();
    expect(focused().dataset.testid).toBe("budget-button");

    await w.find("[aria-label=Delete]").trigger("click");
    await flushPromises();
    expect(focused().textContent?.trim()).toBe("Cancel");
    await button(w, "Cancel").trigger("click");
    await flushPromises();
    expect(focused().getAttribute("aria-label")).toBe("Delete");
    await w.find("[aria-label=Delete]").trigger("click");
    await flushPromises();
    await button(w, "Confirm").trigger("click");
    await flushPromises();
    expect(focused().getAttribute("aria-label")).toBe("Chats");
  });

  it("into the provider dialog when it opens, around inside it on Tab, back to its opener when it closes", async () => {
    const { w } = await started();
    const gear = w.find("[aria-label=Providers]");
    (gear.element as HTMLElement).focus();
    await gear.trigger("click");
    await flushPromises();
    const dialog = w.find("[role=dialog]").element as HTMLElement;
    expect(dialog.contains(focused())).toBe(true);
    const controls = [...dialog.querySelectorAll<HTMLElement>("button:not([disabled]), input:not([disabled])")];
    const tab = (shiftKey = false) => focused().dispatchEvent(new KeyboardEvent("keydown", { key: "Tab", shiftKey, bubbles: true, cancelable: true }));
    expect(focused()).toBe(controls[0]);
    tab(true);
    expect(focused()).toBe(controls[controls.length - 1]);
    tab();
    expect(focused()).toBe(controls[0]);
    await pressEscape();
    expect(w.find("[role=dialog]").exists()).toBe(false);
    expect(focused()).toBe(gear.element);
  });
});

describe("provider profiles in the provider dialog", () => {
  const openai = { name: "openai", kind: "openai", base_url: "https://api.example/v1", default_model: "m1", key_env: null, models: {}, extra: {}, has_key: false, key_hint: null };

  async function dialog(routes = defaultRoutes()) {
    const started_ = await started([routes]);
    await started_.w.find("[aria-label=Providers]").trigger("click");
    await flushPromises();
    return started_;
  }
  const form = (w: VueWrapper) => w.find("[data-testid=provider-form]");
  const field = (w: VueWrapper, name: string) => form(w).find(`[name=${name}]`);
  const sections = (w: VueWrapper) => w.findAll(".oc-provider[data-provider]").map((s) => s.attributes("data-provider"));

  it("adds a custom profile (name, kind, base URL, default model) and nothing else", async () => {
    const routes = defaultRoutes();
    routes["POST /opencode/providers"] = (body) => [201, { ...openai, ...(body as object), key_env: null, models: {}, extra: {}, has_key: false, key_hint: null }];
    const { w, transport } = await dialog(routes);
    await button(w, "Custom…").trigger("click");
    await flushPromises();
    expect(document.activeElement).toBe(field(w, "name").element); // the form takes the focus
    await field(w, "name").setValue("local-llm");
    await field(w, "kind").setValue("ollama");
    await field(w, "base_url").setValue(" http://127.0.0.1:11434 ");
    await field(w, "default_model").setValue("qwen3");
    await form(w).trigger("submit");
    await flushPromises();
    const posts = transport.calls.filter((c) => c.method === "POST" && c.path === "/opencode/providers");
    expect(posts.map((c) => c.body)).toEqual([{ name: "local-llm", kind: "ollama", base_url: "http://127.0.0.1:11434", default_model: "qwen3" }]);
    expect(form(w).exists()).toBe(false);
    expect(sections(w)).toEqual(["openai", "local-llm"]);
    expect(w.find("[data-provider=local-llm]").text()).toContain("http://127.0.0.1:11434");
    expect((document.activeElement as HTMLElement).dataset.action).toBe("add-provider");
  });

  it("shows the server's refusal beside the form, which stays open with what was typed", async () => {
    const routes = defaultRoutes();
    routes["POST /opencode/providers"] = () => [400, { error: { code: "validation_error", message: "base_url must be an http(s) URL, got 'ftp://x'", details: { field: "base_url" } } }];
    routes["PATCH /opencode/providers/openai"] = () => [400, { error: { code: "bad_request", message: "base_url is not a valid URL", details: { field: "base_url" } } }];
    const { w, toasts } = await dialog(routes);
    await button(w, "Custom…").trigger("click");
    await field(w, "name").setValue("bad");
    await field(w, "base_url").setValue("ftp://x");
    await form(w).trigger("submit");
    await flushPromises();
    expect(form(w).find("[role=alert]").text()).toBe("base_url must be an http(s) URL, got 'ftp://x'");
    expect((field(w, "base_url").element as HTMLInputElement).value).toBe("ftp://x");
    expect(toasts).toEqual([]);
    expect(sections(w)).toEqual(["openai"]);
    await button(w, "Cancel").trigger("click");
    await flushPromises();

    await w.find("[aria-label='Edit openai']").trigger("click");
    await field(w, "base_url").setValue("http://[");
    await form(w).trigger("submit");
    await flushPromises();
    expect(form(w).find("[role=alert]").text()).toBe("base_url is not a valid URL");
  });

  it("edits the base URL and default model of a profile, then reads its models again", async () => {
    const routes = defaultRoutes();
    routes["GET /opencode/sessions/ses_1"] = () => [200, session({ provider: "openai" })];
    routes["PATCH /opencode/providers/openai"] = (body) => [200, { ...openai, ...(body as object) }];
    const { w, transport, ws } = await dialog(routes);
    ws.receive(snapshot({ session: session({ last_seq: 2, provider: "openai" }) }));
    await flushPromises();
    const reads = () => transport.calls.filter((c) => c.path.endsWith("/models")).length;
    const before = reads();
    await w.find("[aria-label='Edit openai']").trigger("click");
    await flushPromises();
    expect((field(w, "base_url").element as HTMLInputElement).value).toBe("https://api.example/v1");
    expect(form(w).find("[name=name]").exists()).toBe(false); // a profile's name and kind stay
    await field(w, "base_url").setValue("https://proxy.example/v1");
    await field(w, "default_model").setValue("m2");
    await form(w).trigger("submit");
    await flushPromises();
    const patches = transport.calls.filter((c) => c.method === "PATCH");
    expect(patches.map((c) => [c.path, c.body])).toEqual([["/opencode/providers/openai", { base_url: "https://proxy.example/v1", default_model: "m2" }]]);
    expect(form(w).exists()).toBe(false);
    expect(w.find("[data-provider=openai]").text()).toContain("https://proxy.example/v1");
    expect(reads()).toBe(before + 1);
    expect(document.activeElement?.getAttribute("aria-label")).toBe("Edit openai");
  });

  it("a save or delete sends the revision loaded; refused as changed elsewhere, the form says so and keeps what was typed", async () => {
    const message = "provider 'openai' was changed elsewhere since you loaded it; reload it and apply your change again";
    const changed = [409, { error: { code: "profile_changed", message, details: { provider: "openai", revision: "r2" } } }] as [number, unknown];
    // A script set another default model since the panel loaded the profile at r1.
    const now = { ...openai, default_model: "from-a-script", revision: "r2" };
    const routes = defaultRoutes();
    routes["GET /opencode/providers"] = () => [200, { providers: [{ ...openai, revision: "r1" }], presets: [] }];
    routes["GET /opencode/providers/openai"] = () => [200, now];
    const answers = [changed];
    routes["PATCH /opencode/providers/openai"] = (body) => answers.shift() ?? [200, { ...now, ...(body as object), revision: "r3" }];
    routes["DELETE /opencode/providers/openai"] = () => changed;
    const { w, transport, toasts } = await dialog(routes);
    const ifMatch = (method: string) => transport.calls.filter((c) => c.method === method).map((c) => c.headers["If-Match"]);
    await w.find("[aria-label='Edit openai']").trigger("click");
    await field(w, "base_url").setValue("https://proxy.example/v1");
    await form(w).trigger("submit");
    await flushPromises();
    expect(ifMatch("PATCH")).toEqual(['"r1"']);
    const alert = form(w).find("[role=alert]");
    expect(alert.text()).toBe(`${message} Reloaded: it shows as it is now. Check it and apply your change again (a form keeps what you typed).`);
    expect(form(w).attributes("aria-describedby")).toBe(alert.attributes("id"));
    expect((field(w, "base_url").element as HTMLInputElement).value).toBe("https://proxy.example/v1"); // typed: kept
    expect((field(w, "default_model").element as HTMLInputElement).value).toBe("from-a-script"); // not typed: as it is now
    expect(toasts).toEqual([]);
    await form(w).trigger("submit"); // Save again: onto the profile as it is now
    await flushPromises();
    expect(ifMatch("PATCH")).toEqual(['"r1"', '"r2"']);
    expect(transport.calls.filter((c) => c.method === "PATCH").at(-1)!.body).toEqual({ base_url: "https://proxy.example/v1", default_model: "from-a-script" });
    expect(form(w).exists()).toBe(false);

    await button(w, "Delete").trigger("click");
    await button(w, "Confirm").trigger("click");
    await flushPromises();
    expect(ifMatch("DELETE")).toEqual(['"r3"']);
    expect(sections(w)).toEqual(["openai"]); // not deleted
    expect(toasts.at(-1)).toBe(`Something went wrong: ${message}`);
  });

  it("opening shows the profiles as they are now: added, changed or removed by another panel", async () => {
    const routes = defaultRoutes();
    routes["GET /opencode/sessions/ses_1"] = () => [200, session({ provider: "openai" })];
    let listing = { providers: [{ ...openai, revision: "r1" }, { ...openai, name: "old", revision: "o1" }], presets: [] };
    routes["GET /opencode/providers"] = () => [200, listing];
    const { w, ws, transport } = await started([routes]);
    ws.receive(snapshot({ session: session({ last_seq: 2, provider: "openai" }) }));
    await flushPromises();
    const modelReads = () => transport.calls.filter((c) => c.path === "/opencode/providers/openai/models").length;
    const before = modelReads();
    // Meanwhile, the sidebar's panel (or a script) added one, changed one and removed one.
    listing = { providers: [{ ...openai, base_url: "https://moved.example/v1", revision: "r2" }, { ...openai, name: "ollama", base_url: "http://127.0.0.1:11434", revision: "n1" }], presets: [] };
    await w.find("[aria-label=Providers]").trigger("click");
    await flushPromises();
    expect(sections(w)).toEqual(["openai", "ollama"]);
    expect(w.find("[data-provider=openai]").text()).toContain("https://moved.example/v1");
    expect(modelReads()).toBe(before + 1); // its caps may have changed with it
  });

  it("a form open on a profile changed elsewhere takes the change where nothing was typed (window refocused)", async () => {
    const routes = defaultRoutes();
    let listing = { providers: [{ ...openai, revision: "r1" }], presets: [] };
    routes["GET /opencode/providers"] = () => [200, listing];
    routes["PATCH /opencode/providers/openai"] = (body) => [200, { ...openai, default_model: "from-a-script", ...(body as object), revision: "r3" }];
    const { w, transport } = await dialog(routes);
    await w.find("[aria-label='Edit openai']").trigger("click");
    await field(w, "base_url").setValue("https://proxy.example/v1");
    listing = { providers: [{ ...openai, default_model: "from-a-script", revision: "r2" }], presets: [] };
    window.dispatchEvent(new Event("focus")); // back from the tab where it was changed
    await flushPromises();
    expect((field(w, "base_url").element as HTMLInputElement).value).toBe("https://proxy.example/v1"); // typed: kept
    expect((field(w, "default_model").element as HTMLInputElement).value).toBe("from-a-script"); // not typed: as it is now
    await form(w).trigger("submit");
    await flushPromises();
    const patch = transport.calls.filter((c) => c.method === "PATCH").at(-1)!;
    expect([patch.headers["If-Match"], patch.body]).toEqual(['"r2"', { base_url: "https://proxy.example/v1", default_model: "from-a-script" }]);
  });

  it("a listing read while this panel changed a profile does not undo the change", async () => {
    const routes = defaultRoutes();
    routes["GET /opencode/providers"] = () => [200, { providers: [{ ...openai, revision: "r1" }], presets: [] }];
    routes["PATCH /opencode/providers/openai"] = (body) => [200, { ...openai, ...(body as object), revision: "r2" }];
    let release!: () => void;
    let holding = false;
    const { w } = await started([routes], (made) => {
      release = holdRequests(made, (path, init) => holding && path === "/opencode/providers" && (init.method ?? "GET") === "GET");
    });
    holding = true;
    await w.find("[aria-label=Providers]").trigger("click"); // its listing is slow to come
    await flushPromises();
    await w.find("[aria-label='Edit openai']").trigger("click");
    await field(w, "default_model").setValue("m2");
    await form(w).trigger("submit");
    await flushPromises();
    release();
    await flushPromises();
    await w.find("[aria-label='Edit openai']").trigger("click");
    expect((field(w, "default_model").element as HTMLInputElement).value).toBe("m2");
  });

  it("deletes a profile only after a confirm", async () => {
    const routes = defaultRoutes();
    routes["DELETE /opencode/providers/openai"] = () => [200, { deleted: "openai" }];
    const { w, transport } = await dialog(routes);
    const deletes = () => transport.calls.filter((c) => c.method === "DELETE").map((c) => c.path);
    await button(w, "Delete").trigger("click");
    await flushPromises();
    expect(deletes()).toEqual([]);
    expect(w.text()).toContain("Delete the profile openai and its stored key?");
    await button(w, "Cancel").trigger("click");
    await flushPromises();
    expect(sections(w)).toEqual(["openai"]);
    await button(w, "Delete").trigger("click");
    await button(w, "Confirm").trigger("click");
    await flushPromises();
    expect(deletes()).toEqual(["/opencode/providers/openai"]);
    expect(sections(w)).toEqual([]);
    expect(w.find("[role=dialog]").element.contains(document.activeElement)).toBe(true);
  });

  it("Escape closes a model's form, then the models, then the dialog", async () => {
    const { w } = await dialog();
    await w.find("[aria-label='Models of openai']").trigger("click");
    await flushPromises();
    expect(w.find("[aria-label='Models of openai']").attributes("aria-expanded")).toBe("true");
    await w.find("input[aria-label='Model id']").setValue("m2");
    await w.find(".oc-models form").trigger("submit");
    await flushPromises();
    expect(w.find("form[aria-label='Model m2']").exists()).toBe(true);
    const escape = () => pressEscape();
    await escape();
    expect(w.find("form[aria-label='Model m2']").exists()).toBe(false);
    expect(w.find("[role=group][aria-label='Models of openai']").exists()).toBe(true);
    await escape();
    expect(w.find("[role=group][aria-label='Models of openai']").exists()).toBe(false);
    expect(document.activeElement).toBe(w.find("[aria-label='Models of openai']").element);
    await escape();
    expect(w.find("[role=dialog]").exists()).toBe(false);
  });

  it("Escape closes an open form first, then the dialog", async () => {
    const { w } = await dialog();
    await button(w, "Custom…").trigger("click");
    await flushPromises();
    await pressEscape();
    expect(form(w).exists()).toBe(false);
    expect(w.find("[role=dialog]").exists()).toBe(true);
    await pressEscape();
    expect(w.find("[role=dialog]").exists()).toBe(false);
  });
});
