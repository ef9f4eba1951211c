"""The logic layer: every `/opencode/*` HTTP route and the one WebSocket endpoint.

One table of routes is mounted either on ComfyUI's `PromptServer.instance.routes` at import time
(ComfyUI mirrors each under `/api/...`) or on a bare `aiohttp.web.Application` (tests and the
standalone server). The service is opened in a `cleanup_ctx` of that app and reached through
`request.app[SERVICE]`. Handlers stay thin: parse with the protocol models, call the core,
answer with a protocol model; every failure is `{"error": {code, message, details}}`, never a 500.
Only this module and `streams.py` (the SSE and WebSocket side) import `aiohttp.web`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

from aiohttp import WSCloseCode, WSMsgType, web
from pydantic import BaseModel

from .core import protocol as p
from .core.config import Config
from .core.errors import BadRequest, NotFound, OpencodeError, PayloadTooLarge
from .core.export import export_json, export_markdown
from .core.service import OpencodeService, SkillFactory
from .core.trust import TrustPolicy, check_request
from .core.validation import parse_json, parse_model, read_at_most
from .streams import SseSubscriber, WsConnection
from .version import __version__

log = logging.getLogger("opencode.routes")

SERVICE = web.AppKey("opencode_service", OpencodeService)
TRUST = web.AppKey("opencode_trust", TrustPolicy)
# Why the service did not start, in a host that keeps serving without it (ComfyUI: see
# `comfy_mount.survive_start_failure`); every route that needs the service answers with it.
START_FAILURE = web.AppKey("opencode_start_failure", OpencodeError)
# The open WebSockets, closed with "going away" when the app shuts down (see `close_sockets`).
SOCKETS = web.AppKey("opencode_sockets", weakref.WeakSet)
# The open SSE streams, ended with `event: dropped` when the app shuts down.
SSE_STREAMS = web.AppKey("opencode_sse_streams", weakref.WeakSet)
SOCKET_CLOSE_TIMEOUT = 2.0
WEB_DIR = Path(__file__).resolve().parent / "web"
MAX_BODY_BYTES = 2 << 20
# What this server can do, for a panel newer than the server (ComfyUI serves the panel's files
# from disk, so an update is in the browser before ComfyUI restarts): `send.client_id` is a send
# that may carry its client_id (older servers refuse the field); `providers.if_match`, profile edits
# checked against the revision they were made on; `sessions.join`, the live list room.
CAPABILITIES = ["sessions", "events.sse", "ws", "multi_role", "providers", "skills", "permissions", "export",
                "send.client_id", "ui.reply.answer_id", "retry", "providers.if_match", "sessions.join"]

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --------------------------------------------------------------------------- helpers


def json_response(model: BaseModel | dict[str, Any], status: int = 200) -> web.Response:
    text = model.model_dump_json() if isinstance(model, BaseModel) else json.dumps(model)
    return web.Response(text=text, status=status, content_type="application/json")


def error_response(exc: OpencodeError, redact: Callable[[str], str] = lambda s: s) -> web.Response:
    body = p.ErrorEnvelope(error=p.ErrorBody(code=exc.code, message=redact(exc.message), details=exc.details))
    return web.Response(text=redact(body.model_dump_json()), status=exc.status, content_type="application/json")


async def read_body(request: web.Request, model: type[M]) -> M:
    """Parse a JSON body into `model`: 415 if not JSON, 413 if too large, 400 if malformed."""
    ctype = request.headers.get("Content-Type", "")
    if request.can_read_body and not ctype.split(";")[0].strip().lower() == "application/json":
        raise OpencodeError("send the body as JSON with Content-Type: application/json",
                            code="unsupported_media_type", status=415)
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes")
    raw = await _read_all(request, MAX_BODY_BYTES)
    if not raw.strip():
        raw = b"{}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the body is not valid UTF-8: {exc}", code="bad_json") from None
    return parse_model(model, parse_json(text, "body"))


async def _read_all(request: web.Request, limit: int) -> bytes:
    """The whole body, refused past `limit` bytes."""
    try:
        raw = await read_at_most(request.content, limit + 1)
    except ValueError:  # aiohttp's own cap on the body
        raise PayloadTooLarge(f"the body is larger than {limit} bytes") from None
    if len(raw) > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    return raw


def query_int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name} must be an integer", code="validation_error") from None
    if not lo <= value <= hi:
        raise BadRequest(f"query parameter {name} must be between {lo} and {hi}", code="validation_error")
    return value


def if_match(request: web.Request) -> frozenset[str] | None:
    """The revisions an `If-Match` header names (quotes and a `W/` taken off), or None with no
    header or with `*` (any: the route finds the profile or answers 404 anyway).

    A weak tag matches as its strong one: this server sends strong ETags only, and a proxy that
    compresses the answer passes ours on as `W/"…"`; it still names the same stored content."""
    lines = request.headers.getall("If-Match", [])
    if not lines:
        return None
    tags = [tag.strip() for line in lines for tag in line.split(",")]
    if "*" in tags:
        return None
    revisions = frozenset(tag.removeprefix("W/").strip('"') for tag in tags) - {""}
    if not revisions:
        raise BadRequest('If-Match must name the revision you loaded, as "<revision>" (its ETag), or *',
                         code="validation_error")
    return revisions


def profile_response(profile: p.ProviderProfile, status: int = 200) -> web.Response:
    """One profile, its revision also as the strong ETag a client sends back in `If-Match`."""
    response = json_response(profile, status)
    response.headers["ETag"] = f'"{profile.revision}"'
    return response


def service_of(request: web.Request) -> OpencodeService:
    return service_in(request.app)


def service_in(app: web.Application) -> OpencodeService:
    """The app's service, or why there is none (the node reaches it this way too)."""
    try:
        return app[SERVICE]
    except KeyError:
        raise not_serving(app) from None


def trust_of(request: web.Request) -> TrustPolicy:
    try:
        return request.app[TRUST]
    except KeyError:
        raise not_serving(request.app) from None


def not_serving(app: web.Application) -> OpencodeError:
    """Why there is no service to answer with: it failed to start (and says why), or it is still
    starting."""
    failure = app.get(START_FAILURE)
    if failure is not None:
        return OpencodeError(f"Opencode did not start in this server: {failure.message}", code=failure.code,
                             status=503, details=failure.details)
    return OpencodeError("Opencode is still starting; try again in a moment", code="starting", status=503)


def path_id(request: web.Request, name: str = "id") -> str:
    value = request.match_info[name]
    if not p.re_id(value):
        raise NotFound(f"no {name} {value[:80]!r}")
    return value


# --------------------------------------------------------------------------- route table


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200


ROUTES: list[Route] = []


def route(method: str, path: str, summary: str, *, body: type[BaseModel] | None = None,
          response: type[BaseModel] | None = None, status: int = 200) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        wrapped = endpoint(fn)
        ROUTES.append(Route(method, path, wrapped, summary, body, response, status))
        return wrapped

    return register


def endpoint(fn: Handler) -> Handler:
    """Trust check, then the handler; every failure becomes the error envelope."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        redact: Callable[[str], str] = lambda s: s
        try:
            trust = request.app.get(TRUST)
            if trust is not None:
                check_request(trust, request.method, request.headers, request.remote, request.query)
            svc = request.app.get(SERVICE)
            if svc is not None:
                redact = svc.redact
            return await fn(request)
        except OpencodeError as exc:
            return error_response(exc, redact)
        except web.HTTPException:
            raise
        except Exception:  # noqa: BLE001 - a bug must answer as an error, not a bare 500 page
            log.exception("unexpected error in %s %s", request.method, request.path)
            return error_response(OpencodeError("unexpected server error; see the ComfyUI console"))

    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


# --------------------------------------------------------------------------- info


@route("GET", "/opencode/health", "Liveness", response=p.Health)
async def health(request: web.Request) -> web.Response:
    svc = service_of(request)
    trouble = svc.store.trouble
    return json_response(p.Health(status="degraded" if trouble else "ok", store_error=trouble,
                                  uptime_s=round(time.time() - svc.started_at, 3)))


@route("GET", "/opencode/version", "Package and protocol version, capabilities", response=p.VersionInfo)
async def version(request: web.Request) -> web.Response:
    return json_response(p.VersionInfo(version=__version__, capabilities=CAPABILITIES))


@route("GET", "/opencode/skills", "Every skill with its tools and permission classes", response=p.SkillList)
async def list_skills(request: web.Request) -> web.Response:
    svc = service_of(request)
    return json_response({"skills": svc.skills.describe(),
                          "problems": [{"folder": pr.folder, "reason": pr.reason} for pr in svc.skills.problems]})


@route("POST", "/opencode/skills/reload", "Rescan the skill folders", response=p.SkillList)
async def reload_skills(request: web.Request) -> web.Response:
    svc = service_of(request)
    await read_body(request, p.EmptyBody)
    problems = await svc.skills.reload()
    return json_response({"skills": svc.skills.describe(),
                          "problems": [{"folder": pr.folder, "reason": pr.reason} for pr in problems]})


@route("GET", "/opencode/openapi.json", "This API as OpenAPI 3.1")
async def openapi(request: web.Request) -> web.Response:
    from .core.openapi import build_openapi

    return json_response(build_openapi(ROUTES, __version__))


@route("GET", "/opencode/schema.json", "JSON Schema of every protocol model")
async def schema(request: web.Request) -> web.Response:
    return json_response(p.json_schema())


@route("GET", "/opencode/token", "The access token remote clients need (asked from this machine)",
       response=p.TokenInfo)
async def get_token(request: web.Request) -> web.Response:
    return json_response(p.TokenInfo(token=trust_of(request).token))


@route("POST", "/opencode/token/rotate", "Replace the access token (remote clients need the new one)",
       body=p.EmptyBody, response=p.TokenInfo)
async def rotate_token(request: web.Request) -> web.Response:
    await read_body(request, p.EmptyBody)
    return json_response(p.TokenInfo(token=await trust_of(request).rotate()))


# --------------------------------------------------------------------------- sessions


@route("GET", "/opencode/sessions", "List sessions, most recently active first", response=p.SessionList)
async def list_sessions(request: web.Request) -> web.Response:
    return json_response(p.SessionList(sessions=await service_of(request).sessions.list()))


@route("POST", "/opencode/sessions", "Create a session", body=p.SessionCreate, response=p.Session, status=201)
async def create_session(request: web.Request) -> web.Response:
    body = await read_body(request, p.SessionCreate)
    return json_response(await service_of(request).sessions.create(body), status=201)


@route("GET", "/opencode/sessions/{id}", "One session", response=p.Session)
async def get_session(request: web.Request) -> web.Response:
    return json_response(await service_of(request).sessions.get(path_id(request)))


@route("PATCH", "/opencode/sessions/{id}", "Change title, skills, provider, model, budget, permissions",
       body=p.SessionPatch, response=p.Session)
async def patch_session(request: web.Request) -> web.Response:
    body = await read_body(request, p.SessionPatch)
    return json_response(await service_of(request).sessions.patch(path_id(request), body))


@route("DELETE", "/opencode/sessions/{id}", "Delete a session and its messages", response=p.Deleted)
async def delete_session(request: web.Request) -> web.Response:
    sid = path_id(request)
    await service_of(request).sessions.delete(sid)
    return json_response(p.Deleted(deleted=sid))


@route("GET", "/opencode/sessions/{id}/messages", "A page of messages (?before=<message id>&limit=)",
       response=p.MessagePage)
async def list_messages(request: web.Request) -> web.Response:
    before = request.query.get("before") or None
    if before is not None and not p.re_id(before):
        raise BadRequest("query parameter before must be a message id", code="validation_error")
    limit = query_int(request, "limit", 50, 1, 500)
    return json_response(await service_of(request).sessions.messages(path_id(request), before, limit))


@route("POST", "/opencode/sessions/{id}/messages",
       "Send a message (202); with Accept: text/event-stream, stream its runs as SSE",
       body=p.SendBody, response=p.SendResult, status=202)
async def send_message(request: web.Request) -> web.StreamResponse:
    svc = service_of(request)
    sid = path_id(request)
    body = await read_body(request, p.SendBody)
    if "text/event-stream" not in request.headers.get("Accept", ""):
        return json_response(await svc.sessions.send(sid, body), status=202)
    await svc.sessions.get(sid)
    sub = _sse_subscriber(request)
    await svc.bus.subscribe(sid, sub, svc.bus.last_seq(sid))
    try:
        sending = await svc.sessions.start_send(sid, body)
        result = await sending.answer()
        return await sub.stream(request, until_runs=sending.runs_to_follow(), first=result)
    finally:
        svc.bus.unsubscribe(sid, sub)


@route("GET", "/opencode/sessions/{id}/events", "Subscribe to a session's events as SSE (?after_seq=, Last-Event-ID)")
async def session_events(request: web.Request) -> web.StreamResponse:
    svc = service_of(request)
    sid = path_id(request)
    await svc.sessions.get(sid)
    after: int | None = None
    last_event_id = request.headers.get("Last-Event-ID")
    if "after_seq" in request.query:
        after = query_int(request, "after_seq", 0, 0, 2**62)
    elif last_event_id:
        try:
            after = max(0, int(last_event_id))
        except ValueError:
            raise BadRequest("Last-Event-ID must be an event seq", code="validation_error") from None
    sub = _sse_subscriber(request)
    await svc.bus.subscribe(sid, sub, after)
    try:
        return await sub.stream(request)
    finally:
        svc.bus.unsubscribe(sid, sub)


def _sse_subscriber(request: web.Request) -> SseSubscriber:
    """A new SSE stream, known to the app so that a shutdown ends it (see `close_sockets`)."""
    sub = SseSubscriber()
    streams = request.app.get(SSE_STREAMS)
    if streams is not None:
        streams.add(sub)
    return sub


@route("POST", "/opencode/sessions/{id}/abort", "Abort one run, one role's runs, or all", body=p.AbortBody,
       response=p.AbortResult)
async def abort(request: web.Request) -> web.Response:
    body = await read_body(request, p.AbortBody)
    return json_response(await service_of(request).sessions.abort(path_id(request), body.run_id, body.skill))


@route("POST", "/opencode/sessions/{id}/retry", "Answer a reply's prompt again with its role (a new reply)",
       body=p.RetryBody, response=p.SendResult, status=202)
async def retry(request: web.Request) -> web.Response:
    body = await read_body(request, p.RetryBody)
    return json_response(await service_of(request).sessions.retry(path_id(request), body.message_id), status=202)


@route("POST", "/opencode/sessions/{id}/permissions", "Answer a permission request",
       body=p.PermissionReplyBody, response=p.Ok)
async def reply_permission(request: web.Request) -> web.Response:
    svc = service_of(request)
    sid = path_id(request)
    body = await read_body(request, p.PermissionReplyBody)
    await svc.sessions.get(sid)
    svc.gate.reply(sid, body.request_id, body.decision, body.remember)
    return json_response(p.Ok())


@route("GET", "/opencode/sessions/{id}/audit", "The permission decisions of a session", response=p.AuditList)
async def audit(request: web.Request) -> web.Response:
    svc = service_of(request)
    sid = path_id(request)
    await svc.sessions.get(sid)
    return json_response({"entries": await svc.store.list_audit(sid)})


@route("GET", "/opencode/sessions/{id}/export", "Export a session (?format=json|md), secrets redacted")
async def export(request: web.Request) -> web.Response:
    svc = service_of(request)
    sid = path_id(request)
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "md"):
        raise BadRequest("format must be json or md", code="validation_error")
    session = await svc.sessions.get(sid)
    messages = await svc.sessions.all_messages(sid)
    if fmt == "md":
        return web.Response(text=export_markdown(session, messages, svc.redact),
                            content_type="text/markdown", charset="utf-8")
    return web.Response(text=export_json(session, messages, svc.redact), content_type="application/json")


@route("GET", "/opencode/permissions", "Global permission rules and the defaults per class",
       response=p.PermissionSettings)
async def get_permissions(request: web.Request) -> web.Response:
    from .core.permissions import DEFAULT_POLICY

    gate = service_of(request).gate
    return json_response(p.PermissionSettings(defaults=DEFAULT_POLICY, rules=gate.global_rules))


@route("PUT", "/opencode/permissions", "Replace the global permission rules (per tool or per class)",
       body=p.PermissionRules, response=p.PermissionSettings)
async def put_permissions(request: web.Request) -> web.Response:
    from .core.permissions import DEFAULT_POLICY

    body = await read_body(request, p.PermissionRules)
    gate = service_of(request).gate
    await gate.save_rules(body.rules)
    return json_response(p.PermissionSettings(defaults=DEFAULT_POLICY, rules=gate.global_rules))


@route("GET", "/opencode/files", "An image a message refers to (?filename=&subfolder=&type=&source=)")
async def get_file(request: web.Request) -> web.Response:
    q = request.query
    part = parse_model(p.ImagePart, {
        "source": q.get("source", "upload"), "filename": q.get("filename", ""),
        "subfolder": q.get("subfolder", ""), "folder_type": q.get("type", "output"),
    })
    if not part.filename:
        raise BadRequest("filename is required", code="validation_error")
    data, mime = await service_of(request).load_image(part)
    if not mime.startswith("image/"):
        mime = "application/octet-stream"
    return web.Response(body=data, content_type=mime, headers={"Cache-Control": "private, max-age=3600",
                                                                "X-Content-Type-Options": "nosniff"})


# --------------------------------------------------------------------------- providers


@route("GET", "/opencode/providers", "Provider profiles (never keys) and presets", response=p.ProviderList)
async def list_providers(request: web.Request) -> web.Response:
    profiles = service_of(request).profiles
    return json_response(p.ProviderList(providers=await profiles.list(), presets=profiles.presets()))


@route("POST", "/opencode/providers", "Create a provider profile", body=p.ProviderCreate,
       response=p.ProviderProfile, status=201)
async def create_provider(request: web.Request) -> web.Response:
    body = await read_body(request, p.ProviderCreate)
    return profile_response(await service_of(request).profiles.create(body), status=201)


@route("GET", "/opencode/providers/{name}", "One provider profile (its revision also as the ETag)",
       response=p.ProviderProfile)
async def get_provider(request: web.Request) -> web.Response:
    return profile_response(await service_of(request).profiles.get(path_id(request, "name")))


@route("PATCH", "/opencode/providers/{name}", "Change a provider profile (If-Match: only at that revision, else 409)",
       body=p.ProviderPatch, response=p.ProviderProfile)
async def patch_provider(request: web.Request) -> web.Response:
    body = await read_body(request, p.ProviderPatch)
    profiles = service_of(request).profiles
    return profile_response(await profiles.patch(path_id(request, "name"), body, if_match(request)))


@route("DELETE", "/opencode/providers/{name}", "Delete a provider profile and its stored key (If-Match: only at that "
       "revision, else 409)", response=p.Deleted)
async def delete_provider(request: web.Request) -> web.Response:
    svc = service_of(request)
    name = path_id(request, "name")
    await svc.profiles.delete(name, if_match(request))
    await svc.secrets.delete(name)
    return json_response(p.Deleted(deleted=name))


@route("PUT", "/opencode/providers/{name}/key", "Store an API key (write-only: never returned)",
       body=p.ProviderKeyBody, response=p.ProviderProfile)
async def put_key(request: web.Request) -> web.Response:
    svc = service_of(request)
    name = path_id(request, "name")
    await svc.profiles.get(name)
    body = await read_body(request, p.ProviderKeyBody)
    await svc.secrets.set(name, body.key)
    return profile_response(await svc.profiles.get(name))


@route("DELETE", "/opencode/providers/{name}/key", "Forget the stored API key", response=p.ProviderProfile)
async def delete_key(request: web.Request) -> web.Response:
    svc = service_of(request)
    name = path_id(request, "name")
    await svc.profiles.get(name)
    await svc.secrets.delete(name)
    return profile_response(await svc.profiles.get(name))


@route("GET", "/opencode/providers/{name}/models", "Models offered by the provider", response=p.ModelList)
async def list_models(request: web.Request) -> web.Response:
    svc = service_of(request)
    return json_response(p.ModelList(models=await svc.list_models(path_id(request, "name"))))


# --------------------------------------------------------------------------- WebSocket


@route("GET", "/opencode/ws", "The WebSocket: commands in, events out (see the README)")
async def websocket(request: web.Request) -> web.StreamResponse:
    svc = service_of(request)
    ws = web.WebSocketResponse(heartbeat=20.0, compress=False, max_msg_size=4 * p.MAX_WS_FRAME_BYTES)
    await ws.prepare(request)
    if request.transport is not None:
        # Sends never wait for a drain below this; the bus drops a socket at half of it.
        request.transport.set_write_buffer_limits(high=svc.config.max_client_backlog * 2)
    conn = WsConnection(svc, ws, request)
    sockets = request.app.get(SOCKETS)
    if sockets is not None:
        sockets.add(ws)
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await conn.handle(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await conn.reply_error(None, BadRequest("binary frames are not supported; send JSON text frames",
                                                        code="binary_frame"))
            elif msg.type == WSMsgType.ERROR:
                break
    finally:
        conn.leave_all()
        await conn.answered()
    return ws


# --------------------------------------------------------------------------- the panel's files


async def standalone_page(request: web.Request) -> web.StreamResponse:
    """`GET /opencode/`: the panel as a page of its own (the standalone server's main page)."""
    return _file(WEB_DIR / "standalone" / "index.html")


async def static_file(request: web.Request) -> web.StreamResponse:
    folder = {"dist": "dist", "standalone": "standalone", "scripts": "standalone/scripts"}[request.match_info["folder"]]
    base = (WEB_DIR / folder).resolve()
    target = (base / request.match_info["path"]).resolve()
    if base not in target.parents or not target.is_file():
        return error_response(NotFound(f"no file {request.match_info['path'][:80]!r}"))
    return _file(target)


def _file(path: Path) -> web.StreamResponse:
    if not path.is_file():
        return error_response(NotFound("the panel's files are missing; reinstall Opencode or run the web build"))
    return web.FileResponse(path, headers={"Cache-Control": "no-cache"})


STATIC_ROUTES: list[tuple[str, Handler]] = [
    ("/opencode/", standalone_page),
    ("/opencode/static/{folder:dist|standalone}/{path:.+}", static_file),
    ("/opencode/{folder:scripts}/{path:.+}", static_file),
]


# --------------------------------------------------------------------------- mounting


def register_routes(target: web.Application | web.RouteTableDef) -> None:
    """Put every route on a bare app's router or on ComfyUI's `PromptServer.instance.routes`."""
    entries = [(r.method, r.path, r.handler) for r in ROUTES] + [("GET", path, h) for path, h in STATIC_ROUTES]
    for method, path, handler in entries:
        if isinstance(target, web.Application):
            target.router.add_route(method, path, handler)
        else:
            target.route(method, path)(handler)


def service_context(config: Config, skill_factories: list[SkillFactory] | None = None,
                    image_loader: Any = None, trust: TrustPolicy | None = None
                    ) -> Callable[[web.Application], AsyncIterator[None]]:
    """A `cleanup_ctx` entry: open the service when the app starts, close it when it stops."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        svc = OpencodeService(config, skill_factories=list(skill_factories or ()), image_loader=image_loader)
        await svc.start()
        try:  # a start that fails after the service opened (an unreadable token) still closes it
            app[SERVICE] = svc
            app[TRUST] = trust or await TrustPolicy.load(config.data_dir)
            yield
        finally:
            await svc.close()

    return context


async def close_sockets(app: web.Application) -> None:
    """An `on_shutdown` handler: close every open WebSocket as "going away" (1001), and end every
    SSE stream with `event: dropped`.

    Why: a WebSocket handler runs until its socket closes, so a stopping server would keep its
    clients for the whole shutdown timeout while they think they are connected (a restarted
    server's panel sent into the old process and timed out); told, the panel reconnects at once.
    """
    for stream in list(app.get(SSE_STREAMS, ())):
        await stream.drop("server shutting down")
    sockets = [ws for ws in app.get(SOCKETS, ()) if not ws.closed]
    if sockets:
        await asyncio.wait([asyncio.ensure_future(ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down"))
                            for ws in sockets], timeout=SOCKET_CLOSE_TIMEOUT)


def mount_lifecycle(app: web.Application, context: Callable[[web.Application], AsyncIterator[None]]) -> None:
    """Open the service with `app` (`context`, a `cleanup_ctx` entry) and close its sockets on
    shutdown: both must be added before the app starts, which freezes its signals."""
    app[SOCKETS] = weakref.WeakSet()
    app[SSE_STREAMS] = weakref.WeakSet()
    app.on_shutdown.append(close_sockets)
    app.cleanup_ctx.append(context)


def create_app(config: Config, skill_factories: list[SkillFactory] | None = None,
               image_loader: Any = None, trust: TrustPolicy | None = None) -> web.Application:
    """A bare aiohttp app serving Opencode alone (tests and `opencode-agent serve`)."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    register_routes(app)
    mount_lifecycle(app, service_context(config, skill_factories, image_loader, trust))
    return app
