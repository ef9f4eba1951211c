/**
 * The panel's session state and the pure `reduce(state, event)` that advances it.
 *
 * Events with `seq` at or below the last one applied are ignored, so a replay after a reconnect
 * never duplicates text; snapshots (`session.state`, `session.resync`) replace everything.
 * Never mutates its input; imports only the protocol types.
 */
import type {
  LogData,
  Message,
  OcEvent,
  Part,
  PermissionRequestedData,
  Run,
  Session,
  SessionStateData,
  ToolCallPart,
  ToolResultPart,
  UiRequestData,
} from "./protocol";
import { FINAL_RUN_STATUSES } from "./protocol";

export const MAX_LOGS = 500;

export interface PermissionEntry extends PermissionRequestedData {
  decision: "pending" | "allow" | "deny";
  remember: boolean;
  /** Why it was resolved: "answered" (by a person), else e.g. "no answer before the timeout". */
  reason?: string;
}

export interface LogEntry extends LogData {
  seq: number;
}

export interface ReadyState {
  phase: "ready";
  session: Session;
  messages: Message[];
  runs: Record<string, Run>;
  permissions: PermissionEntry[];
  proposals: UiRequestData[];
  logs: LogEntry[];
  hasMore: boolean;
  lastSeq: number;
}

/** `joining`: the session asked for, whose snapshot alone may fill the empty panel. */
export type ChatState = { phase: "empty"; joining?: string } | { phase: "deleted"; sessionId: string } | ReadyState;

export const EMPTY: ChatState = { phase: "empty" };

/** Nothing shown while the panel joins `sessionId`. */
export function joining(sessionId: string): ChatState {
  return { phase: "empty", joining: sessionId };
}

export function reduce(state: ChatState, event: OcEvent): ChatState {
  if (event.type === "session.state" || event.type === "session.resync") {
    // A snapshot of a chat the panel has left (its join answered late) must not replace this one.
    if (!follows(state, event.data.session.id)) return state;
    return fromSnapshot(state, event.data, event.seq);
  }
  if (state.phase !== "ready" || event.session_id !== state.session.id) return state;
  if (event.seq > 0 && event.seq <= state.lastSeq) return state;
  const s: ReadyState = { ...state, lastSeq: Math.max(state.lastSeq, event.seq) };
  switch (event.type) {
    case "session.updated":
      return { ...s, session: event.data.session };
    case "session.deleted":
      return { phase: "deleted", sessionId: event.data.session_id };
    case "message.created":
      return upsertMessage(s, event.data.message);
    case "message.completed":
      return upsertMessage(s, event.data.message);
    case "message.delta": {
      const { message_id, run_id, skill, text } = event.data;
      const base = findMessage(s, message_id) ?? placeholder(s.session.id, message_id, run_id, skill, event.ts);
      return upsertMessage(s, { ...base, status: "streaming", parts: appendText(base.parts, text) });
    }
    case "tool.started":
      return withMessage(s, event.data.message_id, (m) => ({ ...m, parts: upsertCall(m.parts, event.data.call) }));
    case "tool.finished":
      return withMessage(s, event.data.message_id, (m) => ({
        ...m,
        parts: upsertResult(upsertCall(m.parts, event.data.call), event.data.result),
      }));
    case "run.status":
      return applyRun(s, event.data.run);
    case "usage.updated":
      return { ...s, session: { ...s.session, usage: event.data.usage } };
    case "log": {
      const logs = [...s.logs, { ...event.data, seq: event.seq }];
      return { ...s, logs: logs.length > MAX_LOGS ? logs.slice(logs.length - MAX_LOGS) : logs };
    }
    case "permission.requested": {
      const entry: PermissionEntry = { ...event.data, decision: "pending", remember: false };
      const rest = s.permissions.filter((p) => p.request_id !== entry.request_id);
      return { ...s, permissions: [...rest, entry] };
    }
    case "permission.resolved": {
      const { request_id, decision, remember, reason } = event.data;
      const permissions = s.permissions.map((p) => (p.request_id === request_id ? { ...p, decision, remember, reason } : p));
      return { ...s, permissions };
    }
    case "ui.request":
      // `get_workflow` is answered at once by the store; only proposals wait for a person.
      if (event.data.action !== "propose_workflow") return s;
      return { ...s, proposals: [...s.proposals.filter((p) => p.request_id !== event.data.request_id), event.data] };
    default:
      return s;
  }
}

/** Take a session returned by a REST call (same shape `session.updated` would bring). */
export function withSession(state: ChatState, session: Session): ChatState {
  if (state.phase !== "ready" || state.session.id !== session.id) return state;
  if (session.updated_at < state.session.updated_at) return state; // an older copy
  return { ...state, session };
}

/** Forget a proposal once the person answered it (local, not an event). */
export function dropProposal(state: ChatState, requestId: string): ChatState {
  if (state.phase !== "ready") return state;
  return { ...state, proposals: state.proposals.filter((p) => p.request_id !== requestId) };
}

/** An older page of one session's history, read before its first message `before`. */
export interface HistoryPage {
  sessionId: string;
  before: string;
  messages: Message[];
  hasMore: boolean;
}

/** Put an older page of history in front of what is shown. The page was read while the person
 * could switch chats (or a resync replace the list): it fits only the chat and first message
 * it was read for, and is dropped otherwise. */
export function prependHistory(state: ChatState, page: HistoryPage): ChatState {
  if (state.phase !== "ready" || state.session.id !== page.sessionId || state.messages[0]?.id !== page.before) return state;
  const known = new Set(state.messages.map((m) => m.id));
  return { ...state, messages: [...page.messages.filter((m) => !known.has(m.id)), ...state.messages], hasMore: page.hasMore };
}

/** One prompt and the replies that answer it; a page of history may start with replies alone. */
export interface Turn {
  key: string;
  prompt: Message | null;
  replies: Message[];
}

/**
 * The transcript's turns. A reply sits under the prompt it names (`reply_to`): replies to queued
 * prompts are stored after all of them, so "the user message above" would put every one under the
 * last. A reply from before `reply_to` falls back to the nearest prompt above it; one whose prompt
 * is still behind "Load earlier" opens a turn of its own, which that prompt joins once loaded.
 * A turn equal to one in `previous` (same prompt, same reply objects) is that same object, so a
 * delta re-renders only the turn it changed.
 */
export function groupTurns(messages: readonly Message[], previous: readonly Turn[] = []): Turn[] {
  const out: Turn[] = [];
  const byPrompt = new Map<string, Turn>();
  for (const m of messages) {
    if (m.role === "user") {
      const turn: Turn = { key: m.id, prompt: m, replies: [] };
      out.push(turn);
      byPrompt.set(m.id, turn);
      continue;
    }
    const to = m.reply_to ?? null;
    let turn = to !== null ? byPrompt.get(to) : out[out.length - 1];
    if (!turn) {
      turn = { key: `reply:${to ?? m.id}`, prompt: null, replies: [] };
      out.push(turn);
      if (to !== null) byPrompt.set(to, turn);
    }
    turn.replies.push(m);
  }
  const old = new Map(previous.map((t) => [t.key, t]));
  return out.map((t) => {
    const was = old.get(t.key);
    return was && sameTurn(was, t) ? was : t;
  });
}

function sameTurn(a: Turn, b: Turn): boolean {
  return a.prompt === b.prompt && a.replies.length === b.replies.length && a.replies.every((r, i) => r === b.replies[i]);
}

/** How many of the chat's prompts read `text` (a pending send's own copy coming in adds one). */
export function promptsReading(state: ChatState, text: string): number {
  if (state.phase !== "ready") return 0;
  let n = 0;
  for (const m of state.messages) {
    if (m.role === "user" && m.parts.some((p) => p.type === "text" && p.text === text)) n++;
  }
  return n;
}

/** Runs still queued or working, oldest first. */
export function activeRuns(state: ChatState): Run[] {
  if (state.phase !== "ready") return [];
  return Object.values(state.runs).filter((r) => !FINAL_RUN_STATUSES.has(r.status) && r.status !== "idle");
}

/** Whether `sessionId` is the session this state shows or waits for (any, before a first join). */
function follows(state: ChatState, sessionId: string): boolean {
  if (state.phase === "ready") return state.session.id === sessionId;
  if (state.phase === "deleted") return state.sessionId === sessionId;
  return state.joining === undefined || state.joining === sessionId;
}

function fromSnapshot(state: ChatState, data: SessionStateData, seq: number): ReadyState {
  const runs: Record<string, Run> = {};
  for (const r of data.runs) runs[r.id] = r;
  // A snapshot carries no permission requests or proposals: keep those whose run still lives.
  const same = state.phase === "ready" && state.session.id === data.session.id;
  const alive = (runId: string | null) => runId !== null && runId in runs && !FINAL_RUN_STATUSES.has(runs[runId].status);
  return {
    phase: "ready",
    session: data.session,
    messages: [...data.messages],
    runs,
    permissions: same ? state.permissions.filter((p) => p.decision === "pending" && alive(p.run_id)) : [],
    proposals: same ? state.proposals.filter((p) => alive(p.run_id)) : [],
    logs: same ? state.logs : [],
    hasMore: data.has_more,
    lastSeq: Math.max(seq, data.session.last_seq),
  };
}

function findMessage(s: ReadyState, id: string): Message | undefined {
  return s.messages.find((m) => m.id === id);
}

function upsertMessage(s: ReadyState, message: Message): ReadyState {
  const i = s.messages.findIndex((m) => m.id === message.id);
  if (i < 0) return { ...s, messages: [...s.messages, message] };
  const messages = s.messages.slice();
  messages[i] = message;
  return { ...s, messages };
}

function withMessage(s: ReadyState, id: string, change: (m: Message) => Message): ReadyState {
  const m = findMessage(s, id);
  return m ? upsertMessage(s, change(m)) : s;
}

function placeholder(sessionId: string, id: string, runId: string | null, skill: string | null, ts: number): Message {
  return {
    id,
    session_id: sessionId,
    role: "assistant",
    skill,
    run_id: runId,
    parts: [],
    status: "streaming",
    created_at: ts,
    updated_at: ts,
    usage: null,
    error: null,
  };
}

function appendText(parts: Part[], text: string): Part[] {
  const last = parts[parts.length - 1];
  if (last && last.type === "text") return [...parts.slice(0, -1), { ...last, text: last.text + text }];
  return [...parts, { type: "text", text }];
}

function upsertCall(parts: Part[], call: ToolCallPart): Part[] {
  const i = parts.findIndex((p) => p.type === "tool_call" && p.id === call.id);
  if (i < 0) return [...parts, call];
  const out = parts.slice();
  out[i] = call;
  return out;
}

function upsertResult(parts: Part[], result: ToolResultPart): Part[] {
  const i = parts.findIndex((p) => p.type === "tool_result" && p.tool_call_id === result.tool_call_id);
  if (i < 0) return [...parts, result];
  const out = parts.slice();
  out[i] = result;
  return out;
}

function applyRun(s: ReadyState, run: Run): ReadyState {
  const runs = { ...s.runs, [run.id]: run };
  const final = FINAL_RUN_STATUSES.has(run.status);
  // A run's end settles its messages even if `message.completed` never arrives (abort, crash);
  // its start takes the prompting message out of the queue.
  const messages = s.messages.map((m) => {
    const mine = m.run_id === run.id || m.id === run.message_id;
    if (!mine) return m;
    if (final && (m.status === "streaming" || m.status === "queued")) {
      return { ...m, status: run.status as Message["status"], error: run.error ?? m.error, error_code: run.error_code ?? m.error_code };
    }
    if (run.status === "working" && m.role === "user" && m.status === "queued") return { ...m, status: "completed" as const };
    return m;
  });
  if (!final) return { ...s, runs, messages };
  // An ended run asks nothing more: what it still showed as open timed out or was answered by
  // another panel, and an answer now would only fail.
  const proposals = s.proposals.filter((p) => p.run_id !== run.id);
  const permissions = s.permissions.filter((p) => p.run_id !== run.id || p.decision !== "pending");
  return { ...s, runs, messages, proposals, permissions };
}
