/**
 * TypeScript mirror of `core/protocol.py`: every REST body, WebSocket command and event the panel
 * sends or receives. Change both together; `PROTOCOL_VERSION` must equal the server's.
 * Imports nothing.
 */

export const PROTOCOL_VERSION = 1;
export const MAX_TEXT_CHARS = 100_000;
export const MAX_TITLE_CHARS = 200;
export const MAX_SKILLS = 16;

// ------------------------------------------------------------------ message parts

export interface TextPart {
  type: "text";
  text: string;
}

export interface ImagePart {
  type: "image";
  source: "upload" | "comfyui";
  filename: string;
  subfolder: string;
  folder_type: "input" | "output" | "temp";
  mime_type: string;
}

export type ToolCallStatus = "pending" | "running" | "completed" | "error" | "denied" | "aborted";

export interface ToolCallPart {
  type: "tool_call";
  id: string;
  name: string;
  arguments: Record<string, unknown>;
  skill: string | null;
  status: ToolCallStatus;
  started_at: number | null;
  duration_ms: number | null;
  provider_data?: Record<string, unknown> | null;
}

export interface ToolResultPart {
  type: "tool_result";
  tool_call_id: string;
  name: string;
  content: string;
  is_error: boolean;
  images: ImagePart[];
}

export type Part = TextPart | ImagePart | ToolCallPart | ToolResultPart;

// ------------------------------------------------------------------ domain state

export type MessageStatus = "queued" | "streaming" | "completed" | "aborted" | "error" | "interrupted";
export type RunStatus = "idle" | "queued" | "working" | "completed" | "aborted" | "error" | "interrupted";
export const FINAL_RUN_STATUSES: ReadonlySet<RunStatus> = new Set(["completed", "aborted", "error", "interrupted"]);
export type PermissionClass = "read" | "edit" | "run" | "network" | "files";
export type PermissionPolicy = "allow" | "ask" | "deny";

export interface Usage {
  /** Every prompt token, cached or not. */
  input_tokens: number;
  output_tokens: number;
  /** The parts of `input_tokens` read from and written to the provider's prompt cache (absent from older servers). */
  cache_read_tokens?: number;
  cache_write_tokens?: number;
  cost: number;
}

export interface Budget {
  max_tokens: number | null;
  max_cost: number | null;
}

export interface Session {
  id: string;
  title: string;
  skills: string[];
  provider: string | null;
  model: string | null;
  created_at: number;
  updated_at: number;
  usage: Usage;
  budget: Budget;
  permissions: Record<string, PermissionPolicy>;
  last_seq: number;
}

export interface Message {
  id: string;
  session_id: string;
  role: "user" | "assistant";
  skill: string | null;
  run_id: string | null;
  parts: Part[];
  status: MessageStatus;
  created_at: number;
  updated_at: number;
  usage: Usage | null;
  error: string | null;
  /** The failure's stable code (`budget_exceeded`, `provider_auth`, …); absent on older rows. */
  error_code?: string | null;
  /** A reply's prompt: the id of the user's message it answers (null: a user's message, or a
   * reply stored before replies named their prompt). */
  reply_to?: string | null;
  /** A user's message: the `client_id` it was sent with (null: none, or stored before it was kept). */
  client_id?: string | null;
}

export interface Run {
  id: string;
  session_id: string;
  message_id: string;
  skill: string;
  status: RunStatus;
  error: string | null;
  error_code?: string | null;
}

// ------------------------------------------------------------------ events

export interface SessionStateData {
  session: Session;
  messages: Message[];
  runs: Run[];
  has_more: boolean;
}

export interface LogData {
  level: "debug" | "info" | "warning" | "error";
  module: string;
  message: string;
  time: number;
  run_id: string | null;
}

export interface PermissionRequestedData {
  request_id: string;
  run_id: string;
  skill: string;
  tool: string;
  permission_class: PermissionClass;
  summary: string;
  arguments: Record<string, unknown>;
  expires_at: number;
}

export interface PermissionResolvedData {
  request_id: string;
  decision: "allow" | "deny";
  remember: boolean;
  reason?: string;
}

export interface UiRequestData {
  request_id: string;
  run_id: string | null;
  action: "get_workflow" | "propose_workflow";
  payload: Record<string, unknown>;
}

/** The room of the list of sessions (`sessions.join`), in its events' `session_id`: never a session's id. */
export const SESSIONS_ROOM = "*";

/** Event type → the shape of its `data`. */
export interface EventDataMap {
  "session.state": SessionStateData;
  "session.resync": SessionStateData;
  "session.updated": { session: Session };
  "session.deleted": { session_id: string };
  "message.created": { message: Message };
  "message.delta": { message_id: string; run_id: string | null; skill: string | null; text: string };
  "message.completed": { message: Message };
  "tool.started": { message_id: string; run_id: string; call: ToolCallPart };
  "tool.finished": { message_id: string; run_id: string; call: ToolCallPart; result: ToolResultPart };
  "run.status": { run: Run };
  log: LogData;
  "permission.requested": PermissionRequestedData;
  "permission.resolved": PermissionResolvedData;
  "ui.request": UiRequestData;
  "usage.updated": { usage: Usage; message_id: string | null };
  /** The list room's snapshot: what `GET /opencode/sessions` lists. */
  "sessions.state": SessionList;
  /** A session as the list shows it: created, changed, or moved up by a send. */
  "sessions.changed": { session: Session };
  "sessions.removed": { session_id: string };
}

export type EventType = keyof EventDataMap;

/** Every event type, at run time (kept equal to `EVENT_DATA` in core/protocol.py by a test). */
export const EVENT_TYPES = [
  "session.state", "session.resync", "session.updated", "session.deleted", "message.created", "message.delta",
  "message.completed", "tool.started", "tool.finished", "run.status", "log", "permission.requested",
  "permission.resolved", "ui.request", "usage.updated", "sessions.state", "sessions.changed", "sessions.removed",
] as const satisfies readonly EventType[];

/** The envelope `{seq, session_id, type, ts, data}` as one discriminated union. */
export type OcEvent = {
  [K in EventType]: { seq: number; session_id: string; type: K; ts: number; data: EventDataMap[K] };
}[EventType];

export type EventOf<K extends EventType> = Extract<OcEvent, { type: K }>;

/** Snapshots that replace the panel's state (a session's, or the list's) instead of extending it. */
export const SNAPSHOT_EVENTS: ReadonlySet<EventType> = new Set(["session.state", "session.resync", "sessions.state"]);

// ------------------------------------------------------------------ REST bodies

export interface SessionCreate {
  /** A client may bring its own id (a workflow reopened on another machine keeps its session). */
  id?: string | null;
  title?: string;
  skills?: string[];
  provider?: string | null;
  model?: string | null;
}

export interface SessionPatch {
  title?: string | null;
  skills?: string[] | null;
  provider?: string | null;
  model?: string | null;
  budget?: Budget | null;
  permissions?: Record<string, PermissionPolicy> | null;
}

export type SendMode = "queue" | "interrupt";

export interface SendBody {
  text: string;
  images?: ImagePart[];
  skills?: string[];
  mode?: SendMode;
  /** The sender's name for this send: a repeat under it is answered, not sent again. */
  client_id?: string;
}

export interface SendResult {
  message_id: string;
  run_id: string | null;
  run_ids: string[];
  queued: boolean;
}

export interface AbortBody {
  run_id?: string | null;
  skill?: string | null;
}

export interface AbortResult {
  aborted: string[];
}

export interface PermissionReplyBody {
  request_id: string;
  decision: "allow" | "deny";
  remember: boolean;
}

export interface SessionList {
  sessions: Session[];
}

export interface MessagePage {
  messages: Message[];
  has_more: boolean;
  next_before: string | null;
}

export interface Health {
  status: "ok" | "degraded";
  uptime_s: number;
  store_error: string | null;
}

export interface VersionInfo {
  name: "opencode";
  version: string;
  protocol: number;
  capabilities: string[];
}

export interface Ok {
  ok: true;
}

export interface Deleted {
  deleted: string;
}

export interface AuditEntry {
  run_id: string | null;
  request_id: string | null;
  skill: string | null;
  tool: string;
  permission_class: string;
  decision: string;
  reason: string;
  ts: number;
}

export interface AuditList {
  entries: AuditEntry[];
}

export interface ErrorBody {
  code: string;
  message: string;
  details: Record<string, unknown>;
}

export interface ErrorEnvelope {
  error: ErrorBody;
}

// ------------------------------------------------------------------ skills (GET /opencode/skills)

export interface SkillTool {
  name: string;
  description: string;
  permission: PermissionClass;
  parameters: Record<string, unknown>;
}

export interface Skill {
  id: string;
  name: string;
  description: string;
  version: string;
  kind: "role" | "tools";
  engine: "llm" | "echo";
  color: string;
  origin: "builtin" | "user" | "python";
  license?: string | null;
  compatibility?: string | null;
  allowed_tools?: string[];
  tools: SkillTool[];
  references: string[];
}

export interface SkillList {
  skills: Skill[];
  problems?: { folder: string; reason: string }[];
}

// ------------------------------------------------------------------ providers

export type ProviderKind = "openai" | "anthropic" | "ollama" | "echo";

/** A model's limits as core/protocol.py checks them (`ModelCaps`): context tokens, and USD per million tokens. */
export const MIN_CONTEXT_TOKENS = 512;
export const MAX_CONTEXT_TOKENS = 100_000_000;
export const MAX_PRICE = 100_000;

export interface ModelCaps {
  tools: boolean;
  vision: boolean;
  context_tokens: number;
  input_price: number;
  output_price: number;
  /** USD per million prompt tokens read from / written to the provider's cache; null: the kind's usual share of input_price. */
  cache_read_price?: number | null;
  cache_write_price?: number | null;
}

export interface ProviderProfile {
  name: string;
  kind: ProviderKind;
  base_url: string;
  default_model: string;
  key_env: string | null;
  models: Record<string, ModelCaps>;
  extra: Record<string, unknown>;
  has_key: boolean;
  key_hint: string | null;
  /** A digest of the stored settings: sent back as `If-Match: "<revision>"` with a change. Null
   * for a preset; absent from a server older than revisions. */
  revision?: string | null;
}

export interface ProviderCreate {
  name: string;
  kind: ProviderKind;
  base_url?: string | null;
  default_model?: string;
  key_env?: string | null;
  models?: Record<string, ModelCaps>;
  extra?: Record<string, unknown>;
}

export interface ProviderPatch {
  base_url?: string | null;
  default_model?: string | null;
  key_env?: string | null;
  models?: Record<string, ModelCaps> | null;
  extra?: Record<string, unknown> | null;
}

export interface ProviderList {
  providers: ProviderProfile[];
  presets: ProviderProfile[];
}

export interface ModelInfo {
  id: string;
  caps: ModelCaps | null;
}

export interface ModelList {
  models: ModelInfo[];
}

// ------------------------------------------------------------------ WebSocket commands

export interface CommandMap {
  /** `panel: true` says this socket can answer `ui.request` (read the canvas, load a graph). */
  join: { session_id: string; after_seq?: number | null; panel?: boolean };
  leave: { session_id?: string | null };
  /** Follow the list of sessions: a `sessions.state`, or the changes since `after_seq`; then live. */
  "sessions.join": { after_seq?: number | null };
  "sessions.leave": Record<string, never>;
  send: { session_id: string; text: string; images?: ImagePart[]; skills?: string[]; mode?: SendMode };
  abort: { session_id: string; run_id?: string | null; skill?: string | null };
  retry: { session_id: string; message_id: string };
  configure: { session_id: string; patch: SessionPatch };
  ping: Record<string, never>;
  "permission.reply": { session_id: string; request_id: string; decision: "allow" | "deny"; remember: boolean };
  "ui.reply": { session_id: string; request_id: string; ok: boolean; result: Record<string, unknown>; error?: string | null; answer_id?: string };
}

export type CommandType = keyof CommandMap;

/** Every command type, at run time (kept equal to `COMMAND_TYPES` in core/protocol.py by a test). */
export const COMMAND_TYPES = [
  "join", "leave", "sessions.join", "sessions.leave", "send", "abort", "retry", "configure", "ping",
  "permission.reply", "ui.reply",
] as const satisfies readonly CommandType[];

export interface AckReply {
  type: "ack";
  id: string;
  data: Record<string, unknown>;
}

export interface ErrorReply {
  type: "error";
  id: string | null;
  error: ErrorBody;
}

export type ServerFrame = AckReply | ErrorReply | OcEvent;

/** `GET /opencode/token`: the install's access token for remote clients (answered to trusted callers only). */
export interface TokenInfo {
  token: string;
  header: "X-Opencode-Token";
}
