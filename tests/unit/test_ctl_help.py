"""Each ``dispatcherctl COMMAND --help`` lists exactly the options the command takes.

Every command's help is read as people read it: each option listed must be accepted (after
the command, and before it for the global ones), and each global option it does not list
must be refused, saying why, wherever it is given.
"""

from __future__ import annotations

import re

import pytest

from dispatcher.server import cli, ctl, ctl_parser

OPTION_LINE = re.compile(r"^  (?:-h, )?(--[a-z-]+)(?: (\S+))?")
COMMAND_LINE = re.compile(r"^    ([a-z_-]+)")

BASES: dict[str, list[list[str]]] = {
    "cancel": [["--all"]],
    "set_log_level": [["info"], []],
    "run": [["myapp.tasks.t"]],
    "submit": [["myapp.tasks.t"]],
    "retry": [["--failed"], ["--uuid", "u"]],
    "purge": [["--state", "done", "--older-than", "60"]],
    "cancel-job": [["--uuid", "u"], ["--task", "myapp.tasks.t"]],
}
"""Command lines each command is complete with (any one will do), before the option tried."""

VALUES = {
    "FILE": "dispatcher.yml",
    "LEVEL": "INFO",
    "S": "1.5",
    "N": "3",
    "Q": "q",
    "U": "u",
    "UUID": "u",
    "TASK": "myapp.tasks.t",
    "QUEUE": "q",
    "SECONDS": "60",
}
"""A value for each metavar the helps show (a JSON or a {choice,...} is found otherwise)."""


def shown(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as ended:
        ctl.main(args)
    out, err = capsys.readouterr()
    assert ended.value.code == 0, err
    return out


def listed_options(help_text: str) -> dict[str, str | None]:
    """The options a help lists, each with its metavar (``None``: it takes no value)."""
    section = help_text.split("\noptions:\n", 1)[1]
    found = {}
    for line in section.splitlines():
        match = OPTION_LINE.match(line)
        if match and match.group(1) not in ("--help", "--version"):
            found[match.group(1)] = match.group(2)
    return found


def value(option: str, metavar: str | None) -> list[str]:
    if metavar is None:
        return []
    if metavar.startswith("{"):
        return [metavar.strip("{}").split(",")[0]]
    if metavar == "JSON":
        return ["[1]" if option == "--args" else '{"a": 1}']
    assert metavar in VALUES, f"{option} {metavar}: give this metavar a value in VALUES"
    return [VALUES[metavar]]


def accepted(args: list[str], capsys: pytest.CaptureFixture[str]) -> str | None:
    """``None`` when the command line parses; else what dispatcherctl said."""
    try:
        ctl_parser.parse_command_line(args)
    except SystemExit:
        return capsys.readouterr().err
    return None


def commands(capsys: pytest.CaptureFixture[str]) -> list[str]:
    text = shown(["--help"], capsys)
    section = text.split("\n  COMMAND\n", 1)[1].split("\n\n", 1)[0]
    return [m.group(1) for line in section.splitlines() if (m := COMMAND_LINE.match(line))]


def test_every_command_takes_each_option_its_help_lists(
    capsys: pytest.CaptureFixture[str],
) -> None:
    global_options = listed_options(shown(["--help"], capsys))
    names = commands(capsys)
    assert {"alive", "submit", "install-sql", "migrate", "jobs", "top"} <= set(names)
    assert "--level" in listed_options(shown(["set_log_level", "--help"], capsys))  # it works
    for command in names:
        bases = BASES.get(command, [[]])
        assert any(accepted([command, *base], capsys) is None for base in bases), command
        for option, metavar in listed_options(shown([command, "--help"], capsys)).items():
            given = [option, *value(option, metavar)]
            said = [accepted([command, *base, *given], capsys) for base in bases]
            assert None in said, (command, given, said)
            if option in global_options and (command, option) != ("submit", "--timeout"):
                said = [accepted([*given, command, *base], capsys) for base in bases]
                assert None in said, ("before", command, given, said)


def test_global_options_a_command_does_not_list_are_refused_saying_why(
    capsys: pytest.CaptureFixture[str],
) -> None:
    global_options = listed_options(shown(["--help"], capsys))
    refused = {}
    for command in commands(capsys):
        base = BASES.get(command, [[]])[0]
        listed = listed_options(shown([command, "--help"], capsys))
        for option, metavar in global_options.items():
            if option in listed:
                continue
            refused.setdefault(command, []).append(option)
            given = [option, *value(option, metavar)]
            for args in ([command, *base, *given], [*given, command, *base]):
                said = accepted(args, capsys)
                assert said is not None, args
                assert f"{option}: " in said, said
                assert command in said.splitlines()[-1], said
    assert refused["install-sql"] == ["--json", "--timeout", "--expected-replies"]
    assert refused["migrate"] == ["--json", "--expected-replies"]
    assert refused["jobs"] == ["--expected-replies"]
    assert refused["submit"] == ["--expected-replies"]  # its --timeout is the task's
    assert "alive" not in refused
    assert "top" not in refused


@pytest.mark.parametrize("given", [["--expected-replies", "0"], ["--timeout", "0.5"]])
def test_a_refused_option_is_refused_whatever_its_value(
    given: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # 0 is a value like any other (not "not given").
    said = accepted([*given, "install-sql", "--print"], capsys)
    assert said is not None
    assert f"{given[0]}: " in said


def test_config_says_where_the_config_comes_from_without_it() -> None:
    said = (
        "config file (default: $DISPATCHER_CONFIG_FILE, else $DISPATCHERD_CONFIG_FILE, "
        "else ./dispatcher.yml)"
    )
    for parser in (cli.parser(), ctl_parser.parser()):
        assert said in " ".join(parser.format_help().split())
