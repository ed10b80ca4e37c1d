"""The first ``hatch run demo`` stays light, and every development command stays reachable.

The README promises ``hatch run demo`` on a fresh clone without building the development
tools, and ``hatch run test`` / ``lint`` / ... as the commands for the rest.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from support.paths import REPO

DEV_TOOLS = ("pytest", "mypy", "ruff", "hypothesis", "django")


def environments() -> dict[str, Any]:
    with (REPO / "hatch.toml").open("rb") as file:
        return tomllib.load(file)["envs"]


def names(requirements: list[str]) -> set[str]:
    return {
        re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower() for requirement in requirements
    }


def test_the_default_environment_holds_no_development_tool() -> None:
    default = environments()["default"]
    installed = names(default.get("dependencies", []) + default.get("extra-dependencies", []))
    assert not installed & set(DEV_TOOLS)
    assert "demo" in default["scripts"]


def test_every_development_script_is_reachable_from_the_default_environment() -> None:
    envs = environments()
    default_scripts, dev_scripts = envs["default"]["scripts"], envs["dev"]["scripts"]
    for name in dev_scripts:
        assert name in default_scripts, f"`hatch run {name}` would not reach the dev script"
        forwarded = default_scripts[name]
        assert forwarded.startswith(f"hatch run dev:{name}"), forwarded
    assert envs["dev"]["path"] == ".venv"
    assert names(envs["dev"]["extra-dependencies"]) >= {"pytest", "mypy", "ruff"}


def run_like_hatch(commands: list[str], cwd: Path) -> list[int]:
    """Run a script's commands as hatch does: in turn, stopping after the first that fails.

    (A command written ``- command`` may fail without stopping the script.)
    """
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    codes = []
    for command in commands:
        ignore, command = command.startswith("- "), command.removeprefix("- ")
        codes.append(subprocess.run(shlex.split(command), cwd=cwd, env=env).returncode)
        if codes[-1] and not ignore:
            break
    return codes


def test_format_formats_even_when_a_lint_error_is_left(tmp_path: Path) -> None:
    commands = environments()["dev"]["scripts"]["format"]
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    for folder in ("packages", "tests", "benchmarks", "tools", "docs/examples"):
        (tmp_path / folder).mkdir(parents=True)
    module = tmp_path / "packages" / "module.py"
    # Too long a line (not fixable by ruff check, fixed by the formatter), an unused import
    # (fixable) and a lint error nothing fixes (a public function without a docstring).
    module.write_text(
        '"""A module."""\n\nimport os\n\n\ndef public():\n'
        '    return {"a_fairly_long_key_name_one": 1, "a_fairly_long_key_name_two": 2, "a_fairly_long_key_name_three": 3}\n'
    )
    codes = run_like_hatch(commands if isinstance(commands, list) else [commands], tmp_path)
    text = module.read_text()
    assert "import os" not in text
    assert '        "a_fairly_long_key_name_one": 1,\n' in text, text  # formatted
    assert codes[-1] != 0  # the missing docstring is reported


def test_the_readme_table_lists_every_script_and_no_other() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    development = readme.split("\n## Development\n", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `hatch run ([\w-]+)` \|", development, re.MULTILINE)
    assert sorted(listed) == sorted(environments()["default"]["scripts"])


def test_every_hatch_run_command_written_down_exists() -> None:
    scripts = environments()["default"]["scripts"]
    files = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    for folder in ("packages", "tests", "tools", "benchmarks"):
        files += sorted((REPO / folder).rglob("*.py"))
    for path in files:
        for name in re.findall(
            r"hatch run (?:dev:(?=\w))?([\w-]+)(?![\w:-])", path.read_text(encoding="utf-8")
        ):
            assert name in scripts, f"{path.relative_to(REPO)}: `hatch run {name}`"
