"""The one config source: typed dataclasses, a YAML file for defaults, CLI flags on top.

timm-style two stages: ``--config file.yaml`` (or the name of a shipped recipe,
``--config resnet50_imagenet``) sets the defaults, every dataclass field is also a kebab-case flag
that overrides it, and the resolved config is saved next to the run
(``save_config``) so a result can always be traced back to the exact knobs that made it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
RECIPES = Path(__file__).resolve().parent / "recipes"  # package data: in a wheel as in a checkout


class ConfigError(ValueError):
    """A config file or flag that cannot be turned into the job's dataclass."""


class UsageError(ConfigError):
    """A flag whose value cannot work (a missing path, an unknown model): the user's to fix.

    The message starts with the flag and says what was expected; the CLI prints it as one line
    and exits with status 2 (``birdray.checks`` raises it before anything is started).
    """


# A config has a few anchors at most. Aliases of aliases multiply: 63 of them, 9 to a level, are
# 43 million strings once anything walks the value (471 bytes grew past 1.4 GB); 20 stay small.
MAX_YAML_ALIASES = 20


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice (the last one silently won) and more
    than ``MAX_YAML_ALIASES`` alias uses (471 bytes of nested anchors grew past 1.4 GB)."""

    aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_YAML_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_YAML_ALIASES} aliases (*name)")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.YAMLError(
                    f"key {key!r} is given twice (line {key_node.start_mark.line + 1})"
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def _short(value: Any) -> str:
    shown = reprlib.Repr()
    shown.maxlevel, shown.maxlist, shown.maxdict, shown.maxstring = 2, 4, 4, 40
    return shown.repr(value)


def read_yaml(text: str) -> Any:
    """YAML as birdray reads every config and flag: safe types only, no repeated keys, few
    aliases."""
    return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no Python objects


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return True, args[0]
    return False, tp


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Turn a YAML/CLI value into the field's declared type, or say clearly why not."""
    optional, inner = _is_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{flag(name)} ({name}): null is not allowed")
    if isinstance(value, str) and optional and value.lower() in ("none", "null", ""):
        return None
    origin = typing.get_origin(inner)
    try:
        if inner is bool:
            if isinstance(value, str):
                low = value.lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if inner in (int, float, str):
            if inner is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            if isinstance(value, (bool, list, tuple, dict)):  # yes -> 1, [a, b] -> "['a', 'b']"
                raise TypeError(value)
            return inner(value)
        if origin in (list, tuple, dict) or inner in (list, dict):
            listed = origin in (list, tuple) or inner is list
            if isinstance(value, str):
                value = _yaml_value(value, listed)
            if listed:
                if not isinstance(value, (list, tuple)):
                    value = [value]
                args = typing.get_args(inner)
                item_tp = args[0] if args else Any
                items = [v if item_tp is Any else _coerce(f"{name}[]", item_tp, v) for v in value]
                return tuple(items) if origin is tuple else items
            if not isinstance(value, dict):
                raise ValueError(value)
            return dict(value)
        return value
    except (TypeError, ValueError) as exc:
        what = getattr(inner, "__name__", str(inner))
        why = f": {exc}" if "YAML" in str(exc) else ""
        shown = _short(value)  # not the whole of a nested value
        raise ConfigError(f"{flag(name)} ({name}): cannot read {shown} as {what}{why}") from exc


def check_text_arguments(argv: list[str]) -> None:
    """Every argument must be UTF-8 text: a path holding other bytes (a Latin-1 folder name)
    reaches Python as lone surrogates, and Ray's worker, which takes the process's command line
    as UTF-8, died inside ``ray.init`` with a ``UnicodeEncodeError`` traceback."""
    for arg in argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise UsageError(
                f"argument '{shown}' is not valid UTF-8 (Ray and Parquet need UTF-8 text): "
                "rename it, or link to it under a UTF-8 name"
            ) from None


def _yaml_value(text: str, listed: bool) -> Any:
    """A flag's YAML (``[1, 2]``, ``{a: 1}``). For a list, a bare word YAML cannot read (``*``,
    ``&x``: alias and anchor marks) is that one word; a malformed collection is the user's error,
    said as a ``ValueError`` (a ``yaml`` traceback before)."""
    try:
        return read_yaml(text)
    except yaml.YAMLError as exc:
        if listed and not text.lstrip().startswith(("[", "{")):
            return [text]
        where = getattr(exc, "problem", None) or type(exc).__name__
        raise ValueError(f"not valid YAML ({where})") from exc


def numbers_out_of_range(
    settings: Any, least: dict[str, float] | None = None
) -> list[tuple[str, float, float]]:
    """``(field, value, floor)`` of each number of the dataclass ``settings`` that is not finite
    or below its floor (``least``, else 0; ``-math.inf`` for one that may be negative). NaN
    passed every ``< 0`` check, and an inf lr or a negative delay went on to fail after Ray
    had started; Serve's bounds, training's and scoring's pre-flights all ask this."""
    least = least or {}
    wrong = []
    for spec in dataclasses.fields(settings):
        value = getattr(settings, spec.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        floor = least.get(spec.name, 0)
        if not (math.isfinite(value) and value >= floor):
            wrong.append((spec.name, value, floor))
    return wrong


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build the dataclass, refusing unknown keys (a typo must not be silently ignored)."""
    hints = _field_types(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys: {', '.join(unknown)}")
    kwargs = {k: _coerce(k, hints[k], v) for k, v in data.items()}
    return cls(**kwargs)


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def config_path(config: str | Path) -> Path:
    """A YAML file as given, else the shipped recipe of that name (``demo``, ``demo.yaml``).

    A file the user has wins over a recipe of the same name; only a bare name (no folder) is
    looked up, so a mistyped path is never silently replaced by a recipe.
    """
    path = Path(config)
    if path.is_file():
        return path
    name = str(config)
    if "/" not in name and "\\" not in name:
        recipe = RECIPES / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
        if recipe.is_file():
            return recipe
    raise ConfigError(
        f"config file not found: {config} (shipped recipes: {', '.join(recipe_names())})"
    )


def load_yaml(config: str | Path) -> dict[str, Any]:
    path = config_path(config)
    try:
        data = read_yaml(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f"line {where.line + 1}: " if where else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: not a valid config: {line}{problem}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def _help_text(field: dataclasses.Field, default: Any) -> str:
    """The field's help with its default said once: not again when the help already explains
    it, not for ``''`` (the help says what empty means), ``required`` instead for a must-give."""
    meta = field.metadata or {}
    doc = meta.get("help", "")
    if meta.get("required"):
        return f"{doc} (required)".strip()
    if default == "" or "default" in doc.lower():
        return doc or " "
    return f"{doc} (default: {default!r})" if doc else f"default: {default!r}"


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> list[str]:
    """Add ``--config`` and one flag per field; defaults stay None so we know what was set.

    A ``bool`` field is a switch (``--use-gpu`` / ``--no-use-gpu``); ``switch_values`` turns the
    older ``--use-gpu true|false`` into these. Returns the switches' flags (with aliases).
    """
    parser.add_argument(
        "--config",
        help="YAML file with defaults for the flags below, or a shipped recipe's name "
        f"({', '.join(recipe_names())})",
    )
    hints = _field_types(cls)
    switches: list[str] = []
    for field in dataclasses.fields(cls):
        tp = hints[field.name]
        _, inner = _is_optional(tp)
        default = (
            field.default
            if field.default is not dataclasses.MISSING
            else (
                field.default_factory()  # type: ignore[misc]
                if field.default_factory is not dataclasses.MISSING
                else None
            )
        )
        names = [flag(field.name), *(field.metadata or {}).get("aliases", ())]
        help_text = _help_text(field, default)
        if inner is bool:
            switches += names
            parser.add_argument(
                *names,
                dest=field.name,
                default=None,
                action=argparse.BooleanOptionalAction,
                help=help_text,
            )
            continue
        metavar = (
            "YAML" if typing.get_origin(inner) in (list, dict) or inner in (list, dict) else None
        )
        parser.add_argument(*names, dest=field.name, default=None, metavar=metavar, help=help_text)
    return switches


def switch_values(argv: list[str], switches: list[str]) -> list[str]:
    """``--use-gpu true`` / ``--use-gpu=false`` (the form YAML-minded users and old scripts
    write) as the switches ``--use-gpu`` / ``--no-use-gpu``; a bare switch stays as it is."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        name, eq, value = token.partition("=")
        if name in switches and not eq and i + 1 < len(argv):
            low = argv[i + 1].lower()
            if low in TRUE_WORDS + FALSE_WORDS:
                value, eq = argv[i + 1], "="
                i += 1
        if name in switches and eq:
            low = value.lower()
            if low not in TRUE_WORDS + FALSE_WORDS:
                raise UsageError(f"{name}: expected a switch (or true|false), got {value!r}")
            token = name if low in TRUE_WORDS else "--no-" + name[2:]
        out.append(token)
        i += 1
    return out


def resolve(cls: type[T], args: argparse.Namespace | dict[str, Any]) -> T:
    """Dataclass defaults < YAML file < CLI flags."""
    values = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
    merged: dict[str, Any] = {}
    config_path = values.pop("config", None)
    if config_path:
        merged.update(load_yaml(config_path))
    hints = _field_types(cls)
    merged.update({k: v for k, v in values.items() if k in hints and v is not None})
    return from_dict(cls, merged)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config (what actually ran) as YAML."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


def field(default: Any, help: str, *, required: bool = False, aliases: tuple[str, ...] = ()) -> Any:
    """A dataclass field with a help text shown by ``--help``.

    ``required``: the job cannot run without it (its help says so instead of a default; YAML
    may still give it). ``aliases``: other flag names for it (timm's, where ours differ).
    """
    meta = {"help": help, "required": required, "aliases": aliases}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)
