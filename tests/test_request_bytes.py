"""The encoded request body: the same JSON as `request_body()`, each finished turn encoded once.

A chat re-sends its whole history with every model request; `HttpProvider.request_bytes` keeps
each turn's encoding on the (shared, unchanging) turn, so only new turns are converted. These
tests hold it to the dict form for every dialect and every kind of turn, and check what is
reused and what is not (turns with images, another provider).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from opencode_agent.core.protocol import ImagePart, ProviderProfile, TextPart, ToolCallPart, ToolResultPart
from opencode_agent.core.providers.anthropic import AnthropicProvider
from opencode_agent.core.providers.base import ChatMessage, ChatRequest
from opencode_agent.core.providers.http import HttpProvider, create_session
from opencode_agent.core.providers.ollama import OllamaProvider
from opencode_agent.core.providers.openai import OpenAIProvider
from opencode_agent.core.tools import ToolSpec

KINDS = {"openai": OpenAIProvider, "anthropic": AnthropicProvider, "ollama": OllamaProvider}
TOOL = ToolSpec(name="render", description="Render.", parameters={"type": "object", "properties": {}})


async def loader(part: ImagePart) -> tuple[bytes, str]:
    return f"bytes of {part.filename}".encode(), "image/png"


@pytest.fixture
async def http() -> Any:
    session = create_session(sock_read=5)
    yield session
    await session.close()


def make(kind: str, http: Any) -> HttpProvider:
    profile = ProviderProfile(name="p", kind=kind, base_url="http://127.0.0.1:1/v1",
                              extra={"keep_alive": "5m", "options": {"seed": 1}})
    return KINDS[kind](profile, "sk-test-key-0000", http, loader)


def history() -> list[ChatMessage]:
    return [
        ChatMessage("user", [TextPart(text="draw a cat — «chat» 猫 \"quoted\" \\ \n")]),
        ChatMessage("assistant", [TextPart(text="Rendering."),
                                  ToolCallPart(id="call_1", name="render", arguments={"prompt": "cat", "n": 2},
                                               provider_data={"extra_content": {"google": {"thought_signature": "c2ln"}}})]),
        ChatMessage("user", [ToolResultPart(tool_call_id="call_1", name="render", content="done",
                                            images=[ImagePart(filename="out.png")])]),
        ChatMessage("assistant", [TextPart(text="")]),  # an empty turn (Anthropic drops it)
        ChatMessage("user", [TextPart(text="and a dog"), ImagePart(filename="dog.png")]),
        ChatMessage("assistant", [TextPart(text="Here.")]),
        ChatMessage("user", [TextPart(text="thanks")]),
    ]


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("system", ["You are terse.", ""])
@pytest.mark.parametrize("tools", [[TOOL], []], ids=["tools", "no-tools"])
async def test_bytes_are_the_body_and_stay_so_when_reused(kind: str, system: str, tools: list[ToolSpec],
                                                         http: Any) -> None:
    p = make(kind, http)
    turns = history()
    request = ChatRequest(model="m", system=system, messages=turns, tools=tools, max_tokens=64, temperature=0.5)
    expected = await p.request_body(request)
    assert json.loads(await p.request_bytes(request)) == expected
    assert json.loads(await p.request_bytes(request)) == expected  # from the kept encodings
    # The same turns in a request of the other kind are encoded the other way, not reused.
    other = ChatRequest(model="m", system=system, messages=turns, tools=[] if tools else [TOOL])
    assert json.loads(await p.request_bytes(other)) == await p.request_body(other)


@pytest.mark.parametrize("kind", sorted(KINDS))
async def test_without_tools_earlier_calls_and_results_go_as_text(kind: str, http: Any) -> None:
    p = make(kind, http)
    body = await p.request_body(ChatRequest(model="m", system="s", messages=history()))
    sent = json.dumps(body, ensure_ascii=False)
    for marker in ('"tool_use"', '"tool_result"', '"tool_calls"', '"role": "tool"', '"tools"'):
        assert marker not in sent, marker
    texts = json.dumps([m for m in body["messages"] if m["role"] != "system"], ensure_ascii=False)
    assert 'Rendering.\\n\\n[called render({\\"prompt\\": \\"cat\\", \\"n\\": 2})]' in texts
    assert "[render returned: done]" in texts
    assert sent.count(base64.b64encode(b"bytes of out.png").decode()) == 1  # the result's image still goes


@pytest.mark.parametrize("kind", sorted(KINDS))
async def test_only_new_turns_and_turns_with_images_are_converted_again(kind: str, http: Any,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    p = make(kind, http)
    converted: list[int] = []
    original = type(p).wire_messages

    async def counting(self: HttpProvider, message: ChatMessage) -> list[dict[str, Any]]:
        converted.append(id(message))
        return await original(self, message)

    monkeypatch.setattr(type(p), "wire_messages", counting)
    turns = history()
    await p.request_bytes(ChatRequest(model="m", system="s", messages=turns, tools=[TOOL]))
    assert len(converted) == len(turns)
    converted.clear()
    turns.append(ChatMessage("assistant", [TextPart(text="You are welcome.")]))
    turns.append(ChatMessage("user", [TextPart(text="bye")]))
    body = json.loads(await p.request_bytes(ChatRequest(model="m", system="s", messages=turns, tools=[TOOL])))
    with_images = [id(t) for t in turns if t.has_images()]
    # Anthropic also marks the turn before the last assistant turn (`cache_marked_turns`).
    again = [id(turns[-3])] if kind == "anthropic" else []
    assert sorted(converted) == sorted(with_images + again + [id(turns[-2]), id(turns[-1])])
    assert body == await p.request_body(ChatRequest(model="m", system="s", messages=turns, tools=[TOOL]))
    assert all(p.wire_key in t.encoded for t in turns if not t.has_images())


async def test_each_provider_keeps_its_own_encoding(http: Any) -> None:
    turns = history()
    openai_p, anthropic_p = make("openai", http), make("anthropic", http)
    for p in (openai_p, anthropic_p, make("openai", http)):
        request = ChatRequest(model="m", system="s", messages=turns)
        assert json.loads(await p.request_bytes(request)) == await p.request_body(request)
    assert len({openai_p.wire_key, anthropic_p.wire_key}) == 2
    assert len(turns[0].encoded) == 3  # one per provider instance; none reads another's
