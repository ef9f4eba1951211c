import { describe, expect, it } from "vitest";
import type { ChatState, ReadyState } from "../src/reducer";
import { activeRuns, dropProposal, EMPTY, groupTurns, joining, MAX_LOGS, prependHistory, reduce } from "../src/reducer";
import type { OcEvent } from "../src/protocol";
import { ev, message, reply, run, session, SID, snapshot } from "./fixtures";

function ready(events: OcEvent[], start: ChatState = EMPTY): ReadyState {
  const s = events.reduce(reduce, start);
  if (s.phase !== "ready") throw new Error(`expected ready, got ${s.phase}`);
  return s;
}

const base = [snapshot({ messages: [message()], session: session({ last_seq: 4 }) })];

describe("reduce: snapshots", () => {
  it.each([
    ["session.state", "session.state"],
    ["session.resync", "session.resync"],
  ] as const)("%s replaces the state and takes last_seq from the session", (_, type) => {
    const before = ready([...base, ev("message.created", 5, { message: reply() })]);
    const after = ready([snapshot({ session: session({ last_seq: 9 }), messages: [message({ id: "msg_x" })] }, type)], before);
    expect(after.messages.map((m) => m.id)).toEqual(["msg_x"]);
    expect(after.lastSeq).toBe(9);
  });

  it("takes only the snapshot of the session it shows or joins, not a late one of a chat left", () => {
    const shown = ready(base);
    const other = snapshot({ session: session({ id: "ses_2", last_seq: 9 }) }, "session.resync");
    expect(reduce(shown, other)).toBe(shown);
    const waiting = joining("ses_3");
    expect(reduce(waiting, other)).toBe(waiting);
    expect(ready([snapshot({ session: session({ id: "ses_3" }) })], waiting).session.id).toBe("ses_3");
  });

  it("keeps pending permission requests whose run is still active across a resync", () => {
    const asked = ready([
      ...base,
      ev("permission.requested", 5, {
        request_id: "perm_1", run_id: "run_1", skill: "echo", tool: "t", permission_class: "run", summary: "s", arguments: {}, expires_at: 0,
      }),
    ]);
    const keep = ready([snapshot({ runs: [run()] }, "session.resync")], asked);
    expect(keep.permissions.map((p) => p.request_id)).toEqual(["perm_1"]);
    const drop = ready([snapshot({ runs: [] }, "session.resync")], asked);
    expect(drop.permissions).toEqual([]);
  });
});

describe("reduce: one event at a time", () => {
  const table: [string, OcEvent[], (s: ReadyState) => unknown, unknown][] = [
    ["message.created appends", [ev("message.created", 5, { message: reply() })], (s) => s.messages.map((m) => m.id), ["msg_u1", "msg_a1"]],
    [
      "message.delta appends text to the last text part",
      [
        ev("message.created", 5, { message: reply() }),
        ev("message.delta", 6, { message_id: "msg_a1", run_id: "run_1", skill: "echo", text: "Hel" }),
        ev("message.delta", 7, { message_id: "msg_a1", run_id: "run_1", skill: "echo", text: "lo" }),
      ],
      (s) => s.messages[1].parts,
      [{ type: "text", text: "Hello" }],
    ],
    [
      "message.delta for an unknown message creates a streaming placeholder",
      [ev("message.delta", 5, { message_id: "msg_z", run_id: "run_9", skill: "echo", text: "hi" })],
      (s) => [s.messages[1].id, s.messages[1].role, s.messages[1].status, s.messages[1].run_id],
      ["msg_z", "assistant", "streaming", "run_9"],
    ],
    [
      "message.completed replaces the message",
      [
        ev("message.created", 5, { message: reply() }),
        ev("message.completed", 6, { message: reply({ status: "completed", parts: [{ type: "text", text: "done" }] }) }),
      ],
      (s) => [s.messages[1].status, s.messages[1].parts],
      ["completed", [{ type: "text", text: "done" }]],
    ],
    [
      "tool.started then tool.finished update the call in place and add its result",
      [
        ev("message.created", 5, { message: reply() }),
        ev("tool.started", 6, {
          message_id: "msg_a1", run_id: "run_1",
          call: { type: "tool_call", id: "c1", name: "list_models", arguments: {}, skill: null, status: "running", started_at: 1, duration_ms: null },
        }),
        ev("tool.finished", 7, {
          message_id: "msg_a1", run_id: "run_1",
          call: { type: "tool_call", id: "c1", name: "list_models", arguments: {}, skill: null, status: "completed", started_at: 1, duration_ms: 12 },
          result: { type: "tool_result", tool_call_id: "c1", name: "list_models", content: "[]", is_error: false, images: [] },
        }),
      ],
      (s) => s.messages[1].parts.map((p) => (p.type === "tool_call" ? `call:${p.status}` : p.type)),
      ["call:completed", "tool_result"],
    ],
    [
      "a call announced pending between deltas stays between them: the text after it is a part of its own",
      [
        ev("message.created", 5, { message: reply() }),
        ev("message.delta", 6, { message_id: "msg_a1", run_id: "run_1", skill: "echo", text: "First." }),
        ev("tool.started", 7, {
          message_id: "msg_a1", run_id: "run_1",
          call: { type: "tool_call", id: "c1", name: "lookup", arguments: {}, skill: null, status: "pending", started_at: null, duration_ms: null },
        }),
        ev("message.delta", 8, { message_id: "msg_a1", run_id: "run_1", skill: "echo", text: "Then." }),
        ev("tool.started", 9, {
          message_id: "msg_a1", run_id: "run_1",
          call: { type: "tool_call", id: "c1", name: "lookup", arguments: {}, skill: null, status: "running", started_at: 1, duration_ms: null },
        }),
      ],
      (s) => s.messages[1].parts.map((p) => (p.type === "tool_call" ? `call:${p.status}` : p.type === "text" ? p.text : p.type)),
      ["First.", "call:running", "Then."],
    ],
    [
      "a final run.status settles a streaming message",
      [ev("message.created", 5, { message: reply() }), ev("run.status", 6, { run: run({ status: "aborted" }) })],
      (s) => [s.messages[1].status, activeRuns(s).length],
      ["aborted", 0],
    ],
    [
      "a run that fails settles its streaming message with the error and its code",
      [
        ev("message.created", 5, { message: reply() }),
        ev("run.status", 6, { run: run({ status: "error", error: "invalid x-api-key (HTTP 401)", error_code: "provider_auth" }) }),
      ],
      (s) => [s.messages[1].status, s.messages[1].error, s.messages[1].error_code],
      ["error", "invalid x-api-key (HTTP 401)", "provider_auth"],
    ],
    [
      "run.status working takes a queued prompt out of the queue",
      [
        ev("message.created", 5, { message: message({ id: "msg_u2", status: "queued" }) }),
        ev("run.status", 6, { run: run({ message_id: "msg_u2", status: "working" }) }),
      ],
      (s) => [s.messages[1].status, activeRuns(s).map((r) => r.id)],
      ["completed", ["run_1"]],
    ],
    [
      "usage.updated sets the session's total",
      [ev("usage.updated", 5, { usage: { input_tokens: 10, output_tokens: 5, cost: 0.5 }, message_id: "msg_a1" })],
      (s) => s.session.usage,
      { input_tokens: 10, output_tokens: 5, cost: 0.5 },
    ],
    [
      "session.updated replaces the session",
      [ev("session.updated", 5, { session: session({ title: "New", last_seq: 5 }) })],
      (s) => s.session.title,
      "New",
    ],
    [
      "permission.requested then resolved",
      [
        ev("permission.requested", 5, {
          request_id: "perm_1", run_id: "run_1", skill: "echo", tool: "queue_workflow", permission_class: "run", summary: "Run it", arguments: {}, expires_at: 0,
        }),
        ev("permission.resolved", 6, { request_id: "perm_1", decision: "allow", remember: true }),
      ],
      (s) => s.permissions.map((p) => [p.request_id, p.decision, p.remember]),
      [["perm_1", "allow", true]],
    ],
    [
      "ui.request propose_workflow waits; get_workflow does not",
      [
        ev("ui.request", 5, { request_id: "ui_1", run_id: "run_1", action: "propose_workflow", payload: { workflow: {} } }),
        ev("ui.request", 6, { request_id: "ui_2", run_id: "run_1", action: "get_workflow", payload: {} }),
      ],
      (s) => s.proposals.map((p) => p.request_id),
      ["ui_1"],
    ],
    [
      "log lines are kept with their seq",
      [ev("log", 5, { level: "info", module: "opencode.agent", message: "hi", time: 1, run_id: null })],
      (s) => s.logs.map((l) => [l.seq, l.message]),
      [[5, "hi"]],
    ],
  ];

  it.each(table)("%s", (_, events, pick, expected) => {
    expect(pick(ready([...base, ...events]))).toEqual(expected);
  });
});

describe("reduce: what it ignores", () => {
  it("drops events at or below the last seq (replays never duplicate text)", () => {
    const delta = ev("message.delta", 6, { message_id: "msg_a1", run_id: "run_1", skill: "echo", text: "Hi" });
    const s = ready([...base, ev("message.created", 5, { message: reply() }), delta, delta, ev("message.created", 5, { message: reply() })]);
    expect(s.messages[1].parts).toEqual([{ type: "text", text: "Hi" }]);
    expect(s.lastSeq).toBe(6);
  });

  it("ignores events from another session and events before any snapshot", () => {
    const other = ev("message.created", 9, { message: reply() }, "ses_other");
    expect(ready([...base, other]).messages).toHaveLength(1);
    expect(reduce(EMPTY, ev("message.created", 1, { message: reply() }))).toBe(EMPTY);
  });

  it("does not mutate its input", () => {
    const s = ready(base);
    const frozen = JSON.stringify(s);
    reduce(s, ev("message.created", 5, { message: reply() }));
    expect(JSON.stringify(s)).toBe(frozen);
  });

  it("session.deleted moves to the deleted phase", () => {
    const s = [...base, ev("session.deleted", 5, { session_id: SID })].reduce(reduce, EMPTY);
    expect(s).toEqual({ phase: "deleted", sessionId: SID });
  });

  it("caps the log", () => {
    const logs = Array.from({ length: MAX_LOGS + 5 }, (_, i) =>
      ev("log", 5 + i, { level: "debug", module: "m", message: String(i), time: i, run_id: null }),
    );
    const s = ready([...base, ...logs]);
    expect(s.logs).toHaveLength(MAX_LOGS);
    expect(s.logs[0].message).toBe("5");
  });
});

describe("local helpers", () => {
  it("prependHistory puts older messages first without duplicates", () => {
    const page = { sessionId: SID, before: "msg_u1", messages: [message({ id: "msg_0" }), message()], hasMore: false };
    const s = prependHistory(ready(base), page) as ReadyState;
    expect(s.messages.map((m) => m.id)).toEqual(["msg_0", "msg_u1"]);
    expect(s.hasMore).toBe(false);
  });

  it("prependHistory drops a page read for another chat, or for a list a resync replaced", () => {
    const shown = ready(base);
    const page = { sessionId: "ses_2", before: "msg_u1", messages: [message({ id: "msg_0", session_id: "ses_2" })], hasMore: false };
    expect(prependHistory(shown, page)).toBe(shown);
    expect(prependHistory(shown, { ...page, sessionId: SID, before: "msg_gone" })).toBe(shown);
  });

  it("a run's end drops its open proposals and permission requests, not those of other runs or decided ones", () => {
    const ask = (seq: number, id: string, runId: string) => ev("permission.requested", seq, {
      request_id: id, run_id: runId, skill: "echo", tool: "t", permission_class: "run", summary: "s", arguments: {}, expires_at: 0,
    });
    const s = ready([
      ...base,
      ev("ui.request", 5, { request_id: "ui_1", run_id: "run_1", action: "propose_workflow", payload: {} }),
      ev("ui.request", 6, { request_id: "ui_2", run_id: "run_2", action: "propose_workflow", payload: {} }),
      ask(7, "perm_1", "run_1"),
      ask(8, "perm_2", "run_1"),
      ev("permission.resolved", 9, { request_id: "perm_2", decision: "allow", remember: false }),
      ask(10, "perm_3", "run_2"),
      ev("run.status", 11, { run: run({ status: "completed" }) }),
    ]);
    expect(s.proposals.map((p) => p.request_id)).toEqual(["ui_2"]);
    expect(s.permissions.map((p) => p.request_id)).toEqual(["perm_2", "perm_3"]);
  });

  it("dropProposal forgets an answered proposal", () => {
    const s = ready([...base, ev("ui.request", 5, { request_id: "ui_1", run_id: null, action: "propose_workflow", payload: {} })]);
    expect((dropProposal(s, "ui_1") as ReadyState).proposals).toEqual([]);
  });
});

describe("groupTurns", () => {
  const ask = (id: string) => message({ id, parts: [{ type: "text", text: id }] });
  const answer = (id: string, replyTo?: string | null) => reply({ id, status: "completed", ...(replyTo === undefined ? {} : { reply_to: replyTo }) });
  const shape = (turns: ReturnType<typeof groupTurns>) => turns.map((t) => [t.prompt?.id ?? null, ...t.replies.map((r) => r.id)]);

  it("puts the replies to queued prompts under the prompts they answer, not all under the last", () => {
    // How the store lists them: the queued prompts come in before the replies that answer them.
    const messages = [ask("u1"), answer("a1", "u1"), ask("u2"), ask("u3"), answer("a2", "u2"), answer("a3", "u3")];
    expect(shape(groupTurns(messages))).toEqual([["u1", "a1"], ["u2", "a2"], ["u3", "a3"]]);
  });

  it("a reply without reply_to (an older server's) stays under the nearest prompt above it", () => {
    const messages = [ask("u1"), answer("a1"), ask("u2"), answer("a2", null), answer("a3", "u1")];
    expect(shape(groupTurns(messages))).toEqual([["u1", "a1", "a3"], ["u2", "a2"]]);
  });

  it("replies whose prompt is behind Load earlier open a turn of their own, joined once it is loaded", () => {
    const page = [answer("a1", "u1"), answer("a1b", "u1"), ask("u2"), answer("a2", "u2")];
    expect(shape(groupTurns(page))).toEqual([[null, "a1", "a1b"], ["u2", "a2"]]);
    expect(shape(groupTurns([ask("u1"), ...page]))).toEqual([["u1", "a1", "a1b"], ["u2", "a2"]]);
  });

  it("keeps a turn the same object while its messages are, so only a changed turn re-renders", () => {
    const first = groupTurns([ask("u1"), answer("a1", "u1"), ask("u2"), answer("a2", "u2")]);
    const streamed = answer("a2", "u2");
    const next = groupTurns([first[0].prompt!, first[0].replies[0], first[1].prompt!, streamed], first);
    expect(next[0]).toBe(first[0]);
    expect(next[1]).not.toBe(first[1]);
    expect(next[1].replies[0]).toBe(streamed);
  });
});
