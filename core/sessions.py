"""The session manager: the global state of every session, and the only API the routes call.

A session outlives graph runs, browser tabs and restarts: its settings and messages live in the
store, and while it is in use a `_Live` entry holds its recent messages and active runs in memory
(the join snapshot is built from it without touching the disk). Sending a message starts one run
per addressed role, concurrently; a message sent while runs are busy waits its turn (or, with
mode `interrupt`, aborts them first). Abort cancels run tasks, which end as `aborted` at once.
Imports protocol, bus, store, agent, permissions, ui_requests and errors.
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import itertools
import logging
import re
import sys
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Coroutine, Protocol, Sequence

from .agent import (
    MAX_OLDER_MESSAGES, OLDER_PAGE, AgentDeps, AgentRun, RunInput, SkillLike, TurnCache, replies_by_prompt,
)
from .bus import InProcessBus
from .errors import BadRequest, Conflict, NotFound, OpencodeError
from .protocol import (
    FINAL_RUN_STATUSES,
    AbortResult,
    Message,
    MessageCreatedData,
    MessagePage,
    Run,
    RunStatusData,
    SENT_REMEMBERED,
    SESSIONS_ROOM,
    SendBody,
    SendResult,
    Session,
    SessionCreate,
    SessionDeletedData,
    SessionPatch,
    SessionsChangedData,
    SessionsRemovedData,
    SessionStateData,
    SessionUpdatedData,
    TextPart,
    Usage,
    UsageUpdatedData,
    new_id,
    now,
)
from .store import Store

log = logging.getLogger("opencode.sessions")

ROLE_MENTION = re.compile(r"^\s*@([a-z0-9][a-z0-9_-]{0,63})\b\s*")
DEFAULT_TITLE = "New chat"
# How long an interrupting message waits for the runs it stopped to record their text (they end
# within milliseconds; a tool that ignores cancellation is not waited for longer).
INTERRUPT_SETTLE_SECONDS = 2.0


def start_eagerly(coro: Coroutine[Any, Any, Message], *, name: str) -> asyncio.Task[Message]:
    """A run's task, started in the caller's turn of the loop where Python can (3.12+).

    Why: on a loaded loop every turn lasts milliseconds (tens of them at a few hundred streams), and
    a task waits a turn before its first step. Started eagerly, a run resolves its model, builds its
    request and hands it to aiohttp, which writes it eagerly too on 3.12+, all before the caller's
    turn ends: the model is asked one or two turns sooner. The run's `_Active` must exist before this
    call, since the run looks itself up as it starts.
    """
    loop = asyncio.get_running_loop()
    if sys.version_info >= (3, 12):
        return asyncio.Task(coro, loop=loop, name=name, eager_start=True)  # type: ignore[call-arg]
    return loop.create_task(coro, name=name)


class SkillSource(Protocol):
    def get(self, skill_id: str) -> SkillLike | None: ...

    def roles(self) -> Sequence[SkillLike]: ...


@dataclass
class _Active:
    run: Run
    agent: AgentRun
    task: asyncio.Task[Message] = field(init=False)  # set once made (an eager task has run by then)
    # A task cancelled before its first step never runs its body (nor its `finally`), so a run
    # stopped that early is flagged instead, and stops itself as it starts.
    started: bool = False
    stop_at_start: bool = False


@dataclass
class _Queued:
    """A send waiting for the busy runs to finish."""

    user_message: Message
    runs: list[Run]
    roles: list[SkillLike]


@dataclass
class _Live:
    session: Session
    recent: OrderedDict[str, Message]
    has_more: bool
    active: dict[str, _Active] = field(default_factory=dict)
    queued: deque[_Queued] = field(default_factory=deque)
    # Interrupting sends waiting for the runs they stopped: messages queued meanwhile wait for them.
    interrupting: int = 0
    turns: TurnCache = field(default_factory=TurnCache)
    last_used: float = field(default_factory=time.monotonic)
    # Messages just before `recent`, oldest first, read from the store when a run's context had
    # room for them and kept (they are finished; `recent` hands its evictions on to the end).
    older: list[Message] = field(default_factory=list)
    older_more: bool | None = None  # whether the store has messages before `older`; None: as `has_more`
    reading_older: asyncio.Lock = field(default_factory=asyncio.Lock)  # one reader: roles ask at once
    changing: asyncio.Lock = field(default_factory=asyncio.Lock)  # one change of the session at a time
    deleted: bool = False  # set as a delete begins: nothing starts in it any more
    # Sends saving a message that will queue: a send that comes meanwhile queues behind them.
    queueing: int = 0
    last_save: asyncio.Task[None] | None = None  # the latest user message's save (saves keep send order)
    # The last sends that named themselves (`SendBody.client_id`), so a repeat is answered, not sent.
    sent: OrderedDict[str, asyncio.Future[Sending]] = field(default_factory=OrderedDict)


@dataclass
class Sending:
    """A send whose runs have started (or whose message has queued): `answer()` waits for the
    message's commit, names a new chat after it, and says what was sent."""

    manager: "SessionManager"
    live: _Live
    user: Message
    runs: list[Run]
    text: str
    saving: asyncio.Task[None] | None  # None: saved already (a queued message is saved first)
    repeat: bool = False  # a repeat of an earlier send (its client_id): nothing new was sent

    def runs_to_follow(self) -> set[str]:
        """The runs whose events a stream begun now will see end: all of a new send's; of a
        repeat's, those not ended (a run's status is final before it says so)."""
        return {r.id for r in self.runs if not self.repeat or r.status not in FINAL_RUN_STATUSES}

    async def answer(self) -> SendResult:
        if self.saving is not None:
            await asyncio.shield(self.saving)  # the store's error, if any, is the sender's answer
        # After the runs start: naming the chat must not delay its first reply.
        await self.manager._auto_title(self.live, self.text)
        return SendResult(message_id=self.user.id, run_id=self.runs[0].id if self.runs else None,
                          run_ids=[r.id for r in self.runs], queued=self.user.status == "queued")


def _send_failed(started: asyncio.Future[Sending]) -> bool:
    """Whether a remembered send failed (it did not start, or its message was not saved): a repeat
    of it is then sent anew. One still starting has not failed: a repeat waits for it."""
    if not started.done():
        return False
    if started.cancelled() or started.exception() is not None:
        return True
    saving = started.result().saving
    return saving is not None and saving.done() and (saving.cancelled() or saving.exception() is not None)


class SessionManager:
    def __init__(self, store: Store, bus: InProcessBus, skills: SkillSource, deps: AgentDeps, *,
                 default_role: str = "assistant", recent_limit: int = 50,
                 validate_provider: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.store = store
        self.bus = bus
        self.skills = skills
        self.deps = deps
        self.default_role = default_role
        self.recent_limit = recent_limit
        self.validate_provider = validate_provider
        self._live: dict[str, _Live] = {}
        # Resolved with the final assistant message of each run (or None if it never started).
        self._run_done: dict[str, asyncio.Future[Message | None]] = {}
        self._loading: dict[str, asyncio.Future[_Live]] = {}
        self._closing = False

    # ------------------------------------------------------------------ loading

    async def _get_live(self, session_id: str) -> _Live:
        live = self._live.get(session_id)
        if live is not None:
            live.last_used = time.monotonic()
            return live
        loading = self._loading.get(session_id)
        if loading is not None:
            return await asyncio.shield(loading)
        future: asyncio.Future[_Live] = asyncio.get_running_loop().create_future()
        self._loading[session_id] = future
        try:
            session = await self.store.get_session(session_id)
            if session is None:
                raise NotFound(f"no session {session_id}; list sessions with GET /opencode/sessions")
            messages, has_more = await self.store.get_messages(session_id, limit=self.recent_limit)
            await self.bus.open_room(session_id)
            live = _Live(session, OrderedDict((m.id, m) for m in messages), has_more)
            self._recall_sends(live)
            self._live[session_id] = live
            future.set_result(live)
            return live
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved
            raise
        finally:
            self._loading.pop(session_id, None)
            # A failure's traceback keeps this frame, whose `future` holds the failure: a cycle
            # that only the garbage collector would free (one per 404 of an unknown session).
            del future

    def _recall_sends(self, live: _Live) -> None:
        """Remember the loaded messages' sends by their `client_id`, with the runs that answered
        them: a client whose send was saved just before a restart repeats it after, and must get
        that message back rather than a second one (and a second bill)."""
        replies = replies_by_prompt(live.recent.values())
        for m in live.recent.values():
            if m.role == "user" and m.client_id is not None:
                runs = [Run(id=r.run_id, session_id=r.session_id, message_id=r.id, skill=r.skill or "",
                            status=r.status if r.status in FINAL_RUN_STATUSES else "interrupted")  # type: ignore[arg-type]
                        for r in replies.get(m.id, []) if r.run_id is not None]
                done: asyncio.Future[Sending] = asyncio.get_running_loop().create_future()
                done.set_result(Sending(self, live, m, runs, m.text(), None))
                live.sent[m.client_id] = done
        while len(live.sent) > SENT_REMEMBERED:
            live.sent.popitem(last=False)

    def _remember(self, live: _Live, message: Message) -> None:
        live.recent[message.id] = message
        live.recent.move_to_end(message.id)
        while len(live.recent) > self.recent_limit:
            oldest = next(iter(live.recent))
            if live.recent[oldest].status in ("streaming", "queued"):
                break
            _, evicted = live.recent.popitem(last=False)
            if live.older_more is not None:  # `older` was read: it goes on right before `recent`
                live.older.append(evicted)
                if len(live.older) > MAX_OLDER_MESSAGES:
                    del live.older[0]
                    live.older_more = True
            live.has_more = True

    def evict_idle(self, max_idle: float) -> int:
        """Forget the in-memory state of sessions unused for `max_idle` seconds, with no run
        active or queued and nobody joined: memory stays bounded by the sessions in use. The
        store holds all of it (settings are saved before they change in memory), so the next
        use loads it again. Returns how many were forgotten."""
        now = time.monotonic()
        idle = [sid for sid, live in self._live.items()
                if now - live.last_used >= max_idle and not live.active and not live.queued and not live.interrupting
                and not self.bus.subscriber_count(sid)]
        for sid in idle:
            del self._live[sid]
        return len(idle)

    # ------------------------------------------------------------------ sessions

    async def create(self, body: SessionCreate) -> Session:
        self._check_skills(body.skills)
        if body.provider and self.validate_provider:
            await self.validate_provider(body.provider)
        session_id = body.id or new_id("ses")
        if session_id in self._live or await self.store.get_session(session_id) is not None:
            raise Conflict(f"a session with id {session_id} already exists")
        t = now()
        session = Session(id=session_id, title=body.title or DEFAULT_TITLE, skills=list(body.skills),
                          provider=body.provider, model=body.model, created_at=t, updated_at=t)
        await self.store.save_session(session)
        self.bus.new_room(session_id)  # replaces a deleted session's room, if the id is used again
        self._live[session_id] = _Live(session, OrderedDict(), False)
        self._listed(session)
        log.info("created session %s", session_id)
        return session

    async def list(self) -> list[Session]:
        stored = await self.store.list_sessions()
        # In-memory state is newer than the store for sessions in use. A session not opened since
        # the start shows `last_seq` 0: reading each one's newest event row made a listing of a
        # few thousand sessions take 150-250 ms (a join tells, or `GET /sessions/{id}`).
        # Sorted again: a live session's activity may not have reached its row yet.
        listed = [self._numbered(self._live[s.id].session) if s.id in self._live
                  else self._numbered(s) if self.bus.room_of(s.id) is not None else s for s in stored]
        return sorted(listed, key=lambda s: s.updated_at, reverse=True)

    async def get(self, session_id: str) -> Session:
        return self._numbered((await self._get_live(session_id)).session)

    def _listed(self, session: Session) -> None:
        """Tell the list room that `session` changed, as `GET /opencode/sessions` now lists it:
        panels showing the list of chats follow other tabs', scripts' and the CLI's changes."""
        self.bus.publish_if_followed(SESSIONS_ROOM, "sessions.changed",
                                     lambda: SessionsChangedData(session=self._numbered(session)))

    def _numbered(self, session: Session, ahead: int = 0) -> Session:
        """The session with `last_seq`: the seq of its newest event (`ahead` = 1 for the event
        about to carry it), where a client that has what it shows can start its replay."""
        return session.model_copy(update={"last_seq": self.bus.last_seq(session.id) + ahead})

    async def patch(self, session_id: str, patch: SessionPatch) -> Session:
        live = await self._get_live(session_id)
        changes = patch.model_dump(exclude_unset=True)
        if "skills" in changes and changes["skills"] is not None:
            self._check_skills(changes["skills"])
        if changes.get("provider") and self.validate_provider:
            await self.validate_provider(changes["provider"])
        # An explicit null clears what may be empty (provider, model) and leaves the rest as it is.
        changes = {k: v for k, v in changes.items() if v is not None or k in ("provider", "model")}
        return await self._change(live, lambda session: changes)

    async def _change(self, live: _Live, changes_to: Callable[[Session], dict[str, Any]]) -> Session:
        """Apply `changes_to(session)` to the session as the change before it left it, save, publish.

        Why a lock: a change reads the session, waits for its save, then replaces it. Two at once
        (the automatic title and the panel's settings, two remembered permissions) would each
        replace the other's; a reply's usage added meanwhile (`_add_usage`) is kept as well.
        """
        async with live.changing:
            if live.deleted:  # a delete began while this change waited: it must not bring it back
                raise NotFound(f"no session {live.session.id}; it was deleted")
            before = live.session
            data = before.model_dump()
            data.update(changes_to(before))
            data["updated_at"] = now()
            updated = Session.model_validate(data)
            await self.store.save_session(updated)
            # A reply ended (`_add_usage`) or a message came (`_touch`) during the save: its row,
            # queued after this one, lacks this change; a newer one has both.
            if live.session is not before:
                updated = updated.model_copy(update={"usage": live.session.usage, "updated_at": now()})
                self.store.queue_session(updated)
            live.session = updated
        self.bus.publish(live.session.id, "session.updated", SessionUpdatedData(session=self._numbered(updated, 1)))
        self._listed(updated)
        return self._numbered(updated)

    async def delete(self, session_id: str) -> None:
        live = await self._get_live(session_id)
        live.deleted = True  # from now on sends are refused, and a message saving to queue is dropped
        tasks = [a.task for a in live.active.values()]
        self._abort_all(live, "aborted")
        # Let aborted runs and dropped messages write their last rows first, so none lands after the delete.
        await asyncio.gather(*tasks, return_exceptions=True)
        while live.queueing:
            await asyncio.sleep(0.005)
        # A change saving now finishes first (and is deleted with the rest); one still waiting
        # for this lock finds the session deleted.
        async with live.changing:
            # Announced first, so that its row goes with the session's other events.
            self.bus.publish(session_id, "session.deleted", SessionDeletedData(session_id=session_id))
            try:
                await self.store.delete_session(session_id)
            except BaseException:
                live.deleted = False
                raise
        self._live.pop(session_id, None)
        # After the row is gone: a listing read from now on lacks it (see `_attach_with_listing`).
        self.bus.publish_if_followed(SESSIONS_ROOM, "sessions.removed", lambda: SessionsRemovedData(session_id=session_id))
        room = self.bus.room_of(session_id)
        asyncio.get_running_loop().call_later(2.0, lambda: self.bus.close_room(session_id, only=room))
        log.info("deleted session %s", session_id)

    def _check_skills(self, skill_ids: Sequence[str]) -> None:
        unknown = [s for s in skill_ids if self.skills.get(s) is None]
        if unknown:
            raise BadRequest(f"unknown skill(s): {', '.join(unknown)}; list them with GET /opencode/skills",
                             code="unknown_skill", details={"unknown": unknown})

    async def remember_permission(self, session_id: str, tool: str, policy: str) -> None:
        live = await self._get_live(session_id)
        await self._change(live, lambda session: {"permissions": {**session.permissions, tool: policy}})

    # ------------------------------------------------------------------ reading

    async def messages(self, session_id: str, before: str | None, limit: int) -> MessagePage:
        await self._get_live(session_id)
        await self.store.flush()  # a message just announced may still be on its way to the disk
        if before is not None:
            anchor = await self.store.get_message(before)
            if anchor is None or anchor.session_id != session_id:
                raise NotFound(f"no message {before} in session {session_id}")
        messages, has_more = await self.store.get_messages(session_id, before=before, limit=limit)
        live = self._live.get(session_id)
        if live is not None:  # streaming replies: the in-memory copy is ahead of the checkpoint
            messages = [live.recent.get(m.id, m) for m in messages]
        return MessagePage(messages=messages, has_more=has_more, next_before=messages[0].id if has_more and messages else None)

    async def all_messages(self, session_id: str) -> list[Message]:
        """Every message of a session, oldest first (for export)."""
        out: list[Message] = []
        before: str | None = None
        while True:
            page = await self.messages(session_id, before, 500)
            out[:0] = page.messages
            if not page.has_more or not page.messages:
                return out
            before = page.messages[0].id

    async def snapshot(self, session_id: str) -> dict[str, Any]:
        """The join state; built synchronously after loading so it matches the bus's last seq."""
        live = await self._get_live(session_id)
        runs = [a.run for a in live.active.values()] + [r for q in live.queued for r in q.runs]
        return SessionStateData(session=self._numbered(live.session), messages=list(live.recent.values()),
                                runs=runs, has_more=live.has_more).model_dump(mode="json")

    async def last_reply(self, session_id: str) -> tuple[str, str | None]:
        """The text of the last finished assistant reply(ies) of the newest exchange, and its message id."""
        live = await self._get_live(session_id)
        finished = [m for m in live.recent.values() if m.role == "assistant" and m.status != "streaming"]
        if not finished:
            return "", None
        newest = finished[-1]
        if newest.reply_to is not None:  # its prompt's replies: those of a queued prompt are not together
            replies = replies_by_prompt(finished)[newest.reply_to]
        else:  # stored before replies named their prompt: the run of replies after the last prompt
            replies = []
            for m in reversed(live.recent.values()):
                if m.role == "user":
                    if replies:
                        break
                    continue
                if m.status != "streaming":
                    replies.append(m)
            replies.reverse()
        return join_replies(replies), replies[-1].id

    # ------------------------------------------------------------------ sending

    async def send(self, session_id: str, body: SendBody) -> SendResult:
        """Send a message: its runs start at once, or it queues behind the busy ones; returns once
        the message is committed (a store error is the answer)."""
        return await (await self.start_send(session_id, body)).answer()

    async def start_send(self, session_id: str, body: SendBody) -> "Sending":
        """The first half of `send`: when it returns, the message's runs have started, or it has
        its place in the queue; `answer()` then waits for its commit. A socket reads its next
        command in between (an abort of these very runs, say) rather than after the disk.

        A send that repeats the `client_id` of one of the session's last sends is that send again
        (its answer is the first one's), unless the first failed: then it is sent anew."""
        live = await self._get_live(session_id)
        self._check_open(live)
        if body.client_id is None:
            return await self._start_send(live, body)
        earlier = live.sent.get(body.client_id)
        if earlier is not None and not _send_failed(earlier):
            return dataclasses.replace(await asyncio.shield(earlier), repeat=True)
        started: asyncio.Future[Sending] = asyncio.get_running_loop().create_future()
        live.sent[body.client_id] = started
        live.sent.move_to_end(body.client_id)
        while len(live.sent) > SENT_REMEMBERED:
            live.sent.popitem(last=False)
        try:
            sending = await self._start_send(live, body)
        except BaseException as exc:
            if live.sent.get(body.client_id) is started:
                del live.sent[body.client_id]
            if isinstance(exc, asyncio.CancelledError):
                started.cancel()
            else:
                started.set_exception(exc)
                started.exception()  # retrieved here: a repeat may never come to read it
            raise
        started.set_result(sending)
        return sending

    async def _start_send(self, live: _Live, body: SendBody) -> "Sending":
        session_id = live.session.id
        text, roles = self._address(live.session, body)
        # The chat's first message names it: that change moves it up the list in the same event.
        self._touch(live, listed=not self._will_title(live, text))
        busy = bool(live.active or live.queued or live.interrupting or live.queueing)
        if busy and body.mode == "interrupt":
            await self._interrupt(live)
            self._check_open(live)
            busy = False
        t = now()
        # Kept as typed, mentions included: the other roles read whom it was for.
        parts: list[Any] = [TextPart(text=body.text)] + list(body.images)
        user = Message(id=new_id("msg"), session_id=session_id, role="user", parts=parts,
                       status="queued" if busy else "completed", created_at=t, updated_at=t,
                       client_id=body.client_id)
        runs = [Run(id=new_id("run"), session_id=session_id, message_id=new_id("msg"), skill=r.id,
                    status="queued") for r in roles]
        if busy:
            await self._queue(live, user, runs, roles)
            return Sending(self, live, user, runs, text, None)
        # The runs start while the message commits, so the model request does not wait for
        # the disk; they say nothing until it is saved, and vanish if it is not.
        self._register_runs(runs)
        may_speak: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        agents = self._start(live, user, runs, roles, may_speak=may_speak)
        saving = self._save_in_order(live, user)
        saving.add_done_callback(lambda done: self._after_commit(live, user, agents, done, may_speak))
        return Sending(self, live, user, runs, text, saving)

    async def _queue(self, live: _Live, user: Message, runs: list[Run], roles: list[SkillLike]) -> None:
        """Save a message sent while runs are busy, then queue it (or start it, if they ended meanwhile)."""
        live.queueing += 1
        try:
            await asyncio.shield(self._save_in_order(live, user))
        finally:
            live.queueing -= 1
        self._register_runs(runs)
        self.bus.publish(live.session.id, "message.created", MessageCreatedData(message=user))
        queued = _Queued(user, runs, roles)
        live.queued.append(queued)
        for run in runs:
            self.bus.publish(live.session.id, "run.status", RunStatusData(run=run))
        if live.deleted or self._closing:  # it came while they began: it will never run
            for run in list(runs):
                self._cancel_queued_run(live, queued, run)
        self._start_next(live)  # the busy runs may have ended while it was saved

    def _save_in_order(self, live: _Live, user: Message) -> asyncio.Task[None]:
        """Save a user's message once the ones sent before it are: two sends at once (two tabs, a
        script) are stored, announced and queued in the order they came."""
        task = asyncio.get_running_loop().create_task(self._save_after(live, live.last_save, user),
                                                      name=f"opencode-save-{user.id}")
        live.last_save = task
        return task

    async def _save_after(self, live: _Live, previous: asyncio.Task[None] | None, user: Message) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        # One loop turn after the runs start: their model requests are written in that turn
        # (before 3.12 aiohttp writes a body from a task of its own), before the store's work.
        await asyncio.sleep(0)
        # The window takes a message as its row is queued (a reply: as it is announced), so a
        # snapshot lists messages in the order the store pages them.
        self._remember(live, user)
        try:
            await self.store.save_message(user)
        except BaseException:
            live.recent.pop(user.id, None)
            raise

    def _register_runs(self, runs: Sequence[Run]) -> None:
        loop = asyncio.get_running_loop()
        for run in runs:
            self._run_done[run.id] = loop.create_future()

    def _after_commit(self, live: _Live, user: Message, agents: Sequence[AgentRun],
                      saving: asyncio.Future[None], may_speak: asyncio.Future[bool]) -> None:
        """The user's message is committed (announce it, then its runs, in that order) or it is
        not (its runs are dropped unseen and the sender gets the store's error)."""
        saved = not saving.cancelled() and saving.exception() is None
        if saved:
            self.bus.publish(user.session_id, "message.created", MessageCreatedData(message=user))
            for agent in agents:
                agent.announce()
        else:
            live.recent.pop(user.id, None)
            for agent in agents:
                live.recent.pop(agent.message.id, None)
                active = live.active.get(agent.run.id)
                if active is not None:  # it ends unseen: `may_speak` tells it so
                    self._stop(active, "aborted")
        may_speak.set_result(saved)

    def _address(self, session: Session, body: SendBody) -> tuple[str, list[SkillLike]]:
        """Which roles answer: the leading `@role` mentions ("@echo @assistant hi": both, the
        text "hi"), else the body's skills, else the session's roles."""
        ids: list[str] = list(body.skills)
        text, mentioned = self._mentions(body.text)
        if (mention := ROLE_MENTION.match(text)) and (problem := self._mention_problem(mention.group(1))):
            raise BadRequest(problem, code="unknown_role")
        if mentioned:
            ids = mentioned
            text = text or body.text
        if not ids:
            ids = [s for s in session.skills if self._is_role(s)]
        if not ids:
            ids = [self.default_role if self.skills.get(self.default_role) else "echo"]
        roles: list[SkillLike] = []
        for sid in dict.fromkeys(ids):
            skill = self.skills.get(sid)
            if skill is None or skill.kind != "role":
                raise BadRequest(f"{sid} is not a role; roles: {', '.join(r.id for r in self.skills.roles())}",
                                 code="unknown_role")
            roles.append(skill)
        if not text.strip() and not body.images:
            raise BadRequest("the message is empty; type something to send", code="empty_message")
        return text, roles

    def _mentions(self, text: str) -> tuple[str, list[str]]:
        """The text after its leading `@role` mentions, and those roles."""
        mentioned: list[str] = []
        while (mention := ROLE_MENTION.match(text)) and self._is_role(mention.group(1)):
            mentioned.append(mention.group(1))
            text = text[mention.end():]
        return text, mentioned

    def _mention_problem(self, name: str) -> str | None:
        """Why a leading `@name` that is no role looks like a mistake: a tool skill, or a role's
        name mistyped. Anything else ("@torch.compile is slow") is the message's own text."""
        roles = [r.id for r in self.skills.roles()]
        skill = self.skills.get(name)
        if skill is not None:
            return f"@{name} is a tool skill, not a role; roles: {', '.join(roles)}"
        close = difflib.get_close_matches(name, roles, n=1, cutoff=0.8)
        return f"no role @{name}; did you mean @{close[0]}?" if close else None

    def _is_role(self, skill_id: str) -> bool:
        skill = self.skills.get(skill_id)
        return skill is not None and skill.kind == "role"

    @staticmethod
    def _will_title(live: _Live, text: str) -> bool:
        """Whether a send of `text` names the chat (`_auto_title`) once its message is saved."""
        return live.session.title == DEFAULT_TITLE and bool(text.strip()) and not live.deleted

    async def _auto_title(self, live: _Live, text: str) -> None:
        """Name a new chat after its first message. Best effort: the message is already sent, so a
        title that cannot be saved is logged, not the send's answer."""
        if self._will_title(live, text):
            title = " ".join(text.split())[:60]
            try:
                await self.patch(live.session.id, SessionPatch(title=title))
            except OpencodeError as exc:
                log.error("could not name session %s: %s", live.session.id, exc.message)

    def _tool_skills(self, session: Session) -> list[SkillLike]:
        out = []
        for sid in session.skills:
            skill = self.skills.get(sid)
            if skill is not None and skill.kind == "tools":
                out.append(skill)
        return out

    def _start(self, live: _Live, user: Message, runs: list[Run], roles: list[SkillLike], *,
               may_speak: asyncio.Future[bool] | None = None, before: list[Message] | None = None) -> list[AgentRun]:
        """Start `user`'s runs; `before`: the history to give them (a retry's: what came before
        its prompt), else the window's."""
        if user.status == "queued":
            user.status = "completed"
            user.updated_at = now()
            self.store.queue_message(user)
            self.bus.publish(live.session.id, "message.created", MessageCreatedData(message=user))
        # The window as it is now (a reply still streaming, a message queued behind this one:
        # `choose_history` leaves them out).
        history = [m for m in (live.recent.values() if before is None else before) if m.id != user.id]
        tool_skills = self._tool_skills(live.session)
        prompt = self._mentions(user.text())[0] or None
        agents = [AgentRun(self.deps, RunInput(
            session=live.session, run=run, user_message=user, role=role, tool_skills=tool_skills,
            history=history, prompt=prompt, spent=lambda: self._spent(live), current=lambda: live.session,
            running=lambda: len(live.active), placed=lambda message: self._remember(live, message),
            turns=live.turns, has_older=live.has_more, load_older=lambda count: self._older(live, count)),
            may_speak=may_speak) for run, role in zip(runs, roles)]
        # All of them active before any starts: on Python 3.12+ a task starts eagerly, and its
        # first turn shares the budget among the runs active then (`running`): the first of three
        # roles took the whole of what was left, the second half of it.
        actives = [_Active(agent.run, agent) for agent in agents]
        live.active.update((active.run.id, active) for active in actives)
        for active in actives:
            active.task = start_eagerly(self._execute(live, active.agent), name=f"opencode-{active.run.id}")
        return agents

    async def _older(self, live: _Live, count: int) -> tuple[list[Message], bool]:
        """Up to `count` of the messages before the in-memory window, oldest first, and whether
        there are more; each is read from the store once per loaded session."""
        async with live.reading_older:
            if live.older_more is None:
                live.older_more = live.has_more
            while len(live.older) < count and live.older_more:
                first = live.older[0] if live.older else next(iter(live.recent.values()), None)
                if first is None:
                    break
                page, live.older_more = await self.store.get_messages(live.session.id, before=first.id,
                                                                      limit=OLDER_PAGE)
                live.older[:0] = page
            return live.older[-count:], live.older_more or len(live.older) > count

    async def _execute(self, live: _Live, agent: AgentRun) -> Message:
        active = live.active.get(agent.run.id)
        if active is not None:
            active.started = True
        try:
            if active is not None and active.stop_at_start:
                raise asyncio.CancelledError
            message = await agent.execute()
        except asyncio.CancelledError:
            # Cancelled before its first step, or cancelled again while finishing.
            await asyncio.shield(agent.finish(agent.final_status_on_cancel, None))
            message = agent.message
        finally:
            live.active.pop(agent.run.id, None)
            self._settle(agent.run.id, None if agent.dropped else agent.message)
        # A dropped run left `recent` in `_after_commit` and has no usage to count.
        if not agent.dropped and message.usage and (message.usage.input_tokens or message.usage.output_tokens):
            self._add_usage(live, message)
        self._start_next(live)
        return message

    def _check_open(self, live: _Live) -> None:
        """Refuse a send to a session being deleted, or while the service shuts down."""
        if live.deleted:
            raise NotFound(f"session {live.session.id} was deleted; start a new chat")
        if self._closing:
            raise Conflict("the server is shutting down; send the message again once it is back",
                           code="shutting_down")

    async def retry(self, session_id: str, message_id: str) -> SendResult:
        """Answer a reply's prompt again with the reply's role (after a provider error, a stop, or
        an answer the person wants redone): a new reply to the same message, as the model saw it
        then. The earlier reply stays; a model later reads only the newest of a role's replies to
        a prompt. Only while nothing runs, and only for a prompt among the messages in memory."""
        live = await self._get_live(session_id)
        self._check_open(live)
        reply = live.recent.get(message_id)
        if reply is None or reply.role != "assistant":
            raise NotFound(f"no reply {message_id} among this chat's last {self.recent_limit} messages; "
                           "send the message again instead")
        if reply.status in ("streaming", "queued"):
            raise Conflict(f"reply {message_id} is still running; stop it first", code="busy")
        prompt = live.recent.get(reply.reply_to or "")
        if prompt is None:
            raise NotFound(f"the message reply {message_id} answers is not among this chat's last "
                           f"{self.recent_limit} messages; send it again instead")
        role = self.skills.get(reply.skill or "")
        if role is None or role.kind != "role":
            raise BadRequest(f"role {reply.skill} is gone; roles: {', '.join(r.id for r in self.skills.roles())}",
                             code="unknown_role")
        if live.active or live.queued or live.interrupting or live.queueing:
            raise Conflict("replies are running in this chat: retry once they end (or stop them)", code="busy")
        before = list(itertools.takewhile(lambda m: m.id != prompt.id, live.recent.values()))
        self._touch(live)
        run = Run(id=new_id("run"), session_id=session_id, message_id=new_id("msg"), skill=role.id, status="queued")
        self._register_runs([run])
        self._start(live, prompt, [run], [role], before=before)
        return SendResult(message_id=prompt.id, run_id=run.id, run_ids=[run.id])

    def _start_next(self, live: _Live) -> None:
        """Start the oldest queued message once nothing runs and no interrupt is waiting."""
        if not live.active and live.queued and not live.interrupting and not self._closing and not live.deleted:
            nxt = live.queued.popleft()
            self._start(live, nxt.user_message, nxt.runs, nxt.roles)

    def _spent(self, live: _Live) -> Usage:
        """The session's usage: its finished replies (in its totals) plus what its running ones used so far."""
        total = live.session.usage
        for active in live.active.values():
            if active.agent.message.usage:
                total = total + active.agent.message.usage
        return total

    def _touch(self, live: _Live, *, listed: bool = True) -> None:
        """A message was sent or a reply asked again: the chat moves to the top of the list of
        sessions (ordered by `updated_at`), whether or not its reply reports usage. Synchronous
        right after `_check_open`: a delete begun later orders its row removal behind this one.
        One list event a send (`listed`: none when the chat's naming, just after, says it)."""
        live.session = live.session.model_copy(update={"updated_at": now()})
        try:
            self.store.queue_session(live.session)
        except OpencodeError as exc:  # the order of a list is not worth refusing the message for
            log.error("could not save the activity of session %s: %s", live.session.id, exc.message)
        if listed:
            self._listed(live.session)

    def _add_usage(self, live: _Live, message: Message) -> None:
        """Add a reply's usage to its session's totals. The row joins the next group commit (a
        failed one is logged by the store): nothing waits on the disk while the next message comes in.
        Not told to the list room: the list shows a chat's last activity, which its send told it
        already, not its usage (a listing read later has it)."""
        session = live.session.model_copy(update={"usage": live.session.usage + (message.usage or Usage()),
                                                  "updated_at": now()})
        live.session = session
        try:
            self.store.queue_session(session)
        except OpencodeError as exc:  # usage totals are best effort after the reply is saved
            log.error("could not save usage of session %s: %s", session.id, exc.message)
        self.bus.publish(session.id, "usage.updated", UsageUpdatedData(usage=session.usage, message_id=message.id))

    # ------------------------------------------------------------------ abort

    async def abort(self, session_id: str, run_id: str | None = None, skill: str | None = None) -> AbortResult:
        live = await self._get_live(session_id)
        if run_id is None and skill is None:
            return AbortResult(aborted=self._abort_all(live, "aborted"))
        aborted = []
        matched = False
        for active in list(live.active.values()):
            if (run_id and active.run.id == run_id) or (skill and active.run.skill == skill):
                matched = True
                if self._stop(active, "aborted"):
                    aborted.append(active.run.id)
        if run_id and not matched and not any(r.id == run_id for q in live.queued for r in q.runs):
            raise NotFound(f"no active run {run_id} in session {session_id}")
        for q in list(live.queued):
            for r in [r for r in q.runs if r.id == run_id or r.skill == skill]:
                self._cancel_queued_run(live, q, r)
                aborted.append(r.id)
        return AbortResult(aborted=aborted)

    async def _interrupt(self, live: _Live) -> None:
        """Abort every run and every message queued so far, then wait (briefly) for the stopped
        replies to settle, so the next request's history has what the model had said when it
        was cut off, after the prompt it answered. Messages queued meanwhile wait for this one;
        runs another interrupt starts meanwhile are stopped too (the newest interrupt wins)."""
        live.interrupting += 1
        try:
            self._abort_all(live, "aborted")
            deadline = time.monotonic() + INTERRUPT_SETTLE_SECONDS
            while live.active and (left := deadline - time.monotonic()) > 0:
                self._abort_all_active(live, "aborted")
                await asyncio.wait([a.task for a in live.active.values()], timeout=left)
        finally:
            live.interrupting -= 1

    def _abort_all(self, live: _Live, status: str) -> list[str]:
        aborted = self._abort_all_active(live, status)
        for q in list(live.queued):
            for r in list(q.runs):
                self._cancel_queued_run(live, q, r)
                aborted.append(r.id)
        return aborted

    def _abort_all_active(self, live: _Live, status: str) -> list[str]:
        """Cancel every running run (one already stopping is left to finish its stop)."""
        return [active.run.id for active in list(live.active.values()) if self._stop(active, status)]

    @staticmethod
    def _stop(active: _Active, status: str) -> bool:
        """Stop a run as `status`; one already stopping is left to finish its stop. False for a
        run that has already finished and is saving its reply: that one ends as it is."""
        if active.agent.stopping:  # every stop goes through here
            return True
        if active.agent.finishing:
            return False
        active.agent.stopping = True
        active.agent.final_status_on_cancel = status
        if active.started:
            active.task.cancel()
        else:
            active.stop_at_start = True
        return True

    def _settle(self, run_id: str, message: Message | None) -> None:
        done = self._run_done.get(run_id)
        if done is not None and not done.done():
            done.set_result(message)
        # Keep recent outcomes for late waiters; forget the oldest finished ones.
        if len(self._run_done) > 2000:
            for rid in [r for r, f in self._run_done.items() if f.done()][:1000]:
                del self._run_done[rid]

    async def wait_runs(self, session_id: str, run_ids: Sequence[str]) -> list[Message]:
        """Wait until these runs end; their final replies (runs aborted while queued have none)."""
        await self._get_live(session_id)
        futures = [self._run_done[r] for r in run_ids if r in self._run_done]
        results = await asyncio.gather(*(asyncio.shield(f) for f in futures))
        return [m for m in results if m is not None]

    def _cancel_queued_run(self, live: _Live, queued: _Queued, run: Run) -> None:
        self._settle(run.id, None)
        index = queued.runs.index(run)
        queued.runs.pop(index)
        queued.roles.pop(index)
        run.status = "aborted"
        self.bus.publish(live.session.id, "run.status", RunStatusData(run=run))
        if not queued.runs:
            live.queued.remove(queued)
            queued.user_message.status = "aborted"
            queued.user_message.updated_at = now()
            self.store.queue_message(queued.user_message)
            self.bus.publish(live.session.id, "message.created", MessageCreatedData(message=queued.user_message))

    async def wait_idle(self, session_id: str) -> None:
        """Wait until the session has no active or queued runs (the node and the CLI use this)."""
        live = await self._get_live(session_id)
        while live.active or live.queued:
            await asyncio.gather(*(a.task for a in list(live.active.values())), return_exceptions=True)
            if not live.active and live.queued:
                await asyncio.sleep(0.01 if live.interrupting else 0)

    async def shutdown(self) -> None:
        """Stop every run as `interrupted` (the service is going away, not the user's choice)."""
        self._closing = True
        tasks = []
        for live in self._live.values():
            for active in live.active.values():
                tasks.append(active.task)
            self._abort_all(live, "interrupted")
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in list(self.deps.background):
            task.cancel()
        await asyncio.gather(*self.deps.background, return_exceptions=True)


def join_replies(replies: Sequence[Message]) -> str:
    """Several roles' replies as one text, each labelled; a single reply stays as it is."""
    texts = [(m.skill or "assistant", m.text().strip()) for m in replies if m.text().strip()]
    if len(texts) == 1:
        return texts[0][1]
    return "\n\n".join(f"[{skill}]\n{text}" for skill, text in texts)
