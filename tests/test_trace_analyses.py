"""The analyses `traceattr.analysis.analyze` composes, one test each, on small hand-built traces.

Times are whole milliseconds from 0. The request most tests use (:func:`_unary`) is::

    gateway  Synthesize server [0,100]    preprocess [0,10], postprocess [90,95]
      frontend Analyze  client [10,30] > server [12,28] > inference [14,26]
      vocoder  Vocode   client [30,90] > server [31,89] > queue [31,41], inference [41,81]

and has no acoustic spans at all (a pipeline stage without spans).
"""

from __future__ import annotations

import pytest

from telemetry import names
from traceattr.analysis import (
    CATEGORY_NETWORK,
    CATEGORY_OTHER,
    STAGE_ORDER,
    TRACE_STAGE,
    Node,
    Segment,
    SpanTree,
    StageStats,
    analysis_warnings,
    analyze,
    busy_intervals,
    choose_root,
    concurrency_split,
    concurrent_busy,
    critical_path,
    critical_path_blame,
    critical_path_by_category,
    explained_time,
    first_audio,
    is_voxline,
    network_time,
    other_time,
    phase_breakdown,
    reported_stages,
    served_calls,
    stage_extents,
    stage_order,
    stage_rows,
    synthesis_method,
)
from traceattr.model import (
    KIND_CLIENT,
    KIND_CONSUMER,
    KIND_INTERNAL,
    KIND_SERVER,
    Span,
    SpanEvent,
    Trace,
    TraceNotFoundError,
)

MS = 1_000_000
SYNTHESIZE = "/voxline.v1.Synthesizer/Synthesize"
RPC = {"frontend": "TextFrontend", "acoustic": "AcousticModel", "vocoder": "Vocoder"}
GATEWAY, FRONTEND, ACOUSTIC, VOCODER = STAGE_ORDER


def _id(short: str) -> str:
    return short.rjust(16, "0")


def _span(
    sid: str,
    parent: str | None,
    start: int,
    end: int,
    *,
    name: str = "",
    kind: str = KIND_INTERNAL,
    service: str = "svc",
    attrs: dict[str, object] | None = None,
    events: tuple[tuple[str, int], ...] = (),
) -> Span:
    return Span(
        trace_id="t" * 32,
        span_id=_id(sid),
        parent_id=_id(parent) if parent else None,
        name=name or f"span-{sid}",
        kind=kind,
        start_ns=start * MS,
        end_ns=end * MS,
        service=service,
        attributes=dict(attrs or {}),
        events=[SpanEvent(n, t * MS) for n, t in events],
    )


def _phase(sid: str, parent: str, stage: str, phase: str, start: int, end: int) -> Span:
    attrs = {names.ATTR_STAGE: stage, names.ATTR_PHASE: phase}
    return _span(sid, parent, start, end, name=f"{stage}.{phase}", service=stage, attrs=attrs)


def _call(
    cid: str, sid: str | None, parent: str, stage: str, times: tuple[int, int, int, int]
) -> list[Span]:
    """A gateway CLIENT span into ``stage`` and, unless ``sid`` is None, its SERVER span."""
    rpc = f"voxline.v1.{RPC[stage]}"
    name = f"/{rpc}/Call"
    attrs = {names.ATTR_RPC_SERVICE: rpc}
    start, end, s_start, s_end = times
    spans = [_span(cid, parent, start, end, name=name, kind=KIND_CLIENT, service=GATEWAY)]
    spans[0].attributes.update(attrs)
    if sid is not None:
        server_attrs = {**attrs, names.ATTR_STAGE: stage}
        spans.append(_span(sid, cid, s_start, s_end, name=name, kind=KIND_SERVER, service=stage))
        spans[-1].attributes.update(server_attrs)
    return spans


def _root(
    name: str = SYNTHESIZE, parent: str | None = None, events: tuple[tuple[str, int], ...] = ()
) -> Span:
    """The gateway's server span ``name`` over [0, 100]."""
    return _span("1", parent, 0, 100, name=name, kind=KIND_SERVER, service=GATEWAY, events=events)


def _unary_spans() -> list[Span]:
    return [
        _root(),
        _phase("2", "1", GATEWAY, "preprocess", 0, 10),
        *_call("3", "4", "1", FRONTEND, (10, 30, 12, 28)),
        _phase("5", "4", FRONTEND, "inference", 14, 26),
        *_call("6", "7", "1", VOCODER, (30, 90, 31, 89)),
        _phase("8", "7", VOCODER, "queue", 31, 41),
        _phase("9", "7", VOCODER, "inference", 41, 81),
        _phase("a", "1", GATEWAY, "postprocess", 90, 95),
    ]


def _request(
    spans: list[Span], root_span_id: str | None = None
) -> tuple[SpanTree, Node, list[Node]]:
    """The tree, the end-to-end root and its subtree, as analyze() prepares them."""
    tree = SpanTree(Trace("t" * 32, spans))
    root, _ = choose_root(tree, root_span_id)
    if root.parent is not None:
        tree.reclip([root])
    return tree, root, list(tree.subtree(root))


def _nodes(spans: list[Span]) -> list[Node]:
    return _request(spans)[2]


def _ms(d: dict[str, int]) -> dict[str, float]:
    return {k: v / MS for k, v in d.items()}


def _ivs_ms(d: dict[str, list[tuple[int, int]]]) -> dict[str, list[tuple[int, int]]]:
    return {k: [(a // MS, b // MS) for a, b in v] for k, v in d.items()}


# ---------------------------------------------------------------------------------------------
# Choosing the request and its stages
# ---------------------------------------------------------------------------------------------


def test_choose_root() -> None:
    # The synthesis root wins even below a caller's span (and is then re-clipped by analyze).
    caller = _span("c", None, 5, 50, kind=KIND_CLIENT, service="cli")
    root = _root(parent="c")
    tree = SpanTree(Trace("t", [caller, root]))
    node, synthesis = choose_root(tree)
    assert (node.span.span_id, synthesis) == (root.span_id, True)
    # No synthesis root: the single root.
    tree = SpanTree(Trace("t", [_span("1", None, 0, 10), _span("2", "1", 1, 5)]))
    node, synthesis = choose_root(tree)
    assert (node.span.span_id, synthesis, node.virtual) == (_id("1"), False, False)
    # A span whose parent is missing is a root too: a synthetic root spans all roots.
    tree = SpanTree(Trace("t", [_span("1", None, 0, 10), _span("2", "ff", 20, 30)]))
    node, synthesis = choose_root(tree)
    assert node.virtual and not synthesis
    assert (node.clip_start, node.clip_end, node.self_ns) == (0, 30 * MS, 10 * MS)
    # An explicit id: any case, leading zeros optional; unknown ids and empty traces fail.
    node, _ = choose_root(tree, "2")
    assert node.span.span_id == _id("2")
    node, _ = choose_root(SpanTree(Trace("t", [_span("ab", None, 0, 1)])), " AB ")
    assert node.span.span_id == _id("ab")
    with pytest.raises(TraceNotFoundError, match="not in trace"):
        choose_root(tree, "99")
    with pytest.raises(TraceNotFoundError, match="no spans"):
        choose_root(SpanTree(Trace("t", [])))


def test_is_voxline() -> None:
    assert is_voxline([], synthesis_root=True)
    assert is_voxline(_nodes([_span("1", None, 0, 1, service=VOCODER)]), False)
    staged = _span("1", None, 0, 1, attrs={names.ATTR_STAGE: ACOUSTIC})
    assert is_voxline(_nodes([staged]), False)
    assert not is_voxline(_nodes([_span("1", None, 0, 1, service="db")]), False)


def test_stage_order() -> None:
    # Voxline: the pipeline first, even acoustic without spans; then others by appearance.
    spans = [*_unary_spans(), _span("b", "1", 95, 99, service="cache")]
    _, root, nodes = _request(spans)
    assert stage_order(nodes, root, voxline=True) == [*STAGE_ORDER, "cache"]
    # Not Voxline: the root's stage first, then first appearance; a client span into a known
    # stage whose server span is missing counts for the callee.
    spans = [
        _span("1", None, 0, 10, service="api"),
        _span("2", "1", 1, 2, service="db"),
        *_call("3", None, "1", VOCODER, (3, 4, 0, 0)),
        _span("4", "1", 5, 6, service="api"),
    ]
    _, root, nodes = _request(spans)
    assert stage_order(nodes, root, voxline=False) == ["api", "db", VOCODER]
    # A synthetic root has no stage of its own in front; it appears as the (trace) stage.
    _, root, nodes = _request([_span("1", None, 0, 1, service="b"), _span("2", "f", 2, 3)])
    assert stage_order(nodes, root, voxline=False) == [TRACE_STAGE, "b", "svc"]


# ---------------------------------------------------------------------------------------------
# Per-stage time from the spans
# ---------------------------------------------------------------------------------------------


def test_served_calls_count_server_and_consumer_spans_only() -> None:
    spans = [
        *_unary_spans(),
        *_call("b", "c", "1", VOCODER, (40, 60, 45, 55)),  # a second, overlapping call
        _span("d", "1", 95, 99, kind=KIND_CONSUMER, service="queue"),
    ]
    calls = served_calls(_nodes(spans))
    assert _ivs_ms(calls) == {
        GATEWAY: [(0, 100)],
        FRONTEND: [(12, 28)],
        VOCODER: [(31, 89), (45, 55)],
        "queue": [(95, 99)],
    }


def test_stage_extents_are_served_calls_else_all_spans() -> None:
    spans = [
        *_unary_spans(),
        *_call("b", "c", "1", VOCODER, (40, 95, 45, 95)),  # overlaps the first vocoder call
        _span("d", "1", 91, 93, service="cache"),  # no server span: all its spans
        _span("e", "d", 92, 99, service="cache"),  # outlives its parent: clipped to it
    ]
    extents = stage_extents(_nodes(spans))
    assert _ivs_ms(extents)[VOCODER] == [(31, 89), (45, 95)]
    assert _ivs_ms(extents)["cache"] == [(91, 93), (92, 93)]
    assert ACOUSTIC not in extents  # a stage without spans has no extent
    rows = {r.stage: r for r in _rows(spans)}
    assert (rows[VOCODER].wall_ns, rows["cache"].wall_ns) == (64 * MS, 2 * MS)  # unions


def test_phase_breakdown_is_self_time_of_phase_spans() -> None:
    spans = [
        *_unary_spans(),
        # A phase nested in another counts once, for the inner one; overlapping children
        # are subtracted once.
        _phase("b", "9", VOCODER, "postprocess", 70, 78),
        _phase("c", "9", VOCODER, "postprocess", 75, 81),
    ]
    phases = phase_breakdown(_nodes(spans))
    assert set(phases) == {GATEWAY, FRONTEND, VOCODER}  # no phase spans: no entry
    assert _ms(phases[VOCODER]) == {
        "queue": 10.0,
        "preprocess": 0.0,
        "inference": 29.0,  # 40 minus the union [70, 81] of its children
        "postprocess": 14.0,
        "transfer": 0.0,
    }
    assert _ms(phases[GATEWAY])["preprocess"] == 10.0


def test_other_time_is_self_time_outside_phases_and_calls() -> None:
    spans = [
        *_unary_spans(),
        # Overlapping children of the frontend server: its self time loses their union once.
        _phase("b", "4", FRONTEND, "postprocess", 20, 27),
        *_call("c", None, "1", ACOUSTIC, (95, 99, 0, 0)),  # its server span is missing
    ]
    other = _ms(other_time(_nodes(spans)))
    # Gateway: 100 - union of its children [0, 99]; frontend server: 16 - union [14, 27];
    # vocoder server: 58 - 50 of phases; the acoustic call without server: all of it.
    assert other == {GATEWAY: 1.0, FRONTEND: 3.0, VOCODER: 8.0, ACOUSTIC: 4.0}


def test_network_time_per_hop() -> None:
    spans = [
        *_unary_spans(),
        *_call("b", "c", "1", VOCODER, (91, 93, 90, 95)),  # skewed: server longer -> 0
        *_call("d", None, "1", ACOUSTIC, (95, 99, 0, 0)),  # no server span: no network time
    ]
    assert _ms(network_time(_nodes(spans))) == {FRONTEND: 4.0, VOCODER: 2.0}


def test_busy_intervals_are_work_phases_else_the_extent() -> None:
    spans = [
        *_unary_spans(),
        _phase("b", "7", VOCODER, "transfer", 81, 89),  # waiting is not busy
        _phase("c", "7", VOCODER, "inference", 85, 95),  # beyond its server span: clipped
        *_call("d", "e", "1", ACOUSTIC, (95, 99, 96, 98)),
        _phase("f", "e", ACOUSTIC, "transfer", 96, 98),  # only waits: never busy
    ]
    busy = _ivs_ms(busy_intervals(_nodes(spans)))
    assert busy == {
        GATEWAY: [(0, 10), (90, 95)],
        FRONTEND: [(14, 26)],
        VOCODER: [(31, 41), (41, 81), (85, 89)],
    }
    # Without phase spans a stage is busy for its whole extent.
    no_phases = [s for s in _unary_spans() if names.ATTR_PHASE not in s.attributes]
    assert _ivs_ms(busy_intervals(_nodes(no_phases)))[VOCODER] == [(31, 89)]


def test_concurrent_busy_merges_and_drops_a_phaseless_root() -> None:
    _, root, nodes = _request(_unary_spans())
    busy = _ivs_ms(concurrent_busy(nodes, root))
    assert busy == {GATEWAY: [(0, 10), (90, 95)], FRONTEND: [(14, 26)], VOCODER: [(31, 81)]}
    # A root stage without phase spans would cover everything: left out.
    no_phases = [s for s in _unary_spans() if names.ATTR_PHASE not in s.attributes]
    _, root, nodes = _request(no_phases)
    assert _ivs_ms(concurrent_busy(nodes, root)) == {FRONTEND: [(12, 28)], VOCODER: [(31, 89)]}
    # Same for a synthetic root over several roots (one of them an orphan).
    _, root, nodes = _request([_span("1", None, 0, 5), _span("2", "ff", 10, 20, service="x")])
    assert _ivs_ms(concurrent_busy(nodes, root)) == {"svc": [(0, 5)], "x": [(10, 20)]}


# ---------------------------------------------------------------------------------------------
# The critical path and what it is blamed on
# ---------------------------------------------------------------------------------------------


def test_critical_path_by_category() -> None:
    _, root, _ = _request(_unary_spans())
    by_category = critical_path_by_category(critical_path(root))
    assert {stage: _ms(cats) for stage, cats in by_category.items()} == {
        GATEWAY: {"preprocess": 10.0, "postprocess": 5.0, CATEGORY_OTHER: 5.0},
        FRONTEND: {CATEGORY_NETWORK: 4.0, CATEGORY_OTHER: 4.0, "inference": 12.0},
        VOCODER: {CATEGORY_NETWORK: 2.0, CATEGORY_OTHER: 8.0, "queue": 10.0, "inference": 40.0},
    }


def _segment(stage: str, category: str, start: int, end: int, unit: int = MS) -> Segment:
    """A critical-path segment owned by a span that :func:`classify` puts in
    ``(stage, category)``: a phase span, a server span (``other``) or a client span with a
    server child (``network``)."""
    if category == CATEGORY_NETWORK:
        client = Node(_span("c", None, 0, 1, kind=KIND_CLIENT, service=GATEWAY))
        client.children.append(Node(_span("s", "c", 0, 1, kind=KIND_SERVER, service=stage)))
        return Segment(client, start * unit, end * unit)
    if category == CATEGORY_OTHER:
        return Segment(Node(_span("s", None, 0, 1, service=stage)), start * unit, end * unit)
    return Segment(Node(_phase("p", "s", stage, category, 0, 1)), start * unit, end * unit)


def test_critical_path_blame_reattributes_streaming_waits() -> None:
    busy = {ACOUSTIC: [(0, 4 * MS)], FRONTEND: [(2 * MS, 6 * MS)], VOCODER: [(0, 20 * MS)]}
    segments = [
        _segment(GATEWAY, CATEGORY_OTHER, 0, 1),  # the root's own code: unattributed
        _segment(VOCODER, CATEGORY_NETWORK, 1, 2),
        _segment(VOCODER, "transfer", 0, 10),  # the vocoder waits...
        _segment(GATEWAY, "transfer", 10, 13),  # the root's own waits stay with it
        _segment(VOCODER, "inference", 13, 20),
    ]
    blame = critical_path_blame(segments, busy, GATEWAY, STAGE_ORDER)
    # ...for acoustic [0,2], acoustic and frontend [2,4] (split), frontend [4,6], nobody [6,10].
    assert _ms(blame.by_stage) == {GATEWAY: 4.0, ACOUSTIC: 3.0, FRONTEND: 3.0, VOCODER: 11.0}
    assert _ms(blame.waiting) == {VOCODER: 6.0}
    assert _ms(blame.blamed_for_waits) == {ACOUSTIC: 3.0, FRONTEND: 3.0}
    assert (blame.network_ns, blame.unattributed_ns, blame.total_ns) == (MS, MS, 22 * MS)
    assert sum(blame.by_stage.values()) + blame.network_ns == blame.total_ns
    # Integer ns split evenly; the remainder goes to the earlier stage in pipeline order.
    odd = [_segment(VOCODER, "transfer", 0, 3, unit=1)]
    busy = {ACOUSTIC: [(0, 3)], FRONTEND: [(0, 3)]}
    assert critical_path_blame(odd, busy, GATEWAY, STAGE_ORDER).by_stage == {
        FRONTEND: 2,
        ACOUSTIC: 1,
        VOCODER: 0,
    }


def test_concurrency_split_partitions_the_interval() -> None:
    busy = {
        ACOUSTIC: [(0, 4)],
        FRONTEND: [(2, 6)],
        VOCODER: [(8, 30)],  # runs past the interval: clipped
        GATEWAY: [],  # a stage never busy is still listed
    }
    exclusive, overlap, idle = concurrency_split(busy, 0, 10)
    assert exclusive == {ACOUSTIC: 2, FRONTEND: 2, VOCODER: 2, GATEWAY: 0}
    assert (overlap, idle) == (2, 2)
    assert sum(exclusive.values()) + overlap + idle == 10


def test_first_audio_path() -> None:
    spans = [
        _root(name=SYNTHESIZE + "Stream", events=((names.EVENT_FIRST_AUDIO, 40),)),
        *_call("2", "3", "1", VOCODER, (10, 90, 12, 88)),
        _phase("4", "3", VOCODER, "inference", 12, 30),
        _phase("5", "3", VOCODER, "inference", 50, 80),
        _span("6", "3", 60, 70, service=VOCODER, events=((names.EVENT_FIRST_AUDIO, 65),)),
    ]
    _, root, nodes = _request(spans)
    busy = concurrent_busy(nodes, root)
    ttfa, blame = first_audio(nodes, root, busy, STAGE_ORDER)
    # The earliest event; the path up to it: gateway [0,10], wire [10,12], the vocoder's
    # inference [12,30] and its server code [30,40] while the stream was still open.
    assert ttfa == 40 * MS
    assert blame is not None and blame.total_ns == ttfa
    assert _ms(blame.by_stage) == {GATEWAY: 10.0, VOCODER: 28.0}
    assert (blame.network_ns, blame.unattributed_ns) == (2 * MS, 10 * MS)
    _, root, nodes = _request(_unary_spans())  # no first_audio event
    assert first_audio(nodes, root, busy, STAGE_ORDER) == (None, None)


def test_explained_time_is_critical_path_outside_other() -> None:
    path = [{"inference": 5, CATEGORY_OTHER: 3}, {CATEGORY_NETWORK: 2, CATEGORY_OTHER: 1}, {}]
    assert explained_time(path, 10) == 6
    assert explained_time([{CATEGORY_OTHER: 12}], 10) == 0  # never negative
    attr = analyze(Trace("t" * 32, _unary_spans()))
    assert attr.explained_ns == (100 - 17) * MS  # 5 gateway + 4 frontend + 8 vocoder "other"


# ---------------------------------------------------------------------------------------------
# The request as a whole
# ---------------------------------------------------------------------------------------------


def test_synthesis_method() -> None:
    _, root, _ = _request(_unary_spans())
    assert synthesis_method(root, synthesis_root=True) == names.SYNTHESIS_METHOD_UNARY
    assert synthesis_method(root, synthesis_root=False) is None
    stream = _root(name=SYNTHESIZE + "TextStream")
    _, root, _ = _request([stream])
    assert synthesis_method(root, True) == names.SYNTHESIS_METHOD_STREAM  # from the name
    method = {names.ATTR_SYNTHESIS_METHOD: names.SYNTHESIS_METHOD_TEXT_STREAM}
    child = _span("2", "1", 1, 99, name=names.SPAN_SYNTHESIS, service=GATEWAY, attrs=method)
    _, root, _ = _request([stream, child])
    assert synthesis_method(root, True) == names.SYNTHESIS_METHOD_TEXT_STREAM  # the attribute


def test_analysis_warnings() -> None:
    looped = [_span("1", "2", 0, 10), _span("2", "1", 1, 5)]
    tree = SpanTree(Trace("t", looped, warnings=["from the parser"]))
    warnings = analysis_warnings(tree, voxline=False, synthesis_root=False, root_span_id=None)
    assert warnings[0] == "from the parser" and "parent cycle" in warnings[1]
    assert len(warnings) == 2
    # A Voxline trace without the gateway's synthesis span, and no root asked for.
    missing = analysis_warnings(tree, voxline=True, synthesis_root=False, root_span_id=None)
    assert "gateway's spans are missing" in missing[-1]
    assert len(analysis_warnings(tree, True, False, "1")) == 2
    assert len(analysis_warnings(tree, True, True, None)) == 2


def _rows(spans: list[Span]) -> list[StageStats]:
    _, root, nodes = _request(spans)
    stages = stage_order(nodes, root, voxline=True)
    segments = critical_path(root)
    blame = critical_path_blame(segments, concurrent_busy(nodes, root), GATEWAY, stages)
    exclusive = {VOCODER: 7}
    return stage_rows(stages, nodes, segments, blame, exclusive)


def test_stage_rows_and_reported_stages() -> None:
    rows = _rows(_unary_spans())
    assert [r.stage for r in rows] == list(STAGE_ORDER)
    assert rows[2] == StageStats(ACOUSTIC)  # a pipeline stage without spans: all zeros
    vocoder = rows[3]
    assert (vocoder.calls, vocoder.wall_ns, vocoder.busy_ns) == (1, 58 * MS, 50 * MS)
    assert (vocoder.other_ns, vocoder.network_ns, vocoder.exclusive_ns) == (8 * MS, 2 * MS, 7)
    assert vocoder.phases["inference"] == 40 * MS
    assert vocoder.critical_path_ns == vocoder.blame_ns == 58 * MS
    assert vocoder.network_critical_path_ns == 2 * MS
    # The synthetic root's row is reported only when it has blame or self time.
    idle, gaps = StageStats(TRACE_STAGE), StageStats(TRACE_STAGE, blame_ns=1)
    assert reported_stages([rows[0], idle]) == [rows[0]]
    assert reported_stages([gaps, StageStats(TRACE_STAGE, other_ns=1)]) == [
        gaps,
        StageStats(TRACE_STAGE, other_ns=1),
    ]


def test_analyze_composes_the_analyses() -> None:
    attr = analyze(Trace("t" * 32, _unary_spans()))
    assert (attr.method, attr.e2e_ns, attr.ttfa_ns, attr.ttfa_blame) == (
        "unary",
        100 * MS,
        None,
        None,
    )
    assert [s.stage for s in attr.stages] == list(STAGE_ORDER)
    assert {s.stage: s.blame_ns // MS for s in attr.stages} == {
        GATEWAY: 20,
        FRONTEND: 16,
        ACOUSTIC: 0,
        VOCODER: 58,
    }
    assert attr.blame.network_ns == 6 * MS and attr.unattributed_ns == 5 * MS
    assert sum(s.blame_ns for s in attr.stages) + attr.blame.network_ns == attr.e2e_ns
    # Sequential: exclusive busy + overlap + idle tile end-to-end.
    busy = sum(s.exclusive_ns for s in attr.stages)
    assert (busy // MS, attr.overlap_ns, attr.idle_ns // MS) == (77, 0, 23)
    with pytest.raises(TraceNotFoundError, match="trace e has no spans"):
        analyze(Trace("e", []))
