"""One role's reply to one user message, as a plain loop: stream, run tools, stream again.

`AgentRun.execute` publishes the assistant message, streams the model's text into the bus,
runs the tool calls it asks for (several at once, each through the permission gate; any failure
of one is its error result, and none outlives the run; a call whose arguments are not JSON, nest
too deep or are too big is not run and the model is told), feeds the results back, and loops
until a final answer or `max_turns`. It always ends with a final status: `completed`,
`aborted` (task cancelled), `interrupted` (service shutting down) or `error` (with the
provider's message); a reply cut at its token limit or stopped by the provider's filter says
so at its end. The streaming reply is checkpointed to the store every `checkpoint_interval`.
The `echo` engine streams the user's text back word by word, for demos and tests.
Imports protocol, bus, store, tools, providers.base, permissions, ui_requests and errors.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Protocol, Sequence, TypeVar

from .bus import Bus, current_run, current_session, debug_line, encode_str
from .errors import BudgetExceeded, ContextExceeded, OpencodeError
from .permissions import PermissionGate
from .protocol import (
    Budget,
    MAX_TEXT_CHARS,
    ImagePart,
    Message,
    MessageCompletedData,
    MessageCreatedData,
    ModelCaps,
    Run,
    RunStatusData,
    Session,
    TextPart,
    ToolCallPart,
    ToolFinishedData,
    ToolResultPart,
    ToolStartedData,
    Usage,
    cache_note,
    now,
)
from .providers.profiles import cost_of
from .providers.base import REASONING, ChatMessage, ChatRequest, Finish, Provider, TextDelta, ToolCallReady, UsageReport
from .store import Store
from .tools import Tool, ToolOutput
from .ui_requests import UiBroker

log = logging.getLogger("opencode.agent")

# Tokens kept free for the reply when trimming history to the model's context.
REPLY_RESERVE_TOKENS = 4096
# A tool result cut to fit the context keeps at least its start.
MIN_RESULT_CHARS = 200
# With less than this much of its budget left, a session's next reply is capped at what is left.
BUDGET_CAP_TOKENS = 4096
RAISE_BUDGET = "raise it with the panel's Budget button (or PATCH the session's `budget`) to continue"
# Older messages than the session's in-memory window are read in pages of this many, and at most
# this many in all, while the model's context has room for them.
OLDER_PAGE = 100
MAX_OLDER_MESSAGES = 250
# A tool call's arguments may nest at most this deep, and take at most as many characters as JSON
# as a user's message. Deeper JSON is valid and the providers' parsers take it, but pydantic will
# not serialize past its own depth (about 255): the call's event, the reply's save and the next
# request would fail. A call past either limit is refused before anything holds its arguments.
MAX_ARGUMENT_DEPTH = 64
MAX_ARGUMENT_CHARS = MAX_TEXT_CHARS


@dataclass
class ResolvedModel:
    provider: Provider
    model: str
    caps: ModelCaps


class ModelResolver(Protocol):
    async def resolve(self, provider_name: str | None, model: str | None) -> ResolvedModel:
        """The provider and model a session uses; raises OpencodeError with a fix when it can't."""
        ...


class SkillLike(Protocol):
    id: str
    name: str
    kind: str
    engine: str
    instructions: str
    tools: list[Tool]


@dataclass
class AgentDeps:
    bus: Bus
    store: Store
    gate: PermissionGate
    ui: UiBroker
    models: ModelResolver
    checkpoint_interval: float = 0.5
    echo_delay: float = 0.02
    max_turns: int = 12
    extra_tools: list[Tool] = field(default_factory=list)
    # Scrubs configured keys out of error text before it is stored or sent.
    redact: Callable[[str], str] = lambda text: text
    # Background saves of finished replies the store refused; the service cancels them on close.
    background: set[asyncio.Task[None]] = field(default_factory=set)


@dataclass
class RunInput:
    session: Session
    run: Run
    user_message: Message
    role: SkillLike
    tool_skills: Sequence[SkillLike]
    history: list[Message]
    # The session's usage now, its replies still running included (for the budget).
    spent: Callable[[], Usage]
    # The session as it is now: a budget or a permission changed while the run goes applies from
    # its next request or tool call. None: `session`, as it was when the run started.
    current: Callable[[], Session] | None = None
    # How many of the session's replies run now, this one included: they share what is left of
    # the budget.
    running: Callable[[], int] = lambda: 1
    # The message's text without its leading `@role` mentions (what the `echo` engine repeats).
    prompt: str | None = None
    # Called with the reply as its first row is queued for the store: the session's in-memory
    # window takes it then, so the window and the store keep messages in the same order.
    placed: Callable[[Message], None] = lambda message: None
    turns: TurnCache | None = None  # the session's, shared by its runs
    # Messages before `history` (the session's in-memory window), when the context has room for
    # them: `load_older(n)` gives the last `n` of them (oldest first) and whether there are more.
    has_older: bool = False
    load_older: Callable[[int], Awaitable[tuple[list[Message], bool]]] | None = None


class _ToolContext:
    """What a tool sees of its run (see `core.tools.ToolContext`)."""

    def __init__(self, run: "AgentRun", skill: str) -> None:
        self.session_id = run.input.session.id
        self.run_id = run.input.run.id
        self.skill = skill
        self.run_skills = (run.input.role.id, *(s.id for s in run.input.tool_skills))
        self._ui = run.deps.ui

    def log(self, level: str, message: str) -> None:
        number = logging.getLevelName(level.upper())
        logging.getLogger("opencode.tools").log(number if isinstance(number, int) else logging.INFO, message)

    async def ui_request(self, action: str, payload: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        return await self._ui.request(self.session_id, self.run_id, action, payload, timeout)

    async def emit_status(self, message: str) -> None:
        logging.getLogger("opencode.tools").info(message)


class AgentRun:
    """One role's reply. With `may_speak`, the run starts work (the model request goes out) at
    once but says nothing until that future resolves: True once the caller has announced it
    (`announce()`, after the user's message is committed), False when it is to vanish without a
    word (the user's message could not be saved)."""

    def __init__(self, deps: AgentDeps, run_input: RunInput, *,
                 may_speak: asyncio.Future[bool] | None = None) -> None:
        self.deps = deps
        self.input = run_input
        self.run = run_input.run
        self.message = Message(
            id=run_input.run.message_id, session_id=run_input.session.id, role="assistant",
            skill=run_input.role.id, run_id=run_input.run.id, status="streaming",
            created_at=now(), updated_at=now(), usage=Usage(), reply_to=run_input.user_message.id,
        )
        self.final_status_on_cancel = "aborted"
        # Set by whoever stops the run, before cancelling its task (Python 3.10 cannot ask the task).
        self.stopping = False
        # `MessageDeltaData` up to its text, encoded once: a delta's data is this plus its text.
        self._delta_head = (f'{{"message_id":{encode_str(self.message.id)},"run_id":{encode_str(self.run.id)},'
                            f'"skill":{encode_str(run_input.role.id)},"text":')
        self._announced = False
        self._may_speak = may_speak
        self.dropped = False  # ended without a word: its user message was never saved
        self._finished = False
        self._last_checkpoint = time.monotonic()

    # ------------------------------------------------------------------ lifecycle

    async def execute(self) -> Message:
        """Run to a final status; the reply is saved and announced whatever happens."""
        current_session.set(self.input.session.id)
        current_run.set(self.run.id)
        status, error, code = "completed", None, None
        try:
            if self._may_speak is None:
                self.announce()
            if self.input.role.engine == "echo":
                await self._echo()
            else:
                await self._agent_loop()
        except _Dropped:
            return self.message
        except asyncio.CancelledError:
            status = self.final_status_on_cancel
        except OpencodeError as exc:
            status, error, code = "error", self.deps.redact(exc.message), exc.code
            log.warning("run %s ended with an error: %s", self.run.id, exc.message)
        except Exception as exc:  # noqa: BLE001 - a bug must still end the run, not leave it working
            status, error, code = "error", self.deps.redact(f"internal error: {type(exc).__name__}: {exc}"), "internal_error"
            log.exception("run %s crashed", self.run.id)
        await asyncio.shield(self.finish(status, error, code))
        return self.message

    @property
    def finishing(self) -> bool:
        """Its final status is set and being saved: there is nothing left to stop, and cancelling
        it now would only cut that save short."""
        return self._finished

    def announce(self) -> None:
        """Publish the reply and queue its first row (once); the model request does not wait for
        the commit (the group commit keeps it after the user's message, and checkpoints follow)."""
        if self._announced:
            return
        self.run.status = "working"
        self._announced = True
        self.deps.bus.publish(self.message.session_id, "message.created", MessageCreatedData(message=self.message))
        self.deps.bus.publish(self.message.session_id, "run.status", RunStatusData(run=self.run))
        self.input.placed(self.message)
        self.deps.store.queue_message(self.message)

    async def finish(self, status: str, error: str | None, code: str | None = None) -> None:
        """Give the reply its final status, save it, announce it. Runs once, even if cancelled early."""
        if self._finished:
            return
        self._finished = True
        if not await self._allowed_to_speak():
            return
        if not self._announced:
            self._announced = True
            self.input.placed(self.message)
            self.deps.bus.publish(self.message.session_id, "message.created", MessageCreatedData(message=self.message))
        for part in self.message.parts:
            if isinstance(part, ToolCallPart) and part.status in ("pending", "running"):
                part.status = "aborted"
        self.message.status = status  # type: ignore[assignment]
        self.message.error, self.message.error_code = error, code
        self.message.updated_at = now()
        self.run.status = status  # type: ignore[assignment]
        self.run.error, self.run.error_code = error, code
        try:
            await self.deps.store.save_message(self.message)
        except OpencodeError as exc:
            log.error("could not save the final reply of run %s (will retry): %s", self.run.id, exc.message)
            _save_later(self.deps, self.message)
        sid = self.message.session_id
        self.deps.bus.publish(sid, "message.completed", MessageCompletedData(message=self.message))
        self.deps.bus.publish(sid, "run.status", RunStatusData(run=self.run))

    async def _allowed_to_speak(self) -> bool:
        """Wait, if need be, for the verdict on the user's message; False: this run is dropped."""
        if self._announced or self._may_speak is None:
            return True
        if await asyncio.shield(self._may_speak):
            self.announce()  # the caller did already; once is once
            return True
        self.dropped = True
        return False

    async def _before_first_word(self) -> None:
        if not await self._allowed_to_speak():
            raise _Dropped()

    # ------------------------------------------------------------------ streaming text

    def _append_text(self, text: str) -> None:
        parts = self.message.parts
        if parts and isinstance(parts[-1], TextPart):
            parts[-1].text += text
        else:
            parts.append(TextPart(text=text))
        # The hot path: exactly `MessageDeltaData`'s fields, encoded by hand, no model round trip.
        self.deps.bus.publish_json(self.message.session_id, "message.delta",
                                   f"{self._delta_head}{encode_str(text)}}}")
        self._maybe_checkpoint()

    def _maybe_checkpoint(self) -> None:
        t = time.monotonic()
        if t - self._last_checkpoint >= self.deps.checkpoint_interval:
            self._last_checkpoint = t
            self.message.updated_at = now()
            self.deps.store.queue_message(self.message)

    async def _echo(self) -> None:
        await self._before_first_word()
        text = self.input.prompt if self.input.prompt is not None else self.input.user_message.text()
        words = text.split(" ")
        for i, word in enumerate(words):
            self._append_text(word if i == 0 else " " + word)
            await asyncio.sleep(self.deps.echo_delay)

    # ------------------------------------------------------------------ the agent loop

    async def _agent_loop(self) -> None:
        resolved = await self.deps.models.resolve(self.input.session.provider, self.input.session.model)
        tools = self._tools()
        if tools and not resolved.caps.tools:
            log.warning("model %s has no tool calling; running without tools", resolved.model)
            tools = []
        caps = resolved.caps
        images = sum(isinstance(p, ImagePart) for p in self.input.user_message.parts)
        if images and not caps.vision:
            log.warning("model %s does not take images: the message's %d image(s) are left out of its request "
                        "(declare vision in the provider's models if it does)", resolved.model, images)
        if self.input.session.budget.max_cost is not None and not (caps.input_price or caps.output_price):
            log.warning("model %s has no price, so its replies cost $0 against this session's money budget; "
                        "set its prices in the provider's models (or use a token budget)", resolved.model)
        by_name = {t.name: (skill, t) for skill, t in tools}
        system = self._system_prompt()
        specs = [t.spec() for _, t in tools]
        # The instructions and the tool schemas take their share of the context first, and a
        # reply the dialect asks room for beyond the usual reserve (Anthropic's max_tokens).
        fixed = text_tokens(system) + sum(t.size for t in specs) // 4
        fixed += max(resolved.provider.reply_tokens(resolved.model) - REPLY_RESERVE_TOKENS, 0)
        context = max(resolved.caps.context_tokens - fixed, 0)
        history = await self._history(context, resolved.caps.vision)
        prompt_at = len(history) - 1  # this run's prompt; its tool turns follow it
        if history:
            _check_prompt_fits(history[prompt_at], context, resolved.model, resolved.caps.context_tokens)
        target = f"{resolved.provider.profile.name}/{resolved.model}"
        for turn in range(1, self.deps.max_turns + 1):
            if turn > 1:  # tool results may have outgrown the context
                history, prompt_at = fit_to_context(history, prompt_at, context)
            self._check_budget()
            cap = self._reply_cap(resolved.caps)
            # A request's own list: later turns append to `history`.
            request = ChatRequest(model=resolved.model, system=system, messages=list(history), tools=specs,
                                  max_tokens=cap)
            started = time.monotonic()
            # Two lines a turn for the debug drawer (each is an event every client receives).
            started_line = _LineAfterRequest(self._debug, f"turn {turn}: request to {target} started "
                                             f"({self.input.role.id}, {len(history)} messages, {len(tools)} tools)")
            try:
                turn_parts, calls, finish, usage = await self._stream_turn(resolved, request, by_name)
            finally:
                started_line.write()
            self._debug(f"turn {turn}: {finish} after {(time.monotonic() - started) * 1000:.0f} ms"
                        f"{_usage_note(usage, resolved.caps)}")
            if cap is not None and finish == "length":
                raise BudgetExceeded(f"the reply was cut where this session's budget ran out "
                                     f"({self._budget_text()}); {RAISE_BUDGET}")
            if finish == "refused" or (finish == "length" and not calls):
                self._note_cut(finish, target)
                return
            if not calls:
                return
            if turn == self.deps.max_turns:  # no request follows to read their results
                for call in calls:
                    self._not_run(call, f"not run: this reply reached its limit of "
                                  f"{self.deps.max_turns} model requests")
                break
            for call in calls:
                self._start_call(call)
            results = await gather_all(self._run_call(p, by_name) for p in calls)
            history.append(ChatMessage("assistant", turn_parts))
            history.append(ChatMessage("user", [_seen_by(r, resolved.caps.vision) for r in results]))
        self._append_text(f"\n\n_(stopped after {self.deps.max_turns} turns)_")
        log.warning("run %s reached max_turns=%d", self.run.id, self.deps.max_turns)

    def _note_cut(self, finish: str, target: str) -> None:
        """Say at the end of the reply that it did not end on its own: read as a whole answer, a
        reply cut at its token limit (or stopped by the provider's filter) misleads."""
        if finish == "length":
            self._append_text("\n\n_(cut off: the reply reached its length limit)_")
            log.warning("run %s: the reply from %s reached its length limit (a profile raises it with "
                        "`extra.max_tokens` for Anthropic, `extra.options.num_predict` for Ollama)",
                        self.run.id, target)
        else:
            self._append_text("\n\n_(stopped by the provider: it refused or filtered this reply)_")
            log.warning("run %s: %s stopped the reply (a refusal or its content filter)", self.run.id, target)

    async def _history(self, context_tokens: int, vision: bool) -> list[ChatMessage]:
        """The turns to send: the session's in-memory window, then older messages (read once per
        loaded session) for as long as the context has room, at most `MAX_OLDER_MESSAGES` of them."""
        window, more = self.input.history, self.input.has_older
        messages, asked = window, 0
        args = (self.input.role.id, self.input.user_message, context_tokens)
        while True:
            turns, trimmed = choose_history(messages, *args, vision=vision, cache=self.input.turns)
            if trimmed or not more or self.input.load_older is None or asked >= MAX_OLDER_MESSAGES:
                return turns
            asked = min(asked + OLDER_PAGE, MAX_OLDER_MESSAGES)
            older, more = await self.input.load_older(asked)
            # The window was taken before this run's own reply joined it and pushed one out.
            in_window = {m.id for m in window}
            messages = [m for m in older if m.id not in in_window] + window  # `_was_said` filters both

    async def _stream_turn(self, resolved: ResolvedModel, request: ChatRequest,
                           by_name: dict[str, tuple[str, Tool]]
                           ) -> tuple[list[Any], list[ToolCallPart], str, UsageReport | None]:
        """One model request: its text and calls in the order they streamed (the turn its next
        request sends back), the calls it asks for (placed, not started), why it stopped, its usage.

        The turn's parts are the reply's from `first` on: a turn never continues a text part of an
        earlier one (the first turn starts an empty reply, a later one follows its tool results)."""
        first = len(self.message.parts)
        calls: list[ToolCallPart] = []
        finish, usage = "end of stream", None
        append_text = self._append_text
        task = asyncio.current_task()

        def take_text(text: str) -> bool:
            """Text straight from the network read, once the reply is announced and not stopping."""
            if not self._announced or self.stopping or is_cancelling(task):
                return False
            if text:
                append_text(text)
            return True

        stream = resolved.provider.stream(request, take_text)
        try:
            async for ev in stream:
                if not self._announced:
                    await self._before_first_word()
                if isinstance(ev, TextDelta):  # the hot path first: one check per token
                    if ev.text:
                        append_text(ev.text)
                elif isinstance(ev, ToolCallReady):
                    calls.append(self._place_call(ev, by_name))
                elif isinstance(ev, UsageReport):
                    usage = ev
                    self._add_usage(ev, resolved.caps)
                elif isinstance(ev, Finish):
                    finish = ev.reason
        finally:
            text = self._text_since(first) if usage is None else ""
            if usage is None and (calls or text):
                self._estimate_usage(request, text, resolved.caps)
            # Closing the generator closes the upstream HTTP response at once (abort really stops).
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        return self._turn_since(first), calls, finish, usage

    def _text_since(self, first: int) -> str:
        """The reply's text from its part `first` on (this turn's)."""
        return "".join(p.text for p in self.message.parts[first:] if isinstance(p, TextPart))

    def _turn_since(self, first: int) -> list[Any]:
        """The reply's text and calls from its part `first` on, as the turn its next request sends
        back: the text parts copied (the reply's own may still grow; a turn never changes)."""
        return [TextPart(text=p.text) if isinstance(p, TextPart) else p
                for p in self.message.parts[first:]
                if isinstance(p, ToolCallPart) or (isinstance(p, TextPart) and p.text)]

    def _estimate_usage(self, request: ChatRequest, text: str, caps: ModelCaps) -> None:
        """A turn that answered but ended before its usage report (aborted, cut off): the provider
        charges it all the same, so the session's totals and budget count an estimate of it."""
        tokens_in = text_tokens(request.system) + sum(t.size for t in request.tools) // 4
        tokens_in += sum(estimate_tokens(m.parts) for m in request.messages)
        tokens_out = text_tokens(text) + 1
        # Priced as if all of it went into the provider's cache where a write costs more than
        # input (Anthropic's breakpoints): never less than it may have cost.
        worst = tokens_in if (caps.cache_write_price or 0.0) > caps.input_price else 0
        self._add_usage(UsageReport(tokens_in, tokens_out), caps, cost_of(caps, tokens_in, tokens_out, 0, worst))
        log.info("run %s: no usage reported (the turn ended early); counted an estimate of %d in, %d out",
                 self.run.id, tokens_in, tokens_out)

    def _add_usage(self, ev: UsageReport, caps: ModelCaps, cost: float | None = None) -> None:
        if cost is None:
            cost = cost_of(caps, ev.input_tokens, ev.output_tokens, ev.cache_read_tokens, ev.cache_write_tokens)
        self.message.usage = (self.message.usage or Usage()) + Usage(
            input_tokens=ev.input_tokens, output_tokens=ev.output_tokens, cache_read_tokens=ev.cache_read_tokens,
            cache_write_tokens=ev.cache_write_tokens, cost=cost)

    def _debug(self, message: str) -> None:
        """One of the turn's two lines for the debug drawer (see `debug_line`)."""
        debug_line(self.deps.bus, self.deps.redact, log, message)

    def _session_now(self) -> Session:
        return self.input.current() if self.input.current is not None else self.input.session

    def _check_budget(self) -> None:
        """Before each model request: the session's spending, every role running now included."""
        budget: Budget = self._session_now().budget
        if budget.max_tokens is None and budget.max_cost is None:
            return
        spent = self.input.spent()
        if budget.max_tokens is not None and spent.input_tokens + spent.output_tokens >= budget.max_tokens:
            raise BudgetExceeded(
                f"this session reached its budget of {budget.max_tokens} tokens; {RAISE_BUDGET}")
        if budget.max_cost is not None and spent.cost >= budget.max_cost:
            raise BudgetExceeded(
                f"this session reached its budget of {_dollars(budget.max_cost)}; {RAISE_BUDGET}")

    def _reply_cap(self, caps: ModelCaps) -> int | None:
        """A cap on the next reply's output tokens when less than `BUDGET_CAP_TOKENS` of the
        session's budget are left, so the reply stops where the budget does (None: no cap).

        Why only then: every model takes at least that many output tokens, and a larger cap could
        pass the model's own limit, which providers refuse. The request's input is not known in
        tokens until it is answered, so a session may pass its budget by one request's input.
        Roles answering at once each get their share of what is left, not all of it."""
        budget: Budget = self._session_now().budget
        if budget.max_tokens is None and budget.max_cost is None:
            return None
        spent = self.input.spent()
        rooms = []
        if budget.max_tokens is not None:
            rooms.append(budget.max_tokens - spent.input_tokens - spent.output_tokens)
        if budget.max_cost is not None and caps.output_price > 0:
            rooms.append(int((budget.max_cost - spent.cost) / caps.output_price * 1_000_000))
        if not rooms:  # a money budget on a model without a price: nothing to cap by
            return None
        room = min(rooms) // max(self.input.running(), 1)
        return max(room, 1) if room < BUDGET_CAP_TOKENS else None

    def _budget_text(self) -> str:
        budget: Budget = self._session_now().budget
        parts = ([f"{budget.max_tokens} tokens"] if budget.max_tokens is not None else []) + (
            [_dollars(budget.max_cost)] if budget.max_cost is not None else [])
        return " and ".join(parts)

    def _tools(self) -> list[tuple[str, Tool]]:
        out: list[tuple[str, Tool]] = []
        seen: set[str] = set()
        for skill in self.input.tool_skills:
            for t in skill.tools:
                if t.name not in seen:
                    seen.add(t.name)
                    out.append((skill.id, t))
        # `read_skill_reference` only when some active skill has reference files to read.
        with_refs = any(getattr(s, "references", None) for s in (self.input.role, *self.input.tool_skills))
        for t in self.deps.extra_tools if with_refs else []:
            if t.name not in seen:
                seen.add(t.name)
                out.append(("opencode", t))
        return out

    def _system_prompt(self) -> str:
        sections = [self.input.role.instructions.strip()]
        for skill in self.input.tool_skills:
            if skill.instructions.strip():
                sections.append(f"## Skill: {skill.name}\n\n{skill.instructions.strip()}")
        return "\n\n".join(s for s in sections if s)

    # ------------------------------------------------------------------ tools

    def _place_call(self, call: ToolCallReady, by_name: dict[str, tuple[str, Tool]]) -> ToolCallPart:
        """A call as the model finished asking for it: `pending` in the reply's parts, announced.

        Why now, not once the turn's stream ends: a model may go on talking after a call
        (Anthropic streams text, tool_use, text, tool_use). Placed where it streamed, the call
        ends the text part before it, so what follows starts a new one after it (`_append_text`
        does no more per token), and the panel, told now, does the same."""
        skill = by_name.get(call.name, ("unknown", None))[0]
        arguments, provider_data = checked_call(call)
        part = ToolCallPart(id=call.id, name=call.name, arguments=arguments, skill=skill, provider_data=provider_data)
        self.message.parts.append(part)
        self._announce_call(part)
        return part

    def _start_call(self, part: ToolCallPart) -> None:
        part.status, part.started_at = "running", now()
        self._announce_call(part)

    def _announce_call(self, part: ToolCallPart) -> None:
        self.deps.bus.publish(self.message.session_id, "tool.started", ToolStartedData(
            message_id=self.message.id, run_id=self.run.id, call=part))

    def _not_run(self, part: ToolCallPart, reason: str) -> None:
        """A call the model asked for that will not run (its result could reach no one): shown,
        stored with its reason, so the history stays a call and its result."""
        part.status = "aborted"
        result = ToolResultPart(tool_call_id=part.id, name=part.name, content=reason, is_error=True)
        self.message.parts.append(result)
        self.deps.bus.publish(self.message.session_id, "tool.finished", ToolFinishedData(
            message_id=self.message.id, run_id=self.run.id, call=part, result=result))

    async def _run_call(self, part: ToolCallPart, by_name: dict[str, tuple[str, Tool]]) -> ToolResultPart:
        t0 = time.monotonic()
        try:
            output = await self._call_output(part, by_name)
        except Exception as exc:  # noqa: BLE001 - e.g. the gate's audit write failed: the model is told
            log.error("tool %s could not be run: %s", part.name, type(exc).__name__, exc_info=True)
            # Only the exception's type: its text may hold a secret (the log is redacted, this is not).
            output = ToolOutput(f"{part.name} could not be run: an internal error ({type(exc).__name__}; "
                                "the server log has the details)", is_error=True)
            part.status = "error"
        part.duration_ms = round((time.monotonic() - t0) * 1000, 1)
        log.info("tool %s %s in %.0f ms", part.name, part.status, part.duration_ms)
        result = ToolResultPart(tool_call_id=part.id, name=part.name, content=output.content,
                                is_error=output.is_error, images=output.images)
        self.message.parts.append(result)
        self.deps.bus.publish(self.message.session_id, "tool.finished", ToolFinishedData(
            message_id=self.message.id, run_id=self.run.id, call=part, result=result))
        self._maybe_checkpoint()
        return result

    async def _call_output(self, part: ToolCallPart, by_name: dict[str, tuple[str, Tool]]) -> ToolOutput:
        """Check and run one call; sets its status. A tool's own failure is an error output."""
        entry = by_name.get(part.name)
        invalid = (part.provider_data or {}).get("invalid_arguments")
        if invalid is not None:
            part.status = "error"
            return ToolOutput(f"your arguments for {part.name} were not valid JSON ({str(invalid)[:200]!r}); "
                              "call the tool again with a JSON object", is_error=True)
        refused = (part.provider_data or {}).get("refused_arguments")
        if refused is not None:
            part.status = "error"
            return ToolOutput(f"your arguments for {part.name} were not taken: {refused}; "
                              "call the tool again with smaller, flatter arguments", is_error=True)
        if entry is None:
            part.status = "error"
            return ToolOutput(f"unknown tool {part.name!r}; available: {', '.join(sorted(by_name))}", is_error=True)
        skill, tool = entry
        allowed, reason = await self.deps.gate.check(self._session_now(), self.run.id, skill, tool, part.arguments)
        if not allowed:
            part.status = "denied"
            return ToolOutput(f"not run: {reason}", is_error=True)
        log.info("tool %s(%s)", tool.name, _short(part.arguments))
        output = await tool.call(_ToolContext(self, skill), part.arguments)
        part.status = "error" if output.is_error else "completed"
        return output


T = TypeVar("T")


async def gather_all(aws: Iterable[Awaitable[T]]) -> list[T]:
    """Run `aws` at once and return their results in order; if one fails (or this task is
    cancelled), cancel the others and wait for them before raising.

    Why not `asyncio.gather`: when one fails it raises at once and leaves the others running, so
    a tool call could go on (and act) after its run ended. `TaskGroup` does this on 3.11+ only.
    """
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class _LineAfterRequest:
    """A log line written just after the model request leaves rather than just before it.

    Each log line is an event sent to every client at once; written in front of the request,
    its socket writes and the clients it wakes delay the request. `call_later(0)` runs after
    what the loop has already scheduled, the request's own write among it, and `write()` (at
    the end of the turn, whatever happens) writes it then if it has not been, so it always
    precedes the turn's later lines. Never written twice.
    """

    def __init__(self, emit: Callable[..., None], *args: Any) -> None:
        self._line: tuple[Callable[..., None], tuple[Any, ...]] | None = (emit, args)
        self._timer = asyncio.get_running_loop().call_later(0, self.write)

    def write(self) -> None:
        if self._line is not None:
            emit, args = self._line
            self._line = None
            self._timer.cancel()
            emit(*args)


class _Dropped(Exception):
    """The run's user message was not saved: end without publishing or storing anything."""


# Final replies whose save failed (disk full, locked database): retried until the cause goes.
_RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def _save_later(deps: AgentDeps, message: Message) -> None:
    """Keep trying to save a finished reply in the background (cancelled when the service closes)."""
    store = deps.store
    snapshot = message.model_copy(deep=True)

    async def retry() -> None:
        for delay in _RETRY_DELAYS:
            await asyncio.sleep(delay)
            try:
                await store.save_message(snapshot)
                log.info("saved the final reply %s after the store recovered", snapshot.id)
                return
            except OpencodeError:
                continue
        log.error("gave up saving the final reply %s; it stays at its last checkpoint", snapshot.id)

    task = asyncio.get_running_loop().create_task(retry(), name=f"opencode-save-{snapshot.id}")
    deps.background.add(task)
    task.add_done_callback(deps.background.discard)


def is_cancelling(task: "asyncio.Task[Any] | None") -> bool:
    """Whether `task` is being cancelled: `Task.cancelling()` where Python has it (3.11+); on 3.10
    only the canceller knows, so callers also keep a flag of their own (`AgentRun.stopping`)."""
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling is not None and cancelling())


def _dollars(amount: float) -> str:
    """$2.50, or for budgets under a cent its significant digits ($0.005, not $0.00)."""
    return f"${amount:,.2f}" if amount >= 0.01 or amount == 0 else f"${amount:.2g}"


def _usage_note(usage: UsageReport | None, caps: ModelCaps) -> str:
    if usage is None:
        return "; the provider reported no token counts"
    cost = cost_of(caps, usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens)
    note = cache_note(usage.cache_read_tokens, usage.cache_write_tokens)
    return f"; tokens: {usage.input_tokens} in{note}, {usage.output_tokens} out (cost {cost:.6f})"


def checked_call(call: ToolCallReady) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The arguments and provider data a call's part may hold: the call's own, or for a call past
    `MAX_ARGUMENT_DEPTH` or `MAX_ARGUMENT_CHARS` empty arguments and `refused_arguments` saying
    why (the way a call whose arguments are not JSON holds `invalid_arguments`). Why here: every
    provider's calls pass this point before an event, the store or the next request sees them.
    The turn's reasoning (`REASONING`) is kept whatever its size, as a reply's text is: the model
    wrote it, its dialect built it of plain strings, and a thinking model's server refuses the
    turn without it."""
    problem = arguments_problem(call.arguments)
    data = call.provider_data
    reasoning = None if data is None else data.get(REASONING)
    rest = data if reasoning is None else {k: v for k, v in data.items() if k != REASONING}
    data_problem = None if rest is None else arguments_problem(rest)
    if data_problem is not None:  # e.g. the raw text of invalid arguments, as big: dropped too
        problem = problem or data_problem
        data = None if reasoning is None else {REASONING: reasoning}
    if problem is None:
        return call.arguments, data
    return {}, {**(data or {}), "refused_arguments": problem}


def arguments_problem(value: dict[str, Any]) -> str | None:
    """Why `value` is too deep or too big to keep (`MAX_ARGUMENT_DEPTH`, `MAX_ARGUMENT_CHARS`), or None."""
    if _nests_deeper(value, MAX_ARGUMENT_DEPTH):
        return f"arguments nested deeper than {MAX_ARGUMENT_DEPTH} levels"
    size = len(json.dumps(value, ensure_ascii=False, default=str))
    if size > MAX_ARGUMENT_CHARS:
        return f"arguments of {size:,} characters as JSON, more than the {MAX_ARGUMENT_CHARS:,} allowed"
    return None


def _nests_deeper(value: Any, levels: int) -> bool:
    """Whether `value` has objects or arrays more than `levels` deep (itself the first); looks no further."""
    if isinstance(value, dict):
        children: Iterable[Any] = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return False
    return levels == 0 or any(_nests_deeper(v, levels - 1) for v in children)


def _short(arguments: dict[str, Any], limit: int = 200) -> str:
    text = ", ".join(f"{k}={v!r}" for k, v in arguments.items())
    return text if len(text) <= limit else text[:limit] + "…"


# --------------------------------------------------------------------------- history


def text_tokens(text: str) -> int:
    """A cheap estimate of a text's tokens: 4 ASCII characters a token, and 3 bytes of UTF-8
    beyond ASCII (a Chinese or Japanese character is 3 bytes and a token or more to the usual
    tokenizers; a Cyrillic or Greek one 2 bytes, about half a token). Counted as a quarter of a
    token, as English is, a Chinese history "trimmed" to the context overflowed it 3 to 4 times."""
    if text.isascii():
        return len(text) // 4
    ascii_chars = len(text.encode("ascii", "ignore"))
    return ascii_chars // 4 + (len(text.encode("utf-8", "surrogatepass")) - ascii_chars) // 3


def estimate_tokens(parts: Sequence[Any]) -> int:
    """A cheap estimate (`text_tokens`, images a flat 1000) for trimming history."""
    total = 0
    for p in parts:
        if isinstance(p, TextPart):
            total += text_tokens(p.text) + 1
        elif isinstance(p, ImagePart):
            total += 1000
        elif isinstance(p, ToolCallPart):
            total += text_tokens(str(p.arguments)) + 10
            if p.provider_data and REASONING in p.provider_data:  # sent back with the call
                total += text_tokens(str(p.provider_data[REASONING]))
        elif isinstance(p, ToolResultPart):
            total += text_tokens(p.content) + 10 + 1000 * len(p.images)
    return total


def _check_prompt_fits(prompt: ChatMessage, room: int, model: str, context_tokens: int) -> None:
    """Refuse a prompt that alone outgrows the model's context (`room`: what the instructions and
    tools leave of it). History gives way to a long prompt, but the prompt itself cannot: sent,
    a server refuses it or, like Ollama, silently keeps only its end, instructions lost."""
    needed = estimate_tokens(prompt.parts)
    if needed <= room:
        return
    images = sum(isinstance(p, ImagePart) for p in prompt.parts)
    what = "shorten it" + (" or attach fewer images" if images else "")
    raise ContextExceeded(
        f"this message is about {needed:,} tokens, more than {model} has room for "
        f"({room:,} of its {context_tokens:,}-token context once the instructions and tools are in): "
        f"{what}, or choose a model with a larger context. If {model} holds more than "
        f"{context_tokens:,} tokens, declare its context_tokens in the provider's models.")


def _is_prompt(turn: ChatMessage) -> bool:
    """A user's own words (not a turn of tool results)."""
    return turn.role == "user" and not any(isinstance(p, ToolResultPart) for p in turn.parts)


def fit_to_context(history: list[ChatMessage], prompt_at: int, context_tokens: int
                   ) -> tuple[list[ChatMessage], int]:
    """A run's turns trimmed again once tool results joined them: whole earlier exchanges go
    first (oldest first, so a tool call never loses its result), then the images of the run's
    own tool results, then their text is cut short; oldest first, each result saying so.
    Returns the turns and where the run's prompt now is. Why: a model's server cuts an
    overlong prompt on its own (Ollama from the start, instructions included) or refuses it."""
    budget = max(context_tokens - REPLY_RESERVE_TOKENS, 1024)
    costs = [estimate_tokens(t.parts) for t in history]
    over = sum(costs) - budget
    start = 0
    while over > 0 and start < prompt_at:
        end = start + 1
        while end < prompt_at and not _is_prompt(history[end]):
            end += 1
        over -= sum(costs[start:end])
        start = end
    history, prompt_at = history[start:], prompt_at - start
    for shorten in (_without_images, _cut_text):
        for i in range(prompt_at + 1, len(history)):
            turn, parts = history[i], []
            for p in turn.parts:
                if over > 0 and isinstance(p, ToolResultPart):
                    shorter = shorten(p, over)
                    over -= estimate_tokens([p]) - estimate_tokens([shorter])
                    p = shorter
                parts.append(p)
            if any(a is not b for a, b in zip(parts, turn.parts)):
                history[i] = ChatMessage(turn.role, parts)  # turns are shared: a new one, not an edit
    return history, prompt_at


def _without_images(result: ToolResultPart, over_tokens: int) -> ToolResultPart:
    """A result's images (about 1,000 tokens each) left out, saying so."""
    return _images_noted(result, f"[{len(result.images)} image(s) left out to fit the model's context]")


def _images_noted(result: ToolResultPart, note: str) -> ToolResultPart:
    """`result` with its images replaced by `note` at the end of its text (a copy: the stored
    result, which the panel shows, keeps them)."""
    if not result.images:
        return result
    return result.model_copy(update={"images": [], "content": f"{result.content}\n{note}"})


# The note a cut result ends with; a result cut again counts all it lost.
_CUT_NOTE = re.compile(r"\n\[(\d+) characters cut to fit the model's context\]$")


def _cut_text(result: ToolResultPart, over_tokens: int) -> ToolResultPart:
    """A result's text cut by `over_tokens` (4 characters a token), keeping at least its first
    `MIN_RESULT_CHARS` characters, and saying how many it lost."""
    content, cut_before = result.content, 0
    if (found := _CUT_NOTE.search(content)) is not None:
        content, cut_before = content[:found.start()], int(found.group(1))
    keep = max(len(content) - over_tokens * 4, MIN_RESULT_CHARS)
    if keep >= len(content):
        return result
    cut = len(content) - keep
    note = f"\n[{cut_before + cut} characters cut to fit the model's context]"
    return result.model_copy(update={"content": content[:keep] + note})


def message_turns(message: Message, *, vision: bool) -> list[ChatMessage]:
    """A stored message as provider turns; tool calls without results are dropped, never split.

    A dropped call's reasoning (`REASONING`, on a turn's first call) moves to the next call of its
    turn that is kept: a thinking model's server refuses the turn without it (a run aborted while
    its tools ran leaves some calls answered and some not)."""
    if message.role == "user":
        parts: list[Any] = [p for p in message.parts if isinstance(p, TextPart) or (vision and isinstance(p, ImagePart))]
        unseen = 0 if vision else sum(isinstance(p, ImagePart) for p in message.parts)
        if unseen:  # the model is told, rather than answering as if it had seen them
            parts.append(TextPart(text=_unseen_images_note(unseen)))
        return [ChatMessage("user", parts)] if parts else []
    answered = {p.tool_call_id for p in message.parts if isinstance(p, ToolResultPart)}
    turns: list[ChatMessage] = []
    carried: Any = None  # the reasoning of a call left out, for its turn's next call
    for p in message.parts:
        if isinstance(p, ToolCallPart):
            if p.id not in answered:
                carried = (p.provider_data or {}).get(REASONING, carried)
                continue
            if carried is not None:
                p, carried = _with_reasoning(p, carried), None
        elif isinstance(p, ToolResultPart):
            carried = None  # the turn's calls are over
        role = "user" if isinstance(p, ToolResultPart) else "assistant"
        if not turns or turns[-1].role != role:
            turns.append(ChatMessage(role, []))  # type: ignore[arg-type]
        turns[-1].parts.append(_seen_by(p, vision) if isinstance(p, ToolResultPart) else p)
    return turns


def _with_reasoning(call: ToolCallPart, reasoning: Any) -> ToolCallPart:
    """`call` holding `reasoning`, unless it holds its own (a copy: the stored call stays as it is)."""
    if call.provider_data and REASONING in call.provider_data:
        return call
    return call.model_copy(update={"provider_data": {**(call.provider_data or {}), REASONING: reasoning}})


def _unseen_images_note(count: int) -> str:
    return f"[{count} image(s) not shown: this model does not take images]"


def _seen_by(result: ToolResultPart, vision: bool) -> ToolResultPart:
    """A tool's result as the model gets it: a model without vision gets a note for its images
    (the stored result, which the panel shows, keeps them)."""
    return result if vision else _images_noted(result, _unseen_images_note(len(result.images)))


class TurnCache:
    """The provider turns and token estimate of each message, reused while the message is
    unchanged (same `updated_at`): every run of a session rebuilds its history from the same
    finished messages. The turns are shared, so nothing may modify them. Bounded; oldest out."""

    def __init__(self, limit: int = 4 * MAX_OLDER_MESSAGES) -> None:
        self.limit = limit
        # By message id: (updated_at, vision, turns, token estimate); a newer version replaces it.
        self._items: dict[str, tuple[float, bool, list[ChatMessage], int]] = {}

    def turns(self, message: Message, *, vision: bool, heard: bool = False) -> tuple[list[ChatMessage], int]:
        """The message's turns; `heard`: another role's reply, as the role reading it gets it."""
        key = f"{message.id}/heard" if heard else message.id
        hit = self._items.get(key)
        if hit is not None and hit[0] == message.updated_at and hit[1] == vision:
            return hit[2], hit[3]
        turns = heard_turns(message) if heard else message_turns(message, vision=vision)
        cost = sum(estimate_tokens(t.parts) for t in turns)
        self._items[key] = (message.updated_at, vision, turns, cost)
        if len(self._items) > self.limit:
            del self._items[next(iter(self._items))]
        return turns, cost


def heard_turns(message: Message) -> list[ChatMessage]:
    """Another role's reply as the reading role gets it: its text, labelled, on the user's side
    (it is not this role's own words; its tool calls stay with the role that made them)."""
    text = message.text().strip()
    if not text:
        return []
    return [ChatMessage("user", [TextPart(text=f"[@{message.skill} replied]\n{text}")])]


def replies_by_prompt(messages: Iterable[Message]) -> dict[str, list[Message]]:
    """The replies of `messages` by the prompt they answer (`reply_to`), in order, each role's
    newest only: a retried role's earlier reply is replaced, in the place of the newest."""
    by_prompt: dict[str, dict[str | None, Message]] = {}
    for m in messages:
        if m.reply_to is not None:
            by_role = by_prompt.setdefault(m.reply_to, {})
            by_role.pop(m.skill, None)  # the newest goes last
            by_role[m.skill] = m
    return {prompt: list(by_role.values()) for prompt, by_role in by_prompt.items()}


def in_answer_order(history: list[Message]) -> list[Message]:
    """Each prompt followed by its replies (`replies_by_prompt`). In stored order a queued prompt's
    replies come after the prompts queued behind it (they start later); a model must read them
    under their own."""
    prompts = {m.id for m in history if m.role == "user"}
    replies = {p: r for p, r in replies_by_prompt(history).items() if p in prompts}
    if not replies:
        return history
    out: list[Message] = []
    for m in history:
        if m.reply_to in prompts:
            continue
        out.append(m)
        out.extend(replies.get(m.id, ()))
    return out


def _was_said(message: Message) -> bool:
    """Whether a message of the history belongs in a model's context: not a reply still streaming,
    nor a user's message that is waiting or never ran (an aborted queued send, one a crash left
    queued): no role answered those."""
    if message.status in ("streaming", "queued"):
        return False
    return message.role == "assistant" or message.status not in ("aborted", "interrupted")


def build_history(history: list[Message], role_id: str, user_message: Message, context_tokens: int,
                  *, vision: bool, cache: TurnCache | None = None) -> list[ChatMessage]:
    """User messages (as typed: a message `@`-addressed to other roles says so), this role's
    replies and the other roles' (labelled), newest kept first, trimmed to the model's context."""
    return choose_history(history, role_id, user_message, context_tokens, vision=vision, cache=cache)[0]


def choose_history(history: list[Message], role_id: str, user_message: Message, context_tokens: int,
                   *, vision: bool, cache: TurnCache | None = None) -> tuple[list[ChatMessage], bool]:
    """`build_history`, and whether a message was left out for want of room (if not, older
    messages than `history` would fit too)."""
    budget = max(context_tokens - REPLY_RESERVE_TOKENS, 1024)
    trimmed = False
    turns_of = (cache or TurnCache()).turns
    chosen: list[list[ChatMessage]] = []
    used = 0
    for m in itertools.chain((user_message,), filter(_was_said, reversed(in_answer_order(history)))):
        turns, cost = turns_of(m, vision=vision, heard=m.role == "assistant" and m.skill != role_id)
        if chosen and used + cost > budget:
            trimmed = True
            break
        used += cost
        chosen.append(turns)
    out = [t for turns in reversed(chosen) for t in turns]
    # A provider needs the first turn to be the user's own words (not a tool result cut from its call).
    while out and not _is_prompt(out[0]):
        out.pop(0)
    return out, trimmed
