/** Builders for protocol objects and events used across the tests. */
import type { EventDataMap, EventType, Message, OcEvent, Run, Session, Skill } from "../src/protocol";

export const SID = "ses_1";

export function session(over: Partial<Session> = {}): Session {
  return {
    id: SID,
    title: "Chat",
    skills: ["echo"],
    provider: null,
    model: null,
    created_at: 1000,
    updated_at: 1000,
    usage: { input_tokens: 0, output_tokens: 0, cost: 0 },
    budget: { max_tokens: null, max_cost: null },
    permissions: {},
    last_seq: 0,
    ...over,
  };
}

export function message(over: Partial<Message> = {}): Message {
  return {
    id: "msg_u1",
    session_id: SID,
    role: "user",
    skill: null,
    run_id: null,
    parts: [{ type: "text", text: "hello" }],
    status: "completed",
    created_at: 1001,
    updated_at: 1001,
    usage: null,
    error: null,
    ...over,
  };
}

export function reply(over: Partial<Message> = {}): Message {
  return message({ id: "msg_a1", role: "assistant", skill: "echo", run_id: "run_1", parts: [], status: "streaming", ...over });
}

export function run(over: Partial<Run> = {}): Run {
  return { id: "run_1", session_id: SID, message_id: "msg_a1", skill: "echo", status: "working", error: null, ...over };
}

export function ev<K extends EventType>(type: K, seq: number, data: EventDataMap[K], sessionId = SID): OcEvent {
  return { seq, session_id: sessionId, type, ts: 2000 + seq, data } as OcEvent;
}

export function snapshot(over: Partial<EventDataMap["session.state"]> = {}, type: "session.state" | "session.resync" = "session.state"): OcEvent {
  const data = { session: session(), messages: [], runs: [], has_more: false, ...over };
  return ev(type, 0, data, data.session.id);
}

export function skill(over: Partial<Skill> = {}): Skill {
  return {
    id: "echo",
    name: "Echo",
    description: "Repeats you",
    version: "1.0",
    kind: "role",
    engine: "echo",
    color: "#64748b",
    origin: "builtin",
    tools: [],
    references: [],
    ...over,
  };
}
