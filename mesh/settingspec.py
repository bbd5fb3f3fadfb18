"""How a setting is declared, converted, checked and documented: one system for the mesh, runtime and puller.

A setting is a dataclass field whose ``metadata`` holds a ``Spec`` (made by ``setting()``): its environment
variable, its command-line flag, the aliases it also answers to (ModelMesh's names, with unit conversion),
its allowed range or choices, whether it is a secret, and one line of documentation. The three settings
objects (``mesh.settings.MeshSettings``, ``runtime_adapters.settings.RuntimeSettings``,
``puller.settings.PullerSettings``) are declared this way, so they convert values the same way, fail the same
way and are documented by one generator (``scripts/gen_config_docs.py``).

Every bad value fails at start with one message shape, naming where the value came from::

    MM_LEASE_TTL_S: 'abc' is not a number
    MM_LEASE_TTL_S: '-3' is not a positive number
    MM_TLS_CLIENT_AUTH: 'maybe' is not one of none, optional, require

Why our own and not pydantic-settings: that message shape, aliases that convert units (``SHUTDOWN_TIMEOUT_MS``
feeds a seconds setting) and an error when an alias and the native name are both set are each custom
validators there; the declaration here is a dataclass field either way, and the pod gains no compiled
dependency. Pure: nothing here reads the environment; callers pass the mapping in.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh.errors import MeshError
from mesh.redact import MASK

#: The key under which a field's ``Spec`` lives in ``dataclasses.Field.metadata``.
SPEC = "mesh.setting"


class SettingError(MeshError, ValueError):
    """A setting's value is unusable, or two names for one setting were both given. Raised at start."""


class NotA(ValueError):
    """Raised by converters and checks: the value is not ``what`` (e.g. ``a number``)."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


@dataclass(frozen=True)
class Alias:
    """Another environment name for a setting (ModelMesh's, usually). ``convert`` turns the alias's text into
    the setting's own text (``'30000'`` ms → ``'30.0'`` s) or raises ``NotA``; ``scale`` is the factor it
    applies to numbers, so range messages speak the alias's unit. ``note`` says what it does, for the docs."""

    env: str
    convert: Callable[[str], str] | None = None
    scale: float = 1.0
    note: str = ""


@dataclass(frozen=True)
class Spec:
    env: str | None
    doc: str
    flag: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    positive: bool = False
    choices: tuple[str, ...] = ()
    aliases: tuple[Alias, ...] = ()
    secret: bool = False
    what: str | None = None  # overrides the generated description of the allowed values
    check: Callable[[Any], None] | None = None  # extra check of the converted value; raises NotA


_UNSET: Any = object()


def setting(
    default: Any = _UNSET,
    env: str | None = None,
    doc: str = "",
    *,
    flag: str | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    positive: bool = False,
    choices: Iterable[str] = (),
    aliases: Iterable[Alias] = (),
    secret: bool = False,
    what: str | None = None,
    check: Callable[[Any], None] | None = None,
) -> Any:
    """A dataclass field carrying a ``Spec``. Secrets are left out of ``repr``. Numeric settings without a
    declared range must be non-negative (counts, sizes, ports, durations)."""
    spec = Spec(
        env=env,
        doc=doc,
        flag=flag,
        minimum=minimum,
        maximum=maximum,
        positive=positive,
        choices=tuple(choices),
        aliases=tuple(aliases),
        secret=secret,
        what=what,
        check=check,
    )
    meta = {SPEC: spec}
    if default is _UNSET:
        return field(metadata=meta, repr=not secret)
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta, repr=not secret)
    return field(default=default, metadata=meta, repr=not secret)


def spec_of(f: dataclasses.Field) -> Spec | None:
    return f.metadata.get(SPEC)


def specced_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if spec_of(f) is not None]


def flag_name(f: dataclasses.Field) -> str:
    spec = spec_of(f)
    return "--" + ((spec.flag if spec else None) or f.name).replace("_", "-")


def kind_of(f: dataclasses.Field) -> str:
    """The conversion kind from the field's annotation: str, int, float, bool, list, path, paths, json."""
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    t = t.replace(" ", "")
    if t in ("int", "float", "bool", "str"):
        return t
    if t.startswith("list["):
        return "list"
    if t in ("Path", "Path|None"):
        return "path"
    if t.startswith("tuple[Path"):
        return "paths"
    return "json"


def default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


# --------------------------------------------------------------------------------------------------------
# Conversion and checks


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _number(raw: Any) -> float:
    if isinstance(raw, bool):
        raise NotA("a number")
    if isinstance(raw, (int, float)):
        value = float(raw)
    else:
        try:
            value = float(str(raw).strip())
        except ValueError:
            raise NotA("a number") from None
    if not math.isfinite(value):
        raise NotA("a number")
    return value


def _to_int(raw: Any) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        try:
            return int(raw.strip())
        except ValueError:
            pass
    value = _number(raw)
    if not value.is_integer():
        raise NotA("an integer")
    return int(value)


def _to_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise NotA("a boolean (true or false)")


def _to_list(raw: Any) -> list[str]:
    if isinstance(raw, str):
        return [v.strip() for v in raw.split(",") if v.strip()]
    if isinstance(raw, (list, tuple)) and all(isinstance(v, str) for v in raw):
        return [v.strip() for v in raw if v.strip()]
    raise NotA("a comma-separated list")


def _to_paths(raw: Any) -> tuple[Path, ...]:
    if isinstance(raw, (str, os.PathLike)):
        return tuple(Path(p) for p in str(raw).split(os.pathsep) if p.strip())
    if isinstance(raw, (list, tuple)):
        return tuple(Path(p) for p in raw)
    raise NotA(f"a {os.pathsep}-separated list of paths")


def range_text(spec: Spec, scale: float = 1.0) -> str | None:
    """What the range allows, in words (numbers shown in the unit of a value scaled by ``scale``)."""

    def shown(v: float) -> str:
        v = v / scale
        return str(int(v)) if float(v).is_integer() else f"{v:g}"

    lo, hi = spec.minimum, spec.maximum
    if spec.positive and hi is None:
        return "a positive number"
    if spec.positive:
        return f"a positive number up to {shown(hi)}"
    if lo is not None and hi is not None:
        return f"a number between {shown(lo)} and {shown(hi)}"
    if lo is not None:
        return "a non-negative number" if lo == 0 else f"a number >= {shown(lo)}"
    if hi is not None:
        return f"a number <= {shown(hi)}"
    return None


def _check_range(spec: Spec, value: float, scale: float) -> None:
    lo = 0 if spec.minimum is None and not spec.positive else spec.minimum
    bounded = dataclasses.replace(spec, minimum=lo)
    if (
        (spec.positive and value <= 0)
        or (lo is not None and value < lo)
        or (spec.maximum is not None and value > spec.maximum)
    ):
        raise NotA(spec.what or range_text(bounded, scale) or "in range")


def convert(f: dataclasses.Field, raw: Any, *, scale: float = 1.0) -> Any:
    """``raw`` (text from the environment or a flag, a JSON value, or a typed value) as the field's type,
    checked against its spec. Raises ``NotA``."""
    spec = spec_of(f) or Spec(env=None, doc="")
    kind = kind_of(f)
    if kind == "int":
        value: Any = _to_int(raw)
        _check_range(spec, value, scale)
    elif kind == "float":
        value = _number(raw)
        _check_range(spec, value, scale)
    elif kind == "bool":
        value = _to_bool(raw)
    elif kind == "list":
        value = _to_list(raw)
    elif kind == "path":
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            value = None if f.default is None else Path(str(f.default))
        elif isinstance(raw, (str, os.PathLike)):
            value = Path(raw)
        else:
            raise NotA("a path")
    elif kind == "paths":
        value = _to_paths(raw)
    elif kind == "str":
        if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
            raise NotA("a string")
        value = str(raw)
    else:
        value = raw
    if spec.choices:
        by_lower = {c.lower(): c for c in spec.choices}
        if str(value).strip().lower() not in by_lower:
            raise NotA(spec.what or "one of " + ", ".join(spec.choices))
        value = by_lower[str(value).strip().lower()]
    if spec.check is not None:
        spec.check(value)
    return value


def shown_value(f: dataclasses.Field, raw: Any) -> str:
    """The value as an error message quotes it: masked for secrets."""
    spec = spec_of(f)
    if spec is not None and spec.secret:
        return MASK
    if isinstance(raw, str):
        return raw
    return json.dumps(raw) if isinstance(raw, (list, dict, bool)) or raw is None else str(raw)


def failure(source: str, f: dataclasses.Field, raw: Any, what: str) -> SettingError:
    return SettingError(f"{source}: '{shown_value(f, raw)}' is not {what}")


# --------------------------------------------------------------------------------------------------------
# Reading sources


@dataclass
class Given:
    """One value for one setting from one source: the text or value as given and where it came from."""

    raw: Any
    source: str  # an env name, a flag (``--port``), ``port (in FILE)``, or the field name (overrides)
    scale: float = 1.0
    convert: Callable[[str], str] | None = None


def from_environment(cls: type, env: Mapping[str, str]) -> dict[str, Given]:
    """Values of ``cls``'s settings named in ``env`` (native names and aliases). A setting named twice (an
    alias and the native name, or two aliases) is an error: which one was meant cannot be known."""
    out: dict[str, Given] = {}
    for f in specced_fields(cls):
        spec = spec_of(f)
        found: list[Given] = []
        if spec.env and spec.env in env:
            found.append(Given(env[spec.env], spec.env))
        for alias in spec.aliases:
            if alias.env in env:
                found.append(Given(env[alias.env], alias.env, alias.scale, alias.convert))
        if len(found) > 1:
            names = " and ".join(g.source for g in found)
            raise SettingError(f"{names} are both set and name the same setting ({f.name}): set only one")
        if found:
            out[f.name] = found[0]
    return out


def resolve(f: dataclasses.Field, given: Given) -> Any:
    """Convert and check one given value; a failure names its source and quotes the value as given."""
    raw = given.raw
    try:
        if given.convert is not None:
            raw = given.convert(str(raw))
        return convert(f, raw, scale=given.scale)
    except NotA as exc:
        raise failure(given.source, f, given.raw, exc.what) from None


def build(cls: type, given: Mapping[str, Given], *, fixed: Mapping[str, Any] | None = None) -> Any:
    """An instance of ``cls`` from resolved values (defaults for the rest); ``fixed`` are already typed."""
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for name, g in given.items():
        if name not in by_name:
            raise SettingError(f"{g.source}: unknown setting {name!r}")
        values[name] = resolve(by_name[name], g)
    values.update(fixed or {})
    return cls(**values)


# --------------------------------------------------------------------------------------------------------
# Alias converters (ModelMesh's names)


def milliseconds_to_seconds(text: str) -> str:
    return repr(_number(text) / 1000.0)


def port_to_local_address(text: str) -> str:
    try:
        port = _to_int(text)
    except NotA:
        raise NotA("a port number (1-65535)") from None
    if not 1 <= port <= 65535:
        raise NotA("a port number (1-65535)")
    return f"127.0.0.1:{port}"


def socket_path_to_address(text: str) -> str:
    if not text.strip():
        raise NotA("a unix socket path")
    return f"unix:{text.strip()}"


def file_contents(text: str) -> str:
    try:
        return Path(text).read_text()
    except (OSError, UnicodeDecodeError):
        raise NotA("a readable file") from None


# --------------------------------------------------------------------------------------------------------
# Documentation


def allowed_text(f: dataclasses.Field) -> str:
    """The kind and range of a setting in a few words, for the docs (``integer >= 1``, ``one of a, b``)."""
    spec = spec_of(f)
    kind = kind_of(f)
    if spec.choices:
        return spec.what or "one of " + ", ".join(spec.choices)
    if kind in ("int", "float"):
        noun = "integer" if kind == "int" else "number"
        lo = 0 if spec.minimum is None and not spec.positive else spec.minimum

        def num(v: float) -> str:
            return str(int(v)) if float(v).is_integer() else f"{v:g}"

        if spec.positive:
            bounds = "> 0" + (f", <= {num(spec.maximum)}" if spec.maximum is not None else "")
        elif spec.maximum is not None:
            bounds = f"{num(lo)} to {num(spec.maximum)}"
        else:
            bounds = f">= {num(lo)}"
        return f"{noun} {bounds}"
    return {
        "bool": "true or false",
        "list": "comma-separated list",
        "paths": f"{os.pathsep}-separated paths",
        "path": "path",
    }.get(kind, spec.what or "string")


def add_flags(
    parser: argparse.ArgumentParser, cls: type, *, exclude: Iterable[str] = (), repeatable: Iterable[str] = ()
) -> None:
    """One flag per setting of ``cls`` (``flag_name``; default None, so a flag not given leaves the
    environment's or the config file's value), its help naming the allowed values, the variable (with its
    aliases) and the default. ``repeatable`` settings take their flag several times (argparse ``append``)."""
    skip, many = set(exclude), set(repeatable)
    for f in specced_fields(cls):
        if f.name in skip:
            continue
        spec = spec_of(f)
        aliases = "".join(f", {a.env}" for a in spec.aliases)
        help_ = f"{spec.doc} [{allowed_text(f)}; env {spec.env}{aliases}; default {default_of(f)!r}]"
        action = "append" if f.name in many else "store"
        parser.add_argument(
            flag_name(f), dest=f.name, default=None, action=action, help=help_.replace("%", "%%")
        )


def describe_fields(cls: type) -> list[dict[str, Any]]:
    """One row per setting of ``cls``: name, flag, env, aliases, allowed values, default, doc, secret."""
    rows = []
    for f in specced_fields(cls):
        spec = spec_of(f)
        rows.append(
            {
                "name": f.name,
                "flag": flag_name(f),
                "env": spec.env or "",
                "aliases": [(a.env, a.note) for a in spec.aliases],
                "allowed": allowed_text(f),
                "default": default_of(f),
                "doc": spec.doc,
                "secret": spec.secret,
                "kind": kind_of(f),
            }
        )
    return rows
