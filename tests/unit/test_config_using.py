"""``dispatcher.config.using``: a config for a block of code, in its thread or task only."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from dispatcher.config import Settings, get_settings, is_setup, load_settings, reset, setup, using
from dispatcher.publish import prepare_submission
from support import tasks


def _config(dbname: str, *channels: str) -> dict[str, Any]:
    return {
        "version": 1,
        "brokers": {"pg_notify": {"conninfo": f"dbname={dbname}", "channels": list(channels)}},
    }


@pytest.fixture
def configs() -> Iterator[tuple[Settings, Settings]]:
    """Config A (loaded) and config B (set up for the process)."""
    a = load_settings(_config("a", "a_jobs"), source="config A")
    b = setup(_config("b", "b_jobs"), source="config B")
    yield a, b
    reset()


def test_the_block_reads_its_config_and_gives_back_the_one_before(
    configs: tuple[Settings, Settings],
) -> None:
    a, b = configs
    with using(a):
        assert get_settings() is a
        assert prepare_submission(tasks.add, args=[1, 2]).channel == "a_jobs"
        with using(b):
            assert prepare_submission(tasks.add, args=[1, 2]).channel == "b_jobs"
        assert prepare_submission(tasks.add, args=[1, 2]).channel == "a_jobs"
    assert get_settings() is b
    assert prepare_submission(tasks.add, args=[1, 2]).channel == "b_jobs"


def test_the_block_works_without_a_process_wide_config() -> None:
    a = load_settings(_config("a", "a_jobs"))
    with using(a):
        assert prepare_submission(tasks.add, args=[1, 2]).channel == "a_jobs"
    assert not is_setup()


def test_other_threads_and_tasks_keep_their_config(configs: tuple[Settings, Settings]) -> None:
    a, b = configs
    seen: list[Settings] = []
    inside, checked = threading.Event(), threading.Event()

    def other_thread() -> None:
        inside.wait(10)
        seen.append(get_settings())
        checked.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    with using(a):
        inside.set()
        checked.wait(10)
    thread.join(10)
    assert seen == [b]

    async def main() -> list[str]:
        ready = asyncio.Event()

        async def under(settings: Settings | None) -> str:
            if settings is None:
                await ready.wait()
                return prepare_submission(tasks.add, args=[1, 2]).channel
            with using(settings):
                ready.set()
                await asyncio.sleep(0)  # the other task runs while this one is in its block
                return prepare_submission(tasks.add, args=[1, 2]).channel

        return list(await asyncio.gather(under(a), under(None)))

    assert asyncio.run(main()) == ["a_jobs", "b_jobs"]


def test_using_takes_a_loaded_config_and_is_entered_once(
    configs: tuple[Settings, Settings],
) -> None:
    a, _ = configs
    with pytest.raises(TypeError, match=r"using\(\) takes a Settings, not dict: load the config"):
        using(_config("a", "a_jobs"))  # type: ignore[arg-type]
    block = using(a)
    with block, pytest.raises(RuntimeError, match="entered already"), block:
        pass


def test_switching_configs_warns_once_per_queue_and_config(
    configs: tuple[Settings, Settings], caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = configs
    caplog.set_level(logging.WARNING, logger="dispatcher.publish")
    for _ in range(3):
        with using(a):
            prepare_submission(tasks.add, args=[1, 2], queue="unlisted")
        prepare_submission(tasks.add, args=[1, 2], queue="unlisted")
    warnings = [r.getMessage() for r in caplog.records if "'unlisted'" in r.getMessage()]
    assert len(warnings) == 2
    assert "in config A" in warnings[0]
    assert "in config B" in warnings[1]
