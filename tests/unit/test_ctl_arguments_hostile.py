"""dispatcherctl's names, uuids, JSON and durations: what the shell may hand it, refused."""

from __future__ import annotations

import argparse

import pytest

from dispatcher.server import ctl_parser

COMMANDS = ("jobs", "retry", "purge", "submit")
"""The commands whose free-text options name rows and tasks in PostgreSQL."""

FREE_TEXT = {
    ("jobs", "--queue"): ["jobs", "--queue"],
    ("jobs", "--task"): ["jobs", "--task"],
    ("jobs", "--uuid"): ["jobs", "--uuid"],
    ("retry", "--uuid"): ["retry", "--uuid"],
    ("retry", "--queue"): ["retry", "--failed", "--queue"],
    ("purge", "--queue"): ["purge", "--state", "done", "--older-than", "60", "--queue"],
    ("submit", "task"): ["submit"],
    ("submit", "--queue"): ["submit", "app.tasks.t", "--queue"],
    ("submit", "--uuid"): ["submit", "app.tasks.t", "--uuid"],
}
"""Each free-text option (or argument) of :data:`COMMANDS`, and the words that give it."""


def free_text_options() -> set[tuple[str, str]]:
    """The options of :data:`COMMANDS` that take any string (``--config``, a path, aside)."""
    [commands] = [
        a for a in ctl_parser.parser()._actions if isinstance(a, argparse._SubParsersAction)
    ]
    return {
        (name, (action.option_strings or [action.dest])[0])
        for name in COMMANDS
        for action in commands.choices[name]._actions
        if action.nargs is None
        and action.type is None
        and action.choices is None
        and action.dest != "config"
        and action.help != argparse.SUPPRESS  # options of others, refused (--expected-replies)
    }


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("", "must not be empty"),
        ("a\x00b", "must not hold a NUL character, got 'a\\x00b'"),
        ("\udcff", "must be UTF-8 text (the command line holds bytes that are not), got '\\udcff'"),
    ],
    ids=["empty", "nul", "not-utf8"],
)
def test_every_free_text_option_refuses_what_no_row_can_hold(
    value: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert free_text_options() == set(FREE_TEXT)  # a new option needs a line in FREE_TEXT
    for (command, option), words in FREE_TEXT.items():
        with pytest.raises(SystemExit) as refused:
            ctl_parser.parser().parse_args([*words, value])
        err = capsys.readouterr().err
        assert refused.value.code == 2, (command, option)
        assert f"dispatcherctl {command}: error: argument {option}: {said}\n" in err
        taken = ctl_parser.parser().parse_args([*words, "café-1"])
        assert getattr(taken, option.lstrip("-")) == "café-1"


@pytest.mark.parametrize(
    "words",
    [
        ["submit", "app.tasks.t", "--args"],
        ["submit", "app.tasks.t", "--kwargs"],
        ["run", "app.tasks.t", "--args"],
        ["running", "--kwargs"],
    ],
    ids=" ".join,
)
def test_json_nested_too_deep_for_the_decoder_is_a_usage_error(
    words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    deep = (
        "[" * 60_000 + "]" * 60_000
        if words[-1] == "--args"
        else '{"a":' * 60_000 + "1" + "}" * 60_000
    )
    with pytest.raises(SystemExit) as refused:
        ctl_parser.parser().parse_args([*words, deep])
    err = capsys.readouterr().err
    assert refused.value.code == 2
    assert f"argument {words[-1]}: arrays and objects nested more than 64 levels deep: " in err
    assert f"... ({len(deep)} characters)" in err
    assert len(err) < 2000


def test_purge_looks_back_at_most_a_year(capsys: pytest.CaptureFixture[str]) -> None:
    words = ["purge", "--state", "done", "--older-than"]
    assert ctl_parser.parser().parse_args([*words, "31536000"]).older_than == 31_536_000
    for value in ("31536001", "1e20"):
        with pytest.raises(SystemExit) as refused:
            ctl_parser.parser().parse_args([*words, value])
        assert refused.value.code == 2
        assert (
            "argument --older-than: expected a number of seconds from 0 to 31536000 (365 days), "
            f"got {value!r}"
        ) in capsys.readouterr().err
