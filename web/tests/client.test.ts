import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { ApiError, OpencodeClient } from "../src/client";
import type { OcEvent } from "../src/protocol";
import { EMPTY, reduce, type ChatState } from "../src/reducer";
import { ev, reply, session, SID, snapshot } from "./fixtures";
import { FakeSocket, fakeTransport } from "./fakes";

function delta(seq: number, text: string): OcEvent {
  return ev("message.delta", seq, { message_id: "msg_a1", run_id: "run_1", skill: "echo", text });
}

function makeClient(token: string | null = null) {
  const transport = fakeTransport({
    "GET /opencode/version": () => [200, { name: "opencode", version: "0.1.0", protocol: 1, capabilities: [] }],
    "POST /opencode/sessions/ses_1/messages": () => [202, { message_id: "m", run_id: "r", run_ids: ["r"], queued: false }],
    "GET /opencode/sessions": () => [401, { error: { code: "unauthorized", message: "token needed", details: {} } }],
  });
  const client = new OpencodeClient({
    transport,
    token: () => token,
    socket: (url) => new FakeSocket(url),
    backoffMs: [100, 200, 400],
    commandTimeoutMs: 1000,
    pingIntervalMs: 5000,
  });
  client.setServerCapabilities(["ws", "send.client_id"]);
  return { client, transport };
}

beforeEach(() => {
  FakeSocket.reset();
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe("OpencodeClient REST", () => {
  it("sends the token header and parses JSON", async () => {
    const { client, transport } = makeClient("tok");
    expect((await client.version()).protocol).toBe(1);
    expect(transport.calls[0].headers["X-Opencode-Token"]).toBe("tok");
  });

  it("turns an error envelope into an ApiError with its code", async () => {
    const { client } = makeClient();
    await expect(client.listSessions()).rejects.toMatchObject({ code: "unauthorized", status: 401 });
  });

  it("sends a profile's revision as If-Match with a change of it, and none without one", async () => {
    const transport = fakeTransport({ "PATCH /opencode/providers/p": () => [200, {}], "DELETE /opencode/providers/p": () => [200, {}] });
    const client = new OpencodeClient({ transport, socket: (url) => new FakeSocket(url) });
    await client.patchProvider("p", { default_model: "m" }, "abc123");
    await client.deleteProvider("p", "abc123");
    await client.patchProvider("p", { default_model: "m" }, null); // a server older than revisions
    expect(transport.calls.map((c) => c.headers["If-Match"])).toEqual(['"abc123"', '"abc123"', undefined]);
  });

  it("falls back to REST for send while the socket is closed", async () => {
    const { client, transport } = makeClient();
    const result = await client.send(SID, { text: "hi" });
    expect(result.message_id).toBe("m");
    expect(transport.calls.map((c) => `${c.method} ${c.path}`)).toEqual(["POST /opencode/sessions/ses_1/messages"]);
  });
});

describe("OpencodeClient WebSocket", () => {
  it("joins on open, answers commands by id, and puts the token in the URL", async () => {
    const { client } = makeClient("a b");
    const states: string[] = [];
    client.onState((s) => states.push(s));
    client.connect();
    void client.join(SID);
    const ws = FakeSocket.last();
    expect(ws.url).toBe("ws://test/opencode/ws?token=a%20b");
    ws.open();
    expect(ws.commands("join")).toEqual([{ id: expect.any(String), type: "join", session_id: SID, panel: true }]);
    const sent = client.send(SID, { text: "yo", mode: "queue" });
    ws.ack("send", { message_id: "m1", run_id: null, run_ids: [], queued: true });
    await expect(sent).resolves.toMatchObject({ message_id: "m1", queued: true });
    expect(states).toEqual(["connecting", "open"]);
  });

  it("a join overtaken by another while it leaves the old session is not sent", async () => {
    const { client } = makeClient();
    client.connect();
    void client.join(SID);
    const ws = FakeSocket.last();
    ws.open();
    ws.ack("join");
    void client.join("ses_B");
    void client.join("ses_C");
    for (const c of ws.commands("leave")) ws.receive({ type: "ack", id: c.id, data: {} });
    await vi.advanceTimersByTimeAsync(0);
    expect(ws.commands("join").map((c) => c.session_id)).toEqual([SID, "ses_C"]);
    expect(client.session).toBe("ses_C");
  });

  it("sends again under the same client_id when the socket drops before the answer", async () => {
    const { client, transport } = makeClient();
    client.connect();
    void client.join(SID);
    let ws = FakeSocket.last();
    ws.open();
    const sent = client.send(SID, { text: "order 1 pizza" });
    const first = ws.commands("send")[0];
    expect(first.client_id).toMatch(/^snd_[0-9a-f]{24}$/);
    ws.drop(); // the frame left; its answer never comes
    await vi.advanceTimersByTimeAsync(100);
    ws = FakeSocket.last();
    ws.open();
    await vi.advanceTimersByTimeAsync(0);
    const again = ws.commands("send");
    expect(again).toHaveLength(1);
    expect(again[0]).toMatchObject({ text: "order 1 pizza", client_id: first.client_id });
    ws.ack("send", { message_id: "m1", run_id: "r1", run_ids: ["r1"], queued: false });
    await expect(sent).resolves.toMatchObject({ message_id: "m1" });
    expect(transport.calls.filter((c) => c.method === "POST")).toEqual([]);
  });

  it("sends again over REST when the socket stays down, and gives up after the last try", async () => {
    const { client, transport } = makeClient();
    client.connect();
    const ws = FakeSocket.last();
    ws.open();
    const sent = client.send(SID, { text: "hi" });
    const id = ws.commands("send")[0].client_id;
    ws.drop(); // and no new socket ever opens
    await vi.advanceTimersByTimeAsync(9999);
    expect(transport.calls.filter((c) => c.method === "POST")).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    await expect(sent).resolves.toMatchObject({ message_id: "m" });
    const posts = transport.calls.filter((c) => c.method === "POST");
    expect(posts.map((c) => (c.body as { client_id: string }).client_id)).toEqual([id]);
  });

  it("sends without a client_id, and only once, to a server that does not know the field", async () => {
    const { client } = makeClient();
    client.setServerCapabilities(["ws"]); // a server from before send.client_id
    client.connect();
    const ws = FakeSocket.last();
    ws.open();
    const sent = client.send(SID, { text: "hi" });
    expect(ws.commands("send")[0]).not.toHaveProperty("client_id");
    ws.drop();
    await expect(sent).rejects.toMatchObject({ code: "disconnected" });
  });

  it("does not send again when the server answered with an error", async () => {
    const { client } = makeClient();
    client.connect();
    const ws = FakeSocket.last();
    ws.open();
    const sent = client.send(SID, { text: "hi" });
    const cmd = ws.commands("send")[0];
    ws.receive({ type: "error", id: cmd.id, error: { code: "unknown_skill", message: "no role nope", details: {} } });
    await expect(sent).rejects.toMatchObject({ code: "unknown_skill" });
    await vi.advanceTimersByTimeAsync(20000);
    expect(ws.commands("send")).toHaveLength(1);
  });

  it("rejects a command answered with an error frame", async () => {
    const { client } = makeClient();
    client.connect();
    const ws = FakeSocket.last();
    ws.open();
    const p = client.command("abort", { session_id: SID });
    const cmd = ws.commands("abort")[0];
    ws.receive({ type: "error", id: cmd.id, error: { code: "not_found", message: "no session", details: {} } });
    await expect(p).rejects.toBeInstanceOf(ApiError);
    await expect(p).rejects.toMatchObject({ code: "not_found" });
  });

  it("reconnects with backoff, rejoins with after_seq and never duplicates replayed text", async () => {
    const { client } = makeClient();
    let state: ChatState = EMPTY;
    const seen: number[] = [];
    const off = client.onEvent((e) => {
      seen.push(e.seq);
      state = reduce(state, e);
    });
    client.connect();
    void client.join(SID);
    let ws = FakeSocket.last();
    ws.open();
    ws.receive(snapshot({ session: session({ last_seq: 3 }) }));
    ws.receive(ev("message.created", 4, { message: reply() }));
    ws.receive(delta(5, "Hello "));
    ws.receive(delta(6, "wor"));
    expect(client.seqOf(SID)).toBe(6);

    ws.drop();
    expect(client.connection).toBe("reconnecting");
    vi.advanceTimersByTime(99);
    expect(FakeSocket.all).toHaveLength(1);
    vi.advanceTimersByTime(1);
    expect(FakeSocket.all).toHaveLength(2);
    ws = FakeSocket.last();
    ws.drop(); // the second try fails too: the next waits longer
    vi.advanceTimersByTime(199);
    expect(FakeSocket.all).toHaveLength(2);
    vi.advanceTimersByTime(1);
    ws = FakeSocket.last();
    ws.open();
    expect(ws.commands("join")).toEqual([{ id: expect.any(String), type: "join", session_id: SID, panel: true, after_seq: 6 }]);

    // The server replays from its ring buffer, overlapping what we already had.
    ws.receive(delta(5, "Hello "));
    ws.receive(delta(6, "wor"));
    ws.receive(delta(7, "ld"));
    off();
    ws.receive(delta(8, "!")); // after unsubscribe: not seen
    expect(seen).toEqual([0, 4, 5, 6, 7]);
    expect(state.phase === "ready" && state.messages[0].parts).toEqual([{ type: "text", text: "Hello world" }]);
  });

  it("a resync after reconnect replaces the state", () => {
    const { client } = makeClient();
    let state: ChatState = EMPTY;
    client.onEvent((e) => (state = reduce(state, e)));
    client.connect();
    void client.join(SID);
    let ws = FakeSocket.last();
    ws.open();
    ws.receive(snapshot({ session: session({ last_seq: 2 }), messages: [reply({ id: "old" })] }));
    ws.drop();
    vi.advanceTimersByTime(100);
    ws = FakeSocket.last();
    ws.open();
    ws.receive(snapshot({ session: session({ last_seq: 50 }), messages: [reply({ id: "new" })] }, "session.resync"));
    ws.receive(delta(40, "stale")); // below the resync point: dropped
    expect(state.phase === "ready" && state.messages.map((m) => m.id)).toEqual(["new"]);
    expect(client.seqOf(SID)).toBe(50);
  });

  it("closes a socket whose ping goes unanswered, then reconnects", async () => {
    const { client } = makeClient();
    client.connect();
    const ws = FakeSocket.last();
    ws.open();
    vi.advanceTimersByTime(5000);
    expect(ws.commands("ping")).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1000); // command timeout, then its handler
    expect(ws.closed).toBe(true);
    ws.drop();
    vi.advanceTimersByTime(100);
    expect(FakeSocket.all).toHaveLength(2);
  });

  it("switching sessions leaves the old one and joins fresh (no after_seq)", async () => {
    const { client } = makeClient();
    client.connect();
    void client.join(SID);
    const ws = FakeSocket.last();
    ws.open();
    ws.ack("join");
    ws.receive(snapshot({ session: session({ last_seq: 9 }) }));
    const p = client.join("ses_2");
    await Promise.resolve();
    ws.ack("leave");
    await vi.waitFor(() => expect(ws.commands("join")).toHaveLength(2));
    ws.ack("join");
    await p;
    expect(ws.commands("leave")[0]).toMatchObject({ session_id: SID });
    expect(ws.commands("join")[1]).toEqual({ id: expect.any(String), type: "join", session_id: "ses_2", panel: true });
  });

  it("close() stops reconnecting and fails pending commands", async () => {
    const { client } = makeClient();
    client.connect();
    const ws = FakeSocket.last();
    ws.open();
    const p = client.command("ping", {});
    client.close();
    await expect(p).rejects.toMatchObject({ code: "disconnected" });
    vi.advanceTimersByTime(10_000);
    expect(FakeSocket.all).toHaveLength(1);
    expect(client.connection).toBe("closed");
  });
});

describe("OpencodeClient defaults", () => {
  it("uses the browser WebSocket when no factory is given (an explicit undefined included)", () => {
    const created: string[] = [];
    class StubWs {
      readyState = 0;
      constructor(url: string) {
        created.push(url);
      }
      send() {}
      close() {}
    }
    vi.stubGlobal("WebSocket", StubWs);
    const client = new OpencodeClient({ transport: fakeTransport({}), socket: undefined });
    client.connect();
    expect(created).toEqual(["ws://test/opencode/ws"]);
    client.close();
    vi.unstubAllGlobals();
  });
});
