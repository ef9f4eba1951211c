"""The Markdown export's header: token counts, what the prompt cache served and took, the cost."""

from __future__ import annotations

from opencode_agent.core.export import export_markdown
from opencode_agent.core.protocol import Session, Usage


def test_the_header_says_what_the_cache_served_only_when_it_served_something() -> None:
    cached = Session(id="ses_c", title="Cached", created_at=1.0, updated_at=1.0,
                     usage=Usage(input_tokens=1200, output_tokens=300, cache_read_tokens=900, cache_write_tokens=200,
                                 cost=0.0123))
    text = export_markdown(cached, [], lambda t: t)
    assert "- tokens: 1200 in (900 cached, 200 written to the cache), 300 out; cost $0.0123" in text
    plain = cached.model_copy(update={"usage": Usage(input_tokens=10, output_tokens=2)})
    assert "- tokens: 10 in, 2 out; cost $0.0000" in export_markdown(plain, [], lambda t: t)
