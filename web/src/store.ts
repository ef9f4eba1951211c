/**
 * One panel's state: a setup-style Pinia store. Every panel instance (each node, the sidebar,
 * the standalone page) mounts its own Vue app with its own Pinia, so each has its own store,
 * client and socket. Session state changes only through `reduce`; this store adds the actions
 * and the few side effects (answering `ui.request`, mirroring config to the node's widgets).
 */
import { defineStore } from "pinia";
import { computed, inject, ref, shallowRef } from "vue";
import { ANSWER_LOST, ApiError, OpencodeClient, type ConnectionState } from "./client";
import { DEPS, type SessionConfig } from "./deps";
import { t } from "./i18n";
import type { EventOf, ModelInfo, OcEvent, ProviderCreate, ProviderList, ProviderPatch, ProviderProfile, SendMode, Session, SessionPatch, Skill, UiRequestData, VersionInfo } from "./protocol";
import { PROTOCOL_VERSION } from "./protocol";
import { activeRuns, dropProposal, EMPTY, joining, prependHistory, promptsReading, reduce, withSession, type ChatState } from "./reducer";

/** How a send went; a failed one carries its name and session, to be sent again under them. */
export interface SendOutcome {
  ok: boolean;
  clientId?: string;
  sessionId?: string;
}

/** A message on its way to the server, shown as a pending bubble until the server has it.
 * `echoes`: how many of the chat's prompts read the same when it left; one more means the server's
 * own copy is in, even before the answer to the send comes back. */
export interface Outgoing {
  id: number;
  sessionId: string;
  text: string;
  echoes: number;
}

/** How a form's request went: a refusal carries the server's words, shown beside the form, and
 * for a `validation_error` where in the body it was (`["models", "m1", "context_tokens"]`). */
export type FormOutcome = { ok: true } | { ok: false; error: string; loc?: readonly (string | number)[] };

export interface Notice {
  id: number;
  severity: "success" | "info" | "warn" | "error";
  text: string;
}

/** Leading `@role` mentions that name known roles, e.g. "@echo @assistant hi" → [echo, assistant]. */
export function leadingMentions(text: string, roleIds: ReadonlySet<string>): string[] {
  const out: string[] = [];
  const re = /^\s*@([a-z0-9][a-z0-9_-]*)/;
  let rest = text;
  for (let m = re.exec(rest); m && roleIds.has(m[1]); m = re.exec(rest)) {
    if (!out.includes(m[1])) out.push(m[1]);
    rest = rest.slice(m[0].length);
  }
  return out;
}

/** The API-format graph a `propose_workflow` request carries (`payload.graph`). */
export function proposedGraph(req: UiRequestData): Record<string, unknown> {
  const p = req.payload;
  const graph = p.graph ?? p.workflow;
  return graph && typeof graph === "object" ? (graph as Record<string, unknown>) : {};
}

/** Chats as the list shows them: most recently active first (a stable sort: a tie keeps its place). */
function byActivity(list: readonly Session[]): Session[] {
  return [...list].sort((a, b) => b.updated_at - a.updated_at);
}

/** The list with `s` in its place, unless the list has a newer copy of it (an answer or a
 * replayed change that arrived after a later one). */
function withListed(list: Session[], s: Session): Session[] {
  const held = list.find((x) => x.id === s.id);
  if (held && held.updated_at > s.updated_at) return list;
  return byActivity([s, ...list.filter((x) => x.id !== s.id)]);
}

/** The node class holding a panel: an accepted proposal never removes one it leaves out. */
const AGENT_TYPE = "OpencodeAgent";

/** How long an accepted proposal waits for the server to take its answer before giving up. */
const PROPOSAL_ACK_MS = 5000;

export const usePanelStore = defineStore("opencode-panel", () => {
  const deps = inject(DEPS)!;
  const client = new OpencodeClient({ transport: deps.transport, token: deps.token, socket: deps.socket });

  const connection = ref<ConnectionState>("idle");
  const server = ref<VersionInfo | null>(null);
  const needsToken = ref(false);
  const skills = ref<Skill[]>([]);
  const providers = ref<ProviderProfile[]>([]);
  // Providers whose model list could not be read: asked again when chosen again.
  const failedModelLists = new Set<string>();
  // The latest read of each provider's list (an older answer that comes after it is dropped),
  // and the one on its way, which a second caller waits for instead of asking again.
  const modelReads = new Map<string, number>();
  const readingModels = new Map<string, { read: number; done: Promise<void> }>();
  const presets = ref<ProviderProfile[]>([]);
  const models = ref<Record<string, ModelInfo[]>>({});
  const sessions = ref<Session[]>([]);
  // Changes the list room brought: a listing read over REST while one came may be older than it.
  let listChanges = 0;
  const chat = shallowRef<ChatState>(EMPTY);
  const loading = ref(false);
  const notices = ref<Notice[]>([]);
  const sent = ref(0); // messages this panel sent: the transcript follows each one
  const outbox = shallowRef<Outgoing[]>([]);
  let outgoingId = 0;
  // Permission requests whose answer is on its way (their cards' buttons are off); one that
  // fails leaves the set, so its card can be answered again.
  const answering = ref<ReadonlySet<string>>(new Set());
  let noticeId = 0;

  const protocolMismatch = computed(() => server.value !== null && server.value.protocol !== PROTOCOL_VERSION);
  const session = computed(() => (chat.value.phase === "ready" ? chat.value.session : null));
  const roles = computed(() => skills.value.filter((s) => s.kind === "role"));
  const running = computed(() => activeRuns(chat.value));
  const busy = computed(() => running.value.length > 0);
  const skillById = computed(() => new Map(skills.value.map((s) => [s.id, s])));

  function notify(severity: Notice["severity"], text: string, detail?: string): void {
    if (deps.notify(severity, text, detail)) return;
    const id = ++noticeId;
    notices.value = [...notices.value.slice(-3), { id, severity, text: detail ? `${text}: ${detail}` : text }];
    setTimeout(() => dismiss(id), severity === "error" ? 8000 : 4000);
  }

  function dismiss(id: number): void {
    notices.value = notices.value.filter((n) => n.id !== id);
  }

  /** Report a failure; an `unauthorized` one opens the token prompt instead. */
  function fail(summary: string, err: unknown): void {
    if (err instanceof ApiError && err.code === "unauthorized") {
      needsToken.value = true;
      return;
    }
    notify("error", summary, err instanceof Error ? err.message : String(err));
  }

  const offEvent = client.onEvent(onEvent);
  const offState = client.onState(onState);

  // A start that failed (the server was unreachable when the panel was mounted) is tried again
  // when the socket opens: the server is back. A missing version (and capabilities) is read again.
  let startFailed = false;
  function onState(s: ConnectionState): void {
    connection.value = s;
    if (s !== "open" || loading.value) return;
    if (startFailed) void start();
    else if (server.value === null) void loadVersion();
  }

  async function loadVersion(): Promise<void> {
    server.value = await client.version().catch(() => null);
    client.setServerCapabilities(server.value?.capabilities ?? []);
  }

  function onEvent(event: OcEvent): void {
    chat.value = reduce(chat.value, event);
    switch (event.type) {
      case "session.state":
      case "session.resync":
      case "session.updated":
        rememberSession(event.data.session);
        break;
      case "session.deleted":
        sessions.value = sessions.value.filter((s) => s.id !== event.data.session_id);
        break;
      case "sessions.state":
      case "sessions.changed":
      case "sessions.removed":
        listChanged(event);
        break;
      case "ui.request":
        if (event.data.action === "get_workflow") void answerGetWorkflow(event.data);
        break;
    }
  }

  /** The list room's events: the list of chats follows what other tabs, scripts and the CLI do. */
  function listChanged(event: EventOf<"sessions.state" | "sessions.changed" | "sessions.removed">): void {
    listChanges += 1;
    if (event.type === "sessions.state") sessions.value = byActivity(event.data.sessions);
    else if (event.type === "sessions.changed") sessions.value = withListed(sessions.value, event.data.session);
    else {
      const id = event.data.session_id;
      sessions.value = sessions.value.filter((s) => s.id !== id);
      // The open chat, deleted elsewhere: as its own room's `session.deleted` would (which may
      // have come already, or have been missed while the socket was down).
      chat.value = reduce(chat.value, { seq: 0, session_id: id, type: "session.deleted", ts: event.ts, data: { session_id: id } });
    }
  }

  function rememberSession(s: Session): void {
    sessions.value = withListed(sessions.value, s);
    chat.value = withSession(chat.value, s);
    if (chat.value.phase === "ready" && chat.value.session.id === s.id) {
      deps.binding.syncConfig({ skills: s.skills, provider: s.provider, model: s.model });
    }
  }

  async function answerGetWorkflow(req: UiRequestData): Promise<void> {
    const sessionId = client.session;
    if (!sessionId) return;
    try {
      // API format under `prompt`, as the `get_workflow` tool reads it.
      const prompt = await deps.currentWorkflow();
      await client.uiReply({ session_id: sessionId, request_id: req.request_id, ok: true, result: { prompt } });
    } catch (err) {
      const error = err instanceof Error ? err.message : String(err);
      await client.uiReply({ session_id: sessionId, request_id: req.request_id, ok: false, result: {}, error }).catch(() => undefined);
    }
  }

  async function answerProposal(req: UiRequestData, accepted: boolean): Promise<void> {
    const sessionId = session.value?.id;
    if (!sessionId) return;
    const loadable = accepted && deps.canLoadWorkflow();
    const answer = { session_id: sessionId, request_id: req.request_id };
    // The card stays (its buttons off) until the answer is settled: one sent while the socket
    // was down, or whose ack was lost, is sent again once it is back (see `uiReply`).
    const settled = () => (chat.value = dropProposal(chat.value, req.request_id));
    if (!loadable) {
      const error = accepted ? "this ComfyUI cannot load an API-format workflow" : null;
      if (error) notify("error", t("error.generic"), error);
      await client.uiReply({ ...answer, ok: !accepted, result: { accepted: false }, error }).catch(proposalFailed);
      settled();
      return;
    }
    // Answer before loading: loading may replace the canvas, and with it this node's panel. Load
    // only once the server took the answer: a proposal that timed out, or that another panel
    // answered, must not change the canvas.
    try {
      await client.uiReply({ ...answer, ok: true, result: { accepted: true } }, PROPOSAL_ACK_MS);
    } catch (err) {
      proposalFailed(err);
      return;
    } finally {
      settled();
    }
    try {
      await loadProposal(proposedGraph(req));
    } catch (err) {
      notify("error", t("error.generic"), err instanceof Error ? err.message : String(err));
    }
  }

  /**
   * Onto the canvas in place when the host can (positions, notes, groups and this node stay; one
   * undo step), else the whole canvas is replaced by the graph, and the person is told why.
   */
  async function loadProposal(graph: Record<string, unknown>): Promise<void> {
    const outcome = deps.applyWorkflow ? await deps.applyWorkflow(graph, [AGENT_TYPE]) : null;
    if (outcome?.applied) {
      const counts = { changed: outcome.changed, added: outcome.added, removed: outcome.removed };
      const skipped = outcome.skipped.length ? t("proposal.skipped", { inputs: outcome.skipped.join(", ") }) : undefined;
      notify(skipped ? "warn" : "success", t("proposal.applied", counts), skipped);
      return;
    }
    if (outcome) notify("warn", t("proposal.replaced"), t(`proposal.why.${outcome.reason}`, { detail: outcome.detail ?? "" }));
    await deps.loadWorkflow(withThisNode(graph));
  }

  /** An answer the server refused: a proposal that is gone says so plainly. */
  function proposalFailed(err: unknown): void {
    if (err instanceof ApiError && err.code === "not_found") notify("warn", t("proposal.gone"));
    else fail(t("error.generic"), err);
  }

  /** A panel inside a node brings its node along into the loaded graph, so the chat stays. */
  function withThisNode(graph: Record<string, unknown>): Record<string, unknown> {
    const s = session.value;
    if (deps.binding.kind !== "node" || !s) return graph;
    if (Object.values(graph).some((n) => (n as { class_type?: string } | null)?.class_type === AGENT_TYPE)) return graph;
    let id = 9000;
    while (String(id) in graph) id++;
    const inputs = { session_id: s.id, skills: s.skills.join(","), provider: s.provider ?? "", model: s.model ?? "" };
    return { ...graph, [String(id)]: { class_type: AGENT_TYPE, inputs, _meta: { title: "Opencode Agent" } } };
  }

  // ------------------------------------------------------------------ loading

  async function start(): Promise<void> {
    loading.value = true;
    startFailed = false;
    client.connect();
    try {
      await loadVersion();
      await Promise.all([loadSkills(), loadProviders(), loadSessions()]);
      const wanted = deps.binding.sessionId();
      const node = deps.binding.kind === "node";
      // A node keeps its session id (recreated if this server lacks it); the sidebar and the
      // standalone page fall back to the newest chat.
      const known = wanted && (node || sessions.value.some((s) => s.id === wanted));
      if (known) await open(wanted, { createIfMissing: node });
      else if (!node && sessions.value.length) await open(sessions.value[0].id);
      else await create();
    } catch (err) {
      startFailed = true;
      fail(t("error.load"), err);
    } finally {
      loading.value = false;
    }
  }

  async function loadSkills(): Promise<void> {
    skills.value = (await client.skills()).skills;
  }

  // Counts the panel's own writes of the profiles (`loadProviders`, `putProfile`, `removeProfile`):
  // a listing read before one may predate it, and is then not shown over it (`refreshProviders`).
  let profileChanges = 0;
  let providersReading: Promise<void> | null = null;

  async function loadProviders(): Promise<void> {
    const list = await client.providers();
    profileChanges += 1;
    showListing(list);
  }

  function showListing(list: ProviderList): void {
    providers.value = list.providers;
    presets.value = list.presets ?? [];
  }

  /** A profile as the server answered a change of it: replaced where it is, else added last. */
  function putProfile(profile: ProviderProfile): void {
    profileChanges += 1;
    const at = providers.value.findIndex((p) => p.name === profile.name);
    providers.value = at < 0 ? [...providers.value, profile] : providers.value.map((p, i) => (i === at ? profile : p));
  }

  function removeProfile(name: string): void {
    profileChanges += 1;
    providers.value = providers.value.filter((p) => p.name !== name);
  }

  /** Read the profiles again, quietly: another panel (the sidebar's beside a node's, another tab, a
   * script with curl) may have added, changed or removed one since this one loaded them. Called
   * when the provider dialog opens, the provider menu is focused, and the window comes back into
   * focus. A profile whose revision moved has its model list read again; a form open on it keeps
   * what was typed and takes the rest as it is now (`rebase`), so saving it applies only the
   * person's edits, as after a refused save. */
  function refreshProviders(): Promise<void> {
    providersReading ??= (async () => {
      const changes = profileChanges;
      try {
        const list = await client.providers();
        if (changes !== profileChanges) return;
        const before = new Map(providers.value.map((p) => [p.name, p.revision]));
        showListing(list);
        for (const [name, revision] of before) {
          const now = list.providers.find((p) => p.name === name);
          if (!now) dropModels(name);
          else if (now.revision !== revision) forgetModels(name);
        }
      } catch {
        // quiet: the profiles stay as shown, and the next refresh or change says what is wrong
      } finally {
        providersReading = null;
      }
    })();
    return providersReading;
  }

  async function loadSessions(): Promise<void> {
    const changes = listChanges;
    const list = (await client.listSessions()).sessions;
    if (changes === listChanges) sessions.value = byActivity(list);
  }

  /** While the list of chats is open it follows the server's list live (`sessions.join`); a
   * server without that room, or a socket not open yet, is asked for the listing instead. */
  function followSessions(on: boolean): void {
    if (!client.followSessions(on) && on) void loadSessions().catch(() => undefined);
  }

  /** The provider's models, read unless already read; a list that could not be read is asked
   * for again (a local server may have started meanwhile). `quiet`: a failure is no notice. */
  async function ensureModels(provider: string, opts: { quiet?: boolean } = {}): Promise<void> {
    if (models.value[provider] && !failedModelLists.has(provider)) return;
    const reading = readingModels.get(provider);
    if (reading && reading.read === modelReads.get(provider)) return reading.done;
    failedModelLists.delete(provider);
    await loadModels(provider, opts.quiet);
  }

  /** The provider's models. When it can't list them (Ollama not running, no key yet) the panel
   * says so and offers the models its profile declares. Only the latest read is kept: one begun
   * before a change of the profile (its key, its models) would bring back what it replaced. */
  function loadModels(provider: string, quiet = false): Promise<void> {
    const read = (modelReads.get(provider) ?? 0) + 1;
    modelReads.set(provider, read);
    const done = readModels(provider, read, quiet).finally(() => {
      if (readingModels.get(provider)?.read === read) readingModels.delete(provider);
    });
    readingModels.set(provider, { read, done });
    return done;
  }

  async function readModels(provider: string, read: number, quiet: boolean): Promise<void> {
    try {
      const list = (await client.models(provider)).models;
      if (modelReads.get(provider) === read) models.value = { ...models.value, [provider]: list };
    } catch (err) {
      if (modelReads.get(provider) !== read) return;
      if (err instanceof ApiError && err.code === "unauthorized") needsToken.value = true;
      else if (!quiet) notify("warn", t("model.listFailed", { provider }), err instanceof Error ? err.message : String(err));
      const declared = providers.value.find((p) => p.name === provider)?.models ?? {};
      const list: ModelInfo[] = Object.entries(declared).map(([id, caps]) => ({ id, caps }));
      models.value = { ...models.value, [provider]: list };
      failedModelLists.add(provider);
    }
  }

  /** A provider's key or profile changed: its model list read before (often refused for want of a
   * key, or with the caps it declared then) is dropped, and read again now if the session uses it
   * or it had failed. */
  function forgetModels(provider: string): void {
    const failed = dropModels(provider);
    if (failed || session.value?.provider === provider) void loadModels(provider);
  }

  /** Drop a provider's model list (and any read of it still on its way); whether its last read had failed. */
  function dropModels(provider: string): boolean {
    modelReads.set(provider, (modelReads.get(provider) ?? 0) + 1);
    const failed = failedModelLists.delete(provider);
    const { [provider]: _dropped, ...rest } = models.value;
    models.value = rest;
    return failed;
  }

  /** Show a chat picked by the person; a failure is a notice, and a chat deleted elsewhere
   * leaves the list. */
  async function openSession(id: string): Promise<void> {
    try {
      await open(id);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) sessions.value = sessions.value.filter((s) => s.id !== id);
      fail(t("error.load"), err);
    }
  }

  /** Start a new chat from the New button; a failure is a notice. */
  async function newSession(): Promise<void> {
    try {
      await create();
    } catch (err) {
      fail(t("error.generic"), err);
    }
  }

  // Counts `open` calls: a call another one overtook (a slow answer for a chat clicked before
  // the last) stops instead of switching the panel back to it.
  let opening = 0;

  async function open(id: string, opts: { createIfMissing?: boolean } = {}): Promise<void> {
    const call = ++opening;
    let s: Session;
    try {
      s = await client.getSession(id);
    } catch (err) {
      if (call !== opening) return;
      // A workflow opened on another machine: recreate its session under the same id.
      if (err instanceof ApiError && err.status === 404 && opts.createIfMissing) return create({ id });
      throw err;
    }
    if (call !== opening) return;
    rememberSession(s);
    deps.binding.setSessionId(id);
    if (chat.value.phase !== "ready" || chat.value.session.id !== id) chat.value = joining(id);
    await client.join(id);
  }

  async function create(config?: Partial<SessionConfig> & { id?: string }): Promise<void> {
    const d = { ...deps.binding.defaults(), ...config };
    const known = new Set(skills.value.map((s) => s.id));
    const call = opening; // a chat picked while this one is made wins: the new one is only listed
    const created = await client.createSession({
      ...(config?.id ? { id: config.id } : {}),
      skills: d.skills.filter((s) => known.size === 0 || known.has(s)),
      provider: d.provider || null,
      model: d.model || null,
    });
    rememberSession(created);
    if (call === opening) await open(created.id);
  }

  async function loadEarlier(): Promise<void> {
    const c = chat.value;
    if (c.phase !== "ready" || !c.hasMore || c.messages.length === 0) return;
    const sessionId = c.session.id;
    const before = c.messages[0].id;
    try {
      const page = await client.messages(sessionId, before);
      chat.value = prependHistory(chat.value, { sessionId, before, messages: page.messages, hasMore: page.has_more });
    } catch (err) {
      fail(t("error.load"), err);
    }
  }

  // ------------------------------------------------------------------ actions on the session

  async function configure(patch: SessionPatch): Promise<void> {
    const id = session.value?.id;
    if (!id) return;
    try {
      const updated = await client.configure(id, patch);
      if (updated) rememberSession(updated);
    } catch (err) {
      fail(t("error.generic"), err);
    }
  }

  async function renameSession(id: string, title: string): Promise<void> {
    try {
      rememberSession(await client.patchSession(id, { title }));
    } catch (err) {
      fail(t("error.generic"), err);
    }
  }

  async function deleteSession(id: string): Promise<void> {
    try {
      await client.deleteSession(id);
      sessions.value = sessions.value.filter((s) => s.id !== id);
      if (session.value?.id === id || chat.value.phase === "deleted") {
        const next = deps.binding.kind === "node" ? undefined : sessions.value[0];
        if (next) await open(next.id);
        else await create();
      }
    } catch (err) {
      fail(t("error.generic"), err);
    }
  }

  /**
   * `interrupt` stops what is running and answers this at once; `queue` waits its turn.
   * `clientId` names the send (see `client.send`): a failed send handed back to the person is sent
   * again under its old name, so if the server had it after all it is not sent twice.
   */
  async function send(text: string, mode: SendMode = "queue", clientId?: string): Promise<SendOutcome> {
    const id = session.value?.id;
    if (!id || !text.trim()) return { ok: false };
    const mentioned = leadingMentions(text, new Set(roles.value.map((r) => r.id)));
    const name = clientId ?? client.newSendId();
    const outgoing: Outgoing = { id: ++outgoingId, sessionId: id, text, echoes: promptsReading(chat.value, text) };
    outbox.value = [...outbox.value, outgoing];
    try {
      await client.send(id, { text, skills: mentioned, mode, ...(name ? { client_id: name } : {}) });
      sent.value += 1;
      return { ok: true };
    } catch (err) {
      sendFailed(err);
      return { ok: false, clientId: name, sessionId: id };
    } finally {
      outbox.value = outbox.value.filter((o) => o.id !== outgoing.id);
    }
  }

  /** Say why a message did not go, in a person's words: the words themselves are given back. */
  function sendFailed(err: unknown): void {
    if (err instanceof ApiError && err.code === "unauthorized") needsToken.value = true;
    else if (err instanceof ApiError && ANSWER_LOST.has(err.code)) notify("error", t("error.sendOffline"));
    else notify("error", t("error.sendRefused"), err instanceof Error ? err.message : String(err));
  }

  async function stop(runId?: string): Promise<void> {
    const id = session.value?.id;
    if (!id) return;
    try {
      await client.abort(id, runId ? { run_id: runId } : {});
    } catch (err) {
      fail(t("error.generic"), err);
    }
  }

  /** A reply that failed or was stopped, answered again by its role (its new reply streams in). */
  async function retry(messageId: string): Promise<void> {
    const id = session.value?.id;
    if (!id) return;
    try {
      await client.retry(id, messageId);
    } catch (err) {
      fail(t("error.generic"), err);
    }
  }

  /** Answer a permission request; false (and its card back on) when the answer did not go through. */
  async function replyPermission(requestId: string, decision: "allow" | "deny", remember: boolean): Promise<boolean> {
    const id = session.value?.id;
    if (!id || answering.value.has(requestId)) return false;
    answering.value = new Set([...answering.value, requestId]);
    try {
      await client.replyPermission(id, { request_id: requestId, decision, remember });
      return true;
    } catch (err) {
      const rest = new Set(answering.value);
      rest.delete(requestId);
      answering.value = rest;
      fail(t("error.generic"), err);
      return false;
    }
  }

  // ------------------------------------------------------------------ providers and token

  async function saveKey(provider: string, key: string): Promise<boolean> {
    try {
      const profile = await client.setProviderKey(provider, key);
      putProfile(profile);
      notify("success", t("provider.keySaved"));
      forgetModels(provider);
      return true;
    } catch (err) {
      fail(t("error.generic"), err);
      return false;
    }
  }

  async function removeKey(provider: string): Promise<void> {
    try {
      await client.deleteProviderKey(provider);
      await loadProviders();
      notify("info", t("provider.keyRemoved"));
      forgetModels(provider);
    } catch (err) {
      fail(t("error.generic"), err);
    }
  }

  async function addProvider(preset: ProviderProfile): Promise<void> {
    try {
      const created = await client.createProvider({
        name: preset.name,
        kind: preset.kind,
        base_url: preset.base_url,
        default_model: preset.default_model,
        key_env: preset.key_env,
      });
      putProfile(created);
    } catch (err) {
      fail(t("error.generic"), err);
    }
  }

  /** A refusal for a form: `unauthorized` still opens the token prompt; a change refused because
   * the profile changed elsewhere says too that the panel shows it as it is now. */
  function refused(err: unknown): FormOutcome {
    if (err instanceof ApiError && err.code === "unauthorized") needsToken.value = true;
    const first = err instanceof ApiError && Array.isArray(err.details.errors) ? (err.details.errors[0] as { loc?: unknown } | undefined) : undefined;
    const loc = Array.isArray(first?.loc) ? (first.loc as (string | number)[]) : undefined;
    const message = err instanceof Error ? err.message : String(err);
    return { ok: false, error: changedElsewhere(err) ? `${message} ${t("provider.reloaded")}` : message, ...(loc ? { loc } : {}) };
  }

  const changedElsewhere = (err: unknown) => err instanceof ApiError && err.code === "profile_changed";
  /** The revision of profile `name` as this panel shows it: what its changes are made against. */
  const revisionOf = (name: string) => providers.value.find((p) => p.name === name)?.revision;

  /** Read profile `name` again after a change of it was refused as made against an older revision:
   * the panel shows it as it is now, and a form left open (what was typed stays) saves onto that.
   * A profile that cannot be read (deleted meanwhile) stays as shown: its next change says why. */
  async function reloadProfile(name: string): Promise<void> {
    try {
      const fresh = await client.provider(name);
      putProfile(fresh);
      forgetModels(name);
    } catch {
      // the refusal shown already says to reload
    }
  }

  /** A profile typed in the provider dialog (never a key: that goes to the key route alone). */
  async function createProfile(body: ProviderCreate): Promise<FormOutcome> {
    try {
      const created = await client.createProvider(body);
      putProfile(created);
      forgetModels(created.name);
      notify("success", t("provider.saved"));
      return { ok: true };
    } catch (err) {
      return refused(err);
    }
  }

  /** A profile's base URL and default model, or its declared models (`models` replaces the whole
   * table): its model list, whose caps may have changed, is read again. */
  async function updateProfile(name: string, patch: ProviderPatch): Promise<FormOutcome> {
    try {
      const updated = await client.patchProvider(name, patch, revisionOf(name));
      putProfile(updated);
      forgetModels(name); // another base URL may offer other models, and caps may have changed
      notify("success", t("provider.saved"));
      return { ok: true };
    } catch (err) {
      if (changedElsewhere(err)) await reloadProfile(name);
      return refused(err);
    }
  }

  async function deleteProfile(name: string): Promise<boolean> {
    try {
      await client.deleteProvider(name, revisionOf(name));
      removeProfile(name);
      dropModels(name);
      notify("info", t("provider.deleted"));
      return true;
    } catch (err) {
      if (changedElsewhere(err)) await reloadProfile(name);
      fail(t("error.generic"), err);
      return false;
    }
  }

  async function useToken(token: string): Promise<void> {
    deps.setToken(token.trim());
    needsToken.value = false;
    client.close();
    await start();
  }

  const onWindowFocus = () => void refreshProviders();
  globalThis.addEventListener?.("focus", onWindowFocus);

  function dispose(): void {
    globalThis.removeEventListener?.("focus", onWindowFocus);
    offEvent();
    offState();
    client.close();
  }

  return {
    client, connection, server, needsToken, skills, providers, presets, models, sessions, chat, loading,
    notices, sent, outbox, answering, protocolMismatch, session, roles, running, busy, skillById,
    start, ensureModels, openSession, newSession, loadEarlier, configure, renameSession, deleteSession, send, stop, retry,
    replyPermission, answerProposal, saveKey, removeKey, addProvider, createProfile, updateProfile, deleteProfile, refreshProviders, useToken, loadSessions, followSessions, notify, dismiss, dispose,
  };
});

export type PanelStore = ReturnType<typeof usePanelStore>;
