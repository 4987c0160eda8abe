"""Sweeps: one photo and its styles painted over a grid of one or two parameters.

An axis is a StyleParams field and the values it takes, each written as the job field (and
the command line's flag) accepts it: `style_weight` over `1e4 1e5 1e6`, or `content_layers`
over `relu2_2` and `relu4_2`. The cells are the product of the axes, row-major: the first axis
runs down the rows of the contact sheet, the second along its columns. Each cell is an
ordinary job (its row names the sweep and the cell), so everything that keeps a job safe keeps
each cell safe; a sweep's status is derived from its cells'.

Both tiers read axes the same way: the API from a JSON object, the form and the command line
from `name=v1,v2,v3` (values of a list-valued field are separated by `;` when one value holds
several layers: `style_layers=relu1_1 relu2_1;relu3_1 relu4_1`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from .models import CANCELED, FAILED, QUEUED, RUNNING, SUCCEEDED, Job, Sweep, utcnow
from .params import StyleParams, is_list_field

MAX_AXES = 2
# Fields that do not change the picture: a sweep over them would make identical cells.
NOT_SWEEPABLE = ("snapshot_every",)
# Names that look like fields but are the job's inputs: one sweep paints one photo with one set of styles.
INPUT_NAMES = ("content", "style", "style_preset", "style_mask")


class AxisError(ValueError):
    """An axis that cannot be swept; `axis` and `value` say which, the message what to fix."""

    def __init__(self, message: str, axis: str | None = None, value: str | None = None):
        super().__init__(message)
        self.axis = axis
        self.value = value


@dataclass(frozen=True)
class Axis:
    name: str
    values: tuple[str, ...]  # as the job field takes them: "10000", "relu1_1 relu2_1"

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "values": list(self.values)}


@dataclass(frozen=True)
class Cell:
    index: int  # row-major place in the grid
    values: tuple[str, ...]  # one per axis

    def overrides(self, axes: Sequence[Axis]) -> dict[str, str]:
        """The job fields this cell sets, as form text."""
        return {axis.name: value for axis, value in zip(axes, self.values)}

    def label(self, axes: Sequence[Axis]) -> str:
        return ", ".join(f"{axis.name}={value}" for axis, value in zip(axes, self.values))


def value_text(value: Any) -> str:
    """One axis value as a job field takes it: numbers as written, a list's items joined by spaces."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, (list, tuple)):
        return " ".join(value_text(item) for item in value)
    if isinstance(value, str):
        return " ".join(value.replace(",", " ").split())
    raise AxisError(f"a value of type {type(value).__name__} ({value!r}); give numbers, text or lists of text")


def axes_from_json(text: str) -> list[Axis]:
    """The API's `axes` field: a JSON object of parameter name -> list of values."""
    try:
        given = json.loads(text)
    except json.JSONDecodeError as err:
        raise AxisError(
            f'axes is not JSON ({err.msg}); send an object such as {{"style_weight": [1, 10, 100]}}'
        ) from None
    if not isinstance(given, dict) or not given:
        raise AxisError('axes must be a JSON object of one or two parameters, e.g. {"style_weight": [1, 10, 100]}')
    axes = []
    for name, values in given.items():
        if not isinstance(values, list):
            raise AxisError(f"axis {name}: give a list of values, not {json.dumps(values)}", name)
        axes.append(Axis(name, tuple(value_text(v) for v in values)))
    return axes


def axis_from_flag(text: str) -> Axis:
    """`name=v1,v2,v3` (the command line's --axis and the form); `;` separates values when given."""
    name, sep, values = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not name:
        raise AxisError(f"axis {text!r}: write it as NAME=V1,V2,... such as style_weight=1,10,100")
    parts = values.split(";") if ";" in values else values.split(",")
    return Axis(name, tuple(value_text(part) for part in parts if part.strip()))


def check_axes(axes: Sequence[Axis], base: Mapping[str, Any], max_cells: int) -> list[Cell]:
    """The cells of `axes` over the parameters `base` (field -> value), each cell's parameters
    validated; AxisError names the first axis and value at fault."""
    if not axes:
        raise AxisError("give at least one axis: a parameter and the values to compare")
    if len(axes) > MAX_AXES:
        raise AxisError(f"{len(axes)} axes; a sweep compares one or two parameters")
    seen: set[str] = set()
    for axis in axes:
        _check_axis(axis, seen)
    cells = grid(axes)
    if len(cells) > max_cells:
        shape = " x ".join(str(len(axis.values)) for axis in axes)
        raise AxisError(f"{shape} = {len(cells)} cells; at most {max_cells} per sweep", axes[-1].name)
    for axis in axes:
        for value in axis.values:
            try:
                StyleParams(**{**base, axis.name: field_value(axis.name, value)})
            except ValidationError as err:
                message = err.errors()[0]["msg"].removeprefix("Value error, ")
                raise AxisError(f"axis {axis.name}, value {value!r}: {message}", axis.name, value) from None
    return cells


def _check_axis(axis: Axis, seen: set[str]) -> None:
    if axis.name in INPUT_NAMES:
        raise AxisError(
            f"axis {axis.name}: a sweep paints one photo with one set of styles; "
            f"sweep over parameters (submit one sweep per {axis.name})",
            axis.name,
        )
    if axis.name not in StyleParams.model_fields or axis.name in NOT_SWEEPABLE:
        raise AxisError(f"axis {axis.name}: not a parameter that can be swept", axis.name)
    if axis.name in seen:
        raise AxisError(f"axis {axis.name} is given twice", axis.name)
    seen.add(axis.name)
    if len(axis.values) < 2:
        raise AxisError(f"axis {axis.name}: give at least two values to compare", axis.name)
    repeated = sorted({v for v in axis.values if axis.values.count(v) > 1})
    if repeated:
        raise AxisError(f"axis {axis.name}: value {repeated[0]!r} is given twice", axis.name, repeated[0])


def field_value(name: str, value: str) -> Any:
    """An axis value as StyleParams takes it (a list-valued field's text split into its items)."""
    return value.split() if is_list_field(name) else value


def grid(axes: Sequence[Axis]) -> list[Cell]:
    """Every combination, row-major (the last axis varies fastest)."""
    combos = itertools.product(*(axis.values for axis in axes))
    return [Cell(index, tuple(values)) for index, values in enumerate(combos)]


def shape(axes: Sequence[Axis]) -> tuple[int, int]:
    """(rows, columns) of the contact sheet: one axis is a single row."""
    if len(axes) == 1:
        return 1, len(axes[0].values)
    return len(axes[0].values), len(axes[1].values)


def sweep_status(statuses: Iterable[str | None]) -> str:
    """queued until a cell starts; running until every cell has ended; then succeeded when every
    cell did, failed when any failed, otherwise canceled. A deleted cell (None) counts as ended
    and not succeeded."""
    statuses = list(statuses)
    if all(s == QUEUED for s in statuses):
        return QUEUED
    if any(s in (QUEUED, RUNNING) for s in statuses):
        return RUNNING
    if all(s == SUCCEEDED for s in statuses):
        return SUCCEEDED
    return FAILED if FAILED in statuses else CANCELED


def create_sweep(session: Session, sweep_id: str, axes: Sequence[Axis], jobs: Sequence[Job], **fields: Any) -> Sweep:
    """Insert the sweep and all its cells in one transaction: a sweep never exists half made."""
    sweep = Sweep(id=sweep_id, axes=[axis.as_json() for axis in axes], created_at=utcnow(), **fields)
    session.add(sweep)
    session.flush()  # the sweep's row before the cells that name it (PostgreSQL checks the key)
    session.add_all(jobs)
    session.commit()
    return sweep


def load_axes(sweep: Sweep) -> list[Axis]:
    return [Axis(axis["name"], tuple(axis["values"])) for axis in sweep.axes]


def sweep_cells(session: Session, sweep_id: str) -> dict[int, Job]:
    """The sweep's cells that still exist, by cell index, with their snapshots."""
    jobs = session.scalars(
        select(Job)
        .where(Job.sweep_id == sweep_id, Job.deleted_at.is_(None))
        .options(selectinload(Job.snapshots))
        .execution_options(populate_existing=True)
    ).all()
    return {job.cell: job for job in jobs if job.cell is not None}
