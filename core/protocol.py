"""Every shape that crosses a boundary or is stored, as pydantic v2 models.

REST bodies, WebSocket commands and replies, bus events (sent over WS and SSE), message parts,
the error envelope and the protocol version live here and nowhere else, so the panel, the CLI,
the tests and the OpenAPI document agree by construction. Secrets never appear in any model.
Imports only pydantic.
"""

from __future__ import annotations

import itertools
import re
import secrets
import time
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter

PROTOCOL_VERSION = 1

# Limits a client can rely on (also enforced by the routes).
MAX_TEXT_CHARS = 100_000
MAX_TITLE_CHARS = 200
MAX_SKILLS = 16
MAX_WS_FRAME_BYTES = 1 << 20
# Not dots alone: a URL path cannot carry `.` or `..` (browsers and curl resolve them away).
ID_PATTERN = r"^[A-Za-z0-9_.:-]*[A-Za-z0-9_:-][A-Za-z0-9_.:-]*$"
MAX_ID_CHARS = 64
# A command's own id never goes into a URL: dots alone are fine there.
COMMAND_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
_COMMAND_ID_RE = re.compile(COMMAND_ID_PATTERN)
_ID_RE = re.compile(ID_PATTERN)

SkillId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]


def _each_once(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))


# A session's roles and skills, each once and in the order given (`["echo", "echo"]` is `["echo"]`).
SkillIds = Annotated[list[SkillId], AfterValidator(_each_once)]
ProviderName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
EntityId = Annotated[str, Field(pattern=ID_PATTERN, max_length=MAX_ID_CHARS)]


# The low 36 bits of ids: a random start per process, then one step an id (`next` on a count is
# atomic, so the node's worker thread may make ids too).
_ID_BASE = secrets.randbits(36)
_ID_SEQ = itertools.count()


def new_id(prefix: str) -> str:
    """A unique id with a readable prefix (`ses_…`, `msg_…`, `run_…`): 11 hex digits of the time
    in milliseconds, then 9 of a per-process sequence from a random start.

    Why not uuid4: ids sort in the order a process made them (while its clock does not step
    back), so a new message's key lands at the end of the messages' primary-key index rather than
    on a random page of it (fewer pages written a commit), and making one costs no system call.
    Two processes collide only if, in one millisecond, their sequences meet (a chance of about
    k²/2³⁶ for k ids each)."""
    low = (_ID_BASE + next(_ID_SEQ)) & 0xFFFFFFFFF
    return f"{prefix}_{int(time.time() * 1000):011x}{low:09x}"


def now() -> float:
    return time.time()


def model_json(model: BaseModel) -> str:
    """`model.model_dump_json()`, the same text, by the model's serializer directly: the
    method's keyword handling costs about 1.5 us a call, paid for every event and saved row."""
    return model.__pydantic_serializer__.to_json(model).decode()


class Model(BaseModel):
    """Base for protocol models: unknown fields are rejected so typos surface as errors."""

    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- message parts


class TextPart(Model):
    type: Literal["text"] = "text"
    text: str


class ImagePart(Model):
    """A reference to an image, never its bytes: `source` says where `filename` lives."""

    type: Literal["image"] = "image"
    source: Literal["upload", "comfyui"] = "upload"
    filename: str = Field(max_length=255)
    subfolder: str = Field(default="", max_length=255)
    folder_type: Literal["input", "output", "temp"] = "output"
    mime_type: str = "image/png"


class ToolCallPart(Model):
    type: Literal["tool_call"] = "tool_call"
    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    skill: str | None = None
    status: Literal["pending", "running", "completed", "error", "denied", "aborted"] = "pending"
    started_at: float | None = None
    duration_ms: float | None = None
    # Opaque provider data that must be sent back verbatim (e.g. Gemini's thought signature).
    provider_data: dict[str, Any] | None = None


class ToolResultPart(Model):
    type: Literal["tool_result"] = "tool_result"
    tool_call_id: str
    name: str
    content: str
    is_error: bool = False
    images: list[ImagePart] = Field(default_factory=list)


Part = Annotated[Union[TextPart, ImagePart, ToolCallPart, ToolResultPart], Field(discriminator="type")]
PartList = TypeAdapter(list[Part])


# --------------------------------------------------------------------------- domain state

MessageStatus = Literal["queued", "streaming", "completed", "aborted", "error", "interrupted"]
RunStatus = Literal["idle", "queued", "working", "completed", "aborted", "error", "interrupted"]
FINAL_RUN_STATUSES: frozenset[str] = frozenset({"completed", "aborted", "error", "interrupted"})
PermissionClass = Literal["read", "edit", "run", "network", "files"]
PermissionPolicy = Literal["allow", "ask", "deny"]


class Usage(Model):
    """Tokens a reply (or a session, summed) used, and what they cost in USD.

    `input_tokens` counts every prompt token, cached or not: what the context held, and what a
    token budget counts. Of those, `cache_read_tokens` were read from the provider's prompt cache
    and `cache_write_tokens` written to it (each a part of `input_tokens`, never in addition to
    it); the rest were plain input. `cost` prices the three kinds apart (`ModelCaps`). Rows
    stored before the cached counts existed load with them at 0.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost: float = 0.0

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            cost=self.cost + other.cost,
        )


class Budget(Model):
    """A per-session ceiling; a run that would pass it stops with `budget_exceeded`."""

    max_tokens: int | None = Field(default=None, ge=0)
    max_cost: float | None = Field(default=None, ge=0, allow_inf_nan=False)


class Session(Model):
    id: str
    title: str = ""
    skills: list[str] = Field(default_factory=list)
    provider: str | None = None
    model: str | None = None
    created_at: float
    updated_at: float
    usage: Usage = Field(default_factory=Usage)
    budget: Budget = Field(default_factory=Budget)
    permissions: dict[str, PermissionPolicy] = Field(default_factory=dict)
    last_seq: int = 0


class Message(Model):
    id: str
    session_id: str
    role: Literal["user", "assistant"]
    skill: str | None = None
    run_id: str | None = None
    parts: list[Part] = Field(default_factory=list)
    status: MessageStatus = "completed"
    created_at: float
    updated_at: float
    usage: Usage | None = None
    error: str | None = None
    # The failure's stable code beside its words (`budget_exceeded`, `provider_auth`, ...), so a
    # client can offer the fix rather than parse the message.
    error_code: str | None = None
    # A reply's prompt: the id of the user's message it answers. Replies to a queued message come
    # after the messages queued behind it, so position alone does not say what they answer.
    reply_to: str | None = None
    # A user's message: the `client_id` it was sent with, kept so that a client repeating the
    # send after a server restart (its answer lost on the way) gets this message, not a second one.
    client_id: str | None = None

    def text(self) -> str:
        """Its words: the text parts, with a blank line where tool calls (or images) stood
        between two of them. A reply says "Let me look." then calls a tool then "Found it.":
        read as one text (the node's `reply`, another role's view of it) the two must not run
        together as "Let me look.Found it."."""
        out: list[str] = []
        apart = False
        for p in self.parts:
            if isinstance(p, TextPart):
                if apart and out:
                    out.append("\n\n")
                out.append(p.text)
                apart = False
            else:
                apart = True
        return "".join(out)


class Run(Model):
    id: str
    session_id: str
    message_id: str
    skill: str
    status: RunStatus
    error: str | None = None
    error_code: str | None = None


# --------------------------------------------------------------------------- events


class SessionStateData(Model):
    session: Session
    messages: list[Message]
    runs: list[Run]
    has_more: bool = False


class SessionUpdatedData(Model):
    session: Session


class SessionDeletedData(Model):
    session_id: str


class MessageCreatedData(Model):
    message: Message


class MessageDeltaData(Model):
    message_id: str
    run_id: str | None = None
    skill: str | None = None
    text: str


class MessageCompletedData(Model):
    message: Message


class ToolStartedData(Model):
    message_id: str
    run_id: str
    call: ToolCallPart


class ToolFinishedData(Model):
    message_id: str
    run_id: str
    call: ToolCallPart
    result: ToolResultPart


class RunStatusData(Model):
    run: Run


class LogData(Model):
    level: Literal["debug", "info", "warning", "error"]
    module: str
    message: str
    time: float
    run_id: str | None = None


class PermissionRequestedData(Model):
    request_id: str
    run_id: str
    skill: str
    tool: str
    permission_class: PermissionClass
    summary: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    expires_at: float


class PermissionResolvedData(Model):
    request_id: str
    decision: Literal["allow", "deny"]
    remember: bool = False
    reason: str = ""


class UiRequestData(Model):
    """The server asks the panel to do something only a browser can (read or load the canvas)."""

    request_id: str
    run_id: str | None = None
    action: Literal["get_workflow", "propose_workflow"]
    payload: dict[str, Any] = Field(default_factory=dict)


def cache_note(read: int, write: int) -> str:
    """" (N cached, M written to the cache)" for prompt tokens a provider's cache served or took,
    "" for none: the debug drawer's line and the Markdown export say it the same way."""
    said = ([f"{read} cached"] if read else []) + ([f"{write} written to the cache"] if write else [])
    return f" ({', '.join(said)})" if said else ""


class UsageUpdatedData(Model):
    usage: Usage
    message_id: str | None = None


# The room of the list of sessions (`sessions.join`): never a session's id, which `ID_PATTERN`
# keeps from being `*`. Its events say what `GET /opencode/sessions` would now list differently.
SESSIONS_ROOM = "*"


class SessionList(Model):
    """`GET /opencode/sessions`, and the list room's snapshot (`sessions.state`)."""

    sessions: list[Session]


class SessionsChangedData(Model):
    """A session as the list shows it (created, renamed, reconfigured, or moved up by a send)."""

    session: Session


class SessionsRemovedData(Model):
    session_id: str


def _event(type_name: str, data_model: type[Model]) -> type[Model]:
    """Build `{seq, session_id, type, ts, data}` envelope models with a Literal discriminator."""
    annotations = {"seq": int, "session_id": str, "type": Literal[type_name], "ts": float, "data": data_model}  # type: ignore[valid-type]
    defaults = {"type": type_name, "ts": Field(default_factory=now), "seq": 0}
    name = "".join(w.capitalize() for w in type_name.replace(".", "_").split("_")) + "Event"
    return type(name, (Model,), {"__annotations__": annotations, **defaults, "__module__": __name__})


EVENT_DATA: dict[str, type[Model]] = {
    "session.state": SessionStateData,
    "session.resync": SessionStateData,
    "session.updated": SessionUpdatedData,
    "session.deleted": SessionDeletedData,
    "message.created": MessageCreatedData,
    "message.delta": MessageDeltaData,
    "message.completed": MessageCompletedData,
    "tool.started": ToolStartedData,
    "tool.finished": ToolFinishedData,
    "run.status": RunStatusData,
    "log": LogData,
    "permission.requested": PermissionRequestedData,
    "permission.resolved": PermissionResolvedData,
    "ui.request": UiRequestData,
    "usage.updated": UsageUpdatedData,
    "sessions.state": SessionList,
    "sessions.changed": SessionsChangedData,
    "sessions.removed": SessionsRemovedData,
}
EVENT_MODELS: dict[str, type[Model]] = {t: _event(t, d) for t, d in EVENT_DATA.items()}
# Events that are not stored in the session's event log: they describe one socket's view.
EPHEMERAL_EVENTS: frozenset[str] = frozenset({"session.state", "session.resync"})
# The list room's events: each carries all a client needs, so none is stored (a client whose
# offset the ring no longer holds gets a `sessions.state` instead of a replay).
SESSIONS_EVENTS: frozenset[str] = frozenset({"sessions.state", "sessions.changed", "sessions.removed"})
UNSTORED_EVENTS: frozenset[str] = EPHEMERAL_EVENTS | SESSIONS_EVENTS

AnyEvent = Annotated[Union[tuple(EVENT_MODELS.values())], Field(discriminator="type")]  # type: ignore[valid-type]
EventAdapter: TypeAdapter[Any] = TypeAdapter(AnyEvent)


class Event(Model):
    """The generic envelope used inside the core; `data` is one of the `EVENT_DATA` models' dumps."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    seq: int
    session_id: str
    type: str
    ts: float
    data: dict[str, Any]


# --------------------------------------------------------------------------- REST bodies


class SessionCreate(Model):
    # A client may bring its own id (a workflow reopened on another machine keeps its session id).
    id: EntityId | None = None
    title: str = Field(default="", max_length=MAX_TITLE_CHARS)
    skills: SkillIds = Field(default_factory=list, max_length=MAX_SKILLS)
    provider: ProviderName | None = None
    model: str | None = Field(default=None, max_length=200)


class SessionPatch(Model):
    title: str | None = Field(default=None, max_length=MAX_TITLE_CHARS)
    skills: SkillIds | None = Field(default=None, max_length=MAX_SKILLS)
    provider: ProviderName | None = None
    model: str | None = Field(default=None, max_length=200)
    budget: Budget | None = None
    permissions: dict[Annotated[str, Field(max_length=64)], PermissionPolicy] | None = Field(default=None, max_length=200)


# The sender's own name for one send. A send repeated with the name of one of the session's last
# `SENT_REMEMBERED` sends is answered as that one was and sends nothing: a panel whose connection
# dropped before the answer came can send again without the message going twice.
ClientSendId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{8,64}$")]
SENT_REMEMBERED = 256


class SendBody(Model):
    text: str = Field(max_length=MAX_TEXT_CHARS)
    images: list[ImagePart] = Field(default_factory=list, max_length=8)
    # Address these roles only (same as a leading `@role`); empty means the session's roles.
    skills: list[SkillId] = Field(default_factory=list, max_length=MAX_SKILLS)
    # `queue`: wait for busy runs; `interrupt`: abort them, then send.
    mode: Literal["queue", "interrupt"] = "queue"
    client_id: ClientSendId | None = None


class SendResult(Model):
    message_id: str
    run_id: str | None
    run_ids: list[str]
    queued: bool = False  # still waiting for the busy runs when this answer left (its start is an event)


class AbortBody(Model):
    run_id: str | None = None
    skill: SkillId | None = None


class PermissionRules(Model):
    """Global rules, keyed by tool name or permission class (`read`, `edit`, `run`, `network`, `files`)."""

    rules: dict[Annotated[str, Field(max_length=64)], PermissionPolicy] = Field(default_factory=dict, max_length=200)


class PermissionSettings(Model):
    defaults: dict[str, PermissionPolicy]
    rules: dict[str, PermissionPolicy]


class RetryBody(Model):
    """Answer a reply's prompt again with the reply's role (see `SessionManager.retry`)."""

    message_id: EntityId  # the reply to redo


class AbortResult(Model):
    aborted: list[str]


class PermissionReplyBody(Model):
    request_id: EntityId
    decision: Literal["allow", "deny"]
    remember: bool = False


class MessagePage(Model):
    messages: list[Message]
    has_more: bool
    next_before: str | None = None


class Health(Model):
    """`degraded` while the store cannot write (a full disk, a lock held elsewhere): sends are
    refused meanwhile, and what is already streaming is kept in memory until writes succeed."""

    status: Literal["ok", "degraded"] = "ok"
    uptime_s: float
    store_error: str | None = None


class VersionInfo(Model):
    name: Literal["opencode"] = "opencode"
    version: str
    protocol: int = PROTOCOL_VERSION
    capabilities: list[str]


class EmptyBody(Model):
    """A POST that takes no parameters still takes a JSON object (or nothing)."""


class Ok(Model):
    ok: Literal[True] = True


class Deleted(Model):
    deleted: str


class AuditEntry(Model):
    run_id: str | None
    request_id: str | None
    skill: str | None
    tool: str
    permission_class: str
    decision: str
    reason: str
    ts: float


class AuditList(Model):
    entries: list[AuditEntry]


def re_command_id(value: str) -> bool:
    """Whether `value` can be a command's id (echoed in its answer)."""
    return _COMMAND_ID_RE.fullmatch(value) is not None


def re_id(value: str) -> bool:
    """Whether `value` is a well-formed id (path segments are checked before any lookup)."""
    return len(value) <= MAX_ID_CHARS and _ID_RE.fullmatch(value) is not None


class TokenInfo(Model):
    """The install's access token, for remote clients; only ever answered to a trusted caller."""

    token: str
    header: Literal["X-Opencode-Token"] = "X-Opencode-Token"


class ErrorBody(Model):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorEnvelope(Model):
    error: ErrorBody


# --------------------------------------------------------------------------- providers

ProviderKind = Literal["openai", "anthropic", "ollama", "echo"]


MAX_PRICE = 100_000.0  # USD per million tokens: far above any model's, far below a cost that overflows
MAX_CONTEXT_TOKENS = 100_000_000


class ModelCaps(Model):
    """What a model can do and what it costs (USD per million tokens); presets, user-overridable."""

    tools: bool = True
    vision: bool = False
    context_tokens: int = Field(default=32_000, ge=512, le=MAX_CONTEXT_TOKENS)
    input_price: float = Field(default=0.0, ge=0, le=MAX_PRICE, allow_inf_nan=False)
    output_price: float = Field(default=0.0, ge=0, le=MAX_PRICE, allow_inf_nan=False)
    # Prompt tokens read from the provider's cache, and written to it. None: the provider kind's
    # usual share of `input_price` (`profiles.cache_prices_in_effect`).
    cache_read_price: float | None = Field(default=None, ge=0, le=MAX_PRICE, allow_inf_nan=False)
    cache_write_price: float | None = Field(default=None, ge=0, le=MAX_PRICE, allow_inf_nan=False)


class ProviderProfile(Model):
    """A named provider profile as listed to clients: never the key, at most its last 4 chars."""

    name: ProviderName
    kind: ProviderKind
    base_url: str = Field(max_length=500)
    default_model: str = Field(default="", max_length=200)
    key_env: str | None = Field(default=None, max_length=100)
    models: dict[str, ModelCaps] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)  # e.g. Ollama keep_alive
    has_key: bool = False
    key_hint: str | None = None  # "…abcd"
    # `profiles.revision_of`, also the ETag of a route answering one profile.
    revision: str | None = Field(default=None, description=(
        "The profile's revision: a digest of its stored settings (not of its key). Send it back as "
        "If-Match: \"<revision>\" with a PATCH or DELETE; if the profile changed since, the server "
        "answers 409 profile_changed and changes nothing. Null for a preset."))


# What `profiles._check_url` accepts, told to the OpenAPI document (the check itself stays there,
# with its readable message): an http(s) URL with a host, or empty for the preset's.
_BASE_URL_SCHEMA: dict[str, Any] = {"pattern": r"^(https?://[^/?#\s]+.*)?$"}


# A profile's declared models as a client sends them: an id as `default_model` allows, and a
# table a person could still read (the provider lists models; a profile declares a few).
ModelId = Annotated[str, Field(min_length=1, max_length=200)]
DeclaredModels = Annotated[dict[ModelId, ModelCaps], Field(max_length=1000)]


class ProviderCreate(Model):
    name: ProviderName
    kind: Literal["openai", "anthropic", "ollama"]  # `echo` is the echo skill's engine, not a provider
    base_url: str | None = Field(default=None, max_length=500, json_schema_extra=_BASE_URL_SCHEMA)
    default_model: str = Field(default="", max_length=200)
    key_env: str | None = Field(default=None, pattern=r"^[A-Z_][A-Z0-9_]{0,99}$")
    models: DeclaredModels = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)


class ProviderPatch(Model):
    base_url: str | None = Field(default=None, max_length=500, json_schema_extra=_BASE_URL_SCHEMA)
    default_model: str | None = Field(default=None, max_length=200)
    key_env: str | None = Field(default=None, pattern=r"^[A-Z_][A-Z0-9_]{0,99}$")
    models: DeclaredModels | None = None
    extra: dict[str, Any] | None = None


class ProviderKeyBody(Model):
    """The only shape that carries a key, inbound only, to the write-only key route."""

    key: str = Field(min_length=1, max_length=1000)


class ProviderList(Model):
    providers: list[ProviderProfile]
    presets: list[ProviderProfile] = Field(default_factory=list)


class ModelInfo(Model):
    id: str
    caps: ModelCaps | None = None


class ModelList(Model):
    models: list[ModelInfo]


# --------------------------------------------------------------------------- skills


class SkillToolInfo(Model):
    name: str
    description: str
    permission: PermissionClass
    parameters: dict[str, Any] = Field(default_factory=dict)  # JSON Schema of the arguments


class SkillInfo(Model):
    """One skill as `GET /opencode/skills` lists it."""

    id: str
    name: str
    description: str
    version: str
    kind: Literal["role", "tools"]
    engine: Literal["llm", "echo"] = "llm"
    color: str  # "#rrggbb", the panel's label colour
    origin: Literal["builtin", "user", "python"]
    license: str | None = None
    compatibility: str | None = None
    allowed_tools: list[str] = Field(default_factory=list)
    tools: list[SkillToolInfo] = Field(default_factory=list)
    references: list[str] = Field(default_factory=list)


class SkillList(Model):
    skills: list[SkillInfo]
    problems: list[dict[str, str]] = Field(default_factory=list)  # skipped folders: {folder, reason}


# --------------------------------------------------------------------------- WebSocket commands


class _Command(Model):
    id: Annotated[str, Field(pattern=COMMAND_ID_PATTERN)]


class JoinCommand(_Command):
    type: Literal["join"]
    session_id: EntityId
    after_seq: int | None = Field(default=None, ge=0)
    # A panel can answer `ui.request`s (read the canvas, load a graph); a script can't.
    panel: bool = False


class LeaveCommand(_Command):
    type: Literal["leave"]
    session_id: EntityId | None = None


class SessionsJoinCommand(_Command):
    """Follow the list of sessions (the room `SESSIONS_ROOM`): a `sessions.state` (no offset, or
    one the server can no longer replay), or the changes missed since `after_seq`; then live."""

    type: Literal["sessions.join"]
    after_seq: int | None = Field(default=None, ge=0)


class SessionsLeaveCommand(_Command):
    type: Literal["sessions.leave"]


class SendCommand(_Command):
    type: Literal["send"]
    session_id: EntityId
    text: str = Field(max_length=MAX_TEXT_CHARS)
    images: list[ImagePart] = Field(default_factory=list, max_length=8)
    skills: list[SkillId] = Field(default_factory=list, max_length=MAX_SKILLS)
    mode: Literal["queue", "interrupt"] = "queue"
    client_id: ClientSendId | None = None


class AbortCommand(_Command):
    type: Literal["abort"]
    session_id: EntityId
    run_id: str | None = None
    skill: SkillId | None = None


class RetryCommand(_Command):
    type: Literal["retry"]
    session_id: EntityId
    message_id: EntityId  # the reply to redo


class ConfigureCommand(_Command):
    type: Literal["configure"]
    session_id: EntityId
    patch: SessionPatch


class PingCommand(_Command):
    type: Literal["ping"]


class PermissionReplyCommand(_Command):
    type: Literal["permission.reply"]
    session_id: EntityId
    request_id: EntityId
    decision: Literal["allow", "deny"]
    remember: bool = False


class UiReplyCommand(_Command):
    """The panel's answer to a `ui.request` event."""

    type: Literal["ui.reply"]
    session_id: EntityId
    request_id: EntityId
    ok: bool = True
    result: dict[str, Any] = Field(default_factory=dict)
    error: str | None = Field(default=None, max_length=2000)
    # The panel's name for this answer, the same on each try: a repeat under it (the ack was
    # lost) is taken as given; another panel's answer to a closed request is still refused.
    answer_id: ClientSendId | None = None


Command = Annotated[
    Union[
        JoinCommand,
        LeaveCommand,
        SessionsJoinCommand,
        SessionsLeaveCommand,
        SendCommand,
        AbortCommand,
        RetryCommand,
        ConfigureCommand,
        PingCommand,
        PermissionReplyCommand,
        UiReplyCommand,
    ],
    Field(discriminator="type"),
]
CommandAdapter: TypeAdapter[Any] = TypeAdapter(Command)


class CommandAdapterModel(Model):
    """Wraps the command union so it validates like any other model."""

    command: Command
COMMAND_TYPES: frozenset[str] = frozenset(
    {"join", "leave", "sessions.join", "sessions.leave", "send", "abort", "retry", "configure", "ping",
     "permission.reply", "ui.reply"}
)


class AckReply(Model):
    type: Literal["ack"] = "ack"
    id: str
    data: dict[str, Any] = Field(default_factory=dict)


class ErrorReply(Model):
    type: Literal["error"] = "error"
    id: str | None
    error: ErrorBody


def json_schema() -> dict[str, Any]:
    """The JSON Schema of every protocol model, keyed by name (for tools and other languages)."""
    named: dict[str, Any] = {model.__name__: model for model in public_models()}
    # The unions over the models above: `Event` as the typed union of every event, not the envelope.
    named.update({"Part": PartList, "Command": CommandAdapter, "Event": EventAdapter})
    out: dict[str, Any] = {}
    for name, m in named.items():
        out[name] = m.json_schema() if isinstance(m, TypeAdapter) else m.model_json_schema()
    return {"protocol": PROTOCOL_VERSION, "schemas": out}


def public_models() -> list[type[Model]]:
    """Every model of this module that is part of the protocol (found, so none is forgotten)."""
    return [obj for name, obj in globals().items()
            if isinstance(obj, type) and issubclass(obj, Model) and obj.__module__ == __name__
            and not name.startswith("_") and obj not in (Model, CommandAdapterModel)]
