"""Each distribution declares exactly what its code imports, and pins its siblings."""

from __future__ import annotations

import importlib.metadata
import re
import sys
import tomllib
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from support.imports import DISTRIBUTIONS, modules
from support.paths import PACKAGES

KNOWN = modules()


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject(distribution: str) -> dict[str, Any]:
    with (PACKAGES / distribution / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def _project(distribution: str) -> dict[str, Any]:
    project: dict[str, Any] = _pyproject(distribution)["project"]
    return project


def _declared(distribution: str) -> dict[str, Requirement]:
    requirements = [Requirement(text) for text in _project(distribution)["dependencies"]]
    return {_normalized(requirement.name): requirement for requirement in requirements}


def _optional(distribution: str) -> set[str]:
    """The distributions its extras add (``pip install 'NAME[EXTRA]'``)."""
    extras = _project(distribution).get("optional-dependencies", {})
    return {_normalized(Requirement(text).name) for texts in extras.values() for text in texts}


DATA_ONLY = frozenset({"tzdata"})
"""Distributions of data the standard library reads, that no module imports: ``tzdata``,
the time zones ``zoneinfo`` reads where the OS has none (Windows)."""

WHERE_INSTALLED = {"dispatcher-server": frozenset({"sniffio"})}
"""Distributions a distribution imports only where they are installed, needing none: sniffio,
which anyio consults when it is there (``run_place.asyncio_named_as_the_library`` tells it
which library runs, for the loop callbacks of a service in the application's own loop)."""

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
    allowed |= WHERE_INSTALLED.get(distribution, frozenset())
    undeclared = {name: sorted(users) for name, users in imported.items() if name not in allowed}
    unused = sorted(declared - set(imported) - DATA_ONLY)
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


FLOORS = {
    # 6.0 walks the wall clock over daylight-saving changes differently: cron schedules run
    # twice, or not at all, where docs/service.md says they run once (test_cron_*.py fail).
    "croniter": Version("6.1"),
    # 1.26 writes core metadata 2.3: no License-Expression, no License-File (PEP 639 came
    # with 1.27), the license at best as the old License field (none at all in 1.26.0). A
    # packager building without isolation uses the hatchling installed (test_packaging.py
    # fails on its wheels).
    "hatchling": Version("1.27"),
    # 8.0 still calls a test module's function named ``setup`` before its tests (nose's
    # module set-up, dropped in 8.1): a module that imports dispatcher.config's ``setup``, as
    # docs/testing.md shows, has every test error with "the config must be a mapping of
    # sections, not module".
    "pytest": Version("8.1"),
}
"""Lowest versions known to work, for distributions whose older releases, still allowed by a
looser floor, break something (each with what breaks)."""


def _everywhere() -> list[tuple[str, Requirement]]:
    """Every requirement of every distribution, its extras' and its build's included, with
    where it is."""
    found: list[tuple[str, Requirement]] = []
    for distribution in DISTRIBUTIONS:
        project = _project(distribution)
        found += [(distribution, Requirement(text)) for text in project["dependencies"]]
        build = _pyproject(distribution)["build-system"]["requires"]
        found += [(f"{distribution} (build)", Requirement(text)) for text in build]
        for extra, texts in project.get("optional-dependencies", {}).items():
            found += [(f"{distribution}[{extra}]", Requirement(text)) for text in texts]
    return found


def _floor(requirement: Requirement) -> Version | None:
    floors = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==")]
    return max(floors, default=None)


def test_floors_are_the_lowest_versions_that_work() -> None:
    too_low = [
        f"{where}: {requirement}"
        for where, requirement in _everywhere()
        if (known := FLOORS.get(_normalized(requirement.name))) is not None
        and ((floor := _floor(requirement)) is None or floor < known)
    ]
    assert too_low == []


def test_a_distribution_declared_in_several_places_has_one_floor() -> None:
    floors: dict[str, set[Version | None]] = {}
    for _, requirement in _everywhere():
        name = _normalized(requirement.name)
        if name not in DISTRIBUTIONS:
            floors.setdefault(name, set()).add(_floor(requirement))
    assert {name: found for name, found in floors.items() if len(found) > 1} == {}


@pytest.mark.parametrize("distribution", ["dispatcher-publisher", "dispatcher-server"])
def test_windows_gets_a_time_zone_database(distribution: str) -> None:
    """Scheduled time zones (even ``UTC``) need one; Windows has none of its own."""
    requirement = _declared(distribution).get("tzdata")
    assert requirement is not None
    assert requirement.marker is not None
    assert requirement.marker.evaluate({"sys_platform": "win32"})
    assert not requirement.marker.evaluate({"sys_platform": "linux"})


def test_the_server_says_it_runs_on_linux() -> None:
    assert "Operating System :: POSIX :: Linux" in _project("dispatcher-server")["classifiers"]
