"""Text rendering of an attribution: waterfall, per-stage table, summary lines.

Everything here only formats what :mod:`traceattr.analysis` computed; no numbers
are derived here except percentages and bar cells.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from telemetry import names
from traceattr.analysis import (
    NETWORK,
    TRACE_STAGE,
    Attribution,
    Blame,
    Node,
    stage_of,
)
from traceattr.model import KIND_SERVER, STATUS_ERROR

_KIND_SHORT = {
    "server": "srv",
    "client": "cli",
    "internal": "int",
    "producer": "pro",
    "consumer": "con",
}
#: Events worth a line under their span in the waterfall even when not asked for all events.
_NOTABLE_EVENTS = frozenset({names.EVENT_FIRST_AUDIO, "exception"})
#: Leaf siblings with one name repeated at least this often are folded into one row.
COLLAPSE_MIN = 3


def _fmt_ms(ns: int | float) -> str:
    ms = ns / 1e6
    if ms >= 1000:
        return f"{ms:,.0f}"
    if ms >= 100:
        return f"{ms:.1f}"
    return f"{ms:.2f}"


def _pct(part: int | float, whole: int | float) -> float:
    return 100.0 * part / whole if whole else 0.0


def supports_unicode(stream: object = None) -> bool:
    """Whether ``stream`` (default stdout) can print the block characters used in bars."""
    encoding = getattr(stream or sys.stdout, "encoding", None) or ""
    return encoding.lower().replace("-", "") in ("utf8", "utf16", "utf32")


@dataclass
class _Row:
    """One waterfall line: a span, or several same-named leaf siblings folded together."""

    nodes: list[Node]
    depth: int

    @property
    def first(self) -> Node:
        return self.nodes[0]


def _rows(attr: Attribution, collapse: bool, max_depth: int | None) -> list[_Row]:
    rows: list[_Row] = []
    stack: list[list[Node] | Node] = list(reversed(attr.tree.roots))
    while stack:
        item = stack.pop()
        group = item if isinstance(item, list) else [item]
        node = group[0]
        if max_depth is not None and node.depth > max_depth:
            continue
        rows.append(_Row(group, node.depth))
        if len(group) > 1:
            continue
        children: list[list[Node] | Node] = []
        if collapse:
            counts: dict[tuple[str, str], int] = {}
            for c in node.children:
                if not c.children:
                    key = (c.span.name, c.span.service)
                    counts[key] = counts.get(key, 0) + 1
            folded: dict[tuple[str, str], list[Node]] = {}
            for c in node.children:
                key = (c.span.name, c.span.service)
                if not c.children and counts[key] >= COLLAPSE_MIN:
                    if key not in folded:
                        folded[key] = []
                        children.append(folded[key])
                    folded[key].append(c)
                else:
                    children.append(c)
        else:
            children = list(node.children)
        stack.extend(reversed(children))
    return rows


def _bar(
    intervals: list[tuple[int, int]],
    critical: list[tuple[int, int]],
    t0: int,
    t1: int,
    width: int,
    unicode: bool,
) -> str:
    full, part = ("█", "░") if unicode else ("#", "=")
    cells = [" "] * width
    span = max(t1 - t0, 1)

    def cell_range(a: int, b: int) -> range:
        lo = int((a - t0) * width / span)
        hi = int((b - t0) * width / span + 0.999999)
        lo = min(max(lo, 0), width - 1)
        return range(lo, max(min(hi, width), lo + 1))

    for a, b in intervals:
        for i in cell_range(a, b):
            cells[i] = part
    for a, b in critical:
        if b > a:
            for i in cell_range(a, b):
                cells[i] = full
    return "|" + "".join(cells) + "|"


def render_waterfall(
    attr: Attribution,
    *,
    width: int = 40,
    collapse: bool = True,
    unicode: bool | None = None,
    all_events: bool = False,
    max_depth: int | None = None,
    name_width: int = 46,
) -> str:
    """The trace as an indented tree, one span per line.

    Columns: start offset from the trace's first span (ms), duration (ms), self time (ms),
    ``*`` if the span is on the critical path, kind, service, indented name, and a bar over the
    whole trace: light where the span ran, dark where it (or a descendant) was on the
    critical path. Leaf siblings repeated at
    least :data:`COLLAPSE_MIN` times (phase spans of each streamed chunk) are folded into one
    ``name ×N`` row with summed duration and self time unless ``collapse`` is false.
    """
    if unicode is None:
        unicode = supports_unicode()
    t0, t1 = attr.trace.start_ns, attr.trace.end_ns
    # A span is "on the critical path" wherever it or a descendant owns a segment.
    segments: dict[int, list[tuple[int, int]]] = {}
    for seg in attr.segments:
        node: Node | None = seg.node
        while node is not None:
            segments.setdefault(id(node), []).append((seg.start_ns, seg.end_ns))
            node = node.parent
    times = "×" if unicode else "x"
    arrow = "↳" if unicode else "->"
    header = (
        f"{'start':>9} {'dur':>9} {'self':>9}   {'kind':<4} {'service':<10} "
        f"{'span':<{name_width}} {'0':<{width // 2}}{_fmt_ms(t1 - t0) + ' ms':>{width // 2 + 2}}"
    )
    lines = [header]
    for row in _rows(attr, collapse, max_depth):
        node = row.first
        span = node.span
        group = row.nodes
        start = min(n.span.start_ns for n in group)
        duration = sum(n.span.duration_ns for n in group)
        self_ns = sum(n.self_ns for n in group)
        crit = [iv for n in group for iv in segments.get(id(n), [])]
        label = span.name + (f" {times}{len(group)}" if len(group) > 1 else "")
        if any(n.span.status == STATUS_ERROR for n in group):
            label += " !"
        indent = "  " * row.depth
        text = indent + label
        if len(text) > name_width:
            text = text[: name_width - 1] + ("…" if unicode else "~")
        mark = "*" if crit else " "
        bar = _bar([(n.span.start_ns, n.span.end_ns) for n in group], crit, t0, t1, width, unicode)
        lines.append(
            f"{_fmt_ms(start - t0):>9} {_fmt_ms(duration):>9} {_fmt_ms(self_ns):>9} {mark} "
            f"{_KIND_SHORT.get(span.kind, span.kind):<4} {span.service[:10]:<10} "
            f"{text:<{name_width}} {bar}"
        )
        if len(group) == 1:
            for event in span.events:
                if all_events or event.name in _NOTABLE_EVENTS:
                    lines.append(
                        f"{_fmt_ms(event.time_ns - t0):>9} {'':>9} {'':>9}   {'':<4} {'':<10} "
                        f"{indent}  {arrow} event {event.name}"
                    )
    return "\n".join(lines)


def _stage_table(attr: Attribution) -> list[str]:
    e2e = attr.e2e_ns
    w = max([12, *(len(s.stage) + 1 for s in attr.stages)])
    head = (
        f"{'stage':<{w}}{'calls':>5}{'wall':>10}{'busy':>10}{'queue':>9}{'pre+post':>10}"
        f"{'infer':>10}{'wait':>9}{'other':>9}{'net':>8}{'crit.path':>11}{'blame':>10}"
        f"{'share':>7}"
    )
    lines = [head, "-" * len(head)]
    for s in attr.stages:
        lines.append(
            f"{s.stage:<{w}}{s.calls:>5}{_fmt_ms(s.wall_ns):>10}{_fmt_ms(s.busy_ns):>10}"
            f"{_fmt_ms(s.phases[names.PHASE_QUEUE]):>9}{_fmt_ms(s.pre_post_ns):>10}"
            f"{_fmt_ms(s.phases[names.PHASE_INFERENCE]):>10}"
            f"{_fmt_ms(s.phases[names.PHASE_TRANSFER]):>9}{_fmt_ms(s.other_ns):>9}"
            f"{_fmt_ms(s.network_ns):>8}{_fmt_ms(s.critical_path_ns):>11}"
            f"{_fmt_ms(s.blame_ns):>10}{_pct(s.blame_ns, e2e):>6.1f}%"
        )
    net_cp = attr.blame.network_ns
    lines.append(
        f"{'network':<{w}}{'':>5}{'':>10}{'':>10}{'':>9}{'':>10}{'':>10}{'':>9}{'':>9}"
        f"{_fmt_ms(attr.network_ns):>8}{_fmt_ms(net_cp):>11}{_fmt_ms(net_cp):>10}"
        f"{_pct(net_cp, e2e):>6.1f}%"
    )
    lines.append("-" * len(head))
    total = sum(s.blame_ns for s in attr.stages) + net_cp
    lines.append(
        f"{'end-to-end':<{w}}{'':>5}{_fmt_ms(e2e):>10}{'':>10}{'':>9}{'':>10}{'':>10}{'':>9}"
        f"{'':>9}{'':>8}{_fmt_ms(attr.blame.total_ns):>11}{_fmt_ms(total):>10}"
        f"{_pct(total, e2e):>6.1f}%"
    )
    return lines


def _blame_line(blame: Blame, whole: int, order: list[str]) -> str:
    items = [(s, blame.by_stage.get(s, 0)) for s in order]
    items.append((NETWORK, blame.network_ns))
    items = [kv for kv in items if kv[1] > 0]
    items.sort(key=lambda kv: -kv[1])
    return ", ".join(f"{s} {_fmt_ms(ns)} ms ({_pct(ns, whole):.0f}%)" for s, ns in items)


def render_attribution(attr: Attribution) -> str:
    """The per-stage table and the summary: end-to-end, TTFA, who is to blame, critical path."""
    root = attr.root.span
    e2e = attr.e2e_ns
    what = f"{attr.method} " if attr.method else ""
    title = f"trace {attr.trace.trace_id}: {what}{root.name or TRACE_STAGE}"
    if root.service:
        title += f" ({root.service})"
    lines = [title]
    summary = f"end-to-end {_fmt_ms(e2e)} ms"
    if attr.ttfa_ns is not None:
        summary += f", time to first audio {_fmt_ms(attr.ttfa_ns)} ms"
    if root.status == STATUS_ERROR:
        summary += f", ERROR {root.status_message}".rstrip()
    lines.append(summary)
    lines.append("")
    lines.extend(_stage_table(attr))
    lines.append("")
    order = [s.stage for s in attr.stages]
    top, top_ns = attr.ranking()[0]
    if e2e:
        row = attr.stage(top)
        detail = ""
        if row is not None:
            parts = {
                "inference": row.phases[names.PHASE_INFERENCE],
                "queue": row.phases[names.PHASE_QUEUE],
                "pre+post": row.pre_post_ns,
                "waiting on the wire": row.phases[names.PHASE_TRANSFER],
                "other": row.other_ns,
            }
            biggest = max(parts.items(), key=lambda kv: kv[1])
            if biggest[1] > 0:
                detail = f"; its largest part is {biggest[0]} ({_fmt_ms(biggest[1])} ms)"
            if row.stage == attr.root_stage and attr.unattributed_ns:
                detail += f"; {_fmt_ms(attr.unattributed_ns)} ms of it is unattributed"
        lines.append(
            f"slowest: {top} -- {_fmt_ms(top_ns)} of {_fmt_ms(e2e)} ms "
            f"({_pct(top_ns, e2e):.0f}%) of the critical path{detail}"
        )
    lines.append(f"blame:   {_blame_line(attr.blame, e2e, order)}")
    if attr.ttfa_blame is not None and attr.ttfa_ns:
        lines.append(f"TTFA:    {_blame_line(attr.ttfa_blame, attr.ttfa_blame.total_ns, order)}")
    lines.append(
        f"unattributed: {_fmt_ms(attr.unattributed_ns)} ms ({_pct(attr.unattributed_ns, e2e):.1f}%)"
        f" -- {attr.root_stage} time on the critical path outside its phases and stage calls"
    )
    lines.append(
        f"explained: {_pct(attr.explained_ns, e2e):.1f}% of the critical path lies in a named "
        "phase or on the wire"
    )
    busy_total = sum(s.busy_ns for s in attr.stages)
    if attr.overlap_ns:
        lines.append(
            f"concurrency: stages overlapped for {_fmt_ms(attr.overlap_ns)} ms; busy times add "
            f"up to {_pct(busy_total, e2e):.0f}% of end-to-end (blame adds up to 100%)"
        )
    lines.append("critical path: " + _critical_chain(attr))
    if attr.warnings:
        lines.append("")
        lines.extend(f"note: {w}" for w in attr.warnings)
    return "\n".join(lines)


def _critical_chain(attr: Attribution, limit: int = 8) -> str:
    """The request's hops on the critical path, in order: the root and each server span,
    with the critical-path time of its subtree (nested server spans counted on their own;
    client-side network time counts for the caller)."""
    anchors: list[Node] = []
    totals: dict[int, int] = {}
    for seg in attr.segments:
        anchor: Node | None = seg.node
        while anchor is not None and not (
            anchor is attr.root or anchor.span.kind in (KIND_SERVER, "consumer")
        ):
            anchor = anchor.parent
        anchor = anchor or attr.root
        if id(anchor) not in totals:
            anchors.append(anchor)
            totals[id(anchor)] = 0
        totals[id(anchor)] += seg.duration_ns
    parts = []
    for n in anchors[:limit]:
        stage = TRACE_STAGE if n.virtual else stage_of(n.span)
        short = n.span.name.rsplit("/", 1)[-1] if n.span.name.startswith("/") else n.span.name
        parts.append(f"{short} [{stage}] {_fmt_ms(totals[id(n)])} ms")
    more = f" (+{len(anchors) - limit} more)" if len(anchors) > limit else ""
    return " -> ".join(parts) + more
