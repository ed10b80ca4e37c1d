"""The three distributions build as wheels that carry what they must, and nothing shared."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from dispatcher.schema import SCHEMA_NAMES
from support.paths import PACKAGES, REPO

DISTRIBUTIONS = ["dispatcher-schema", "dispatcher-publisher", "dispatcher-server"]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("wheels")
    built = {}
    for name in DISTRIBUTIONS:
        subprocess.run(
            [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(out)],
            cwd=PACKAGES / name,
            check=True,
            capture_output=True,
        )
        [wheel] = out.glob(f"{name.replace('-', '_')}-*.whl")
        built[name] = wheel
    return built


@pytest.fixture(scope="module")
def wheels_from_sdists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A wheel of each distribution built from its sdist alone, unpacked away from the tree."""
    out = tmp_path_factory.mktemp("sdists")
    built = {}
    for name in DISTRIBUTIONS:
        subprocess.run(
            [sys.executable, "-m", "hatchling", "build", "-t", "sdist", "-d", str(out)],
            cwd=PACKAGES / name,
            check=True,
            capture_output=True,
        )
        [sdist] = out.glob(f"{name.replace('-', '_')}-*.tar.gz")
        with tarfile.open(sdist) as archive:
            archive.extractall(out, filter="data")
        [unpacked] = out.glob(f"{name.replace('-', '_')}-*/")
        subprocess.run(
            [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(out)],
            cwd=unpacked,
            check=True,
            capture_output=True,
        )
        [wheel] = out.glob(f"{name.replace('-', '_')}-*.whl")
        built[name] = wheel
    return built


def _names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_schema_wheel_contains_every_schema(wheels: dict[str, Path]) -> None:
    names = _names(wheels["dispatcher-schema"])
    for schema in SCHEMA_NAMES:
        assert f"dispatcher/schema/schemas/{schema}.schema.json" in names
    assert "dispatcher/schema/py.typed" in names


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_wheels_share_the_namespace_without_owning_it(wheels: dict[str, Path], name: str) -> None:
    names = _names(wheels[name])
    assert "dispatcher/__init__.py" not in names
    own = {
        "dispatcher-schema": "schema",
        "dispatcher-publisher": "config",
        "dispatcher-server": "server",
    }
    assert f"dispatcher/{own[name]}/py.typed" in names


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_each_wheel_carries_the_license(wheels: dict[str, Path], name: str) -> None:
    with zipfile.ZipFile(wheels[name]) as archive:
        [license_file] = [
            n for n in archive.namelist() if n.endswith(".dist-info/licenses/LICENSE")
        ]
        carried = archive.read(license_file).decode()
        metadata = archive.read(license_file.replace("licenses/LICENSE", "METADATA")).decode()
    assert carried == (REPO / "LICENSE").read_text()
    assert "License-File: LICENSE" in metadata.splitlines()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_schemas_load_from_the_installed_wheel(wheels: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(wheels["dispatcher-schema"]),
        ],
        check=True,
    )
    probe = (
        "import dispatcher.schema as s, sys\n"
        "print(s.__file__)\n"
        "for name in s.SCHEMA_NAMES:\n"
        "    assert s.load_schema(name)['title'], name\n"
        "    s.validator(name)\n"
        "print(len(s.SCHEMA_NAMES))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": str(target)},
        check=True,
        capture_output=True,
        text=True,
    )
    location, count = result.stdout.split()
    assert location.startswith(str(target))
    assert count == str(len(SCHEMA_NAMES))


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_the_sdist_builds_the_same_wheel(
    wheels: dict[str, Path], wheels_from_sdists: dict[str, Path], name: str
) -> None:
    """Every file, with the same content: the sdist holds all the wheel is built from."""
    with zipfile.ZipFile(wheels[name]) as tree, zipfile.ZipFile(wheels_from_sdists[name]) as sdist:
        assert sorted(sdist.namelist()) == sorted(tree.namelist())
        for member in tree.namelist():
            assert sdist.read(member) == tree.read(member), member
