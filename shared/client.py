"""`impasto submit` and `impasto status`: a running service's API from the command line.

A plain HTTP client (requests): it imports no torch, so it runs on any machine. `submit`
sends a job, or a sweep when --axis is given, with the same flags as `impasto stylize`;
follows it with a progress bar; and downloads the picture (a sweep's contact sheet) with -o.
The API key comes from IMPASTO_API_KEY, the server from --server or IMPASTO_SERVER.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from .flags import add_model_flags
from .params import StyleParams, is_list_field
from .sweeps import AxisError, axis_from_flag

EXIT_FAILED = 1  # the job or sweep ended failed or canceled
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
FINAL = ("succeeded", "failed", "canceled")
POLL_S = 1.0
TIMEOUT_S = 60  # per request; uploads of large images take a while


class ClientError(Exception):
    """Something the person can fix: the message is the one line printed; `status` is the
    HTTP status when the service answered with an error."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def _server_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        default=os.environ.get("IMPASTO_SERVER"),
        help="the service's address, e.g. http://localhost:8000 (default: $IMPASTO_SERVER)",
    )


def submit_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="impasto submit",
        description="Send a job (or with --axis, a sweep) to a running Impasto service and follow it.",
    )
    _server_flag(parser)
    parser.add_argument("content", metavar="CONTENT", help="the photo to repaint")
    parser.add_argument("styles", metavar="STYLE", nargs="+", help="one or more style images")
    parser.add_argument(
        "--axis",
        action="append",
        metavar="NAME=V1,V2,...",
        help="make it a sweep: a parameter and the values to compare (give it twice for a grid)",
    )
    parser.add_argument("-o", "--output", help="download the picture (a sweep's contact sheet) here when it is done")
    parser.add_argument("--no-wait", action="store_true", help="print the submission and return without following it")
    add_model_flags(parser, StyleParams)
    return parser


def status_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="impasto status", description="Show a job or a sweep of a running Impasto service.")
    _server_flag(parser)
    parser.add_argument("id", metavar="ID", help="the job's (or sweep's) id, as `impasto submit` printed it")
    parser.add_argument("-o", "--output", help="download its picture (a sweep's contact sheet) here, if there is one")
    return parser


def submit_main(argv: list[str] | None = None) -> int:
    """Send a job or a sweep to a running service, follow it, download the result."""
    args = submit_parser().parse_args(argv)
    return _guarded("impasto submit", lambda: _submit(args))


def status_main(argv: list[str] | None = None) -> int:
    """Show a job or a sweep of a running service (and download its picture with -o)."""
    args = status_parser().parse_args(argv)
    return _guarded("impasto status", lambda: _status(args))


def _guarded(prog: str, run) -> int:
    try:
        return run()
    except ClientError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"\n{prog}: stopped following; the service goes on (see `impasto status`)", file=sys.stderr)
        return EXIT_INTERRUPTED


class Service:
    """The API of one server, with the API key if one is set."""

    def __init__(self, server: str | None):
        if not server:
            raise ClientError("give the service's address with --server URL (or set IMPASTO_SERVER)")
        if not server.startswith(("http://", "https://")):
            raise ClientError(f"--server: {server!r} should start with http:// or https://")
        self.base = server.rstrip("/")
        self.session = requests.Session()
        key = os.environ.get("IMPASTO_API_KEY")
        if key:
            self.session.headers["Authorization"] = f"Bearer {key}"
        self.session.headers["Accept"] = "application/json"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = path if path.startswith("http") else self.base + path
        try:
            response = self.session.request(method, url, timeout=TIMEOUT_S, **kwargs)
        except requests.ConnectionError:
            raise ClientError(f"cannot reach {self.base}; is the service running there?") from None
        except requests.Timeout:
            raise ClientError(f"{self.base} did not answer within {TIMEOUT_S} s") from None
        if response.status_code >= 400:
            raise ClientError(_problem(response), response.status_code)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return self.request(method, path, **kwargs).json()


def _problem(response: requests.Response) -> str:
    """The API's error as one line: 'field: message' (every problem of a 422)."""
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"the service answered {response.status_code} {response.reason}"
    problems = error.get("details") or [error]
    text = "; ".join(f"{p['field']}: {p['message']}" if p.get("field") else p["message"] for p in problems)
    return f"{text} ({response.status_code})"


def _submit(args: argparse.Namespace) -> int:
    service = Service(args.server)
    fields = _fields(args)
    if args.axis:
        try:
            axes = [axis_from_flag(text) for text in args.axis]
        except AxisError as err:
            raise ClientError(f"--axis: {err}") from None
        fields["axes"] = json.dumps({axis.name: list(axis.values) for axis in axes})
    if args.output:
        _check_writable(Path(args.output))
    with _files(args.content, args.styles) as files:
        path = "/api/v1/sweeps" if args.axis else "/api/v1/jobs"
        created = service.json("POST", path, data=fields, files=files)
    kind = "sweep" if args.axis else "job"
    print(
        f"impasto submit: {kind} {created['id']} {created['status']} (token {created['token']}: "
        f"send it as X-Job-Token to cancel)",
        file=sys.stderr,
    )
    if args.no_wait:
        print(json.dumps(created))
        return 0
    final = _follow(service, created, kind)
    return _finish(service, final, kind, args.output)


def _fields(args: argparse.Namespace) -> dict[str, str]:
    """The given stylize flags as the API's form fields (lists joined by spaces)."""
    fields = {}
    for name in StyleParams.model_fields:
        if hasattr(args, name):
            value = getattr(args, name)
            fields[name] = " ".join(map(str, value)) if is_list_field(name) else str(value)
    return fields


@contextlib.contextmanager
def _files(content: str, styles: list[str]) -> Iterator[list[tuple[str, Any]]]:
    with contextlib.ExitStack() as stack:
        files = []
        for field, path in [("content", content), *(("style", s) for s in styles)]:
            try:
                handle = stack.enter_context(open(path, "rb"))
            except OSError as err:
                raise ClientError(f"cannot read {path}: {err.strerror}") from None
            files.append((field, (Path(path).name, handle)))
        yield files


def _check_writable(path: Path) -> None:
    if path.is_dir():
        raise ClientError(f"--output: {path} is a folder; give a file name")
    if not path.parent.resolve().is_dir():
        raise ClientError(f"--output: folder {path.parent} does not exist")


def _follow(service: Service, body: dict[str, Any], kind: str) -> dict[str, Any]:
    """Poll until the job or sweep ends, with a progress bar in iterations."""
    from tqdm import tqdm

    path = f"/api/v1/{kind}s/{body['id']}"
    with tqdm(total=_total(body), unit="it", file=sys.stderr, disable=None) as bar:
        while True:
            done = _done(body)
            bar.update(done - bar.n)
            bar.set_description(body["status"], refresh=False)
            if body["status"] in FINAL:
                return body
            time.sleep(POLL_S)
            body = service.json("GET", path)


def _total(body: dict[str, Any]) -> int:
    if "cells" in body:
        return sum(cell["progress"]["iterations"] for cell in body["cells"])
    return body["progress"]["iterations"]


def _done(body: dict[str, Any]) -> int:
    if "cells" in body:
        return sum(cell["progress"]["iteration"] for cell in body["cells"])
    return body["progress"]["iteration"]


def _finish(service: Service, body: dict[str, Any], kind: str, output: str | None) -> int:
    picture = body.get("sheet_url") if kind == "sweep" else body.get("output_url")
    if output and picture:
        Path(output).write_bytes(service.request("GET", picture).content)
        print(f"impasto submit: saved {output}", file=sys.stderr)
    if body["status"] == "failed" and kind == "job" and body.get("error"):
        print(f"impasto submit: the job failed: {body['error']['message']}", file=sys.stderr)
    print(json.dumps(body))
    return 0 if body["status"] == "succeeded" else EXIT_FAILED


def _status(args: argparse.Namespace) -> int:
    service = Service(args.server)
    body, kind = None, "job"
    for kind in ("job", "sweep"):
        try:
            body = service.json("GET", f"/api/v1/{kind}s/{args.id}")
            break
        except ClientError as err:
            if err.status != 404:
                raise
    if body is None:
        raise ClientError(f"no job or sweep {args.id} on {service.base}")
    total = _total(body)
    print(f"{kind} {body['id']}: {body['status']}, {_done(body)}/{total} iterations", file=sys.stderr)
    picture = body.get("sheet_url") if kind == "sweep" else body.get("output_url")
    if args.output:
        if not picture:
            raise ClientError(f"the {kind} has no picture yet ({body['status']})")
        _check_writable(Path(args.output))
        Path(args.output).write_bytes(service.request("GET", picture).content)
    print(json.dumps(body))
    return 0
