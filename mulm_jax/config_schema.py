"""The config dataclasses as command-line flags (and, through mulm_jax.api.schemas, as request bodies) and their
range checks: each field's type, default, help text and bounds are declared once, with `config.setting`, and read
here."""

from __future__ import annotations

import argparse
import dataclasses
import operator
import types
import typing
from dataclasses import dataclass
from typing import Any, Iterable, Literal


@dataclass(frozen=True)
class Option:
    """One config field as a flag or a request body field carries it."""

    name: str  # the dataclass field
    public: str  # the flag's and the body field's name: the field's alias, else its name
    type: Any  # bool, int, float, str or a Literal; for a tuple field, its items'
    many: bool  # a tuple field: a repeatable flag, an array (or one value) in a body
    optional: bool  # None is a value (Optional[...])
    default: Any
    help: str
    bounds: dict[str, float]  # ge, gt, le, lt: the range of the value (of each item, for a tuple field)
    metavar: str | None  # the flag's value in --help; None: N, X or the public name, by type


def options(cls: type, exclude: Iterable[str] = ()) -> list[Option]:
    """The fields of config dataclass `cls` but those named in `exclude`, each of which must be declared with
    `config.setting`. A field that no flag or body field can carry (a nested dataclass) must be excluded by name."""
    fields = dataclasses.fields(cls)
    if unknown := set(exclude) - {f.name for f in fields}:
        raise ValueError(f"{cls.__name__} has no field {', '.join(sorted(unknown))} to exclude")
    hints = typing.get_type_hints(cls)
    found = []
    for f in fields:
        if f.name in exclude:
            continue
        where = f"{cls.__name__}.{f.name}"
        if "help" not in f.metadata:
            raise TypeError(f"{where} has no help text: declare it with config.setting(default, help)")
        tp, optional = _without_none(hints[f.name])
        many = typing.get_origin(tp) is tuple
        if many:
            tp = typing.get_args(tp)[0]
        if tp not in (bool, int, float, str) and typing.get_origin(tp) is not Literal:
            raise TypeError(f"{where}: no flag or body field carries a {tp!r}; exclude it")
        found.append(
            Option(
                f.name,
                f.metadata["alias"] or f.name,
                tp,
                many,
                optional,
                f.default,
                f.metadata["help"],
                f.metadata["bounds"],
                f.metadata["metavar"],
            )
        )
    return found


_TESTS = {"ge": (">=", operator.ge), "gt": (">", operator.gt), "le": ("<=", operator.le), "lt": ("<", operator.lt)}


def within(value: float, bounds: dict[str, float]) -> bool:
    """Whether `value` lies in the range `bounds` (ge, gt, le, lt) describe."""
    return all(_TESTS[op][1](value, bound) for op, bound in bounds.items())


def range_text(bounds: dict[str, float]) -> str:
    """The range `bounds` (ge, gt, le, lt) describe, in words: `in [0, 1)`, `in (0, 1]`, `>= 1`."""
    shown = {op: str(bound) if isinstance(bound, int) else f"{bound:g}" for op, bound in bounds.items()}
    low = next((op for op in ("ge", "gt") if op in bounds), None)
    high = next((op for op in ("le", "lt") if op in bounds), None)
    if low and high:
        return f"in {'[' if low == 'ge' else '('}{shown[low]}, {shown[high]}{']' if high == 'le' else ')'}"
    return f"{_TESTS[low or high][0]} {shown[low or high]}"


def out_of_bounds(config: Any) -> str | None:
    """`field=VALUE must be ...` for the first field of `config` (declared with config.setting) whose value, or one
    of whose values, is outside its bounds; None when all are inside."""
    for f in dataclasses.fields(config):
        bounds, value = f.metadata.get("bounds"), getattr(config, f.name)
        values = value if isinstance(value, tuple) else () if value is None else (value,)
        if bounds and not all(within(v, bounds) for v in values):
            return f"{f.name}={value} must be {range_text(bounds)}"
    return None


def _without_none(tp: Any) -> tuple[Any, bool]:
    """`Optional[X]` as (X, True); any other type as (it, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def add_flags(parser: argparse.ArgumentParser, cls: type, exclude: Iterable[str] = ()) -> None:
    """One flag per option of `cls` (`--public-name`): a Literal's values as its choices, a bool as --x / --no-x, a
    tuple as a repeatable flag. A flag given sets `args.<field>`; one not given sets nothing (see flag_values)."""
    for option in options(cls, exclude):
        kwargs: dict[str, Any] = {"dest": option.name, "default": argparse.SUPPRESS, "help": _flag_help(option)}
        if option.type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(option.type) is Literal:
            kwargs["choices"] = typing.get_args(option.type)
        else:
            kwargs.update(
                type=option.type,
                metavar=option.metavar or {int: "N", float: "X"}.get(option.type, option.public.upper()),
            )
        if option.many:
            kwargs["action"] = "append"
        parser.add_argument("--" + option.public.replace("_", "-"), **kwargs)


def _flag_help(option: Option) -> str:
    text = option.help.replace("%", "%%") + ("; repeatable" if option.many else "")
    if isinstance(option.default, bool):
        return f"{text} (default {'on' if option.default else 'off'})"
    if option.default in (None, ()):
        return text
    shown = ", ".join(map(str, option.default)) if option.many else option.default
    return f"{text} (default {str(shown).replace('%', '%%')})"


def flag_values(args: argparse.Namespace, cls: type, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The fields of `cls` whose flags (add_flags) `args` holds, as the dataclass takes them (a tuple for a repeated
    flag)."""
    return {
        option.name: tuple(getattr(args, option.name)) if option.many else getattr(args, option.name)
        for option in options(cls, exclude)
        if hasattr(args, option.name)
    }
