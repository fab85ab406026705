"""moonraker.conf: parsing, ``[include ...]`` globs, ``[secrets]`` and typed options.

Spec: server.md "Get Server Configuration" (the ``config``/``orig``/``files``
response); Moonraker's configuration format (INI, ``#``/``;`` comments,
multi-line values indented).  Every option a component reads is recorded with
its parsed value (defaults included) for ``server.config``; options and
sections that nothing reads become the warnings ``server.info`` reports.
"""
from __future__ import annotations

import configparser
import glob
import json
import logging
import os
import re
from typing import Any, Callable, Iterable

log = logging.getLogger(__name__)

_SENTINEL = object()
#: The minimal example configuration that ``make run`` installs.
EXAMPLE_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "config", "moonraker.conf")
_SECRET_RE = re.compile(r"\{secrets\.([^{}\s]+)\}")


class ConfigError(Exception):
    """The configuration is invalid (bad syntax, a missing required option,
    a value out of range).  The message names the section and option."""


def _new_parser() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False,
                                       inline_comment_prefixes=(" #", " ;"))
    parser.optionxform = str  # type: ignore[assignment]  # keep option case
    return parser


class ConfigFile:
    """A parsed moonraker.conf with its includes.

    Args:
        path: the main configuration file (``DATA_PATH/config/moonraker.conf``).
            A missing file is an empty configuration.
    Raises:
        ConfigError: a file does not parse, or an include loops.
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.root = os.path.dirname(self.path)
        self.sections: dict[str, dict[str, str]] = {}
        self.files: list[dict[str, Any]] = []
        self.parsed: dict[str, dict[str, Any]] = {}
        self.accessed: dict[str, set[str]] = {}
        self.secrets: dict[str, Any] = {}
        self.runtime_warnings: list[str] = []
        if os.path.isfile(self.path):
            self._read(self.path, set())
        self._load_secrets()

    # -- reading ---------------------------------------------------------
    def _read(self, path: str, seen: set[str]) -> None:
        if path in seen:
            raise ConfigError(f"Recursive include of config file: {path}")
        seen.add(path)
        parser = _new_parser()
        try:
            with open(path, encoding="utf-8") as fh:
                parser.read_file(fh, path)
        except (configparser.Error, UnicodeDecodeError) as err:
            raise ConfigError(f"Error parsing config file {path}: {err}") from None
        rel = os.path.relpath(path, self.root)
        entry = {"filename": rel, "sections": []}
        self.files.append(entry)
        includes: list[str] = []
        for name in parser.sections():
            if name.startswith("include "):
                includes.append(name[8:].strip())
                continue
            entry["sections"].append(name)
            self.sections.setdefault(name, {}).update(dict(parser.items(name)))
        for pattern in includes:
            full = os.path.join(os.path.dirname(path), os.path.expanduser(pattern))
            matches = sorted(glob.glob(full))
            if not matches and not glob.has_magic(full):
                raise ConfigError(f"Include file not found: {pattern}")
            for match in matches:
                self._read(os.path.abspath(match), seen)

    def _load_secrets(self) -> None:
        # [secrets] is always in force (server.config lists its default)
        path = self.section("secrets").get("secrets_path", None)
        if not path:
            return
        path = os.path.expanduser(path)
        if not os.path.isabs(path):
            path = os.path.join(self.root, path)
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as err:
            self.runtime_warnings.append(f"[secrets]: unable to read {path}: {err.strerror}")
            return
        try:
            data = json.loads(text)
        except ValueError:
            parser = _new_parser()
            try:
                parser.read_string(text, path)
            except configparser.Error as err:
                raise ConfigError(f"Error parsing secrets file {path}: {err}") from None
            data = {s: dict(parser.items(s)) for s in parser.sections()}
        if isinstance(data, dict):
            self.secrets = data

    def resolve_secrets(self, value: str) -> str:
        """Replace ``{secrets.SECTION.KEY}`` with the value from the secrets
        file; an unknown secret raises ConfigError."""
        def sub(match: re.Match) -> str:
            node: Any = self.secrets
            for part in match.group(1).split("."):
                if not isinstance(node, dict) or part not in node:
                    raise ConfigError(f"Unknown secret: {match.group(1)}")
                node = node[part]
            return str(node)
        return _SECRET_RE.sub(sub, value)

    # -- access ----------------------------------------------------------
    def section(self, name: str) -> "ConfigSection":
        """The section ``name`` (it need not exist: getters then use defaults)."""
        self.accessed.setdefault(name, set())
        self.parsed.setdefault(name, {})
        return ConfigSection(self, name)

    def has_section(self, name: str) -> bool:
        """True when the configuration has ``[name]``."""
        return name in self.sections

    def prefix_sections(self, prefix: str) -> list[str]:
        """Names of the sections starting with ``prefix`` (``"webcam "``)."""
        return [s for s in self.sections if s.startswith(prefix)]

    def warnings(self) -> list[str]:
        """Moonraker's warnings for options and sections nothing read."""
        out = list(self.runtime_warnings)
        for name, opts in self.sections.items():
            if name not in self.accessed:
                out.append(
                    f"Unparsed config section [{name}] detected.  This may be the result "
                    "of a component that failed to load.  In the future this will result "
                    "in a startup error.")
                continue
            for opt in opts:
                if opt not in self.accessed[name]:
                    out.append(
                        f"Invalid config option '{opt}' detected in section [{name}]. "
                        "Remove the option to resolve this issue. In the future this "
                        "will result in a startup error.")
        return out

    def orig(self) -> dict[str, dict[str, str]]:
        """The raw text of every option, as written (the ``orig`` response)."""
        out: dict[str, dict[str, str]] = {"DEFAULT": {}}
        out.update({name: dict(opts) for name, opts in self.sections.items()})
        return out


class ConfigSection:
    """Typed getters for one section.  Each read records the option as used
    and its parsed value for ``server.config``.

    Every getter takes ``(option, default)``; with no default a missing option
    raises ConfigError.  ``minval``/``maxval`` bound numbers.
    """

    def __init__(self, cfg: ConfigFile, name: str) -> None:
        self.cfg = cfg
        self.name = name

    def __contains__(self, option: str) -> bool:
        return option in self.cfg.sections.get(self.name, {})

    def options(self) -> list[str]:
        """The option names written in this section."""
        return list(self.cfg.sections.get(self.name, {}))

    def _get(self, option: str, default: Any, conv: Callable[[str], Any],
             record: Callable[[Any], Any] | None = None) -> Any:
        raw_opts = self.cfg.sections.get(self.name, {})
        self.cfg.accessed[self.name].add(option)
        if option not in raw_opts:
            if default is _SENTINEL:
                raise ConfigError(f"No option '{option}' in section [{self.name}]")
            self.cfg.parsed[self.name][option] = default
            return default
        raw = raw_opts[option]
        try:
            value = conv(self.cfg.resolve_secrets(raw))
        except ConfigError:
            raise
        except (ValueError, TypeError) as err:
            raise ConfigError(
                f"Error parsing option '{option}' in section [{self.name}]: {err}") from None
        self.cfg.parsed[self.name][option] = record(value) if record else value
        return value

    def get(self, option: str, default: Any = _SENTINEL) -> Any:
        """The option as text (leading/trailing whitespace stripped)."""
        return self._get(option, default, lambda v: v.strip())

    def getint(self, option: str, default: Any = _SENTINEL, minval: int | None = None,
               maxval: int | None = None) -> Any:
        """The option as an int within ``[minval, maxval]``."""
        return self._get(option, default, lambda v: _bounded(int(v), minval, maxval))

    def getfloat(self, option: str, default: Any = _SENTINEL, minval: float | None = None,
                 maxval: float | None = None) -> Any:
        """The option as a float within ``[minval, maxval]``."""
        return self._get(option, default, lambda v: _bounded(float(v), minval, maxval))

    def getboolean(self, option: str, default: Any = _SENTINEL) -> Any:
        """The option as a bool (true/false, yes/no, on/off, 1/0)."""
        def conv(v: str) -> bool:
            low = v.strip().lower()
            if low in ("true", "yes", "on", "1"):
                return True
            if low in ("false", "no", "off", "0"):
                return False
            raise ValueError(f"not a boolean: {v!r}")
        return self._get(option, default, conv)

    def getlist(self, option: str, default: Any = _SENTINEL, separator: str = "\n") -> Any:
        """The option as a list of stripped, non-empty items split on
        ``separator`` (newline by default)."""
        def conv(v: str) -> list[str]:
            return [p.strip() for p in v.split(separator) if p.strip()]
        return self._get(option, default, conv)

    def getdict(self, option: str, default: Any = _SENTINEL,
                value_conv: Callable[[str], Any] | None = None) -> Any:
        """A multi-line ``key=value`` option as a dict (a line without ``=``
        maps to None)."""
        def conv(v: str) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for line in v.splitlines():
                line = line.strip()
                if not line:
                    continue
                key, sep, val = line.partition("=")
                val = val.strip() if sep else None
                if val is not None and value_conv is not None:
                    val = value_conv(val)
                out[key.strip()] = val
            return out
        return self._get(option, default, conv)


def _bounded(value: Any, minval: Any, maxval: Any) -> Any:
    if minval is not None and value < minval:
        raise ValueError(f"value {value} is below the minimum {minval}")
    if maxval is not None and value > maxval:
        raise ValueError(f"value {value} is above the maximum {maxval}")
    return value


def write_default_config(path: str, klippy_socket: str, extra: Iterable[str] = ()) -> None:
    """Write the minimal moonraker.conf (``config/moonraker.conf`` of the
    checkout, with ``klippy_uds_address`` set to ``klippy_socket``) at
    ``path`` if none exists (used by ``make run`` for a fresh
    ``printer_data``); ``extra`` lines are appended."""
    if os.path.exists(path):
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(EXAMPLE_CONFIG, encoding="utf-8") as fh:
        text = fh.read()
    text = re.sub(r"(?m)^klippy_uds_address:.*$", f"klippy_uds_address: {klippy_socket}", text)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text + "".join(f"{line}\n" for line in extra))
