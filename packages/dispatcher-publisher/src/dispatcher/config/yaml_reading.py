"""Reading a config file's YAML: bounded in size and values, safe, quoting none of its values.

A file is read up to :data:`MAX_CONFIG_BYTES`, loaded as plain data only (no Python object is
ever constructed), and refused past :data:`~dispatcher.config.unusable_values.MAX_CONFIG_VALUES`
values once its aliases are expanded. Every error names the line and column, never a value of
the file (one may be a secret).
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from typing import TYPE_CHECKING, Any, BinaryIO, Final

from dispatcher.config.errors import ConfigError, escaped
from dispatcher.config.unusable_values import MAX_CONFIG_VALUES

if TYPE_CHECKING:
    from ruamel.yaml.constructor import SafeConstructor
    from ruamel.yaml.error import MarkedYAMLError

MAX_CONFIG_BYTES: Final = 4 << 20
"""Largest config file read, in bytes (a config is a few kB)."""


def read_yaml(file_path: str | os.PathLike[str]) -> Any:
    """Read a YAML file (safe loading: plain data only).

    :raises ConfigError: when the file cannot be read or is not valid YAML; a syntax error
        names the line and column.
    """
    source = os.fspath(file_path)
    try:
        with open(file_path, "rb") as stream:
            data = read_limited(stream, source)
    except FileNotFoundError:
        raise ConfigError(source, [_not_found(source)]) from None
    except IsADirectoryError:
        raise ConfigError(source, ["is a directory, not a file"]) from None
    except PermissionError:
        raise ConfigError(source, ["permission denied"]) from None
    except OSError as exc:
        raise ConfigError(source, [exc.strerror or str(exc)]) from None
    return parse_yaml(source, data)


def _not_found(source: str) -> str:
    """Why *source* was not read: with the folder it was looked for in when it is relative.

    A relative path is read from the working directory, which is not always the one the
    reader thinks of (a service started elsewhere, a unit's ``WorkingDirectory``).
    """
    if os.path.isabs(source):
        return "file not found"
    return f"file not found in {escaped(os.getcwd())}"


def parse_yaml(source: str, data: bytes) -> Any:
    """The YAML document *data*, read from *source* (safe loading: plain data only).

    :raises ConfigError: when it is not UTF-8 or not valid YAML; a syntax error names the
        line and column.
    """
    from ruamel.yaml import YAML  # imported here: apps configured by a dict never need it
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, [f"not UTF-8 text (byte {exc.start})"]) from None
    yaml = YAML(typ="safe", pure=True)
    yaml.Constructor = _constructor_class()
    try:
        with warnings.catch_warnings():
            # ruamel warns (a duplicate anchor) with the lines' text, secrets included.
            warnings.simplefilter("ignore")
            document = yaml.load(text)
    except MarkedYAMLError as exc:
        raise ConfigError(source, [_yaml_problem(exc)]) from None
    except YAMLError as exc:
        raise ConfigError(
            source, [f"YAML error: {_unquoted(' '.join(str(exc).split()))}"]
        ) from None
    except RecursionError:
        raise ConfigError(source, ["YAML error: nested too deeply"]) from None
    except Exception as exc:  # its message may quote a value of the file
        raise ConfigError(
            source, [f"YAML error: the document could not be read ({type(exc).__name__})"]
        ) from None
    if _values_beyond(document, MAX_CONFIG_VALUES):
        raise ConfigError(
            source,
            [
                f"more than {MAX_CONFIG_VALUES} values once its YAML aliases are expanded "
                "(aliases of aliases, or an alias inside its own anchor?)"
            ],
        )
    return document


_TAG_PREFIX: Final = "tag:yaml.org,2002:"


@functools.cache
def _constructor_class() -> type[SafeConstructor]:
    """ruamel.yaml's safe constructor, whose failures name the value's place, never the value.

    A value's constructor (``int()``, ``float()``, ``datetime.date()``, a lookup of ``!!bool``'s
    words) fails with a plain exception quoting the value; here it becomes a
    :class:`~ruamel.yaml.constructor.ConstructorError` marked with the node's line and column.
    """
    from ruamel.yaml.constructor import ConstructorError, SafeConstructor
    from ruamel.yaml.error import YAMLError

    class Constructor(SafeConstructor):
        def construct_non_recursive_object(self, node: Any, tag: str | None = None) -> Any:
            try:
                return super().construct_non_recursive_object(node, tag)
            except (YAMLError, RecursionError):
                raise
            except Exception:  # its message quotes the value
                name = str(tag or node.tag)
                if name.startswith(_TAG_PREFIX):
                    name = "!!" + name.removeprefix(_TAG_PREFIX)
                else:  # not one of the standard tags (which have a constructor): not shown
                    name = "its tag"
                hint = (
                    " (an unquoted value that looks like a date or time is read as one: "
                    "quote a string)"
                    if name == "!!timestamp"
                    else ""
                )
                raise ConstructorError(
                    None, None, f"a value could not be read as {name}{hint}", node.start_mark
                ) from None

    return Constructor


def read_limited(stream: BinaryIO, source: str) -> bytes:
    """The bytes of the config file *stream*, refused past :data:`MAX_CONFIG_BYTES`.

    :raises ConfigError: when there are more (``/dev/zero`` given by mistake, say).
    """
    data = stream.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(source, [f"larger than {MAX_CONFIG_BYTES} bytes: not a config file?"])
    return data


def _values_beyond(document: Any, limit: int) -> bool:
    """Whether *document* holds more than *limit* values, counting each alias's anew.

    The count stops at the limit: an alias bomb (a few lines whose aliases of aliases expand
    to billions of values) costs no more than a large honest file.
    """
    pending = [document]
    seen = 0
    while pending:
        value = pending.pop()
        seen += 1
        if seen > limit:
            return True
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return False


_YAML_QUOTED: Final = re.compile(r"""\s*(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)")""")
"""A quoted part of a message of ruamel.yaml (with the spaces before it)."""

_DUPLICATE_KEY: Final = re.compile(r'found duplicate key "(.*?)" with value "', re.DOTALL)
_KEY_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,100}")


def _unquoted(text: str) -> str:
    r"""*text*, a message of ruamel.yaml, without the parts it quotes from the file.

    ruamel.yaml quotes values, aliases, anchors and tags of the file (a secret among them);
    what it quotes of its own is kept: a token (``'<block end>'``) or a single character
    (``'\t'``, ``'`'``).
    """

    def kept(match: re.Match[str]) -> str:
        quoted = match.group(1) if match.group(1) is not None else match.group(2)
        if re.fullmatch(r"<[a-z ]+>|.|\\(?:.|x[0-9a-f]+|u[0-9a-f]+)", quoted):
            return match.group(0)
        return ""

    return _YAML_QUOTED.sub(kept, text)


def _yaml_problem(exc: MarkedYAMLError) -> str:
    """The line, column and reason of *exc*, quoting nothing of the file's values.

    A duplicate key is named (when it is a plain name), never its values.
    """
    mark = exc.problem_mark or exc.context_mark
    duplicate = _DUPLICATE_KEY.match(exc.problem or "")
    if duplicate:
        key = duplicate.group(1)
        problem = (
            f"found duplicate key {key!r}" if _KEY_NAME.fullmatch(key) else "found a duplicate key"
        )
    else:
        problem = _unquoted(exc.problem or "")
    parts = (_unquoted(exc.context or ""), problem)
    what = ": ".join(part for part in parts if part) or "invalid YAML"
    if mark is None:
        return f"YAML syntax error: {what}"
    return f"line {mark.line + 1}, column {mark.column + 1}: YAML syntax error: {what}"
