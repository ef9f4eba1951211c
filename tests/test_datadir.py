"""One service per data directory: the second opener is refused while the first is open."""

from __future__ import annotations

import os

import pytest

from opencode_agent.core.config import Config
from opencode_agent.core.datadir import DataDirInUse
from opencode_agent.core.service import OpencodeService


async def test_a_second_service_on_an_open_data_dir_is_refused_until_the_first_closes(config: Config) -> None:
    first = OpencodeService(config)
    await first.start()
    try:
        with pytest.raises(DataDirInUse) as refused:
            await OpencodeService(config).start()  # before it reads anything: nothing is recovered
        assert refused.value.details == {"pid": os.getpid()}
        assert f"(pid {os.getpid()})" in refused.value.message
    finally:
        await first.close()
    second = OpencodeService(config)
    await second.start()
    await second.close()
