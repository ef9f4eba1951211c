"""`new_id`: unique (also across threads), in the order they were made, and valid entity ids."""

from __future__ import annotations

import re
import threading

from opencode_agent.core.protocol import ID_PATTERN, new_id


def test_ids_are_unique_sorted_and_well_formed() -> None:
    ids = [new_id("msg") for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)  # creation order: new rows append to the id index
    shape = re.compile(r"^msg_[0-9a-f]{20}$")
    assert all(shape.match(i) and re.match(ID_PATTERN, i) for i in ids[:100])


def test_ids_made_on_several_threads_never_repeat() -> None:
    made: list[list[str]] = [[] for _ in range(4)]

    def make(out: list[str]) -> None:
        out.extend(new_id("run") for _ in range(5_000))

    threads = [threading.Thread(target=make, args=(out,)) for out in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for out in made for i in out]
    assert len(set(every)) == len(every) == 20_000
