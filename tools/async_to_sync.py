"""Generate the synchronous twins of async modules and async tests.

The async file is the one source of truth; its sync twin is derived mechanically, working on
the tokens of the code (never on the text of strings or comments):

- ``async`` and ``await`` go;
- names listed in the twin's rename table become their sync counterparts
  (``AsyncConnection`` -> ``Connection``, ``asubmit_task`` -> ``submit_task``, ...), in one
  pass, so a pair listed both ways is swapped;
- string literals listed in its string table (whole literals only, such as a function name
  quoted in an error message) are replaced;
- top-level definitions listed as async-only (an event-loop fixture, a test of something only
  the async API has) are left out;
- the module docstring becomes a header saying the file is generated, and from what.

The generation fails, naming the file, when a rule of a table matched nothing (a stale rule
hides a missing rename), and when the output still holds ``async``, ``await`` or a name that
means async code (``AsyncConnection``, ``asynccontextmanager``, ``anext``, ``aclose``, ...),
including a name of the ``a`` convention that has no rename: one the source defines with
``async def a<name>``, or imports from a module that also has the sync ``<name>`` (such as
``abatch`` beside ``batch``). A name of that shape that is no async twin of another stays
by a rename to itself.
The output is formatted with the ruff version pinned in ``hatch.toml``; another version
stops the generation, since its formatting may differ.

Run ``hatch run generate-sync`` after editing an async source; a test fails when a generated
file is stale.
"""

from __future__ import annotations

import ast
import functools
import io
import re
import subprocess
import sys
import tokenize
import tomllib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PUBLISHER = REPO / "packages/dispatcher-publisher/src/dispatcher"
MODULE_ROOTS = (*sorted(REPO.glob("packages/*/src")), REPO / "tests")
"""Where the modules that the async sources import from are found (``support`` in tests)."""
INTEGRATION = REPO / "tests/integration"
HATCH_TOML = REPO / "hatch.toml"


class GenerationError(Exception):
    """The sync twin cannot be generated; the message says which file and why."""


@dataclass(frozen=True)
class Twin:
    """An async source file and how its sync twin is derived from it."""

    source: Path
    target: Path
    summary: str
    """First line of the twin's docstring."""
    renames: Mapping[str, str]
    """Async name -> sync name, for the names of the code (each must occur in the source)."""
    strings: Mapping[str, str] = field(default_factory=dict)
    """Whole string literal -> its replacement (each must occur in the source)."""
    async_only: frozenset[str] = frozenset()
    """Top-level definitions left out of the twin (each must be defined in the source)."""


SUBMIT = Twin(
    source=PUBLISHER / "publish/submit_async.py",
    target=PUBLISHER / "publish/submit_sync.py",
    summary="Sending task messages from synchronous code.",
    renames={
        "AsyncConnection": "Connection",
        "AsyncBatchBlock": "BatchBlock",
        "__aenter__": "__enter__",
        "__aexit__": "__exit__",
        "_aexit_block": "_exit_block",
        "asubmit_task": "submit_task",
        "abatch": "batch",
        "asend": "send",
        "asend_jobs": "send_jobs",
        "aown_database": "own_database",
        "_asend_groups": "_send_groups",
        "_asend_together": "_send_together",
        "asend_with_notifies": "send_with_notifies",
        "async_require_loop": "sync_require_loop",
    },
    strings={"asend_own": "send_own", "abatch": "batch", "batch": "abatch"},
)

NOTIFY = Twin(
    source=PUBLISHER / "publish/notify_async.py",
    target=PUBLISHER / "publish/notify_sync.py",
    summary="The pg_notify broker's sends from synchronous code: task NOTIFYs, control commands.",
    renames={
        "AsyncConnection": "Connection",
        "provider_registry_async": "provider_registry_sync",
        "asend": "send",
        "acontrol_with_reply": "control_with_reply",
    },
    # The refusal of a connection of the wrong kind names the function to use instead.
    strings={"asubmit_task": "submit_task", "submit_task": "asubmit_task"},
)

SLOTS = Twin(
    source=PUBLISHER / "publish/slots_async.py",
    target=PUBLISHER / "publish/slots_sync.py",
    summary="The connections of one provider, one per owner, from synchronous code.",
    renames={
        "AsyncSlots": "Slots",
        "AsyncConnection": "Connection",
        "AsyncCursor": "Cursor",
        "async_owner": "sync_owner",
        "async_opening_lock": "sync_opening_lock",
        "async_close_when_free": "sync_close_when_free",
        "async_later": "sync_later",
    },
)

PROVIDER = Twin(
    source=PUBLISHER / "publish/provider_async.py",
    target=PUBLISHER / "publish/provider_sync.py",
    summary="The SDK's own connection to one conninfo, from synchronous code.",
    renames={
        "AsyncConnectionProvider": "ConnectionProvider",
        "AsyncConnection": "Connection",
        "AsyncCursor": "Cursor",
        "AsyncSlots": "Slots",
        "slots_async": "slots_sync",
        "async_inside": "sync_inside",
    },
)

PROVIDER_REGISTRY = Twin(
    source=PUBLISHER / "publish/provider_registry_async.py",
    target=PUBLISHER / "publish/provider_registry_sync.py",
    summary="The SDK's own connections, one provider per conninfo, from synchronous code.",
    renames={
        "AsyncConnectionProvider": "ConnectionProvider",
        "provider_async": "provider_sync",
        "async_in_loop": "sync_in_loop",
        "aclose_connections": "close_connections",
    },
)

QUEUE = Twin(
    source=PUBLISHER / "publish/queue_async.py",
    target=PUBLISHER / "publish/queue_sync.py",
    summary="The durable queue's I/O from synchronous code.",
    renames={
        "AsyncConnection": "Connection",
        "AsyncCursor": "Cursor",
        "provider_registry_async": "provider_registry_sync",
        "astore": "store",
        "aget_job": "get_job",
        "ajobs": "jobs",
    },
    # The refusal of a connection of the wrong kind names the function to use instead.
    strings={
        "asubmit_task": "submit_task",
        "submit_task": "asubmit_task",
        "aget_job": "get_job",
        "get_job": "aget_job",
        "ajobs": "jobs",
        "jobs": "ajobs",
    },
)

CONTROL = Twin(
    source=PUBLISHER / "control/client_async.py",
    target=PUBLISHER / "control/client_sync.py",
    summary="Control commands from synchronous code.",
    renames={
        "acontrol_with_reply": "control_with_reply",
        "acontrol": "control",
        "asend": "send",
        "async_require_loop": "sync_require_loop",
    },
    strings={"asend_own": "send_own"},
)

PUBLISH_TESTS = Twin(
    source=INTEGRATION / "test_publish_async.py",
    target=INTEGRATION / "test_publish.py",
    summary="The sync publishing API over real PostgreSQL: what a LISTENing connection receives.",
    renames={
        "AsyncConnection": "Connection",
        "AsyncIterator": "Iterator",
        "adelay": "delay",
        "aapply_async": "apply_async",
        "asubmit_task": "submit_task",
        "abatch": "batch",
        "aclose_connections": "close_connections",
        "acontrol_with_reply": "control_with_reply",
        "agather": "gather",
        "ablock_on": "block_on",
    },
    # The refusal of a connection of the wrong kind names the function to use instead.
    strings={
        "asubmit_task": "submit_task",
        "submit_task": "asubmit_task",
        "aapply_async": "apply_async",
        "apply_async": "aapply_async",
    },
    async_only=frozenset(
        {
            "pytestmark",
            "anyio_backend",
            "test_a_sync_call_inside_an_async_batch_joins_it",
            "test_each_event_loop_gets_a_working_connection",
            "test_a_new_event_loop_for_each_publish_leaks_no_classes",
            "test_event_loops_of_several_threads_publish_at_once_each_on_its_own_connection",
            # Its sync twin is a test of threads: test_publish_threads.py, in a child process.
            "test_closing_the_connection_while_tasks_of_its_loop_publish_loses_no_send",
            "test_a_task_started_in_a_batch_sends_what_it_submits_after_the_block",
            "test_a_task_started_in_an_inner_block_joins_the_outer_one_after_the_inner_one",
        }
    ),
)

DURABLE_TESTS = Twin(
    source=INTEGRATION / "test_publish_durable_async.py",
    target=INTEGRATION / "test_publish_durable.py",
    summary="Publishing to durable queues from synchronous code: the rows it stores.",
    renames={
        "AsyncConnection": "Connection",
        "AsyncIterator": "Iterator",
        "adelay": "delay",
        "aapply_async": "apply_async",
        "asubmit_task": "submit_task",
        "abatch": "batch",
        "aclose_connections": "close_connections",
        "aget_job": "get_job",
        "ajobs": "jobs",
    },
    async_only=frozenset({"pytestmark", "anyio_backend"}),
)

CONTROL_TESTS = Twin(
    source=INTEGRATION / "test_control_client_async.py",
    target=INTEGRATION / "test_control_client.py",
    summary="The sync control client over real PostgreSQL and a socket, against fake services.",
    renames={"acontrol_with_reply": "control_with_reply", "acontrol": "control"},
    async_only=frozenset({"pytestmark", "anyio_backend"}),
)

TWINS = (
    SUBMIT,
    NOTIFY,
    SLOTS,
    PROVIDER,
    PROVIDER_REGISTRY,
    QUEUE,
    CONTROL,
    PUBLISH_TESTS,
    CONTROL_TESTS,
    DURABLE_TESTS,
)

LEFTOVER_NAMES = frozenset(
    {
        "async",
        "await",
        "asyncio",
        "anyio",
        "asynccontextmanager",
        "anext",
        "aiter",
        "aclose",
        "__aenter__",
        "__aexit__",
        "__aiter__",
        "__anext__",
    }
)
"""Names that mean async code; so does any name starting with ``Async`` or ``async_``."""

_F_STRING_STARTS = tuple(
    getattr(tokenize, name)
    for name in ("FSTRING_START", "TSTRING_START")
    if hasattr(tokenize, name)
)
_F_STRING_ENDS = tuple(
    getattr(tokenize, name) for name in ("FSTRING_END", "TSTRING_END") if hasattr(tokenize, name)
)
_LITERAL = re.compile(
    r"(?P<prefix>[A-Za-z]*)(?P<quote>'{3}|\"{3}|'|\")(?P<body>.*)(?P=quote)", re.S
)


def is_leftover(name: str) -> bool:
    """Tell whether the name *name* means async code that has no place in a sync twin."""
    return name in LEFTOVER_NAMES or name.startswith(("Async", "async_"))


def generate(twin: Twin, source: str) -> str:
    """Return the formatted text of *twin*'s target, generated from the async *source*.

    :raises GenerationError: when a rule matched nothing or async code is left.
    """
    name = _display(twin.source)
    header = (
        f'"""{twin.summary}\n\nGenerated from ``{twin.source.name}`` by '
        '``tools/async_to_sync.py``; do not edit.\n"""\n'
    )
    body = convert(
        source,
        renames=twin.renames,
        strings=twin.strings,
        async_only=twin.async_only,
        filename=name,
    )
    text = format_code(header + body, twin.target)
    unrenamed = async_convention_names(source, twin.source) - set(twin.renames.values())
    problems = find_leftovers(text, unrenamed)
    if problems:
        where = "\n".join(f"{_display(twin.target)}:{line}: {what}" for line, what in problems)
        left = sorted({what for _, what in problems} & {repr(n) for n in unrenamed})
        hint = (
            f"\n{', '.join(left)}: async by the `a` naming convention, with no rename: add "
            f"`{left[0]}: <its sync name>` to the renames of {_twin_name(twin)} in "
            "tools/async_to_sync.py"
            if left
            else ""
        )
        raise GenerationError(f"async code left in the sync twin of {name}:\n{where}{hint}")
    return text


def async_convention_names(source: str, path: Path) -> frozenset[str]:
    """The names of the async module text *source* that are async by the ``a`` convention.

    Those it defines with ``async def a<name>`` (``_a<name>`` too), and those ``a<name>`` it
    imports from a module (found in :data:`MODULE_ROOTS`) that also has ``<name>``.
    """
    tree = ast.parse(source, str(path))
    found = {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.AsyncFunctionDef) and node.name.lstrip("_").startswith("a")
    }
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        candidates = [a for a in node.names if a.name.lstrip("_").startswith("a")]
        module = _module_file(node.module, node.level, path) if candidates else None
        if module is None:
            continue
        bound = _top_level_names(module)
        for alias in candidates:
            underscores = alias.name[: len(alias.name) - len(alias.name.lstrip("_"))]
            if underscores + alias.name.lstrip("_")[1:] in bound:
                found.add(alias.asname or alias.name)
    return frozenset(found)


def _module_file(module: str | None, level: int, importer: Path) -> Path | None:
    """The file of the module that ``from <level dots><module> import`` in *importer* names."""
    if not module:
        return None  # `from . import x`: x is a module, not a function
    for base in [importer.parents[level - 1]] if level else MODULE_ROOTS:
        stem = base.joinpath(*module.split("."))
        for candidate in (stem.with_suffix(".py"), stem / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _top_level_names(path: Path) -> set[str]:
    """The names bound at the top level of the module file *path* (imports included)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8"), str(path)).body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            names.update(a.asname or a.name.partition(".")[0] for a in node.names)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        else:
            name = _defined_name(node)
            if name is not None:
                names.add(name)
    return names


def _twin_name(twin: Twin) -> str:
    """The name of the table of *twin* in this module (``CONTROL``, ...)."""
    for name, value in globals().items():
        if value is twin and name.isupper():
            return name
    return f"the Twin of {_display(twin.source)}"


def convert(
    source: str,
    *,
    renames: Mapping[str, str],
    strings: Mapping[str, str] | None = None,
    async_only: frozenset[str] = frozenset(),
    filename: str = "<source>",
) -> str:
    """Return the sync code of the async module text *source*, without its docstring.

    :raises GenerationError: when a rule matched nothing in *source*.
    """
    strings = strings or {}
    text, dropped = _drop_definitions(source, async_only, filename)
    text, counts = _rewrite_tokens(text, renames, strings, filename)
    unmatched = [f"async-only definition {n!r}" for n in sorted(async_only - dropped)]
    unmatched += [f"rename {a!r} -> {s!r}" for a, s in renames.items() if not counts["n", a]]
    unmatched += [f"string {a!r} -> {s!r}" for a, s in strings.items() if not counts["s", a]]
    if unmatched:
        raise GenerationError(
            f"{filename}: every rule must match, and these matched nothing (remove them from "
            "the table in tools/async_to_sync.py, or fix the source): " + "; ".join(unmatched)
        )
    return text


def _drop_definitions(source: str, names: frozenset[str], filename: str) -> tuple[str, set[str]]:
    """Remove the module docstring and the top-level definitions of *names*."""
    try:
        tree = ast.parse(source, filename)
    except SyntaxError as exc:
        raise GenerationError(f"{filename}:{exc.lineno}: {exc.msg}") from None
    lines = source.splitlines(keepends=True)
    gone: set[int] = set()  # 0-based line indexes
    found: set[str] = set()
    for index, node in enumerate(tree.body):
        if index == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            if isinstance(node.value.value, str):
                gone.update(range(node.lineno - 1, _end(node)))
            continue
        name = _defined_name(node)
        if name is None or name not in names:
            continue
        found.add(name)
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1
        while first > 0 and lines[first - 1].lstrip().startswith("#"):
            first -= 1  # the comment that introduces the definition goes with it
        gone.update(range(first, _end(node)))
    return "".join(line for i, line in enumerate(lines) if i not in gone), found


def _end(node: ast.stmt) -> int:
    return node.end_lineno if node.end_lineno is not None else node.lineno


def _defined_name(node: ast.stmt) -> str | None:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return node.name
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        target = node.targets[0]
        return target.id if isinstance(target, ast.Name) else None
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id
    return None


def _rewrite_tokens(
    text: str, renames: Mapping[str, str], strings: Mapping[str, str], filename: str
) -> tuple[str, Counter[tuple[str, str]]]:
    """Apply the keyword removals and the tables to the tokens of the code in *text*."""
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))

    def offset(position: tuple[int, int]) -> int:
        return starts[position[0] - 1] + position[1]

    edits: list[tuple[int, int, str]] = []
    counts: Counter[tuple[str, str]] = Counter()
    tokens = _tokens(text, filename)
    for index, token in _outside_f_strings(tokens):
        if token.type == tokenize.NAME and token.string in ("async", "await"):
            # The keyword and the space after it: up to where the next token starts.
            edits.append((offset(token.start), offset(tokens[index + 1].start), ""))
        elif token.type == tokenize.NAME and token.string in renames:
            counts["n", token.string] += 1
            edits.append((offset(token.start), offset(token.end), renames[token.string]))
        elif token.type == tokenize.STRING and strings:
            literal = _LITERAL.fullmatch(token.string)
            if literal and literal["body"] in strings and "f" not in literal["prefix"].lower():
                counts["s", literal["body"]] += 1
                new = literal["prefix"] + literal["quote"] + strings[literal["body"]]
                edits.append((offset(token.start), offset(token.end), new + literal["quote"]))
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    return text, counts


def _tokens(text: str, filename: str) -> list[tokenize.TokenInfo]:
    try:
        return list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError) as exc:
        raise GenerationError(f"{filename}: cannot tokenize: {exc}") from None


def _outside_f_strings(
    tokens: list[tokenize.TokenInfo],
) -> Iterator[tuple[int, tokenize.TokenInfo]]:
    """The tokens with their indexes, less those inside f-strings (Python 3.12+ tokenizes
    their fields).

    An f-string is left as it is, so that the output does not depend on the Python version;
    :func:`find_leftovers` looks inside them.
    """
    depth = 0
    for index, token in enumerate(tokens):
        if token.type in _F_STRING_STARTS:
            depth += 1
        elif token.type in _F_STRING_ENDS:
            depth -= 1
        elif not depth:
            yield index, token


def find_leftovers(text: str, also: frozenset[str] = frozenset()) -> list[tuple[int, str]]:
    """Return ``(line, description)`` for each piece of async code in the module *text*.

    The names in *also* count as async code too (see :func:`async_convention_names`).
    """
    found: set[tuple[int, str]] = set()
    tokens = _tokens(text, "<generated>")
    for _, token in _outside_f_strings(tokens):
        if token.type == tokenize.NAME and (is_leftover(token.string) or token.string in also):
            found.add((token.start[0], repr(token.string)))
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.JoinedStr):
            for inner in ast.walk(node):
                for name in _async_names(inner, also):
                    found.add((getattr(inner, "lineno", node.lineno), repr(name)))
    return sorted(found)


def _async_names(node: ast.AST, also: frozenset[str]) -> list[str]:
    """The async keywords and names of *node* itself (not of its children)."""
    if isinstance(node, ast.Await):
        return ["await"]
    if isinstance(node, ast.comprehension) and node.is_async:
        return ["async"]
    if isinstance(node, ast.Name) and (is_leftover(node.id) or node.id in also):
        return [node.id]
    if isinstance(node, ast.Attribute) and (is_leftover(node.attr) or node.attr in also):
        return [node.attr]
    return []


def format_code(text: str, target: Path) -> str:
    """Sort the imports (renames reorder them), drop unused ones and format, as lint expects.

    :raises GenerationError: when the installed ruff is not the version pinned in hatch.toml.
    """
    check_formatter(installed_ruff_version(), pinned_ruff_version())
    ruff = [sys.executable, "-m", "ruff"]
    stdin = ["--stdin-filename", _display(target), "-"]
    check = ["check", "--select", "I,F401", "--fix", "--exit-zero", *stdin]
    for command in (check, ["format", *stdin]):
        text = subprocess.run(
            ruff + command, input=text, capture_output=True, text=True, check=True, cwd=REPO
        ).stdout
    return text


def check_formatter(installed: str, pinned: str) -> None:
    """Refuse to format with a ruff other than the pinned one: its output may differ.

    :raises GenerationError: when *installed* is not *pinned*.
    """
    if installed != pinned:
        raise GenerationError(
            f"the generated files are formatted with ruff {pinned} (pinned in hatch.toml), but "
            f"ruff {installed} is installed here, whose formatting may differ: run the "
            "generator in the project's environment (`hatch run generate-sync`; after a change "
            "of the pin, `hatch env prune` first), or change the pin and regenerate"
        )


@functools.cache
def installed_ruff_version() -> str:
    """Return the version of the ruff that this Python runs.

    :raises GenerationError: when ruff is not installed.
    """
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ruff", "--version"], capture_output=True, text=True, check=True
        )
    except subprocess.CalledProcessError as exc:
        raise GenerationError(
            f"cannot run ruff, which formats the generated files: {exc.stderr.strip()}"
        ) from None
    return done.stdout.split()[-1]


def pinned_ruff_version(hatch_toml: str | None = None) -> str:
    """Return the ruff version pinned by the environment of *hatch_toml* that installs ruff.

    The first environment (in file order) whose ``dependencies`` or ``extra-dependencies``
    name ruff decides.

    :raises GenerationError: when no environment names ruff or it is not pinned with ``==``.
    """
    if hatch_toml is None:
        hatch_toml = HATCH_TOML.read_text(encoding="utf-8")
    ruff_requirements = [
        requirement.strip()
        for env in tomllib.loads(hatch_toml).get("envs", {}).values()
        for requirement in [*env.get("dependencies", []), *env.get("extra-dependencies", [])]
        if re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower() == "ruff"
    ]
    pin = (
        re.fullmatch(r"ruff\s*==\s*([0-9][^\s,;]*)", ruff_requirements[0], re.I)
        if ruff_requirements
        else None
    )
    if pin is not None:
        return pin[1]
    raise GenerationError(
        "hatch.toml must pin ruff with `ruff==<version>` in the dependencies of its "
        "environment: the generated files are formatted with it, and must not change with "
        "its version"
    )


def _display(path: Path) -> str:
    return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else str(path)


def expected_outputs() -> dict[Path, str]:
    """Map each generated file to the text it should have.

    :raises GenerationError: when a twin cannot be generated.
    """
    return {twin.target: generate(twin, twin.source.read_text(encoding="utf-8")) for twin in TWINS}


def main() -> int:
    """Write every generated file; return the exit status."""
    try:
        outputs = expected_outputs()
    except GenerationError as exc:
        print(f"async_to_sync: {exc}", file=sys.stderr)
        return 1
    for target, text in outputs.items():
        target.write_text(text, encoding="utf-8")
        print(f"wrote {_display(target)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
