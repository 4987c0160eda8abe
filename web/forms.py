"""Reading a submission's form: its fields checked against the job parameters, and every
problem collected as a FieldError naming the field, for a 422 or a message beside the form
field. Both entry points send the same multipart fields: a `content` file, one or more
`style` files (with `style_mask` files) or a `style_preset`, and the parameters named as
the command line's flags with underscores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Request
from pydantic import ValidationError
from werkzeug.datastructures import MultiDict

from shared.params import WEIGHT_CHOICES, StyleParams, is_list_field
from shared.settings import Settings

# Fields that hold several values: repeated, or one field separated by commas or spaces.
LIST_FIELDS = {name for name in StyleParams.model_fields if is_list_field(name)}
FILE_FIELDS = ("content", "style", "style_mask")
OTHER_FIELDS = ("style_preset", "csrf_token")


@dataclass(frozen=True)
class FieldError:
    field: str | None
    message: str
    code: str = "invalid_parameter"


class SubmissionError(Exception):
    def __init__(self, errors: list[FieldError]):
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors


class FormRequest(Request):
    """Flask's request, except that a form werkzeug cannot parse (a field or file name that is
    not UTF-8, a multipart body without its boundary) is remembered in `form_error` instead of
    being dropped without a word, which made every such submission "choose a content image"."""

    form_error: str | None = None

    def make_form_data_parser(self):
        parser = super().make_form_data_parser()
        parser.silent = False
        return parser

    def _load_form_data(self) -> None:
        try:
            super()._load_form_data()
        except ValueError as err:  # werkzeug's parse errors; a body too large is not one
            self.form_error = str(err)
            self.__dict__["form"] = self.parameter_storage_class()
            self.__dict__["files"] = self.parameter_storage_class()


def check_form_read(request: Request) -> None:
    """SubmissionError (a 422 naming no field) when the request's form could not be read."""
    request.form  # noqa: B018  (parses the body, once)
    reason = getattr(request, "form_error", None)
    if reason is not None:
        raise SubmissionError(
            [
                FieldError(
                    None,
                    f"the form could not be read ({reason}): send a multipart/form-data body "
                    f"whose field and file names are UTF-8",
                    "unreadable_form",
                )
            ]
        )


def parse_params(form: MultiDict[str, str], settings: Settings) -> StyleParams:
    """The job parameters from form fields; blank fields take their defaults."""
    errors: list[FieldError] = []
    given: dict[str, Any] = {}
    for name in form:
        if name in FILE_FIELDS:  # a part with no filename is text, not a file
            errors.append(
                FieldError(
                    name,
                    f"send the {name} image as a file (a part with a filename), not as a text field",
                    "invalid_image",
                )
            )
            continue
        if name in OTHER_FIELDS:
            continue
        if name not in StyleParams.model_fields:
            errors.append(FieldError(name, f"unknown parameter {name!r}"))
            continue
        values = [v.strip() for v in form.getlist(name) if v.strip()]
        if not values:
            continue
        if name in LIST_FIELDS:
            given[name] = [part for v in values for part in v.replace(",", " ").split()]
        elif len(values) > 1:
            errors.append(FieldError(name, "give this parameter once"))
        else:
            given[name] = values[0]
    if given.get("weights", "auto") not in WEIGHT_CHOICES:
        errors.append(
            FieldError(
                "weights",
                f"use one of {', '.join(WEIGHT_CHOICES)}; the service does not read weight files named by a job",
            )
        )
        given.pop("weights")
    params = None
    try:
        params = StyleParams(**given)
    except ValidationError as err:
        for problem in err.errors():
            field = str(problem["loc"][0]) if problem["loc"] else None
            errors.append(FieldError(field, problem["msg"].removeprefix("Value error, ")))
    if params is not None:
        if params.size > settings.max_size:
            errors.append(FieldError("size", f"at most {settings.max_size} on this service"))
        if params.iterations > settings.max_iterations:
            errors.append(FieldError("iterations", f"at most {settings.max_iterations} on this service"))
        if params.style_scale * params.size > settings.max_size:
            errors.append(
                FieldError(
                    "style_scale",
                    f"style_scale x size is at most {settings.max_size} on "
                    f"this service; use at most {settings.max_size / params.size:.2f}",
                )
            )
        if params.snapshot_every and params.iterations / params.snapshot_every > settings.max_snapshots:
            fewest = -(-params.iterations // settings.max_snapshots)
            errors.append(
                FieldError(
                    "snapshot_every",
                    f"at most {settings.max_snapshots} snapshots per job; use {fewest} or more (or 0 for none)",
                )
            )
    if errors:
        raise SubmissionError(errors)
    assert params is not None
    return params
