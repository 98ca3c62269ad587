"""``voxline trace``: which stage made a request slow (trace attribution).

Usage::

    voxline trace [TRACE_ID] [SOURCE] [--last] [--json] [--full] [--depth N] [--width N]
    voxline trace report     [SOURCE] [--since 1h | --start T --end T] [--limit N]
                             [--query TRACEQL] [--service NAME] [--json]

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

``print_attribution(run_dir)`` is what ``make run`` calls after the demo request.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from traceattr import (
    AttributionError,
    TraceSet,
    analyze,
    build_report,
    fetch_trace,
    load_files,
    load_run_dir,
    render_attribution,
    render_report,
    render_waterfall,
    resolve_run_dir,
    search_traces,
    select_trace,
)

DESCRIPTION = """\
Which stage made a request slow: a waterfall of the trace, its critical path, self time per
span and a per-stage table (wall, busy, queue, pre/post-processing, inference, waits,
network, critical path, blame = critical path with streaming waits handed to the stage that
was working, unattributed gateway time). `voxline trace report` aggregates many requests:
per-stage p50/p95 and the stage that dominates the slow tail.

  voxline trace [TRACE_ID] [SOURCE] [--last] [--json] [--full] [--depth N] [--width N]
  voxline trace report     [SOURCE] [--since 1h | --start T --end T] [--limit N]
                           [--query TRACEQL] [--service NAME] [--json]

SOURCE is one of --run-dir DIR (Voxline's local *.traces.jsonl; a directory of runs means its
newest), --file PATH (a saved Tempo/Jaeger/OTLP response or OTLP/JSON-lines file), --tempo URL,
--jaeger URL, --jaeger-v3 URL; the default is --run-dir runs (where `voxline demo`/`serve`
write). Without TRACE_ID the most recent synthesis request is shown.
"""
#: Where `voxline demo`/`serve` put their run directories (services/cli/main.py).
DEFAULT_RUN_DIR = "runs"
DEFAULT_SINCE = "1h"
DEFAULT_LIMIT = 100
REPORT_WORD = "report"

_BACKEND_OPTIONS = (("tempo", "tempo"), ("jaeger", "jaeger"), ("jaeger_v3", "jaeger-v3"))
_REPORT_ONLY = ("since", "start", "end", "limit", "query", "service")
_SHOW_ONLY = ("last",)
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
        help="hex trace id (or a unique prefix); the word `report` aggregates many traces",
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
        "--last", action="store_true", help="the most recent request (the default without id)"
    )
    show.add_argument("--full", action="store_true", help="no folding of repeated spans")
    show.add_argument("--depth", type=int, metavar="N", help="waterfall depth limit")
    show.add_argument("--width", type=int, default=40, metavar="N", help="bar width (40)")
    rep = p.add_argument_group("report (voxline trace report ...)")
    rep.add_argument(
        "--since", metavar="DUR", help=f"window length back from --end ({DEFAULT_SINCE})"
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


def _load_local(args: argparse.Namespace) -> TraceSet:
    if args.file:
        return load_files(args.file)
    run_dir = Path(args.run_dir or DEFAULT_RUN_DIR)
    resolved = resolve_run_dir(run_dir)
    if resolved != run_dir:
        _note(f"reading the newest run directory, {resolved}")
    return load_run_dir(resolved)


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


def cmd_trace(args: argparse.Namespace) -> int:
    """Entry point of ``voxline trace``: dispatches to :func:`run_show` or :func:`run_report`."""
    try:
        _check_sources(args)
        if args.trace_id == REPORT_WORD:
            for name in _SHOW_ONLY:
                if getattr(args, name, None):
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
    if backend is not None:
        name, url = backend
        if not args.trace_id:
            raise UsageError(f"TRACE_ID is required with --{name} (or use `trace report`)")
        ts = fetch_trace(name, url, args.trace_id, timeout=args.timeout)
    else:
        ts = _load_local(args)
    trace = select_trace(ts, args.trace_id, last=args.last)
    if not args.trace_id and len(ts.traces) > 1 and not args.json:
        _note(
            f"{len(ts.traces)} traces in {ts.source}; showing the most recent request "
            f"{trace.trace_id} (pass a TRACE_ID for another)"
        )
    attr = analyze(trace)
    if args.json:
        out = attr.to_dict()
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
        if args.since or args.start or args.end or args.query or args.service:
            raise UsageError("--since/--start/--end/--query/--service need --tempo or --jaeger")
        ts = _load_local(args)
        if args.limit:
            ts.traces = ts.traces[-args.limit :]
    for warning in ts.warnings:
        _note(f"note: {warning}")
    report = build_report(ts.traces)
    if args.json:
        out = report.to_dict()
        out["source"] = ts.source
        print(json.dumps(out, indent=2))
    else:
        print(render_report(report))
    if report.count == 0:
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
