"""Attribution over many traces: which stage dominates the latency distribution and its tail.

Percentiles are nearest-rank (the smallest observed value with at least p % of observations at
or below it), so every reported value is a real request's, and "the tail" -- requests with an
end-to-end time >= p95 -- always holds at least one request. In each tail request the
*dominant* stage is the one with the largest blame (critical-path time with streaming waits
re-attributed; see :mod:`traceattr.analysis`), ``network`` competing as a stage.

Only successful requests are measured: a refusal (``INVALID_ARGUMENT``, ``RESOURCE_EXHAUSTED``
at capacity, ...) answers in a millisecond and a failure (``DEADLINE_EXCEEDED``,
``UNAVAILABLE``, ...) takes as long as it took to fail, so either would bend the percentiles.
They are counted apart, by status (:func:`request_status`, from the request's root span).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from telemetry import names
from traceattr.analysis import NETWORK, STAGE_ORDER, Attribution, analyze
from traceattr.model import STATUS_ERROR, AttributionError, Span, Trace

STATUS_OK = "OK"
#: gRPC status code names by number (this package does not import grpc).
GRPC_CODE_NAMES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)
#: Statuses of a request the service declined rather than failed: bad input, no credentials,
#: at capacity. Every other non-OK status is a failure.
REFUSALS = frozenset(
    {
        "INVALID_ARGUMENT",
        "RESOURCE_EXHAUSTED",
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
        "FAILED_PRECONDITION",
        "OUT_OF_RANGE",
        "HTTP 400",
        "HTTP 401",
        "HTTP 403",
        "HTTP 413",
        "HTTP 422",
        "HTTP 429",
    }
)


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def request_status(span: Span) -> str:
    """How the request whose root is ``span`` ended: ``"OK"``, a gRPC status code name
    (``rpc.grpc.status_code``), ``"HTTP <code>"`` for an HTTP error, else the span's
    ``error.type`` when its status is ERROR."""
    code = _as_int(span.attributes.get(names.ATTR_RPC_GRPC_STATUS_CODE))
    if code is not None and 0 < code < len(GRPC_CODE_NAMES):
        return GRPC_CODE_NAMES[code]
    http = _as_int(span.attributes.get("http.response.status_code"))
    if http is not None and http >= 400:
        return f"HTTP {http}"
    if span.status == STATUS_ERROR:
        error_type = span.attributes.get(names.ATTR_ERROR_TYPE)
        return str(error_type) if error_type else "ERROR"
    return STATUS_OK


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile ``p`` (0-100) of ``values`` (0.0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _dist(values: Sequence[float], ps: Sequence[float] = (50, 95)) -> dict[str, float]:
    return {f"p{int(p)}": percentile(values, p) for p in ps}


@dataclass
class StageSummary:
    """Distributions (ms, and % of each request's end-to-end) of one stage over the traces."""

    stage: str
    blame_ms: list[float] = field(default_factory=list)
    share_pct: list[float] = field(default_factory=list)
    critical_path_ms: list[float] = field(default_factory=list)
    busy_ms: list[float] = field(default_factory=list)
    wall_ms: list[float] = field(default_factory=list)
    tail_share_pct: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Percentiles of each series."""
        return {
            "stage": self.stage,
            "blame_ms": _dist(self.blame_ms),
            "share_pct": _dist(self.share_pct),
            "critical_path_ms": _dist(self.critical_path_ms),
            "busy_ms": _dist(self.busy_ms),
            "wall_ms": _dist(self.wall_ms),
            "tail_mean_share_pct": (
                sum(self.tail_share_pct) / len(self.tail_share_pct) if self.tail_share_pct else 0.0
            ),
        }


@dataclass
class Report:
    """What :func:`build_report` found over a set of traces.

    ``count`` and every distribution are over the successful requests only; the others are
    in ``refused`` and ``failed`` (status -> requests, most first).
    """

    count: int
    e2e_ms: list[float]
    ttfa_ms: list[float]
    stages: list[StageSummary]
    tail_threshold_ms: float
    tail_trace_ids: list[str]
    #: Tail requests per dominant stage, most first.
    dominant_in_tail: dict[str, int]
    #: Requests per dominant stage over all requests.
    dominant_overall: dict[str, int]
    skipped: list[tuple[str, str]]
    voxline_only: bool
    refused: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    #: (trace id, status) of every unsuccessful request.
    unsuccessful: list[tuple[str, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Requests of every outcome."""
        return self.count + sum(self.refused.values()) + sum(self.failed.values())

    @property
    def tail_dominant(self) -> str | None:
        """The stage that dominates most tail requests."""
        return next(iter(self.dominant_in_tail), None)

    def to_dict(self) -> dict[str, Any]:
        """Machine-readable form."""
        return {
            "requests": self.total,
            "count": self.count,
            "refused": self.refused,
            "failed": self.failed,
            "unsuccessful": [{"trace_id": t, "status": s} for t, s in self.unsuccessful],
            "e2e_ms": _dist(self.e2e_ms, (50, 95, 99)),
            "ttfa_ms": _dist(self.ttfa_ms, (50, 95, 99)) if self.ttfa_ms else None,
            "stages": [s.to_dict() for s in self.stages],
            "tail": {
                "threshold_ms": self.tail_threshold_ms,
                "count": len(self.tail_trace_ids),
                "trace_ids": self.tail_trace_ids,
                "dominant": self.dominant_in_tail,
                "dominant_stage": self.tail_dominant,
            },
            "dominant_overall": self.dominant_overall,
            "skipped": [{"trace_id": t, "reason": r} for t, r in self.skipped],
            "voxline_only": self.voxline_only,
        }


def _count(items: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _requests(
    traces: Iterable[Trace | Attribution],
) -> tuple[list[Attribution], list[tuple[str, str]], bool]:
    """The requests to report on, the traces skipped (with why), and whether they are
    Voxline synthesis requests only."""
    skipped: list[tuple[str, str]] = []
    attributions: list[Attribution] = []
    for item in traces:
        if isinstance(item, Attribution):
            attributions.append(item)
            continue
        try:
            attributions.append(analyze(item))
        except AttributionError as exc:
            skipped.append((item.trace_id, str(exc)))
    voxline_only = any(a.method is not None for a in attributions)
    if voxline_only:
        for a in attributions:
            if a.method is None:
                skipped.append((a.trace.trace_id, f"not a synthesis request ({a.root.span.name})"))
        attributions = [a for a in attributions if a.method is not None]
    return attributions, skipped, voxline_only


def _stage_summaries(
    attributions: Sequence[Attribution], tail: Sequence[Attribution]
) -> list[StageSummary]:
    """Per stage (and ``network``): its series over ``attributions``."""
    stage_names: list[str] = list(STAGE_ORDER) if any(a.voxline for a in attributions) else []
    for a in attributions:
        stage_names.extend(s.stage for s in a.stages if s.stage not in stage_names)
    summaries = {name: StageSummary(name) for name in [*stage_names, NETWORK]}
    tail_ids = {id(a) for a in tail}
    for a in attributions:
        whole = a.e2e_ns or 1
        for name, summary in summaries.items():
            if name == NETWORK:
                blame = cp = a.blame.network_ns
                busy = wall = a.network_ns
            else:
                row = a.stage(name)
                if row is None:
                    blame = cp = busy = wall = 0
                else:
                    blame, cp = row.blame_ns, row.critical_path_ns
                    busy, wall = row.busy_ns, row.wall_ns
            summary.blame_ms.append(blame / 1e6)
            summary.share_pct.append(100.0 * blame / whole)
            summary.critical_path_ms.append(cp / 1e6)
            summary.busy_ms.append(busy / 1e6)
            summary.wall_ms.append(wall / 1e6)
            if id(a) in tail_ids:
                summary.tail_share_pct.append(100.0 * blame / whole)
    return list(summaries.values())


def build_report(traces: Iterable[Trace | Attribution]) -> Report:
    """Aggregate per-trace attributions.

    When any trace is a Voxline synthesis request, only those are counted (a run directory
    also holds ``ListVoices`` calls and the like); the others are listed in ``skipped``.
    Traces that cannot be analysed are skipped with the reason. Requests that did not
    succeed are counted by status (``refused``, ``failed``) and left out of every
    distribution.
    """
    requests, skipped, voxline_only = _requests(traces)
    ok: list[Attribution] = []
    unsuccessful: list[tuple[str, str]] = []
    for a in requests:
        status = request_status(a.root.span)
        if status == STATUS_OK:
            ok.append(a)
        else:
            unsuccessful.append((a.trace.trace_id, status))
    statuses = _count(status for _, status in unsuccessful)

    e2e = [a.e2e_ns / 1e6 for a in ok]
    threshold = percentile(e2e, 95)
    tail = [a for a in ok if a.e2e_ns / 1e6 >= threshold] if ok else []
    return Report(
        count=len(ok),
        e2e_ms=e2e,
        ttfa_ms=[a.ttfa_ns / 1e6 for a in ok if a.ttfa_ns is not None],
        stages=_stage_summaries(ok, tail),
        tail_threshold_ms=threshold,
        tail_trace_ids=[a.trace.trace_id for a in tail],
        dominant_in_tail=_count(a.dominant() for a in tail),
        dominant_overall=_count(a.dominant() for a in ok),
        skipped=skipped,
        voxline_only=voxline_only,
        refused={k: n for k, n in statuses.items() if k in REFUSALS},
        failed={k: n for k, n in statuses.items() if k not in REFUSALS},
        unsuccessful=unsuccessful,
    )


def _outcome_line(report: Report) -> str:
    """``"12 synthesis requests: 10 ok, 1 refused (INVALID_ARGUMENT 1), 1 failed (...)"``."""
    kind = "synthesis requests" if report.voxline_only else "traces"

    def part(label: str, counts: dict[str, int]) -> str:
        n = sum(counts.values())
        detail = ", ".join(f"{status} {k}" for status, k in counts.items())
        return f"{n} {label}" + (f" ({detail})" if detail else "")

    return (
        f"{report.total} {kind}: {report.count} ok, {part('refused', report.refused)}, "
        f"{part('failed', report.failed)}"
    )


def render_report(report: Report) -> str:
    """The report as text: outcomes by status, then over the successful requests the e2e
    percentiles, a per-stage table and the tail's verdict."""
    if report.total == 0:
        lines = ["no requests to report on"]
        lines += [f"  skipped {t}: {r}" for t, r in report.skipped[:10]]
        return "\n".join(lines)
    lines = [_outcome_line(report)]
    if report.count == 0:
        lines.append("no successful request: no latency to report")
        return "\n".join(lines)
    e2e = report.to_dict()["e2e_ms"]
    lines.append(
        f"over the {report.count} ok: end-to-end p50 {e2e['p50']:.1f} ms, "
        f"p95 {e2e['p95']:.1f} ms, p99 {e2e['p99']:.1f} ms"
    )
    if report.ttfa_ms:
        lines.append(
            f"time to first audio ({len(report.ttfa_ms)} streamed): "
            f"p50 {percentile(report.ttfa_ms, 50):.1f} ms, "
            f"p95 {percentile(report.ttfa_ms, 95):.1f} ms"
        )
    lines.append("")
    w = max([12, *(len(s.stage) + 1 for s in report.stages)])
    head = (
        f"{'stage':<{w}}{'blame p50':>11}{'p95':>9}{'share p50':>11}{'p95':>7}"
        f"{'busy p50':>10}{'p95':>9}{'tail share':>12}"
    )
    lines += [head, "-" * len(head)]
    for s in report.stages:
        d = s.to_dict()
        lines.append(
            f"{s.stage:<{w}}{d['blame_ms']['p50']:>11.1f}{d['blame_ms']['p95']:>9.1f}"
            f"{d['share_pct']['p50']:>10.1f}%{d['share_pct']['p95']:>6.1f}%"
            f"{d['busy_ms']['p50']:>10.1f}{d['busy_ms']['p95']:>9.1f}"
            f"{d['tail_mean_share_pct']:>11.1f}%"
        )
    lines.append("")
    n_tail = len(report.tail_trace_ids)
    verdict = ", ".join(f"{stage} in {n}" for stage, n in report.dominant_in_tail.items())
    lines.append(
        f"slow tail (end-to-end >= p95 = {report.tail_threshold_ms:.1f} ms, {n_tail} request"
        f"{'s' if n_tail != 1 else ''}): dominated by {verdict}"
    )
    overall = ", ".join(f"{stage} in {n}" for stage, n in report.dominant_overall.items())
    lines.append(f"all requests: dominated by {overall}")
    if report.skipped:
        lines.append(f"skipped {len(report.skipped)} trace(s), e.g. {report.skipped[0][1]}")
    return "\n".join(lines)
