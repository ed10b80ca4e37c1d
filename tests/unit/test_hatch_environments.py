"""The first ``hatch run demo`` stays light, and every development command stays reachable.

The README promises ``hatch run demo`` on a fresh clone without building the development
tools, and ``hatch run test`` / ``lint`` / ... as the commands for the rest.
"""

from __future__ import annotations

import re
import tomllib
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
