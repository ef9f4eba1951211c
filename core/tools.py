"""Tools: typed async functions a model may call, their JSON Schemas, and their execution.

A tool is declared as `async def name(ctx: ToolContext, arg: T, ...) -> str | dict | ToolOutput`;
the `@tool(permission=...)` decorator builds a pydantic model of its arguments (the schema the
model sees) and takes the description from its docstring. `ToolContext` is the narrow view of the
running session a tool gets: it never sees the store, the bus or any secret.
Imports only protocol and errors.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol, get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from .protocol import ImagePart, PermissionClass

log = logging.getLogger("opencode.tools")


class ToolError(Exception):
    """A tool failed in a way the model should read (bad arguments, ComfyUI said no, ...)."""


@dataclass
class ToolOutput:
    """What a tool returns: text for the model, optional images, and whether it is an error."""

    content: str
    images: list[ImagePart] = field(default_factory=list)
    is_error: bool = False


class ToolContext(Protocol):
    """What a running tool may use. Implemented by the agent loop for each tool call."""

    session_id: str
    run_id: str
    skill: str
    run_skills: tuple[str, ...]  # the ids of the run's role and tool skills (whose instructions it has)

    def log(self, level: str, message: str) -> None:
        """Write a line to the session's debug log (redacted, as a `log` event)."""

    async def ui_request(self, action: str, payload: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Ask the session's connected panel to do something; raises ToolError if none answers."""

    async def emit_status(self, message: str) -> None:
        """Report progress of a long tool (relayed as an info `log` event)."""


ToolFunc = Callable[..., Awaitable[Any]]


@dataclass
class Tool:
    """One callable tool: name, description, argument model and permission class."""

    name: str
    description: str
    args_model: type[BaseModel]
    func: ToolFunc
    permission: PermissionClass = "read"
    _spec: "ToolSpec | None" = field(default=None, init=False, repr=False, compare=False)

    def json_schema(self) -> dict[str, Any]:
        schema = self.args_model.model_json_schema()
        schema.pop("title", None)
        return schema

    def spec(self) -> "ToolSpec":
        """What a model is told of this tool, made once: generating a JSON schema takes about half
        a millisecond, and every run asks for each of its tools'. Shared: never modify it."""
        if self._spec is None:
            self._spec = ToolSpec(name=self.name, description=self.description, parameters=self.json_schema())
        return self._spec

    async def call(self, ctx: ToolContext, arguments: dict[str, Any]) -> ToolOutput:
        """Validate the model's arguments and run the tool; every failure becomes an error output."""
        try:
            args = self.args_model.model_validate(arguments)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors())
            return ToolOutput(f"invalid arguments for {self.name}: {problems}", is_error=True)
        try:
            result = await self.func(ctx, **{k: getattr(args, k) for k in type(args).model_fields})
        except ToolError as exc:
            return ToolOutput(str(exc), is_error=True)
        except Exception as exc:  # noqa: BLE001 - a tool's bug is an error the model reads, not the run's end
            log.error("tool %s raised %s", self.name, type(exc).__name__, exc_info=True)
            # Only the exception's type: its text may hold a URL with a token, a path, a key.
            return ToolOutput(f"{self.name} failed with an unexpected {type(exc).__name__} "
                              "(the server log has the details)", is_error=True)
        return as_output(result)


@dataclass(frozen=True)
class ToolSpec:
    """The provider-neutral description of a tool sent to a model."""

    name: str
    description: str
    parameters: dict[str, Any]

    @functools.cached_property
    def size(self) -> int:
        """Characters it takes in a request (name, description, schema): its share of a context."""
        return len(self.name) + len(self.description) + len(json.dumps(self.parameters))


def as_output(result: Any) -> ToolOutput:
    if isinstance(result, ToolOutput):
        return result
    if isinstance(result, str):
        return ToolOutput(result)
    return ToolOutput(json.dumps(result, ensure_ascii=False, default=str))


def tool(permission: PermissionClass = "read", name: str | None = None) -> Callable[[ToolFunc], Tool]:
    """Turn a typed `async def f(ctx, ...)` into a `Tool`; the docstring is the description."""

    def wrap(func: ToolFunc) -> Tool:
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"tool {func.__name__} must be async")
        hints = get_type_hints(func)
        params = list(inspect.signature(func).parameters.values())[1:]  # skip ctx
        fields: dict[str, Any] = {}
        for p in params:
            ann = hints.get(p.name, Any)
            default = ... if p.default is inspect.Parameter.empty else p.default
            fields[p.name] = (ann, default)
        model = create_model(  # type: ignore[call-overload]
            f"{func.__name__}_args", __config__=ConfigDict(extra="forbid"), **fields
        )
        doc = inspect.cleandoc(func.__doc__ or "").strip()
        return Tool(name=name or func.__name__, description=doc, args_model=model, func=func, permission=permission)

    return wrap
