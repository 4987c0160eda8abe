"""Command-line flags derived from a pydantic model, so that a default is written once."""

from __future__ import annotations

import argparse
import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError


class ParamsError(ValueError):
    """Parameters that fail validation; the message names the flag and what to fix."""


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def add_model_flags(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """One flag per field: `--style-weight` for `style_weight`, choices from Literal types,
    several values for tuples. Unset flags stay out of the namespace, so the model's own
    defaults apply."""
    for name, field in model.model_fields.items():
        kind, choices, many = _describe(field.annotation)
        default = field.default
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        parser.add_argument(
            flag_name(name),
            dest=name,
            type=kind,
            choices=choices,
            nargs="+" if many else None,
            default=argparse.SUPPRESS,
            metavar=None if choices else name.upper().split("_")[-1],
            # A default of None is explained in the description itself.
            help=field.description if default is None else f"{field.description} (default: {shown})",
        )


def params_from_args(model: type[BaseModel], args: argparse.Namespace) -> Any:
    """Build `model` from the flags that were given; a validation error becomes one line."""
    given = {name: getattr(args, name) for name in model.model_fields if hasattr(args, name)}
    try:
        return model(**given)
    except ValidationError as err:
        raise ParamsError(describe_invalid(err)) from None


def describe_invalid(err: ValidationError) -> str:
    """The first problem of a ValidationError as '--flag: what is wrong'."""
    first = err.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    if first["loc"] and isinstance(first["loc"][0], str):
        return f"{flag_name(first['loc'][0])}: {message}"
    return message


def _describe(annotation: Any) -> tuple[type, tuple[str, ...] | None, bool]:
    """(element type, choices, several values?) for a field's annotation."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
        origin = get_origin(annotation)
    if origin is Literal:
        return str, tuple(get_args(annotation)), False
    if origin is tuple:
        return get_args(annotation)[0], None, True
    return annotation, None, False
