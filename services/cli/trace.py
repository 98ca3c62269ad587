"""``voxline trace``: which stage made a request slow (trace attribution).

Usage::

    voxline trace [ID] [SOURCE] [--last] [--wait S] [--json] [--full] [--depth N] [--width N]
    voxline trace report [SOURCE] [--since 1h | --start T --end T] [--limit N]
                         [--query TRACEQL] [--service NAME] [--json]

    ID: a trace id (32 hex digits, or a unique prefix) or a request id, both printed by
    `voxline say` and sent with every response (gRPC metadata / HTTP header
    ``voxline-trace-id``). A trace not in the source yet is waited for (--wait, default 10 s:
    the services export spans every ~5 s), then reported as not there yet.

    SOURCE (one of; default --run-dir runs, i.e. the newest run of `voxline demo`/`serve`):
      --run-dir DIR     Voxline's local OTLP/JSON files (DIR/*.traces.jsonl); a directory of
                        run directories means its newest one
      --file PATH       a saved API response in any supported format, or an OTLP/JSON-lines
                        file (repeatable: report reads them all; show merges them)
      --tempo URL       Tempo query frontend, e.g. http://localhost:3200
      --jaeger URL      Jaeger query, api v1, e.g. http://localhost:16686
      --jaeger-v3 URL   Jaeger query, api/v3

Argparse design: the lead's ``voxline`` parser gets *one* ``trace`` subcommand (registered by
:func:`add_trace_commands`) with one optional positional. The word ``report`` in that position
switches to report mode -- a trace id is hex, so it can never be ``report``. Nested argparse
subparsers cannot do this (they reject a trace id as an invalid sub-command), and a separate
``trace-report`` command would split one tool in two. Options that belong to the other mode
are rejected with exit status 2, so a typo is not silently ignored.

Exit status: 0 done; 1 the attribution failed (trace not found, unreadable input, backend
unreachable, nothing to report on); 2 usage error.

``report`` measures successful requests only; refusals and failures are counted by status.

``print_attribution(run_dir)`` is what ``make run`` calls after the demo request.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from traceattr import (
    AttributionError,
    Trace,
    TraceNotFoundError,
    TraceSet,
    analyze,
    build_report,
    fetch_trace,
    is_synthesis_root,
    latest_logged_trace_id,
    load_files,
    load_run_dir,
    pending_stages,
    render_attribution,
    render_report,
    render_waterfall,
    resolve_run_dir,
    search_traces,
    select_trace,
)
from traceattr.parse import GATEWAY_LOG

DESCRIPTION = """\
Which stage made a request slow: a waterfall of the trace, its critical path, self time per
span and a per-stage table (wall, busy, queue, pre/post-processing, inference, waits,
network, critical path, blame = critical path with streaming waits handed to the stage that
was working, unattributed gateway time). `voxline trace report` aggregates many requests:
how many succeeded, were refused or failed (by status), and over the successful ones
per-stage p50/p95 and the stage that dominates the slow tail.

  voxline trace [ID] [SOURCE] [--last] [--wait S] [--json] [--full] [--depth N] [--width N]
  voxline trace report [SOURCE] [--since 1h | --start T --end T] [--limit N]
                       [--query TRACEQL] [--service NAME] [--json]

ID is a trace id (32 hex digits or a unique prefix) or a request id: `voxline say` prints
both, and every response carries its trace id (gRPC metadata and HTTP header
voxline-trace-id). The services export spans every ~5 s, so a trace asked for right after its
request may not be there yet: it is waited for (--wait), then reported as not there yet.
Without ID the newest synthesis request is shown, and named (trace id, request id, age):
for a local run the newest one its gateway logged, waited for like an ID (--last: the newest
one exported so far).

SOURCE is one of --run-dir DIR (Voxline's local *.traces.jsonl; a directory of runs means its
newest), --file PATH (a saved Tempo/Jaeger/OTLP response or OTLP/JSON-lines file), --tempo URL,
--jaeger URL, --jaeger-v3 URL; the default is --run-dir runs (where `voxline demo`/`serve`
write). `report --since/--start/--end` filter a local source by the requests' start times.
"""
#: Where `voxline demo`/`serve` put their run directories (services/cli/main.py).
DEFAULT_RUN_DIR = "runs"
DEFAULT_SINCE = "1h"
DEFAULT_LIMIT = 100
REPORT_WORD = "report"
#: How long `voxline trace ID` waits for a trace that is not exported yet: the services'
#: batch span processors export every 5 s (OTEL_BSP_SCHEDULE_DELAY), each on its own clock.
DEFAULT_WAIT_S = 10.0
WAIT_ENV = "VOXLINE_TRACE_WAIT_S"
POLL_S = 0.5

_BACKEND_OPTIONS = (("tempo", "tempo"), ("jaeger", "jaeger"), ("jaeger_v3", "jaeger-v3"))
_REPORT_ONLY = ("since", "start", "end", "limit", "query", "service")
_SHOW_ONLY = ("last", "wait")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_DURATION_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class UsageError(Exception):
    """A bad combination of options (exit status 2)."""


def add_trace_commands(subparsers: Any) -> None:
    """Register ``trace`` (and its ``report`` mode) on the ``voxline`` sub-command parsers.

    ``subparsers`` is what ``ArgumentParser.add_subparsers()`` returned. The parser sets
    ``fn=cmd_trace``: ``args.fn(args)`` returns the exit status.
    """
    p = subparsers.add_parser(
        "trace",
        help="which stage made a request slow (waterfall, critical path, per-stage table); "
        "`trace report` aggregates many requests",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    configure_parser(p)


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the ``trace`` arguments to ``p`` (used by :func:`add_trace_commands` and
    :func:`main`)."""
    p.add_argument(
        "trace_id",
        nargs="?",
        metavar="TRACE_ID",
        help="trace id (32 hex digits, or a unique prefix) or request id; default: the latest "
        "request; the word `report` aggregates many traces",
    )
    src = p.add_argument_group("source (one of; default: --run-dir runs)")
    src.add_argument("--run-dir", metavar="DIR", help="Voxline run directory (*.traces.jsonl)")
    src.add_argument(
        "--file",
        metavar="PATH",
        action="append",
        help="saved Tempo/Jaeger/OTLP JSON or OTLP/JSON-lines file (repeatable)",
    )
    src.add_argument("--tempo", metavar="URL", help="Tempo base URL (GET /api/traces/<id>)")
    src.add_argument("--jaeger", metavar="URL", help="Jaeger base URL (GET /api/traces/<id>)")
    src.add_argument(
        "--jaeger-v3", metavar="URL", help="Jaeger base URL, api/v3 (GET /api/v3/traces/<id>)"
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="HTTP timeout (default 10 s)"
    )
    show = p.add_argument_group("one trace")
    show.add_argument(
        "--last",
        action="store_true",
        help="the most recent request exported so far (without an id, the default is the "
        "newest request in the run's gateway.log, waited for if need be)",
    )
    show.add_argument(
        "--wait",
        type=float,
        metavar="S",
        help="seconds to wait for a trace that is not exported yet, 0 = don't "
        f"(default {DEFAULT_WAIT_S:g}; ${WAIT_ENV}; none for --file)",
    )
    show.add_argument("--full", action="store_true", help="no folding of repeated spans")
    show.add_argument("--depth", type=int, metavar="N", help="waterfall depth limit")
    show.add_argument("--width", type=int, default=40, metavar="N", help="bar width (40)")
    rep = p.add_argument_group("report (voxline trace report ...)")
    rep.add_argument(
        "--since",
        metavar="DUR",
        help=f"window length back from --end (default: {DEFAULT_SINCE} for a backend, "
        "everything for a local source)",
    )
    rep.add_argument("--start", metavar="T", help="window start: Unix seconds or ISO 8601")
    rep.add_argument("--end", metavar="T", help="window end: Unix seconds or ISO 8601 (now)")
    rep.add_argument("--limit", type=int, metavar="N", help=f"max traces ({DEFAULT_LIMIT})")
    rep.add_argument("--query", metavar="TRACEQL", help="Tempo search (default: gateway requests)")
    rep.add_argument("--service", metavar="NAME", help="Jaeger search service (gateway)")
    p.set_defaults(fn=cmd_trace)


# ---------------------------------------------------------------------------------------------
# Argument helpers
# ---------------------------------------------------------------------------------------------


def parse_duration_s(text: str) -> float:
    """Seconds from ``"90s"``, ``"15m"``, ``"2h"``, ``"1d"`` or a bare number of seconds."""
    m = _DURATION_RE.match(text)
    if not m:
        raise UsageError(f"not a duration: {text!r} (use e.g. 90s, 15m, 2h, 1d)")
    return float(m.group(1)) * _DURATION_S[m.group(2) or "s"]


def parse_time_s(text: str) -> float:
    """Unix seconds from a number or an ISO 8601 time (naive means local time)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise UsageError(f"not a time: {text!r} (Unix seconds or ISO 8601)") from exc
    return dt.timestamp()


def _backend(args: argparse.Namespace) -> tuple[str, str] | None:
    given = [(name, getattr(args, attr)) for attr, name in _BACKEND_OPTIONS if getattr(args, attr)]
    return given[0] if given else None


def _check_sources(args: argparse.Namespace) -> None:
    count = sum(bool(x) for x in (args.run_dir, args.file, args.tempo, args.jaeger, args.jaeger_v3))
    if count > 1:
        raise UsageError("give one source: --run-dir, --file, --tempo, --jaeger or --jaeger-v3")


def _window(args: argparse.Namespace) -> tuple[float, float]:
    end = parse_time_s(args.end) if args.end else time.time()
    if args.start:
        start = parse_time_s(args.start)
    else:
        start = end - parse_duration_s(args.since or DEFAULT_SINCE)
    if start >= end:
        raise UsageError("the window is empty: --start must be before --end")
    return start, end


def _note(message: str) -> None:
    print(message, file=sys.stderr)


def _wait_s(args: argparse.Namespace) -> float:
    """How long to wait for a trace not exported yet (``--wait``, ``$VOXLINE_TRACE_WAIT_S``)."""
    if args.file:
        return 0.0  # saved files do not change
    if args.wait is not None:
        value = args.wait
    else:
        env = os.environ.get(WAIT_ENV, "").strip()
        try:
            value = float(env) if env else DEFAULT_WAIT_S
        except ValueError as exc:
            raise UsageError(f"${WAIT_ENV} is not a number of seconds: {env!r}") from exc
    if value < 0:
        raise UsageError("--wait must be 0 or more seconds")
    return value


def _local_loader(args: argparse.Namespace) -> Callable[[], TraceSet]:
    """Reads the local source; for a run directory, again only when its files changed."""
    if args.file:
        files = list(args.file)
        return lambda: load_files(files)
    run_dir = Path(args.run_dir or DEFAULT_RUN_DIR)
    cache: dict[str, Any] = {}

    def load() -> TraceSet:
        resolved = resolve_run_dir(run_dir)
        if resolved != run_dir and cache.get("resolved") != resolved:
            _note(f"reading the newest run directory, {resolved}")
        files = sorted(resolved.glob("*.traces.jsonl"))
        signature = (resolved, [(f.name, f.stat().st_size) for f in files])
        if cache.get("signature") != signature:
            cache.update(resolved=resolved, signature=signature, traces=load_run_dir(resolved))
        return cache["traces"]

    return load


def _load_local(args: argparse.Namespace) -> TraceSet:
    return _local_loader(args)()


def _age(trace: Trace) -> str:
    """How long ago the trace started, e.g. ``"12 s ago"``."""
    seconds = max(0.0, time.time() - trace.start_ns / 1e9)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _describe(trace: Trace) -> str:
    """``"trace <id> (SynthesizeStream, request id <id>), started 12 s ago"``."""
    roots = [s for s in trace.spans if is_synthesis_root(s)] or trace.roots() or trace.spans
    what = min(roots, key=lambda s: s.start_ns).name.rsplit("/", 1)[-1]
    request = ", ".join(trace.request_ids) or "none"
    return f"trace {trace.trace_id} ({what}, request id {request}), started {_age(trace)}"


def _newest_logged(args: argparse.Namespace) -> str | None:
    """The trace id of the newest request the local run's gateway logged (its spans may not
    be exported yet), or ``None`` (not a run directory, no log)."""
    if args.file:
        return None
    run_dir = Path(args.run_dir or DEFAULT_RUN_DIR)
    if not (run_dir / GATEWAY_LOG).is_file():
        try:
            run_dir = resolve_run_dir(run_dir)
        except AttributionError:
            return None
    return latest_logged_trace_id(run_dir)


def find_trace(
    load: Callable[[], TraceSet], wanted: str | None, *, last: bool, wait_s: float
) -> tuple[TraceSet, Trace]:
    """The trace ``wanted`` (trace id or request id; ``None``: the latest request) from
    ``load()``, waiting up to ``wait_s`` for it to be exported -- or for the spans it still
    lacks (:func:`traceattr.pending_stages`). Not there by then: :class:`TraceNotFoundError`
    saying so; still incomplete: returned with a note."""
    deadline = time.monotonic() + wait_s
    announced = False
    while True:
        try:
            ts = load()
            trace = select_trace(ts, wanted, last=last)
        except TraceNotFoundError as exc:
            if time.monotonic() >= deadline:
                if not announced:
                    raise
                raise TraceNotFoundError(
                    f"{exc}\nIt is not there yet after waiting {wait_s:g} s. The services "
                    "export spans every ~5 s: if the request has only just ended, try again "
                    "in a moment; otherwise check the id and the source (--run-dir, --tempo, ...)."
                ) from None
            pending = ["the trace"]
        else:
            pending = pending_stages(trace)
            if not pending:
                return ts, trace
            if time.monotonic() >= deadline:
                _note(
                    f"note: the trace looks incomplete (no spans of {', '.join(pending)} yet); "
                    "run it again in a few seconds for the whole request"
                )
                return ts, trace
        if not announced:
            what = "the trace" if pending == ["the trace"] else f"the spans of {', '.join(pending)}"
            _note(f"waiting up to {wait_s:g} s for {what} to be exported ...")
            announced = True
        time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


def cmd_trace(args: argparse.Namespace) -> int:
    """Entry point of ``voxline trace``: dispatches to :func:`run_show` or :func:`run_report`."""
    try:
        _check_sources(args)
        if args.trace_id == REPORT_WORD:
            for name in _SHOW_ONLY:
                if getattr(args, name, None) not in (None, False):
                    raise UsageError(f"--{name} does not apply to `trace report`")
            return run_report(args)
        for name in _REPORT_ONLY:
            if getattr(args, name, None) is not None:
                raise UsageError(
                    f"--{name} applies to `trace report` only (voxline trace report --{name} ...)"
                )
        return run_show(args)
    except UsageError as exc:
        print(f"voxline trace: error: {exc}", file=sys.stderr)
        return 2
    except AttributionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def run_show(args: argparse.Namespace) -> int:
    """One trace: waterfall + per-stage attribution (or ``--json``)."""
    backend = _backend(args)
    wanted = args.trace_id.strip() if args.trace_id else None
    load: Callable[[], TraceSet]
    if backend is not None:
        name, url = backend
        if not wanted:
            raise UsageError(f"a trace id is required with --{name} (or use `trace report`)")
        if not re.fullmatch(r"[0-9A-Fa-f]{1,32}", wanted):
            raise UsageError(
                f"--{name} looks traces up by trace id (hex); request ids are found in local "
                "sources (--run-dir, --file)"
            )
        load = lambda: fetch_trace(name, url, wanted, timeout=args.timeout)  # noqa: E731
    else:
        load = _local_loader(args)
    newest = None if wanted or args.last or backend else _newest_logged(args)
    try:
        ts, trace = find_trace(load, wanted or newest, last=args.last, wait_s=_wait_s(args))
    except TraceNotFoundError as exc:
        if newest is None:
            raise
        raise TraceNotFoundError(
            f"{exc}\n(It is the newest request in the gateway's log; `voxline trace --last` "
            "shows the newest one exported.)"
        ) from None
    if not wanted:
        _note(
            f"showing the latest request ({len(ts.traces)} trace(s) in {ts.source}): "
            f"{_describe(trace)}; pass a trace or request id for another"
        )
    elif wanted.lower() != trace.trace_id and wanted in trace.request_ids:
        _note(f"request id {wanted}: {_describe(trace)}")
    attr = analyze(trace)
    if args.json:
        out = attr.to_dict()
        out["request_ids"] = trace.request_ids
        out["source"] = ts.source
        out["source_format"] = ts.format
        print(json.dumps(out, indent=2))
        return 0
    print(
        render_waterfall(
            attr,
            width=max(args.width, 10),
            collapse=not args.full,
            all_events=args.full,
            max_depth=args.depth,
        )
    )
    print()
    print(render_attribution(attr))
    return 0


def run_report(args: argparse.Namespace) -> int:
    """Many traces: percentiles per stage and the stage that dominates the slow tail."""
    backend = _backend(args)
    if backend is not None:
        name, url = backend
        start, end = _window(args)
        ts = search_traces(
            name,
            url,
            start_s=start,
            end_s=end,
            limit=args.limit or DEFAULT_LIMIT,
            query=args.query,
            service=args.service or "gateway",
            timeout=args.timeout,
        )
    else:
        if args.query or args.service:
            raise UsageError("--query/--service need --tempo or --jaeger")
        ts = _load_local(args)
        if args.since or args.start or args.end:
            start, end = _window(args)
            ts.traces = [t for t in ts.traces if start <= t.start_ns / 1e9 <= end]
        if args.limit:
            ts.traces = sorted(ts.traces, key=lambda t: t.start_ns)[-args.limit :]
    for warning in ts.warnings:
        _note(f"note: {warning}")
    report = build_report(ts.traces)
    if args.json:
        out = report.to_dict()
        out["source"] = ts.source
        print(json.dumps(out, indent=2))
    else:
        print(render_report(report))
    if report.total == 0:
        print(f"error: no requests to report on in {ts.source or 'the input'}", file=sys.stderr)
        return 1
    return 0


def print_attribution(run_dir: Path, trace_id: str | None = None) -> None:
    """Print the attribution of one request from a run directory's local trace files.

    ``make run`` calls this after the demo request (default: the most recent synthesis
    request in ``run_dir``). It never raises for missing or unreadable traces -- the demo
    has already succeeded -- it says why there is no attribution instead.
    """
    try:
        ts = load_run_dir(run_dir)
        trace = select_trace(ts, trace_id, last=trace_id is None)
        attr = analyze(trace)
    except AttributionError as exc:
        print(f"trace attribution unavailable: {exc}")
        return
    print()
    print(
        f"where the time went (voxline trace {attr.trace.trace_id} --run-dir {run_dir} "
        "for every span):"
    )
    # Root, synthesis, stage calls and their server spans; phases are in the table below.
    print(render_waterfall(attr, max_depth=3))
    print()
    print(render_attribution(attr))


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (``python -m services.cli.trace ...``), same arguments."""
    parser = argparse.ArgumentParser(
        prog="voxline trace",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    configure_parser(parser)
    args = parser.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
