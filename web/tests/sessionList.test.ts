/** The list of chats for someone with hundreds: filter, last activity, keys, a cap on rows. */
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { flushPromises, type DOMWrapper, type VueWrapper } from "@vue/test-utils";
import OpencodePanel from "../src/components/OpencodePanel.vue";
import { activityClock } from "../src/format";
import { setLocale } from "../src/i18n";
import type { Session } from "../src/protocol";
import { defaultRoutes, makeDeps, mountWith } from "./harness";
import { FakeSocket } from "./fakes";
import { ev, session, SID, snapshot } from "./fixtures";
import { SESSIONS_ROOM } from "../src/protocol";

vi.mock("dompurify", () => ({ default: () => ({ addHook: () => undefined, sanitize: (html: string) => html }) }));

beforeEach(() => {
  FakeSocket.reset();
  setLocale("en");
});
afterEach(() => {
  vi.useRealTimers();
  document.body.innerHTML = "";
});

/** Noon, 15 May 2026, in the local time zone: days below are calendar days wherever this runs. */
const NOW = new Date(2026, 4, 15, 12, 0, 0).getTime();
const at = (...parts: [number, number, number, number?, number?, number?]) => new Date(...parts).getTime() / 1000;

/** The panel in chat SID, its list of chats answered by `listed()` (each time it is asked);
 * `live`: the server has the list room (`sessions.join`). */
async function started(listed: () => Session[], live = false) {
  const routes = defaultRoutes();
  if (live) {
    const plain = routes["GET /opencode/version"];
    routes["GET /opencode/version"] = (body) => {
      const [status, info] = plain(body) as [number, { capabilities: string[] }];
      return [status, { ...info, capabilities: [...info.capabilities, "sessions.join"] }];
    };
  }
  routes["GET /opencode/sessions"] = () => [200, { sessions: listed() }];
  for (const s of listed()) routes[`GET /opencode/sessions/${s.id}`] = () => [200, s];
  const made = makeDeps(routes);
  made.deps.binding.setSessionId(SID);
  const w = mountWith(OpencodePanel, made.deps);
  await flushPromises();
  const ws = FakeSocket.last();
  ws.open();
  await flushPromises();
  ws.receive(snapshot({ session: listed().find((s) => s.id === SID) ?? session() }));
  await flushPromises();
  return { ...made, routes, w, ws };
}

async function openList(w: VueWrapper): Promise<DOMWrapper<HTMLInputElement>> {
  await w.find("[aria-label=Chats]").trigger("click");
  await flushPromises();
  return w.find<HTMLInputElement>("[role=combobox]");
}

const titles = (w: VueWrapper) => w.findAll("[role=option]").map((o) => o.find("[data-testid=chat-title]").text());
const active = (w: VueWrapper) => w.find("[role=option][aria-selected=true]");

describe("activityClock", () => {
  it.each([
    { when: "20 s before", updatedAt: at(2026, 4, 15, 11, 59, 40), text: "just now" },
    { when: "30 s after (a clock ahead of this one)", updatedAt: at(2026, 4, 15, 12, 0, 30), text: "just now" },
    { when: "5 min before", updatedAt: at(2026, 4, 15, 11, 55), text: "5 min ago" },
    { when: "this morning", updatedAt: at(2026, 4, 15, 9, 0), text: "3 h ago" },
    { when: "13 h before, last night", updatedAt: at(2026, 4, 14, 23, 0), text: "yesterday" },
    { when: "3 days before", updatedAt: at(2026, 4, 12, 10, 0), text: "3 days ago" },
    { when: "a week before", updatedAt: at(2026, 4, 8, 12, 0), text: "May 8" },
    { when: "last year", updatedAt: at(2025, 11, 30, 9, 0), text: "Dec 30, 2025" },
  ])("$when: $text", ({ updatedAt, text }) => {
    expect(activityClock(NOW).since(updatedAt)).toBe(text);
  });

  it("speaks the panel's language", () => {
    setLocale("zh-CN");
    expect([at(2026, 4, 15, 11, 55), at(2026, 4, 14, 8, 0), at(2026, 4, 8, 12, 0), at(2025, 11, 30, 9, 0)].map(activityClock(NOW).since))
      .toEqual(["5 分钟前", "昨天", "5月8日", "2025年12月30日"]);
  });
});

describe("the list of chats", () => {
  it("shows each chat's last activity, most recent first, and marks the current one", async () => {
    vi.useFakeTimers({ toFake: ["Date"] });
    vi.setSystemTime(NOW);
    const { w } = await started(() => [
      session({ id: "ses_old", title: "Old", updated_at: at(2026, 4, 1, 12, 0) }),
      session({ title: "Current", updated_at: at(2026, 4, 15, 11, 55) }),
      session({ id: "ses_y", title: "Yesterday's", updated_at: at(2026, 4, 14, 18, 0) }),
    ]);
    await openList(w);
    expect(titles(w)).toEqual(["Current", "Yesterday's", "Old"]);
    expect(w.findAll("[role=option] time").map((x) => x.text())).toEqual(["5 min ago", "yesterday", "May 1"]);
    expect(w.findAll("[role=option] time")[2].attributes("title")).toContain("May 1, 2026");
    expect(w.findAll("[role=option]").map((o) => o.attributes("aria-current"))).toEqual(["true", undefined, undefined]);
    expect(w.find("[role=option]").text()).toContain("current");
  });

  it("moves a chat that changed to the top, also while the list cannot be asked for again", async () => {
    let listed = [session({ updated_at: 1000 }), session({ id: "ses_B", title: "Bee", updated_at: 2000 })];
    const { w, ws, routes } = await started(() => listed);
    ws.receive(ev("session.updated", 2, { session: session({ title: "Renamed", updated_at: 3000, last_seq: 2 }) }));
    await flushPromises();
    routes["GET /opencode/sessions"] = () => [503, { error: { code: "unavailable", message: "busy", details: {} } }];
    await openList(w);
    expect(titles(w)).toEqual(["Renamed", "Bee"]);
    await w.find("[aria-label=Chats]").trigger("click");

    listed = [session({ id: "ses_tab", title: "From another tab", updated_at: 4000 }), ...listed];
    routes["GET /opencode/sessions"] = () => [200, { sessions: listed }];
    await openList(w);
    expect(titles(w)[0]).toBe("From another tab");
  });

  it("filters titles as typed: any case, full-width letters, Chinese, every word", async () => {
    const { w } = await started(() => [
      session({ title: "Flux portrait", updated_at: 5 }),
      session({ id: "ses_2", title: "SDXL upscale", updated_at: 4 }),
      session({ id: "ses_3", title: "风景 工作流", updated_at: 3 }),
      session({ id: "ses_4", title: "ＦＬＵＸ anime upscale", updated_at: 2 }),
      session({ id: "ses_5", title: "", updated_at: 1 }),
    ]);
    const filter = await openList(w);
    await filter.setValue("flux");
    expect(titles(w)).toEqual(["Flux portrait", "ＦＬＵＸ anime upscale"]);
    await filter.setValue("工作");
    expect(titles(w)).toEqual(["风景 工作流"]);
    await filter.setValue("UPSCALE flux");
    expect(titles(w)).toEqual(["ＦＬＵＸ anime upscale"]);
    await filter.setValue("untitled");
    expect(titles(w)).toEqual(["Untitled chat"]);
    await filter.setValue("inpaint");
    expect(titles(w)).toEqual([]);
    expect(w.text()).toContain("No chat matches “inpaint”.");
    await filter.setValue("");
    expect(titles(w)).toHaveLength(5);
  });

  it("is driven from the filter: arrows move, Enter opens, Escape closes back to the Chats button", async () => {
    const { w, ws, deps } = await started(() => [
      session({ title: "Flux one", updated_at: 5 }),
      session({ id: "ses_2", title: "SDXL", updated_at: 4 }),
      session({ id: "ses_3", title: "Flux two", updated_at: 3 }),
      session({ id: "ses_4", title: "Flux three", updated_at: 2 }),
    ]);
    const filter = await openList(w);
    expect(document.activeElement).toBe(filter.element);
    const listbox = w.find("[role=listbox]");
    expect(filter.attributes("aria-controls")).toBe(listbox.attributes("id"));
    expect(filter.attributes("aria-activedescendant")).toBe(active(w).attributes("id"));
    expect(active(w).text()).toContain("Flux one");

    await filter.setValue("flux");
    await filter.trigger("keydown", { key: "ArrowDown" });
    await filter.trigger("keydown", { key: "ArrowDown" });
    await filter.trigger("keydown", { key: "ArrowDown" }); // stays on the last
    expect(active(w).text()).toContain("Flux three");
    await filter.trigger("keydown", { key: "ArrowUp" });
    expect(active(w).text()).toContain("Flux two");
    expect(filter.attributes("aria-activedescendant")).toBe(active(w).attributes("id"));

    await filter.trigger("keydown", { key: "Enter", isComposing: true }); // choosing a character in an IME
    expect(w.find("[role=listbox]").exists()).toBe(true);
    const down = new KeyboardEvent("keydown", { key: "Enter", bubbles: true, cancelable: true });
    filter.element.dispatchEvent(down);
    await flushPromises();
    expect(down.defaultPrevented).toBe(true);
    expect(w.find("[role=listbox]").exists()).toBe(false);
    expect((document.activeElement as HTMLElement).getAttribute("aria-label")).toBe("Chats");
    expect(deps.binding.sessionId()).toBe("ses_3");
    ws.ack("leave");
    await flushPromises();
    expect(ws.commands("join").at(-1)).toMatchObject({ session_id: "ses_3" });

    const again = await openList(w);
    await again.trigger("keydown", { key: "Escape" });
    expect(w.find("[role=listbox]").exists()).toBe(false);
    expect((document.activeElement as HTMLElement).getAttribute("aria-label")).toBe("Chats");

    await openList(w); // Tab onwards (to New chat) closes it too
    (w.findAll("button").find((b) => b.text() === "New chat")!.element as HTMLElement).focus();
    await flushPromises();
    expect(w.find("[role=listbox]").exists()).toBe(false);
  });

  it("shows the first 100 of a thousand chats, and the rest on filtering", async () => {
    const many = Array.from({ length: 1000 }, (_, i) => session({ id: i ? `ses_${i}` : SID, title: `Workflow ${i}`, updated_at: 100_000 - i }));
    const { w } = await started(() => many);
    const filter = await openList(w);
    expect(titles(w)).toHaveLength(100);
    expect(w.text()).toContain("900 more — type to filter");
    const press = new MouseEvent("mousedown", { bubbles: true, cancelable: true }); // on the note: the focus stays
    w.findAll("p").find((p) => p.text() === "900 more — type to filter")!.element.dispatchEvent(press);
    expect(press.defaultPrevented).toBe(true);
    await filter.setValue("99");
    expect(titles(w)).toEqual([...[99, 199, 299, 399, 499, 599, 699, 799, 899], ...Array.from({ length: 10 }, (_, i) => 990 + i)].map((n) => `Workflow ${n}`));
    expect(w.text()).not.toContain("more — type to filter");
  });
});

describe("the list of chats, live", () => {
  const listEvent = <K extends "sessions.state" | "sessions.changed" | "sessions.removed">(type: K, seq: number, data: Parameters<typeof ev<K>>[2]) =>
    ev(type, seq, data, SESSIONS_ROOM);
  const chats = () => [
    session({ title: "Current", updated_at: 5 }),
    session({ id: "ses_f1", title: "Flux one", updated_at: 4 }),
    session({ id: "ses_f2", title: "Flux two", updated_at: 3 }),
  ];
  const listings = (t: { calls: { path: string }[] }) => t.calls.filter((c) => c.path === "/opencode/sessions").length;

  it("follows other tabs while open, keeping the filter, the active row's chat and the focus", async () => {
    const { w, ws, transport } = await started(chats, true);
    const asked = listings(transport);
    const filter = await openList(w);
    expect(ws.commands("sessions.join")).toEqual([expect.not.objectContaining({ after_seq: expect.anything() })]);
    expect(listings(transport)).toBe(asked); // the room's snapshot is the listing: not read again
    ws.receive(listEvent("sessions.state", 100, { sessions: chats() }));
    ws.ack("sessions.join", { session_id: SESSIONS_ROOM });
    await filter.setValue("flux");
    await filter.trigger("keydown", { key: "ArrowDown" });
    expect(active(w).text()).toContain("Flux two");

    ws.receive(listEvent("sessions.changed", 101, { session: session({ id: "ses_new", title: "Flux new", updated_at: 10 }) }));
    await flushPromises();
    expect(titles(w)).toEqual(["Flux new", "Flux one", "Flux two"]);
    ws.receive(listEvent("sessions.changed", 102, { session: session({ id: "ses_f1", title: "Flux uno", updated_at: 11 }) }));
    ws.receive(listEvent("sessions.changed", 103, { session: session({ id: "ses_f2", title: "Flux two", updated_at: 1 }) })); // an older copy
    ws.receive(listEvent("sessions.removed", 104, { session_id: "ses_new" }));
    ws.receive(listEvent("sessions.changed", 105, { session: session({ id: "ses_cat", title: "Cats", updated_at: 12 }) })); // filtered out
    await flushPromises();
    expect(titles(w)).toEqual(["Flux uno", "Flux two"]);
    expect(active(w).text()).toContain("Flux two");
    expect(filter.element.value).toBe("flux");
    expect(document.activeElement).toBe(filter.element);
    expect(filter.attributes("aria-activedescendant")).toBe(active(w).attributes("id"));

    await filter.trigger("keydown", { key: "Escape" });
    expect(ws.commands("sessions.leave")).toHaveLength(1);
    ws.receive(listEvent("sessions.changed", 106, { session: session({ id: "ses_f2", title: "Flux two", updated_at: 13 }) }));
    await openList(w); // again: just what it missed since 106, and no listing read
    expect(ws.commands("sessions.join").at(-1)).toMatchObject({ after_seq: 106 });
    expect(listings(transport)).toBe(asked);
    expect(titles(w)).toEqual(["Flux two", "Cats", "Flux uno", "Current"]);
  });

  it("keeps the first row's chat active when nothing was chosen", async () => {
    const { w, ws } = await started(chats, true);
    await openList(w);
    ws.receive(listEvent("sessions.state", 7, { sessions: chats() }));
    ws.receive(listEvent("sessions.changed", 8, { session: session({ id: "ses_new", title: "From another tab", updated_at: 9 }) }));
    await flushPromises();
    expect(titles(w)[0]).toBe("From another tab");
    expect(active(w).text()).toContain("Current");
  });

  it("rejoins after a reconnect with the offset it saw, and takes a fresh snapshot whole", async () => {
    const { w, ws } = await started(chats, true);
    await openList(w);
    ws.receive(listEvent("sessions.state", 50, { sessions: chats() }));
    ws.receive(listEvent("sessions.changed", 51, { session: session({ id: "ses_new", title: "New", updated_at: 9 }) }));
    ws.drop();
    await new Promise((r) => setTimeout(r, 600)); // the first reconnect waits 500 ms
    const again = FakeSocket.last();
    again.open();
    await flushPromises();
    expect(again.commands("sessions.join")).toEqual([expect.objectContaining({ after_seq: 51 })]);
    // A restarted server cannot replay: it sends the list as it is (its seqs count on from the clock).
    again.receive(listEvent("sessions.state", 9_000, { sessions: [session({ id: "ses_f2", title: "Flux two", updated_at: 3 })] }));
    again.receive(listEvent("sessions.changed", 9_001, { session: session({ id: "ses_f1", title: "Flux one", updated_at: 20 }) }));
    await flushPromises();
    expect(titles(w)).toEqual(["Flux one", "Flux two"]);
  });

  it("reads the listing on opening when the socket is not open, and not one older than a live change", async () => {
    let listed = chats();
    const { w, ws, routes, transport } = await started(() => listed, true);
    ws.drop(); // reconnecting: the list is read over REST
    listed = [session({ id: "ses_rest", title: "Read over REST", updated_at: 30 }), ...chats()];
    const asked = listings(transport);
    await openList(w);
    expect(listings(transport)).toBe(asked + 1);
    expect(titles(w)[0]).toBe("Read over REST");

    let answer: () => void = () => undefined;
    routes["GET /opencode/sessions"] = () => [200, { sessions: chats() }];
    const slow = transport.fetch.bind(transport);
    transport.fetch = (path, init) => (path === "/opencode/sessions" ? new Promise<Response>((r) => (answer = () => r(slow(path, init)))) : slow(path, init));
    await w.find("[aria-label=Chats]").trigger("click"); // closed
    await openList(w); // asked again, and slow to answer
    await new Promise((r) => setTimeout(r, 600));
    const again = FakeSocket.last();
    again.open();
    await flushPromises();
    again.receive(listEvent("sessions.state", 60, { sessions: listed }));
    again.receive(listEvent("sessions.removed", 61, { session_id: "ses_f1" }));
    answer();
    await flushPromises();
    expect(titles(w)).toEqual(["Read over REST", "Current", "Flux two"]);
  });

  it("shows the chat open here as deleted when it is deleted elsewhere", async () => {
    const { w, ws } = await started(chats, true);
    await openList(w);
    ws.receive(listEvent("sessions.state", 3, { sessions: chats() }));
    ws.receive(listEvent("sessions.removed", 4, { session_id: SID }));
    await flushPromises();
    expect(titles(w)).toEqual(["Flux one", "Flux two"]);
    expect(w.text()).toContain("This chat was deleted.");
  });
});
