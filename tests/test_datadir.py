"""One service per data directory: the second opener is refused while the first is open."""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from opencode_agent.core.config import Config
from opencode_agent.core import datadir
from opencode_agent.core.datadir import DataDirInUse, DataDirLock
from opencode_agent.core.service import OpencodeService


async def test_a_second_service_on_an_open_data_dir_is_refused_until_the_first_closes(config: Config) -> None:
    first = OpencodeService(config)
    await first.start()
    try:
        with pytest.raises(DataDirInUse) as refused:
            await OpencodeService(config).start()  # before it reads anything: nothing is recovered
        assert refused.value.details == {"pid": os.getpid()}
        assert "in use by this process" in refused.value.message
    finally:
        await first.close()
    second = OpencodeService(config)
    await second.start()
    await second.close()


async def test_a_file_system_that_cannot_lock_runs_without_the_guard(config: Config, monkeypatch: Any,
                                                                       caplog: Any) -> None:
    """NFS without lockd answers ENOLCK: that is not "in use", and Opencode must still start."""
    def cannot_lock(handle: Any) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(datadir, "_lock", cannot_lock)
    svc = OpencodeService(config)
    with caplog.at_level(logging.WARNING, logger="opencode.datadir"):
        await svc.start()
    await svc.close()
    assert "running without the one-process guard" in caplog.text


def _hold_until_told(pipe: Any) -> None:
    pipe.send("running")  # past the fork's after-in-child hooks
    pipe.recv()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_forked_child_does_not_keep_the_directory_locked(tmp_path: Path) -> None:
    """flock belongs to the open file, which a forked child shares: a child that outlived the
    parent's release kept the directory locked (a custom node's fork-based pool, for one)."""
    lock = DataDirLock.acquire(tmp_path)
    parent_end, child_end = multiprocessing.Pipe()
    child = multiprocessing.get_context("fork").Process(target=_hold_until_told, args=(child_end,))
    child.start()
    try:
        assert parent_end.poll(10) and parent_end.recv() == "running"
        lock.release()
        DataDirLock.acquire(tmp_path).release()  # free while the child still lives
    finally:
        parent_end.send("done")
        child.join(10)


async def test_a_start_that_fails_after_the_service_opened_frees_the_directory(config: Config) -> None:
    """An unreadable token file failed the start after the service had opened: it was never
    closed, so the directory stayed locked (and its threads held the process at exit)."""
    from opencode_agent.routes import create_app

    config.ensure_dirs()
    (config.data_dir / "token").mkdir()  # reading it fails: IsADirectoryError
    runner = web.AppRunner(create_app(config))
    with pytest.raises(IsADirectoryError):
        await runner.setup()
    await runner.cleanup()
    (config.data_dir / "token").rmdir()
    again = OpencodeService(config)
    await again.start()  # the directory is free
    await again.close()
