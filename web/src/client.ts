/**
 * The panel's only line to the server: REST calls and one WebSocket with reconnect.
 *
 * The socket reconnects with backoff and rejoins its session (and the list of sessions, while
 * followed) with `after_seq` = the highest seq seen, and drops any event at or below it, so a
 * replay never repeats text. Commands go over the socket when it is open and fall back to REST
 * when one exists. Knows nothing of ComfyUI: the caller passes a `Transport` (see host.ts).
 * Imports only the protocol types.
 */
import type {
  AbortBody,
  AbortResult,
  CommandMap,
  CommandType,
  Deleted,
  ErrorEnvelope,
  MessagePage,
  ModelList,
  TokenInfo,
  OcEvent,
  PermissionReplyBody,
  ProviderCreate,
  ProviderList,
  ProviderPatch,
  ProviderProfile,
  SendBody,
  SendResult,
  Session,
  SessionCreate,
  SessionList,
  SessionPatch,
  SkillList,
  VersionInfo,
} from "./protocol";
import { SESSIONS_ROOM, SNAPSHOT_EVENTS } from "./protocol";

export interface Transport {
  /** `path` starts with `/opencode/`; the transport adds the host's prefix (ComfyUI: `/api`). */
  fetch(path: string, init: RequestInit): Promise<Response>;
  /** Absolute ws:// or wss:// URL for `path`. */
  wsUrl(path: string): string;
}

export interface SocketLike {
  readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onclose: ((ev: unknown) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type SocketFactory = (url: string) => SocketLike;

export interface ClientOptions {
  transport: Transport;
  token?: () => string | null | undefined;
  socket?: SocketFactory;
  /** Join as a panel (answers `ui.request`); scripts and tests may pass false. */
  panel?: boolean;
  /** Delays before reconnect attempts 1, 2, …; the last one repeats. */
  backoffMs?: number[];
  commandTimeoutMs?: number;
  pingIntervalMs?: number;
  /** How many times a send whose answer was lost is tried in all, and how long each repeat
   * waits for the socket to come back before it goes over REST instead. */
  sendAttempts?: number;
  resendWaitMs?: number;
}

export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export class ApiError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly status = 0,
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
    this.name = "ApiError";
  }
}

const OPEN = 1;
const DEFAULT_BACKOFF = [500, 1000, 2000, 4000, 8000, 15000];
/** Failures after which a command may or may not have reached the server. */
export const ANSWER_LOST = new Set(["disconnected", "timeout", "network_error"]);

/** The `If-Match` of a change made against a profile's `revision`. As a header, not a body field:
 * a server older than revisions sends none and ignores the header, where it would refuse a field. */
function ifMatch(revision?: string | null): Record<string, string> {
  return revision ? { "If-Match": `"${revision}"` } : {};
}

/** A random name for one send (`crypto.randomUUID` needs a secure context; ComfyUI on a LAN is not one). */
export function newClientId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return "snd_" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

interface Pending {
  resolve: (data: Record<string, unknown>) => void;
  reject: (err: ApiError) => void;
  timer: ReturnType<typeof setTimeout>;
}

export class OpencodeClient {
  private readonly opts: Required<Omit<ClientOptions, "token">> & Pick<ClientOptions, "token">;
  private ws: SocketLike | null = null;
  private state: ConnectionState = "idle";
  private attempt = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private pingTimer: ReturnType<typeof setInterval> | null = null;
  private nextId = 0;
  private readonly pending = new Map<string, Pending>();
  private readonly eventListeners = new Set<(e: OcEvent) => void>();
  private readonly stateListeners = new Set<(s: ConnectionState) => void>();
  private joined: string | null = null;
  private repeatableSends = false;
  private namedAnswers = false;
  /** Whether the server answers a reply again (`retry`): an older one does not. */
  retries = false;
  /** Whether the server has the list room (`sessions.join`), and whether it is followed. */
  private listRoom = false;
  private followingList = false;
  private lastSeq = new Map<string, number>();

  constructor(options: ClientOptions) {
    this.opts = {
      transport: options.transport,
      token: options.token,
      socket: options.socket ?? ((url) => new WebSocket(url) as unknown as SocketLike),
      panel: options.panel ?? true,
      backoffMs: options.backoffMs ?? DEFAULT_BACKOFF,
      commandTimeoutMs: options.commandTimeoutMs ?? 15000,
      pingIntervalMs: options.pingIntervalMs ?? 25000,
      sendAttempts: options.sendAttempts ?? 3,
      resendWaitMs: options.resendWaitMs ?? 10000,
    };
  }

  // ------------------------------------------------------------ REST

  async request<T>(method: string, path: string, body?: unknown, extraHeaders: Record<string, string> = {}): Promise<T> {
    const headers: Record<string, string> = { Accept: "application/json", ...extraHeaders };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const token = this.opts.token?.();
    if (token) headers["X-Opencode-Token"] = token;
    let res: Response;
    try {
      res = await this.opts.transport.fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new ApiError("network_error", String((err as Error)?.message ?? err));
    }
    const text = await res.text();
    let json: unknown = undefined;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch {
      json = undefined;
    }
    if (!res.ok) {
      const env = json as Partial<ErrorEnvelope> | undefined;
      const e = env?.error;
      throw new ApiError(e?.code ?? `http_${res.status}`, e?.message ?? (res.statusText || `HTTP ${res.status}`), res.status, e?.details ?? {});
    }
    return (json ?? (text as unknown)) as T;
  }

  version = () => this.request<VersionInfo>("GET", "/opencode/version");
  skills = () => this.request<SkillList>("GET", "/opencode/skills");
  listSessions = () => this.request<SessionList>("GET", "/opencode/sessions");
  createSession = (body: SessionCreate) => this.request<Session>("POST", "/opencode/sessions", body);
  getSession = (id: string) => this.request<Session>("GET", `/opencode/sessions/${enc(id)}`);
  patchSession = (id: string, patch: SessionPatch) => this.request<Session>("PATCH", `/opencode/sessions/${enc(id)}`, patch);
  deleteSession = (id: string) => this.request<Deleted>("DELETE", `/opencode/sessions/${enc(id)}`);
  messages = (id: string, before?: string | null, limit = 50) =>
    this.request<MessagePage>(
      "GET",
      `/opencode/sessions/${enc(id)}/messages?${new URLSearchParams({ ...(before ? { before } : {}), limit: String(limit) })}`,
    );
  exportSession = (id: string, format: "json" | "md") =>
    this.request<unknown>("GET", `/opencode/sessions/${enc(id)}/export?format=${format}`);
  providers = () => this.request<ProviderList>("GET", "/opencode/providers");
  createProvider = (body: ProviderCreate) => this.request<ProviderProfile>("POST", "/opencode/providers", body);
  provider = (name: string) => this.request<ProviderProfile>("GET", `/opencode/providers/${enc(name)}`);
  /** `revision`: the profile's as loaded; the server refuses the change (409 `profile_changed`) if
   * the profile changed since, rather than replace what another panel or a script saved. */
  patchProvider = (name: string, patch: ProviderPatch, revision?: string | null) =>
    this.request<ProviderProfile>("PATCH", `/opencode/providers/${enc(name)}`, patch, ifMatch(revision));
  deleteProvider = (name: string, revision?: string | null) =>
    this.request<unknown>("DELETE", `/opencode/providers/${enc(name)}`, undefined, ifMatch(revision));
  /** The only call that carries a key; the answer never echoes it. */
  setProviderKey = (name: string, key: string) =>
    this.request<ProviderProfile>("PUT", `/opencode/providers/${enc(name)}/key`, { key });
  deleteProviderKey = (name: string) => this.request<unknown>("DELETE", `/opencode/providers/${enc(name)}/key`);
  models = (name: string) => this.request<ModelList>("GET", `/opencode/providers/${enc(name)}/models`);
  accessToken = () => this.request<TokenInfo>("GET", "/opencode/token");
  rotateAccessToken = () => this.request<TokenInfo>("POST", "/opencode/token/rotate", {});

  // ------------------------------------------------------------ commands with a REST twin

  /**
   * Send a message. A send whose answer was lost (the socket dropped, the call timed out, the
   * network failed) may have reached the server, so it is sent again, over the socket once it is
   * back or over REST, under the same `client_id`: the server answers a repeat as it answered the
   * first and never sends the message twice.
   */
  async send(sessionId: string, body: SendBody): Promise<SendResult> {
    // A server from before `client_id` refuses the field; without it a repeat could send twice.
    if (!this.repeatableSends) return this.sendOnce(sessionId, body);
    const once: SendBody = { ...body, client_id: body.client_id ?? newClientId() };
    return this.againWhileLost(() => this.sendOnce(sessionId, once));
  }

  /** `call()`, made again (up to `sendAttempts` in all) while its answer is lost: after the
   * socket is back, or `resendWaitMs`. Only for a call the server takes twice as once. */
  private async againWhileLost<T>(call: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await call();
      } catch (err) {
        const lost = err instanceof ApiError && ANSWER_LOST.has(err.code);
        if (!lost || attempt >= this.opts.sendAttempts || this.state === "closed") throw err;
        await this.untilOpen(this.opts.resendWaitMs);
      }
    }
  }

  private async sendOnce(sessionId: string, body: SendBody): Promise<SendResult> {
    if (this.isOpen()) return (await this.command("send", { session_id: sessionId, ...body })) as unknown as SendResult;
    return this.request<SendResult>("POST", `/opencode/sessions/${enc(sessionId)}/messages`, body);
  }

  /** Resolves once the socket is open, or after `ms` (a send then goes over REST); at once when
   * no socket is coming (never connected, or closed). */
  private untilOpen(ms: number): Promise<void> {
    if (this.isOpen() || this.state === "closed" || this.state === "idle") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        off();
        resolve();
      };
      const timer = setTimeout(done, ms);
      const off = this.onState((s) => {
        if (s === "open" || s === "closed") done();
      });
    });
  }

  async abort(sessionId: string, body: AbortBody = {}): Promise<AbortResult> {
    if (this.isOpen()) return (await this.command("abort", { session_id: sessionId, ...body })) as unknown as AbortResult;
    return this.request<AbortResult>("POST", `/opencode/sessions/${enc(sessionId)}/abort`, body);
  }

  /** Answer a reply's prompt again with its role: a new reply (a send's answer). */
  async retry(sessionId: string, messageId: string): Promise<SendResult> {
    if (this.isOpen()) return (await this.command("retry", { session_id: sessionId, message_id: messageId })) as unknown as SendResult;
    return this.request<SendResult>("POST", `/opencode/sessions/${enc(sessionId)}/retry`, { message_id: messageId });
  }

  /** Change the session; answers the session as it now is. */
  async configure(sessionId: string, patch: SessionPatch): Promise<Session> {
    if (!this.isOpen()) return this.patchSession(sessionId, patch);
    const data = await this.command("configure", { session_id: sessionId, patch });
    return data.session as Session;
  }

  async replyPermission(sessionId: string, body: PermissionReplyBody): Promise<void> {
    if (this.isOpen()) await this.command("permission.reply", { session_id: sessionId, ...body });
    else await this.request("POST", `/opencode/sessions/${enc(sessionId)}/permissions`, body);
  }

  /** Answer a `ui.request`. An answer whose ack was lost (or that could not leave: the socket was
   * down) is sent again once the socket is back: the server takes the same answer twice as one. */
  async uiReply(payload: CommandMap["ui.reply"], timeoutMs?: number): Promise<Record<string, unknown>> {
    // Named once, the same on each try: the server knows a repeat of this panel's answer from
    // another panel's (which must not load a workflow twice). A server without names refuses a
    // repeat, so it gets one try.
    if (!this.namedAnswers) return this.command("ui.reply", payload, timeoutMs);
    const answer = { ...payload, answer_id: payload.answer_id ?? newClientId() };
    return this.againWhileLost(() => this.command("ui.reply", answer, timeoutMs));
  }

  /** A name for a new send, if the server takes one (`send.client_id`). */
  newSendId(): string | undefined {
    return this.repeatableSends ? newClientId() : undefined;
  }

  /** What the server said it can do (`GET /opencode/version`): the panel can be newer than the
   * server, since ComfyUI serves the panel's files from disk and an update is in the browser
   * before ComfyUI restarts. */
  setServerCapabilities(capabilities: readonly string[]): void {
    this.repeatableSends = capabilities.includes("send.client_id");
    this.namedAnswers = capabilities.includes("ui.reply.answer_id");
    this.retries = capabilities.includes("retry");
    const had = this.listRoom;
    this.listRoom = capabilities.includes("sessions.join");
    if (!had && this.listRoom && this.followingList && this.isOpen()) this.joinSessions();
  }

  // ------------------------------------------------------------ WebSocket

  get connection(): ConnectionState {
    return this.state;
  }

  get session(): string | null {
    return this.joined;
  }

  /** Highest seq applied for `sessionId` (0 before its snapshot). */
  seqOf(sessionId: string): number {
    return this.lastSeq.get(sessionId) ?? 0;
  }

  onEvent(cb: (e: OcEvent) => void): () => void {
    this.eventListeners.add(cb);
    return () => this.eventListeners.delete(cb);
  }

  onState(cb: (s: ConnectionState) => void): () => void {
    this.stateListeners.add(cb);
    return () => this.stateListeners.delete(cb);
  }

  connect(): void {
    if (this.state === "connecting" || this.state === "open") return;
    this.clearReconnect();
    this.open();
  }

  /** Follow one session; replaces any session joined before. Snapshot arrives as an event. */
  async join(sessionId: string): Promise<void> {
    const previous = this.joined;
    this.joined = sessionId;
    if (previous !== sessionId) this.lastSeq.delete(sessionId);
    if (!this.isOpen()) return; // joined on open
    if (previous && previous !== sessionId) await this.command("leave", { session_id: previous }).catch(() => undefined);
    // Another join began while the leave was out: joining this one now would follow both.
    if (this.joined !== sessionId) return;
    await this.command("join", { session_id: sessionId, panel: this.opts.panel });
  }

  /**
   * Follow the list of sessions (the room `SESSIONS_ROOM`) while `on`: joined now if the socket is
   * open, and on every reconnect with the offset seen, so the server sends just the changes missed
   * (or a fresh `sessions.state`). Whether the list is followed live from now on: false when the
   * server has no such room or the socket is not open yet (read the listing over REST then).
   */
  followSessions(on: boolean): boolean {
    const was = this.followingList;
    this.followingList = on;
    if (!this.listRoom || !this.isOpen()) return false;
    if (on && !was) this.joinSessions();
    else if (!on && was) this.command("sessions.leave", {}).catch(() => undefined);
    return on;
  }

  private joinSessions(): void {
    const seen = this.lastSeq.get(SESSIONS_ROOM);
    this.command("sessions.join", seen === undefined ? {} : { after_seq: seen }).catch(() => undefined);
  }

  async leave(): Promise<void> {
    const previous = this.joined;
    this.joined = null;
    if (previous && this.isOpen()) await this.command("leave", { session_id: previous }).catch(() => undefined);
  }

  command<K extends CommandType>(type: K, payload: CommandMap[K], timeoutMs = this.opts.commandTimeoutMs): Promise<Record<string, unknown>> {
    const ws = this.ws;
    if (!ws || !this.isOpen()) return Promise.reject(new ApiError("disconnected", "Not connected to the server"));
    const id = `c${++this.nextId}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new ApiError("timeout", `No answer to ${type}`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      ws.send(JSON.stringify({ id, type, ...payload }));
    });
  }

  close(): void {
    this.setState("closed");
    this.clearReconnect();
    this.stopPing();
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      detach(ws);
      ws.close(1000, "panel closed");
    }
    this.failPending("disconnected");
  }

  private isOpen(): boolean {
    return this.state === "open" && this.ws !== null && this.ws.readyState === OPEN;
  }

  private open(): void {
    const token = this.opts.token?.();
    let url = this.opts.transport.wsUrl("/opencode/ws");
    if (token) url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
    this.setState(this.attempt === 0 ? "connecting" : "reconnecting");
    let ws: SocketLike;
    try {
      ws = this.opts.socket(url);
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      this.attempt = 0;
      this.setState("open");
      this.startPing();
      if (this.joined) {
        const seen = this.lastSeq.get(this.joined);
        const payload = { session_id: this.joined, panel: this.opts.panel, ...(seen === undefined ? {} : { after_seq: seen }) };
        this.command("join", payload).catch(() => undefined);
      }
      if (this.followingList && this.listRoom) this.joinSessions();
    };
    ws.onmessage = (ev) => this.handleFrame(ev.data);
    ws.onerror = () => undefined; // `onclose` follows and decides
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.stopPing();
      this.failPending("disconnected");
      if (this.state !== "closed") this.scheduleReconnect();
    };
  }

  private handleFrame(raw: unknown): void {
    let frame: Record<string, unknown>;
    try {
      frame = JSON.parse(String(raw));
    } catch {
      return;
    }
    if (frame.type === "ack" || (frame.type === "error" && "error" in frame && !("seq" in frame))) {
      const p = typeof frame.id === "string" ? this.pending.get(frame.id) : undefined;
      if (!p) return;
      this.pending.delete(frame.id as string);
      clearTimeout(p.timer);
      if (frame.type === "ack") p.resolve((frame.data as Record<string, unknown>) ?? {});
      else {
        const e = frame.error as { code?: string; message?: string; details?: Record<string, unknown> };
        p.reject(new ApiError(e?.code ?? "error", e?.message ?? "error", 0, e?.details ?? {}));
      }
      return;
    }
    if (typeof frame.seq !== "number" || typeof frame.session_id !== "string") return;
    const event = frame as unknown as OcEvent;
    if (SNAPSHOT_EVENTS.has(event.type)) {
      const data = event.data as { session: { last_seq: number } };
      this.lastSeq.set(event.session_id, Math.max(event.seq, data.session?.last_seq ?? 0));
    } else if (event.seq > 0) {
      const seen = this.lastSeq.get(event.session_id);
      if (seen !== undefined && event.seq <= seen) return; // replayed: already applied
      this.lastSeq.set(event.session_id, event.seq);
    }
    for (const cb of [...this.eventListeners]) cb(event);
  }

  private scheduleReconnect(): void {
    this.clearReconnect();
    const delays = this.opts.backoffMs;
    const delay = delays[Math.min(this.attempt, delays.length - 1)];
    this.attempt += 1;
    this.setState("reconnecting");
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      this.open();
    }, delay);
  }

  private clearReconnect(): void {
    if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
  }

  private startPing(): void {
    this.stopPing();
    this.pingTimer = setInterval(() => {
      const ws = this.ws;
      // A ping with no answer means a dead socket the browser has not noticed: close it.
      this.command("ping", {}).catch((e: ApiError) => {
        if (e.code === "timeout" && ws && this.ws === ws) ws.close(4000, "ping timeout");
      });
    }, this.opts.pingIntervalMs);
  }

  private stopPing(): void {
    if (this.pingTimer !== null) clearInterval(this.pingTimer);
    this.pingTimer = null;
  }

  private failPending(code: string): void {
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new ApiError(code, "Connection lost"));
      this.pending.delete(id);
    }
  }

  private setState(s: ConnectionState): void {
    if (this.state === s) return;
    this.state = s;
    for (const cb of [...this.stateListeners]) cb(s);
  }
}

function enc(s: string): string {
  return encodeURIComponent(s);
}

function detach(ws: SocketLike): void {
  ws.onopen = ws.onclose = ws.onerror = null;
  ws.onmessage = null;
}
