"""The repository's tools (scripts in ``tools/``, not a package), imported for the tests."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from support.paths import REPO


def load_tool(name: str) -> ModuleType:
    """Import ``tools/<name>.py`` once, under the module name *name*."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    sys.modules[name] = tool  # dataclasses look their module up there
    try:
        spec.loader.exec_module(tool)
    except BaseException:
        del sys.modules[name]
        raise
    return tool
