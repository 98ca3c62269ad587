"""Which stage made this request slow: span tree, self time, critical path, per-stage attribution.

Generic part (any trace)
    :class:`SpanTree` links spans to parents (orphans become extra roots, parent cycles are
    cut), clips every child to its parent's interval, and computes each span's **self time**:
    its duration minus the union of its children's intervals clipped to it.

    :func:`critical_path` is the standard trace critical path (as in Jaeger UI): start at the
    root's end; the child that finished last before the cursor is on the path, the parent owns
    the gap between that child's end and the cursor, the walk recurses into the child, then
    continues from the child's *start* with the next child that finished before it. Children
    that ran entirely in parallel with the chosen one are concurrent work the request did not
    wait for; a child still running at the cursor is truncated there rather than skipped (see
    :func:`critical_path` for why). The result tiles the root's interval exactly, so every
    nanosecond of the end-to-end time belongs to exactly one span.

Voxline part (when Voxline names are present)
    The root is the gateway's server span ``/voxline.v1.Synthesizer/Synthesize[Stream]``. Each
    span is classified into ``(stage, category)``:

    - a phase span (``voxline.phase`` attribute) -> its ``voxline.stage`` and its phase
      (``queue``, ``preprocess``, ``inference``, ``postprocess``, ``transfer``);
    - a CLIENT span with a SERVER child -> the callee's stage, category ``network``: its self
      time is serialisation + wire + the peer's gRPC plumbing outside its server span;
    - a CLIENT span to a Voxline stage whose server span is missing (that process did not
      export) -> the callee's stage, category ``other``: the best that can be said;
    - anything else -> the span's stage (``voxline.stage``, else its ``service.name``),
      category ``other`` (handler code outside any phase span).

    Per stage, :class:`StageStats` reports:

    - ``wall``: union of the stage's server spans' intervals;
    - ``phases``: self time of its phase spans, per phase (sums; nested phases not counted
      twice); ``busy``: union of its *work* phase spans (queue, preprocess, inference,
      postprocess) -- when it was doing, or queued for, this request's work. A stage without
      phase spans is taken as busy for its whole wall time (we cannot tell better);
    - ``network``: sum over calls into the stage of client span duration minus server span
      duration (skew-free: both are durations on one clock each);
    - ``critical_path``: its share of the structural critical path (by category);
    - ``blame``: the critical path with *streaming waits* re-attributed, see below;
    - ``exclusive``: time it was busy while no other stage was.

Streaming accounting (why there are two critical-path numbers)
    In streaming, stages overlap: the vocoder's stream is open while the acoustic model still
    produces mel chunks, and each stage marks the time it is blocked on the wire -- waiting for
    the next input message or for its output to be taken -- as a ``transfer`` phase span. The
    structural critical path runs through the span that *ends* last (the vocoder's stream),
    so it charges the vocoder for time it spent waiting for the acoustic stage. ``blame``
    corrects exactly that: critical-path time inside a (non-root) stage's ``transfer`` phase
    is handed to the other stage(s) that were busy (work phases) at that instant, split evenly
    if several were; if none was busy the wait stays with the waiting stage (it was the wire).
    The root stage's own waits (the gateway blocked sending audio to its caller) stay with it:
    that is the end client's back-pressure, not a stage's doing.
    Nothing else moves, so per-stage blame plus network still sums to the end-to-end time and
    the blame percentages add up to 100 %. ``busy`` percentages, in contrast, may add up to
    more than 100 % in streaming -- that overlap is the pipelining -- and the concurrency
    split (``exclusive`` per stage, ``overlap``, ``idle``) partitions the end-to-end time by
    how many stages were busy at once.

    **Unattributed** is critical-path time of the root stage (the gateway) outside any of its
    phase spans and outside any stage call: orchestration the gateway did not instrument. It is
    part of the gateway's blame and shown separately. Unary requests are sequential, so there
    ``blame == critical_path == wall`` for each downstream stage and
    ``e2e = sum(stage wall) + network + gateway own time``.

    Time to first audio comes from the ``first_audio`` event (gateway root and synthesis span):
    ``ttfa = event time - root start``, and its blame breakdown is the same accounting applied
    to the critical path that ends at the event.

The analyses
    :func:`analyze` only composes; each number above comes from one pure function of the
    request's spans or its critical path, tested on its own in tests/test_trace_analyses.py:
    :func:`choose_root` (end-to-end span), :func:`is_voxline`, :func:`stage_order`,
    :func:`served_calls` (``calls``), :func:`stage_extents` (``wall``),
    :func:`phase_breakdown` (``phases``), :func:`other_time`, :func:`network_time`,
    :func:`busy_intervals` (``busy``), :func:`concurrent_busy`,
    :func:`critical_path_by_category` (``critical_path``), :func:`critical_path_blame`
    (``blame``, ``unattributed``), :func:`concurrency_split` (``exclusive``, ``overlap``,
    ``idle``), :func:`first_audio` (TTFA and its blame), :func:`explained_time`,
    :func:`synthesis_method` and :func:`analysis_warnings`; :func:`stage_rows` and
    :func:`reported_stages` assemble the per-stage table.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from telemetry import names
from traceattr.model import (
    KIND_CLIENT,
    KIND_CONSUMER,
    KIND_INTERNAL,
    KIND_SERVER,
    STATUS_ERROR,
    Span,
    Trace,
    TraceNotFoundError,
)

#: The gateway's public gRPC service and the server spans that root a synthesis request.
SYNTHESIZER_RPC_SERVICE = "voxline.v1.Synthesizer"
SYNTHESIS_ROOT_NAMES = frozenset(
    {
        f"/{SYNTHESIZER_RPC_SERVICE}/Synthesize",
        f"/{SYNTHESIZER_RPC_SERVICE}/SynthesizeStream",
        f"/{SYNTHESIZER_RPC_SERVICE}/SynthesizeTextStream",
    }
)
#: gRPC service -> the stage that serves it (to name the callee of a client span whose
#: server side is missing from the trace).
RPC_SERVICE_STAGES: dict[str, str] = {
    SYNTHESIZER_RPC_SERVICE: names.STAGE_GATEWAY,
    "voxline.v1.TextFrontend": names.STAGE_FRONTEND,
    "voxline.v1.AcousticModel": names.STAGE_ACOUSTIC,
    "voxline.v1.Vocoder": names.STAGE_VOCODER,
}
#: Pipeline order, used to order stage tables.
STAGE_ORDER: tuple[str, ...] = (
    names.STAGE_GATEWAY,
    names.STAGE_FRONTEND,
    names.STAGE_ACOUSTIC,
    names.STAGE_VOCODER,
)
#: Phases that are the stage's own work (or queueing for its model), as opposed to waiting.
WORK_PHASES: tuple[str, ...] = (
    names.PHASE_QUEUE,
    names.PHASE_PREPROCESS,
    names.PHASE_INFERENCE,
    names.PHASE_POSTPROCESS,
)
PHASE_ORDER: tuple[str, ...] = (*WORK_PHASES, names.PHASE_TRANSFER)
CATEGORY_OTHER = "other"
CATEGORY_NETWORK = "network"
#: Every category a span's time can fall in.
CATEGORIES: tuple[str, ...] = (*PHASE_ORDER, CATEGORY_OTHER, CATEGORY_NETWORK)
#: Pseudo-stage of the network column in blame rankings.
NETWORK = "network"
#: Stage of spans with neither ``voxline.stage`` nor ``service.name``.
UNKNOWN_STAGE = "(unknown)"
#: Stage of the synthetic root that joins several roots of one trace.
TRACE_STAGE = "(trace)"


def is_synthesis_root(span: Span) -> bool:
    """True for the gateway's server span of ``Synthesize``/``SynthesizeStream``/
    ``SynthesizeTextStream``."""
    return span.kind == KIND_SERVER and span.name in SYNTHESIS_ROOT_NAMES


def stage_of(span: Span) -> str:
    """The span's stage: its ``voxline.stage`` attribute, else its service name."""
    stage = span.attributes.get(names.ATTR_STAGE)
    if isinstance(stage, str) and stage:
        return stage
    return span.service or UNKNOWN_STAGE


def rpc_service_of(span: Span) -> str | None:
    """The gRPC service of an RPC span: ``rpc.service``, else parsed from ``/pkg.Svc/Method``."""
    service = span.attributes.get(names.ATTR_RPC_SERVICE)
    if isinstance(service, str) and service:
        return service
    if span.name.startswith("/") and span.name.count("/") == 2:
        return span.name.split("/")[1]
    return None


def phase_of(span: Span) -> str | None:
    """The ``voxline.phase`` of a phase span, else ``None``."""
    phase = span.attributes.get(names.ATTR_PHASE)
    return phase if isinstance(phase, str) and phase in names.PHASES else None


def pending_stages(trace: Trace) -> list[str]:
    """Stages (or services) whose spans of ``trace`` look not exported yet.

    Each process exports its spans on its own schedule (every ~5 s locally), so a trace read
    right after its request may lack some. Telltales: a call (CLIENT span that did not fail)
    into a Voxline stage without that stage's SERVER span; a stage's SERVER span without the
    gateway's call above it; any other span whose parent is missing (the parent, in the same
    process, ended or was exported later). A missing parent of a gateway or HTTP server span
    is the caller's, which may never export: not counted.
    """
    ids = {s.span_id for s in trace.spans}
    served = {s.parent_id for s in trace.spans if s.kind in (KIND_SERVER, KIND_CONSUMER)}
    pending: list[str] = []
    for s in trace.spans:
        callee = RPC_SERVICE_STAGES.get(rpc_service_of(s) or "")
        if s.kind == KIND_CLIENT:
            if callee and s.status != STATUS_ERROR and s.span_id not in served:
                pending.append(callee)
        elif s.parent_id is None or s.parent_id in ids:
            continue
        elif s.kind != KIND_SERVER:
            pending.append(stage_of(s))
        elif callee and callee != names.STAGE_GATEWAY:
            pending.append(names.STAGE_GATEWAY)
    return list(dict.fromkeys(pending))


# ---------------------------------------------------------------------------------------------
# Intervals
# ---------------------------------------------------------------------------------------------

Interval = tuple[int, int]


def merge_intervals(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, non-overlapping union of ``intervals`` (empty ones dropped)."""
    out: list[Interval] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def union_length(intervals: Iterable[Interval]) -> int:
    """Total length of the union of ``intervals``."""
    return sum(end - start for start, end in merge_intervals(intervals))


def clip_intervals(intervals: Iterable[Interval], lo: int, hi: int) -> list[Interval]:
    """``intervals`` intersected with ``[lo, hi]`` (empty results dropped)."""
    return [(max(s, lo), min(e, hi)) for s, e in intervals if min(e, hi) > max(s, lo)]


def _covers(merged: Sequence[Interval], starts: Sequence[int], lo: int, hi: int) -> bool:
    """Whether the merged interval list covers ``[lo, hi]`` entirely."""
    i = bisect.bisect_right(starts, lo) - 1
    return i >= 0 and merged[i][1] >= hi


# ---------------------------------------------------------------------------------------------
# Span tree
# ---------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Node:
    """A span in the tree, with its interval clipped to its ancestors' and its self time."""

    span: Span
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)
    depth: int = 0
    clip_start: int = 0
    clip_end: int = 0
    self_ns: int = 0
    #: True for the synthetic node joining several roots.
    virtual: bool = False

    @property
    def clipped_ns(self) -> int:
        """Length of the clipped interval."""
        return self.clip_end - self.clip_start


class SpanTree:
    """Parent/child structure of one trace.

    Children are ordered by start time. A span whose parent is missing is a root (an
    incomplete trace); a parent chain that loops is cut where the loop closes. Where several
    spans share an id, children attach to the first of them.
    """

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.warnings: list[str] = []
        self.nodes = [Node(s) for s in trace.spans]
        self.by_id: dict[str, Node] = {}
        for node in self.nodes:
            self.by_id.setdefault(node.span.span_id, node)
        for node in self.nodes:
            pid = node.span.parent_id
            parent = self.by_id.get(pid) if pid else None
            node.parent = parent if parent is not node else None
        self._cut_cycles()
        for node in self.nodes:
            if node.parent is not None:
                node.parent.children.append(node)
        for node in self.nodes:
            node.children.sort(key=lambda n: (n.span.start_ns, n.span.end_ns))
        self.roots = sorted(
            (n for n in self.nodes if n.parent is None),
            key=lambda n: (n.span.start_ns, -n.span.end_ns),
        )
        self._annotate()

    def _cut_cycles(self) -> None:
        state: dict[int, int] = {}  # id(node) -> 1 on the current path, 2 done
        for node in self.nodes:
            path: list[Node] = []
            cur: Node | None = node
            while cur is not None and state.get(id(cur), 0) == 0:
                state[id(cur)] = 1
                path.append(cur)
                cur = cur.parent
            if cur is not None and state.get(id(cur)) == 1:
                self.warnings.append(
                    f"parent cycle through span {cur.span.span_id} ({cur.span.name}) was cut"
                )
                cur.parent = None
            for p in path:
                state[id(p)] = 2

    def _annotate(self) -> None:
        for root in self.roots:
            root.depth = 0
        self.reclip(self.roots)

    def reclip(self, tops: Iterable[Node]) -> None:
        """Give each of ``tops`` its own, unclipped interval and recompute depth, clipped
        interval and self time below it (iteratively: deep traces).

        :func:`analyze` calls this on an end-to-end root that has a parent (the caller's
        client span, maybe on a host with a skewed clock): the request's own interval is
        then authoritative, not its caller's.
        """
        stack: list[Node] = []
        for top in tops:
            top.clip_start, top.clip_end = top.span.start_ns, top.span.end_ns
            stack.append(top)
        stack.reverse()
        while stack:
            node = stack.pop()
            s = node.span
            covered = [
                (max(c.span.start_ns, s.start_ns), min(c.span.end_ns, s.end_ns))
                for c in node.children
            ]
            node.self_ns = max(0, s.duration_ns - union_length(covered))
            for child in node.children:
                child.depth = node.depth + 1
                child.clip_start = min(max(child.span.start_ns, node.clip_start), node.clip_end)
                child.clip_end = max(min(child.span.end_ns, node.clip_end), child.clip_start)
            stack.extend(reversed(node.children))

    def walk(self, roots: Iterable[Node] | None = None) -> Iterator[Node]:
        """Nodes in depth-first pre-order (children by start time)."""
        stack = list(reversed(list(self.roots if roots is None else roots)))
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))

    def subtree(self, node: Node) -> Iterator[Node]:
        """``node`` and all its descendants, pre-order."""
        if node.virtual:
            yield node
            yield from self.walk(node.children)
        else:
            yield from self.walk([node])


def virtual_root(trace: Trace, roots: list[Node]) -> Node:
    """A synthetic root spanning ``roots`` (a trace with several roots has no single e2e)."""
    start = min(n.span.start_ns for n in roots)
    end = max(n.span.end_ns for n in roots)
    span = Span(
        trace_id=trace.trace_id,
        span_id="",
        parent_id=None,
        name=TRACE_STAGE,
        kind=KIND_INTERNAL,
        start_ns=start,
        end_ns=end,
        service=TRACE_STAGE,
    )
    covered = [(n.span.start_ns, n.span.end_ns) for n in roots]
    node = Node(span, children=list(roots), clip_start=start, clip_end=end, virtual=True)
    node.self_ns = max(0, (end - start) - union_length(covered))
    return node


# ---------------------------------------------------------------------------------------------
# Critical path
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """A piece ``[start_ns, end_ns)`` of the critical path, owned by ``node``'s span."""

    node: Node
    start_ns: int
    end_ns: int

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns


def _latest_end_within(node: Node, limit: int) -> int:
    """Latest end <= ``limit`` in ``node``'s subtree (tie-break for equal clipped ends)."""
    best = -1
    stack = [node]
    while stack:
        n = stack.pop()
        if n.clip_end <= limit:
            best = max(best, n.clip_end)
        stack.extend(n.children)
    return best


def _next_child(remaining: list[Node], cursor: int) -> tuple[int, Node] | None:
    """The child that finished last before ``cursor`` (a child still running at ``cursor``
    counts as finishing there), with its end clipped to ``cursor``."""
    best_end = -1
    best: list[Node] = []
    for c in remaining:
        if c.clip_start >= cursor:
            continue
        end = min(c.clip_end, cursor)
        if end > best_end:
            best_end, best = end, [c]
        elif end == best_end:
            best.append(c)
    if not best:
        return None
    if len(best) > 1:
        # Several children were still running at the cursor (streams, or a cut-off such as
        # time to first audio): prefer the one whose subtree *completed* something last
        # before it (the vocoder window that made the first audio, not the upstream stream it
        # waited on), then the later start.
        best.sort(key=lambda c: (_latest_end_within(c, best_end), c.clip_start), reverse=True)
    return best_end, best[0]


def critical_path(root: Node, end_ns: int | None = None) -> list[Segment]:
    """The critical path of ``root``'s subtree up to ``end_ns`` (default: the root's end),
    as chronological segments that tile ``[root start, end]`` exactly.

    At each level the walk takes the child that finished last before the cursor, gives the
    parent the gap after it, descends into it, and continues from its start. Unlike the
    Jaeger UI variant, a child that is still running at the cursor is *truncated* to the
    cursor instead of skipped: otherwise one short sibling ending just after a long stream
    (a final flush after the vocoder's stream, say) pushes the whole stream off the path and
    its time lands in the parent's self time. For sequential children both variants agree.
    Iterative, so deep traces do not hit the recursion limit.
    """
    limit = root.clip_end if end_ns is None else max(root.clip_start, min(root.clip_end, end_ns))
    segments: list[Segment] = []

    def frame(node: Node, end: int) -> list[Any]:
        kids = [c for c in node.children if c.clipped_ns > 0 and c.clip_start < end]
        return [node, end, kids]

    stack: list[list[Any]] = [frame(root, limit)]
    while stack:
        top = stack[-1]
        node, cursor, remaining = top
        found = _next_child(remaining, cursor)
        if found is not None:
            kid_end, child = found
            remaining.remove(child)
            if cursor > kid_end:
                segments.append(Segment(node, kid_end, cursor))
            top[1] = child.clip_start
            stack.append(frame(child, kid_end))
        else:
            if cursor > node.clip_start:
                segments.append(Segment(node, node.clip_start, cursor))
            stack.pop()
    segments.reverse()
    return segments


# ---------------------------------------------------------------------------------------------
# Attribution
# ---------------------------------------------------------------------------------------------


def _ms(ns: int | float) -> float:
    return ns / 1e6


def _pct(part: int | float, whole: int | float) -> float:
    return 100.0 * part / whole if whole else 0.0


@dataclass
class StageStats:
    """Per-stage numbers of one trace (see the module docstring for definitions)."""

    stage: str
    #: Server (or consumer) spans of the stage: calls it served for this request.
    calls: int = 0
    wall_ns: int = 0
    busy_ns: int = 0
    #: Self time of phase spans per phase (``queue`` .. ``transfer``).
    phases: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PHASE_ORDER, 0))
    #: Self time of the stage's other spans (handler code outside phases).
    other_ns: int = 0
    #: Sum of (client duration - server duration) over calls into this stage.
    network_ns: int = 0
    #: Structural critical-path time by category (``network`` included).
    critical_path: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
    #: Critical path with streaming waits re-attributed (excludes network).
    blame_ns: int = 0
    #: Own ``transfer`` waits on the critical path handed to stages busy meanwhile.
    waiting_ns: int = 0
    #: Other stages' waits handed to this one.
    blamed_for_waits_ns: int = 0
    #: Busy while no other stage was busy.
    exclusive_ns: int = 0

    @property
    def critical_path_ns(self) -> int:
        """Structural critical-path time of the stage, network excluded."""
        return sum(v for k, v in self.critical_path.items() if k != CATEGORY_NETWORK)

    @property
    def network_critical_path_ns(self) -> int:
        """Critical-path time on the wire to/from this stage."""
        return self.critical_path[CATEGORY_NETWORK]

    @property
    def pre_post_ns(self) -> int:
        """Preprocess + postprocess self time."""
        return self.phases[names.PHASE_PREPROCESS] + self.phases[names.PHASE_POSTPROCESS]

    def to_dict(self, e2e_ns: int) -> dict[str, Any]:
        """Machine-readable form, times in milliseconds."""
        return {
            "stage": self.stage,
            "calls": self.calls,
            "wall_ms": _ms(self.wall_ns),
            "busy_ms": _ms(self.busy_ns),
            "busy_pct": _pct(self.busy_ns, e2e_ns),
            "phases_ms": {k: _ms(v) for k, v in self.phases.items()},
            "other_ms": _ms(self.other_ns),
            "network_ms": _ms(self.network_ns),
            "critical_path_ms": _ms(self.critical_path_ns),
            "critical_path_by_category_ms": {k: _ms(v) for k, v in self.critical_path.items()},
            "network_critical_path_ms": _ms(self.network_critical_path_ns),
            "blame_ms": _ms(self.blame_ns),
            "share_pct": _pct(self.blame_ns, e2e_ns),
            "waiting_ms": _ms(self.waiting_ns),
            "blamed_for_waits_ms": _ms(self.blamed_for_waits_ns),
            "exclusive_ms": _ms(self.exclusive_ns),
        }


@dataclass
class Blame:
    """Critical-path time per stage after re-attributing streaming waits."""

    by_stage: dict[str, int]
    network_ns: int
    #: Root stage's critical-path time outside phases and calls.
    unattributed_ns: int
    waiting: dict[str, int]
    blamed_for_waits: dict[str, int]
    total_ns: int

    def to_dict(self) -> dict[str, Any]:
        """Machine-readable form, times in milliseconds."""
        return {
            "total_ms": _ms(self.total_ns),
            "stages_ms": {k: _ms(v) for k, v in self.by_stage.items()},
            "network_ms": _ms(self.network_ns),
            "unattributed_ms": _ms(self.unattributed_ns),
        }


@dataclass
class Attribution:
    """Everything :func:`analyze` found out about one trace."""

    trace: Trace
    tree: SpanTree
    root: Node
    #: True when Voxline names were found (a synthesis root, or stage spans).
    voxline: bool
    #: ``unary``/``stream`` for a synthesis request, else ``None``.
    method: str | None
    e2e_ns: int
    ttfa_ns: int | None
    stages: list[StageStats]
    segments: list[Segment]
    blame: Blame
    ttfa_blame: Blame | None
    #: Time >= 2 stages were busy at once, and time none was, within the root's interval.
    overlap_ns: int
    idle_ns: int
    warnings: list[str]

    @property
    def root_stage(self) -> str:
        """Stage of the root span (``gateway`` for a Voxline request)."""
        return node_stage(self.root)

    @property
    def network_ns(self) -> int:
        """Network time over all calls (client minus server duration)."""
        return sum(s.network_ns for s in self.stages)

    @property
    def unattributed_ns(self) -> int:
        """See the module docstring."""
        return self.blame.unattributed_ns

    @property
    def explained_ns(self) -> int:
        """Critical-path time the trace explains: in a named phase of some stage or on the
        wire. The rest is handler code outside any phase (category ``other``)."""
        return explained_time((s.critical_path for s in self.stages), self.e2e_ns)

    def stage(self, name: str) -> StageStats | None:
        """The row of stage ``name``."""
        return next((s for s in self.stages if s.stage == name), None)

    def critical_path_ns_by_node(self) -> dict[int, int]:
        """``id(node) -> critical-path ns`` for every node on the path."""
        out: dict[int, int] = {}
        for seg in self.segments:
            out[id(seg.node)] = out.get(id(seg.node), 0) + seg.duration_ns
        return out

    def critical_path_spans(self) -> list[tuple[Node, int]]:
        """Spans on the critical path with their time on it, in order of first appearance."""
        totals: dict[int, int] = {}
        order: list[Node] = []
        for seg in self.segments:
            if id(seg.node) not in totals:
                order.append(seg.node)
                totals[id(seg.node)] = 0
            totals[id(seg.node)] += seg.duration_ns
        return [(n, totals[id(n)]) for n in order]

    def ranking(self) -> list[tuple[str, int]]:
        """Stages (and ``network``) by blame, largest first."""
        items = [(s.stage, s.blame_ns) for s in self.stages]
        items.append((NETWORK, self.blame.network_ns))
        order = {name: i for i, (name, _) in enumerate(items)}
        return sorted(items, key=lambda kv: (-kv[1], order[kv[0]]))

    def dominant(self) -> str:
        """The stage (or ``network``) with the most blame."""
        return self.ranking()[0][0]

    def to_dict(self) -> dict[str, Any]:
        """Machine-readable form of everything (times in ms from the trace's start)."""
        t0 = self.trace.start_ns
        cp_by_node = self.critical_path_ns_by_node()
        root = self.root.span
        return {
            "trace_id": self.trace.trace_id,
            "format": self.trace.source_format,
            "voxline": self.voxline,
            "method": self.method,
            "root": {
                "span_id": root.span_id,
                "name": root.name,
                "service": root.service,
                "start_offset_ms": _ms(root.start_ns - t0),
                "status": root.status,
            },
            "e2e_ms": _ms(self.e2e_ns),
            "ttfa_ms": None if self.ttfa_ns is None else _ms(self.ttfa_ns),
            "dominant": self.dominant(),
            "stages": [s.to_dict(self.e2e_ns) for s in self.stages],
            "network_ms": _ms(self.network_ns),
            "network_critical_path_ms": _ms(self.blame.network_ns),
            "network_pct": _pct(self.blame.network_ns, self.e2e_ns),
            "unattributed_ms": _ms(self.unattributed_ns),
            "unattributed_pct": _pct(self.unattributed_ns, self.e2e_ns),
            "explained_pct": _pct(self.explained_ns, self.e2e_ns),
            "concurrency": {
                "overlap_ms": _ms(self.overlap_ns),
                "idle_ms": _ms(self.idle_ns),
                "exclusive_ms": {s.stage: _ms(s.exclusive_ns) for s in self.stages},
            },
            "blame": self.blame.to_dict(),
            "ttfa_blame": None if self.ttfa_blame is None else self.ttfa_blame.to_dict(),
            "critical_path": [
                {
                    "span_id": n.span.span_id,
                    "name": n.span.name,
                    "service": n.span.service,
                    "stage": TRACE_STAGE if n.virtual else stage_of(n.span),
                    "ms": _ms(ns),
                }
                for n, ns in self.critical_path_spans()
            ],
            "spans": [
                {
                    "span_id": n.span.span_id,
                    "parent_id": n.span.parent_id,
                    "name": n.span.name,
                    "service": n.span.service,
                    "kind": n.span.kind,
                    "status": n.span.status,
                    "depth": n.depth,
                    "start_offset_ms": _ms(n.span.start_ns - t0),
                    "duration_ms": _ms(n.span.duration_ns),
                    "self_ms": _ms(n.self_ns),
                    "critical_path_ms": _ms(cp_by_node.get(id(n), 0)),
                }
                for n in self.tree.walk()
            ],
            "warnings": self.warnings,
        }


def _server_child(node: Node) -> Node | None:
    return next((c for c in node.children if c.span.kind in (KIND_SERVER, KIND_CONSUMER)), None)


def classify(node: Node) -> tuple[str, str]:
    """``(stage, category)`` of a node's self time (see the module docstring)."""
    span = node.span
    if node.virtual:
        return TRACE_STAGE, CATEGORY_OTHER
    phase = phase_of(span)
    if phase is not None:
        return stage_of(span), phase
    if span.kind == KIND_CLIENT:
        server = _server_child(node)
        if server is not None:
            return stage_of(server.span), CATEGORY_NETWORK
        callee = RPC_SERVICE_STAGES.get(rpc_service_of(span) or "")
        if callee is not None and callee != stage_of(span):
            # The stage's server span is missing: its whole time is the best we know.
            return callee, CATEGORY_OTHER
    return stage_of(span), CATEGORY_OTHER


def node_stage(node: Node) -> str:
    """The stage of a node's own span: :data:`TRACE_STAGE` for the synthetic root, else
    :func:`stage_of` (unlike :func:`classify`, a client span stays with its caller)."""
    return TRACE_STAGE if node.virtual else stage_of(node.span)


# ---------------------------------------------------------------------------------------------
# The analyses
#
# Each is a pure function of the request's spans (``nodes``: the end-to-end root's subtree,
# pre-order, as :meth:`SpanTree.subtree` yields it) or of its critical path; :func:`analyze`
# composes them. Stage and category of a span are always :func:`classify`'s.
# ---------------------------------------------------------------------------------------------


def choose_root(tree: SpanTree, root_span_id: str | None = None) -> tuple[Node, bool]:
    """The node whose interval is "end to end", and whether it is a Voxline synthesis root.

    ``root_span_id`` (hex, any case, leading zeros optional) names it; otherwise it is the
    earliest synthesis root (:func:`is_synthesis_root`) wherever it hangs, else the trace's
    only root, else a synthetic root (:func:`virtual_root`) over all roots -- spans whose
    parent is missing are roots too. Raises :class:`TraceNotFoundError` for an unknown id or a
    trace without spans.
    """
    if not tree.nodes:
        raise TraceNotFoundError(f"trace {tree.trace.trace_id} has no spans")
    if root_span_id:
        node = tree.by_id.get(root_span_id.strip().lower().rjust(16, "0"))
        if node is None:
            raise TraceNotFoundError(f"span {root_span_id} is not in trace {tree.trace.trace_id}")
        return node, is_synthesis_root(node.span)
    synthesis = [n for n in tree.nodes if is_synthesis_root(n.span)]
    if synthesis:
        return min(synthesis, key=lambda n: n.span.start_ns), True
    if len(tree.roots) == 1:
        return tree.roots[0], False
    return virtual_root(tree.trace, tree.roots), False


def is_voxline(nodes: Iterable[Node], synthesis_root: bool) -> bool:
    """Whether Voxline names are present: a synthesis root, or a span whose stage
    (:func:`stage_of`) or service name is one of Voxline's stages."""
    return synthesis_root or any(
        stage_of(n.span) in names.STAGES or n.span.service in names.STAGES for n in nodes
    )


def stage_order(nodes: Iterable[Node], root: Node, voxline: bool) -> list[str]:
    """The stages of the request in table order.

    For a Voxline request, the four pipeline stages first, in pipeline order, whether or not
    they have spans; then every other stage in order of first appearance: the root's own
    stage (unless the root is synthetic), then each span's :func:`classify` stage, pre-order.
    """
    appearance = [] if root.virtual else [stage_of(root.span)]
    appearance += [classify(n)[0] for n in nodes]
    ordered = list(STAGE_ORDER) if voxline else []
    return ordered + [s for s in dict.fromkeys(appearance) if s not in ordered]


def served_calls(nodes: Iterable[Node]) -> dict[str, list[Interval]]:
    """The calls each stage served for this request: the clipped intervals of its SERVER and
    CONSUMER spans, in span order. The length of a stage's list is its ``calls`` count."""
    calls: dict[str, list[Interval]] = {}
    for n in nodes:
        if n.span.kind in (KIND_SERVER, KIND_CONSUMER) and not n.virtual:
            calls.setdefault(classify(n)[0], []).append((n.clip_start, n.clip_end))
    return calls


def stage_extents(nodes: Iterable[Node]) -> dict[str, list[Interval]]:
    """Where each stage that has spans was present: the intervals of its served calls
    (:func:`served_calls`) when it has any, else the clipped intervals of all its spans (a
    stage seen only through client spans, a service without server spans). A stage's
    ``wall`` time is the length of their union, so overlapping calls count once.
    """
    nodes = list(nodes)
    calls = served_calls(nodes)
    spans: dict[str, list[Interval]] = {}
    for n in nodes:
        spans.setdefault(classify(n)[0], []).append((n.clip_start, n.clip_end))
    return {stage: calls.get(stage) or intervals for stage, intervals in spans.items()}


def phase_breakdown(nodes: Iterable[Node]) -> dict[str, dict[str, int]]:
    """Self time per phase (every phase of :data:`PHASE_ORDER`, 0 if unused) of each stage
    that has phase spans; stages without any are absent.

    A phase span counts with its *self* time (:class:`SpanTree`): a phase nested in another
    counts once, for the inner one, and overlapping children are subtracted once.
    """
    phases: dict[str, dict[str, int]] = {}
    for n in nodes:
        stage, category = classify(n)
        if category in PHASE_ORDER:
            row = phases.setdefault(stage, dict.fromkeys(PHASE_ORDER, 0))
            row[category] += n.self_ns
    return phases


def other_time(nodes: Iterable[Node]) -> dict[str, int]:
    """Self time per stage of spans outside any phase that are not calls into a served stage
    (category ``other``): handler code between phases, or the whole time of a call whose
    server span is missing. Stages without such time are absent."""
    other: dict[str, int] = {}
    for n in nodes:
        stage, category = classify(n)
        if category == CATEGORY_OTHER:
            other[stage] = other.get(stage, 0) + n.self_ns
    return other


def network_time(nodes: Iterable[Node]) -> dict[str, int]:
    """Network time per hop, summed per callee stage: for every CLIENT span with a SERVER (or
    CONSUMER) child, the client's duration minus the server's, never negative.

    Each is a duration on one host's clock, so clock skew between caller and callee cancels
    out. The time is serialisation, the wire both ways and the callee's gRPC plumbing outside
    its server span. A call whose server span is missing has no network time (see
    :func:`other_time`).
    """
    network: dict[str, int] = {}
    for n in nodes:
        stage, category = classify(n)
        server = _server_child(n) if category == CATEGORY_NETWORK else None
        if server is not None:
            ns = max(0, n.span.duration_ns - server.span.duration_ns)
            network[stage] = network.get(stage, 0) + ns
    return network


def busy_intervals(nodes: Iterable[Node]) -> dict[str, list[Interval]]:
    """When each stage was busy with this request, as clipped (unmerged) intervals.

    A stage with phase spans is busy during its *work* phases (:data:`WORK_PHASES`: queue,
    preprocess, inference, postprocess), not while waiting on the wire (``transfer``); one
    whose phase spans are all transfers is absent. A stage without any phase span is taken
    as busy for its whole extent (:func:`stage_extents`): we cannot tell better. A stage's
    ``busy`` time is the length of the union.
    """
    nodes = list(nodes)
    work: dict[str, list[Interval]] = {}
    for n in nodes:
        stage, category = classify(n)
        if category in WORK_PHASES:
            work.setdefault(stage, []).append((n.clip_start, n.clip_end))
    phased = phase_breakdown(nodes)
    for stage, intervals in stage_extents(nodes).items():
        if stage not in phased:
            work[stage] = list(intervals)
    return work


def concurrent_busy(nodes: Iterable[Node], root: Node) -> dict[str, list[Interval]]:
    """Each stage's busy intervals (:func:`busy_intervals`) within the root's interval,
    merged: what wait re-attribution and the concurrency split compare stages by.

    The root's stage is left out when it has no phase spans: busy for its whole wall time,
    it would cover the request and make every other stage look concurrent with it.
    """
    nodes = list(nodes)
    lo, hi = root.clip_start, root.clip_end
    busy = {
        stage: merge_intervals(clip_intervals(intervals, lo, hi))
        for stage, intervals in busy_intervals(nodes).items()
    }
    root_stage = node_stage(root)
    if root_stage in busy and root_stage not in phase_breakdown(nodes):
        del busy[root_stage]
    return busy


def critical_path_by_category(segments: Iterable[Segment]) -> dict[str, dict[str, int]]:
    """The structural critical path per stage and category: each segment's length goes to
    :func:`classify` of its span (a client span's self time to the callee's ``network``).
    Streaming waits are *not* re-attributed here (see :func:`critical_path_blame`)."""
    out: dict[str, dict[str, int]] = {}
    for seg in segments:
        stage, category = classify(seg.node)
        by_category = out.setdefault(stage, {})
        by_category[category] = by_category.get(category, 0) + seg.duration_ns
    return out


def _split_wait(
    start: int, end: int, busy: dict[str, list[Interval]], waiter: str, order: dict[str, int]
) -> tuple[dict[str, int], int]:
    """Hand ``[start, end)`` of ``waiter``'s wait to the other stages busy meanwhile.

    Returns (ns per stage, ns nobody else was busy for). Integer ns are split evenly; any
    remainder goes to the earlier stages in pipeline order, so the totals stay exact.
    """
    others = {s: ivs for s, ivs in busy.items() if s != waiter and ivs}
    points = {start, end}
    for ivs in others.values():
        for lo, hi in ivs:
            if lo < end and hi > start:
                if start < lo < end:
                    points.add(lo)
                if start < hi < end:
                    points.add(hi)
    starts = {s: [lo for lo, _ in ivs] for s, ivs in others.items()}
    assigned: dict[str, int] = {}
    alone = 0
    pts = sorted(points)
    for lo, hi in itertools.pairwise(pts):
        active = sorted(
            (s for s, ivs in others.items() if _covers(ivs, starts[s], lo, hi)),
            key=lambda s: order.get(s, len(order)),
        )
        length = hi - lo
        if not active:
            alone += length
            continue
        share, rest = divmod(length, len(active))
        for i, s in enumerate(active):
            assigned[s] = assigned.get(s, 0) + share + (1 if i < rest else 0)
    return assigned, alone


def critical_path_blame(
    segments: Iterable[Segment],
    busy: dict[str, list[Interval]],
    root_stage: str,
    stages: Sequence[str],
) -> Blame:
    """Blame: the critical path ``segments`` per stage, with streaming waits re-attributed.

    ``network`` segments count apart. A segment in a non-root stage's ``transfer`` phase
    goes to the other stages busy at that instant (``busy``, as :func:`concurrent_busy`),
    split evenly -- integer remainders to the earlier of ``stages`` -- and stays with the
    waiter where nobody else was busy; the root stage's own waits stay with it. Everything
    else stays with its stage. ``unattributed`` is the root stage's (or synthetic root's)
    time in category ``other``. Per-stage blame plus network is the path's total.
    """
    order = {s: i for i, s in enumerate(stages)}
    by_stage: dict[str, int] = {}
    waiting: dict[str, int] = {}
    blamed: dict[str, int] = {}
    network = unattributed = total = 0
    for seg in segments:
        stage, category = classify(seg.node)
        length = seg.duration_ns
        total += length
        if category == CATEGORY_NETWORK:
            network += length
            continue
        if category == CATEGORY_OTHER and stage in (root_stage, TRACE_STAGE):
            unattributed += length
        if category == names.PHASE_TRANSFER and stage != root_stage:
            assigned, alone = _split_wait(seg.start_ns, seg.end_ns, busy, stage, order)
            for other, ns in assigned.items():
                by_stage[other] = by_stage.get(other, 0) + ns
                blamed[other] = blamed.get(other, 0) + ns
            waiting[stage] = waiting.get(stage, 0) + length - alone
            by_stage[stage] = by_stage.get(stage, 0) + alone
            continue
        by_stage[stage] = by_stage.get(stage, 0) + length
    return Blame(by_stage, network, unattributed, waiting, blamed, total)


def concurrency_split(
    busy: dict[str, list[Interval]], lo: int, hi: int
) -> tuple[dict[str, int], int, int]:
    """How many stages were busy at once within ``[lo, hi]``: per stage the time it alone was
    busy (``exclusive``; every stage of ``busy`` present), the time two or more were
    (``overlap``) and the time none was (``idle``). The three partition ``hi - lo``."""
    clipped = {s: merge_intervals(clip_intervals(ivs, lo, hi)) for s, ivs in busy.items()}
    starts = {s: [a for a, _ in ivs] for s, ivs in clipped.items()}
    points = {lo, hi}
    for ivs in clipped.values():
        for a, b in ivs:
            points.update((a, b))
    exclusive = dict.fromkeys(busy, 0)
    overlap = idle = 0
    pts = sorted(p for p in points if lo <= p <= hi)
    for a, b in itertools.pairwise(pts):
        active = [s for s, ivs in clipped.items() if ivs and _covers(ivs, starts[s], a, b)]
        if not active:
            idle += b - a
        elif len(active) == 1:
            exclusive[active[0]] += b - a
        else:
            overlap += b - a
    return exclusive, overlap, idle


def first_audio(
    nodes: Iterable[Node], root: Node, busy: dict[str, list[Interval]], stages: Sequence[str]
) -> tuple[int | None, Blame | None]:
    """Time to first audio and its blame, or ``(None, None)`` without a ``first_audio`` event.

    TTFA is the earliest ``first_audio`` event of the request's spans minus the root span's
    start. Its blame is :func:`critical_path_blame` of the critical path of ``root`` that
    ends at the event (:func:`critical_path` with ``end_ns``), so its total is the TTFA.
    """
    times = [e.time_ns for n in nodes for e in n.span.events if e.name == names.EVENT_FIRST_AUDIO]
    if not times:
        return None, None
    path = critical_path(root, min(times))
    blame = critical_path_blame(path, busy, node_stage(root), stages)
    return max(0, min(times) - root.span.start_ns), blame


def explained_time(critical_path_ns: Iterable[Mapping[str, int]], e2e_ns: int) -> int:
    """Attribution coverage: the end-to-end time minus the critical-path time in category
    ``other`` (``critical_path_ns``: per stage, ns by category) -- the time a named phase of
    some stage or the wire explains. The rest is code outside any phase span."""
    other = sum(by_category.get(CATEGORY_OTHER, 0) for by_category in critical_path_ns)
    return max(e2e_ns - other, 0)


def synthesis_method(root: Node, synthesis_root: bool) -> str | None:
    """``unary``/``stream`` for a synthesis request, else ``None``: the method attribute of
    the root's ``voxline.synthesis`` child, else from the RPC name (``...Stream`` streams)."""
    if not synthesis_root:
        return None
    synthesis = next((c for c in root.children if c.span.name == names.SPAN_SYNTHESIS), None)
    value = synthesis.span.attributes.get(names.ATTR_SYNTHESIS_METHOD) if synthesis else None
    if isinstance(value, str) and value:
        return value
    if root.span.name.endswith("Stream"):
        return names.SYNTHESIS_METHOD_STREAM
    return names.SYNTHESIS_METHOD_UNARY


def analysis_warnings(
    tree: SpanTree, voxline: bool, synthesis_root: bool, root_span_id: str | None
) -> list[str]:
    """The parser's notes on the trace, the tree's (cut parent cycles), and one when a Voxline
    trace has no gateway synthesis span and no root was asked for: end-to-end is then the
    trace's extent, not the request's."""
    warnings = list(tree.trace.warnings) + tree.warnings
    if voxline and not synthesis_root and root_span_id is None:
        warnings.append(
            "no /voxline.v1.Synthesizer/Synthesize[Stream] server span: the gateway's spans "
            "are missing, so end-to-end is the trace's extent"
        )
    return warnings


def stage_rows(
    stages: Sequence[str],
    nodes: Sequence[Node],
    segments: Sequence[Segment],
    blame: Blame,
    exclusive: dict[str, int],
) -> list[StageStats]:
    """One :class:`StageStats` per stage of ``stages``, in that order, from the per-stage
    analyses of the request's spans, its critical path, its ``blame`` and the concurrency
    split's ``exclusive`` times. A stage without spans gets a row of zeros."""
    calls, extents, busy = served_calls(nodes), stage_extents(nodes), busy_intervals(nodes)
    phases, other, network = phase_breakdown(nodes), other_time(nodes), network_time(nodes)
    path = critical_path_by_category(segments)
    rows = []
    for stage in stages:
        row = StageStats(stage, calls=len(calls.get(stage, [])))
        row.wall_ns = union_length(extents.get(stage, []))
        row.busy_ns = union_length(busy.get(stage, []))
        row.phases.update(phases.get(stage, {}))
        row.other_ns, row.network_ns = other.get(stage, 0), network.get(stage, 0)
        for category, ns in path.get(stage, {}).items():
            row.critical_path[category] += ns
        row.blame_ns = blame.by_stage.get(stage, 0)
        row.waiting_ns = blame.waiting.get(stage, 0)
        row.blamed_for_waits_ns = blame.blamed_for_waits.get(stage, 0)
        row.exclusive_ns = exclusive.get(stage, 0)
        rows.append(row)
    return rows


def reported_stages(rows: Iterable[StageStats]) -> list[StageStats]:
    """The rows worth reporting: all but the synthetic root's, unless it has blame (gaps
    between the trace's roots on the critical path) or self time."""
    return [r for r in rows if r.stage != TRACE_STAGE or r.blame_ns or r.other_ns]


def analyze(trace: Trace, root_span_id: str | None = None) -> Attribution:
    """Attribute one trace's end-to-end time to its stages (see the module docstring).

    ``root_span_id`` overrides the choice of the end-to-end span (default: the Voxline
    synthesis root, else the single root, else a synthetic root over all roots).
    """
    tree = SpanTree(trace)
    root, synthesis_root = choose_root(tree, root_span_id)
    if root.parent is not None:
        tree.reclip([root])  # the request's own interval is authoritative, not its caller's
    nodes = list(tree.subtree(root))
    voxline = is_voxline(nodes, synthesis_root)
    stages = stage_order(nodes, root, voxline)
    busy = concurrent_busy(nodes, root)
    segments = critical_path(root)
    blame = critical_path_blame(segments, busy, node_stage(root), stages)
    exclusive, overlap, idle = concurrency_split(busy, root.clip_start, root.clip_end)
    ttfa_ns, ttfa_blame = first_audio(nodes, root, busy, stages)
    return Attribution(
        trace=trace,
        tree=tree,
        root=root,
        voxline=voxline,
        method=synthesis_method(root, synthesis_root),
        e2e_ns=root.clipped_ns,
        ttfa_ns=ttfa_ns,
        stages=reported_stages(stage_rows(stages, nodes, segments, blame, exclusive)),
        segments=segments,
        blame=blame,
        ttfa_blame=ttfa_blame,
        overlap_ns=overlap,
        idle_ns=idle,
        warnings=analysis_warnings(tree, voxline, synthesis_root, root_span_id),
    )
