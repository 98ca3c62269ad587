"""Rebuild the phases a streaming RPC recorded as a timeline on its span.

A stream repeats its phases per chunk; rather than one child span each, the emitting side
(:class:`telemetry.PhaseTimeline`) writes them onto the RPC's span as one attribute per phase,
``voxline.phase.<phase>.intervals_us = [start_offset_us, duration_us, ...]``. Readers turn
them back into phase spans here, so the analysis sees the same tree either way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from telemetry import names
from traceattr.model import KIND_INTERNAL, Span

#: Attribute marking a phase span rebuilt from a timeline (it was never exported as a span).
ATTR_FROM_TIMELINE = "voxline.phase.from_timeline"


def _ints(value: Any) -> list[int] | None:
    """The int list of an attribute value: a list (OTLP) or its JSON text (Jaeger)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if not isinstance(value, list | tuple):
        return None
    try:
        return [int(v) for v in value]
    except (TypeError, ValueError):
        return None


def phase_intervals(start_ns: int, attributes: Mapping[str, Any]) -> list[tuple[str, int, int]]:
    """``(phase, start_ns, end_ns)`` of every interval in a span's timeline attributes
    (none for a span without one; malformed values are skipped), in start order."""
    out: list[tuple[str, int, int]] = []
    for phase in names.PHASES:
        pairs = _ints(attributes.get(names.phase_intervals_attribute(phase)))
        if not pairs:
            continue
        for offset_us, duration_us in zip(pairs[::2], pairs[1::2], strict=False):
            start = start_ns + offset_us * 1000
            out.append((phase, start, start + max(duration_us, 0) * 1000))
    out.sort(key=lambda item: (item[1], item[2]))
    return out


def _child_id(parent_id: str, index: int) -> str:
    return hashlib.blake2b(f"{parent_id}/{index}".encode(), digest_size=8).hexdigest()


def timeline_spans(span: Span) -> Iterator[Span]:
    """The phase spans recorded in ``span``'s timeline, as children of ``span``."""
    stage = span.attributes.get(names.ATTR_STAGE) or span.service
    for index, (phase, start, end) in enumerate(phase_intervals(span.start_ns, span.attributes)):
        yield Span(
            trace_id=span.trace_id,
            span_id=_child_id(span.span_id, index),
            parent_id=span.span_id,
            name=names.phase_span_name(str(stage), phase),
            kind=KIND_INTERNAL,
            start_ns=start,
            end_ns=end,
            service=span.service,
            attributes={
                names.ATTR_STAGE: stage,
                names.ATTR_PHASE: phase,
                ATTR_FROM_TIMELINE: True,
            },
        )


def expand_timelines(spans: Iterable[Span]) -> list[Span]:
    """``spans`` plus the phase spans rebuilt from their timelines."""
    out: list[Span] = []
    for span in spans:
        out.append(span)
        out.extend(timeline_spans(span))
    return out
