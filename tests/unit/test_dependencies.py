"""Each distribution declares exactly what its code imports, and pins its siblings."""

from __future__ import annotations

import importlib.metadata
import re
import sys
import tomllib
from typing import Any

import pytest
from packaging.requirements import Requirement

from support.imports import DISTRIBUTIONS, modules
from support.paths import PACKAGES

KNOWN = modules()


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _project(distribution: str) -> dict[str, Any]:
    with (PACKAGES / distribution / "pyproject.toml").open("rb") as file:
        project: dict[str, Any] = tomllib.load(file)["project"]
    return project


def _declared(distribution: str) -> dict[str, Requirement]:
    requirements = [Requirement(text) for text in _project(distribution)["dependencies"]]
    return {_normalized(requirement.name): requirement for requirement in requirements}


def _optional(distribution: str) -> set[str]:
    """The distributions its extras add (``pip install 'NAME[EXTRA]'``)."""
    extras = _project(distribution).get("optional-dependencies", {})
    return {_normalized(Requirement(text).name) for texts in extras.values() for text in texts}


SERVICE_SIDE = frozenset({"dispatcher.contrib.django.service", "dispatcher.contrib.django.worker"})
"""Publisher modules that run only in a service (``manage.py rundispatcher``, its workers),
where dispatcher-server is installed: they may import it and its dependencies (the command
names the distribution to install when it is missing)."""


def _imported(distribution: str) -> dict[str, set[str]]:
    """Distribution imported -> the modules importing it (the distribution itself left out)."""
    owners = importlib.metadata.packages_distributions()
    found: dict[str, set[str]] = {}
    for name, module in KNOWN.items():
        if module.distribution != distribution:
            continue
        for imported, _ in module.imports():
            top = imported.split(".")[0]
            if top == "__future__" or top in sys.stdlib_module_names:
                continue
            if top == "dispatcher":
                target = imported
                while target and target not in KNOWN:
                    target = target.rpartition(".")[0]
                assert target, f"{name} imports {imported}, which no distribution holds"
                providers = [KNOWN[target].distribution]
            else:
                providers = owners.get(top, [])
                assert len(providers) == 1, f"{name} imports {top}, installed by {providers}"
            for provider in providers:
                if _normalized(provider) != distribution:
                    found.setdefault(_normalized(provider), set()).add(name)
    return found


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_dependencies_are_exactly_the_imported_distributions(distribution: str) -> None:
    imported = _imported(distribution)
    for server_side in {"dispatcher-server", *_declared("dispatcher-server")}:
        users = imported.pop(server_side, set()) - SERVICE_SIDE
        if users:
            imported[server_side] = users
    declared = set(_declared(distribution))
    allowed = declared | _optional(distribution)  # an extra's: imported where it is needed
    undeclared = {name: sorted(users) for name, users in imported.items() if name not in allowed}
    unused = sorted(declared - set(imported))
    assert (undeclared, unused) == ({}, [])


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_siblings_are_pinned_to_their_version(distribution: str) -> None:
    for name, requirement in _declared(distribution).items():
        if name in DISTRIBUTIONS:
            version = _project(name)["version"]
            assert str(requirement.specifier) == f"=={version}", requirement


def test_layers() -> None:
    assert set(_declared("dispatcher-schema")) & set(DISTRIBUTIONS) == set()
    assert set(_declared("dispatcher-publisher")) & set(DISTRIBUTIONS) == {"dispatcher-schema"}
    assert set(_declared("dispatcher-server")) & set(DISTRIBUTIONS) == {
        "dispatcher-schema",
        "dispatcher-publisher",
    }
