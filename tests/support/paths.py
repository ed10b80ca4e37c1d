"""Locations in the repository."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "schemas"
EXAMPLES = SCHEMAS / "examples"
PACKAGES = REPO / "packages"
SCHEMA_PACKAGE_COPY = PACKAGES / "dispatcher-schema" / "src" / "dispatcher" / "schema" / "schemas"
