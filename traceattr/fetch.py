"""Fetch traces from Tempo and Jaeger query APIs (urllib only: no new dependency).

=============  =====================================  =========================================
backend        one trace                              search (a time window)
=============  =====================================  =========================================
``tempo``      ``GET /api/traces/<id>``               ``GET /api/search?q=<TraceQL>&start&end
                                                      &limit`` (seconds), then each trace
``jaeger``     ``GET /api/traces/<id>``               ``GET /api/traces?service&start&end&limit``
                                                      (microseconds; returns whole traces)
``jaeger-v3``  ``GET /api/v3/traces/<id>``            ``GET /api/v3/traces?query.serviceName
                                                      &query.startTimeMin&...`` (RFC 3339)
=============  =====================================  =========================================

A 404 becomes :class:`~traceattr.model.TraceNotFoundError` ("trace not found"),
anything else that goes wrong a :class:`~traceattr.model.FetchError` naming the URL.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from typing import Any

from traceattr.model import (
    FetchError,
    NotATraceError,
    TraceNotFoundError,
    TraceSet,
)
from traceattr.parse import assemble_traces, parse_document

BACKENDS = ("tempo", "jaeger", "jaeger-v3")
DEFAULT_TIMEOUT_S = 10.0
#: Default Tempo search: the gateway's synthesis server spans (one per request).
DEFAULT_TRACEQL = (
    '{ resource.service.name = "gateway" && kind = server '
    '&& name =~ "/voxline.v1.Synthesizer/Synthesize.*" }'
)
DEFAULT_SERVICE = "gateway"


class _HTTPStatusError(FetchError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _base(url: str) -> str:
    url = url.strip()
    if "://" not in url:
        url = "http://" + url  # `--tempo localhost:3200` is what people type
    return url.rstrip("/")


def get_json(url: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> Any:
    """GET ``url`` and decode its JSON body; errors name the URL."""
    request = urllib.request.Request(
        url, headers={"Accept": "application/json", "User-Agent": "voxline-trace"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read(300).decode("utf-8", "replace").strip() if exc.fp else ""
        message = f"GET {url}: HTTP {exc.code} {exc.reason}" + (f": {detail}" if detail else "")
        raise _HTTPStatusError(message, exc.code) from exc
    except urllib.error.URLError as exc:
        raise FetchError(f"cannot reach {url}: {exc.reason}") from exc
    except TimeoutError as exc:
        raise FetchError(f"GET {url}: no answer within {timeout:g} s") from exc
    except OSError as exc:
        raise FetchError(f"GET {url}: {exc}") from exc
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        snippet = body[:120].decode("utf-8", "replace")
        raise FetchError(f"GET {url}: the answer is not JSON ({snippet!r})") from exc


def trace_url(backend: str, base_url: str, trace_id: str) -> str:
    """The URL of one trace on ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    tid = urllib.parse.quote(trace_id.strip(), safe="")
    path = f"/api/v3/traces/{tid}" if backend == "jaeger-v3" else f"/api/traces/{tid}"
    return _base(base_url) + path


def fetch_trace(
    backend: str, base_url: str, trace_id: str, *, timeout: float = DEFAULT_TIMEOUT_S
) -> TraceSet:
    """Fetch and parse one trace (``backend`` in :data:`BACKENDS`)."""
    url = trace_url(backend, base_url, trace_id)
    try:
        doc = get_json(url, timeout=timeout)
    except _HTTPStatusError as exc:
        if exc.status == 404:
            raise TraceNotFoundError(f"trace not found: {trace_id} ({backend} at {url})") from exc
        raise
    try:
        ts = parse_document(doc, url)
    except NotATraceError as exc:
        if exc.kind in ("jaeger-error", "jaeger-v3-error") and "404" in str(exc):
            raise TraceNotFoundError(f"trace not found: {trace_id} ({backend} at {url})") from exc
        raise
    if not ts.traces:
        raise TraceNotFoundError(f"trace not found: {trace_id} ({backend} at {url}: no spans)")
    return ts


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat().replace("+00:00", "Z")


def search_traces(
    backend: str,
    base_url: str,
    *,
    start_s: float,
    end_s: float,
    limit: int = 100,
    query: str | None = None,
    service: str = DEFAULT_SERVICE,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> TraceSet:
    """Find the traces of a time window ``[start_s, end_s]`` (Unix seconds) and return them.

    Tempo: a TraceQL search (``query``, default :data:`DEFAULT_TRACEQL`), then one fetch per
    hit. Jaeger: a service search (``service``), which already returns whole traces.
    An empty window gives an empty :class:`TraceSet`.
    """
    base = _base(base_url)
    if backend == "tempo":
        params = {
            "q": query or DEFAULT_TRACEQL,
            "start": str(int(start_s)),
            "end": str(int(end_s) + 1),
            "limit": str(limit),
        }
        url = f"{base}/api/search?{urllib.parse.urlencode(params)}"
        doc = get_json(url, timeout=timeout)
        hits = doc.get("traces") if isinstance(doc, dict) else None
        if not isinstance(hits, list):
            raise FetchError(f"GET {url}: not a Tempo search result")
        spans = []
        warnings: list[str] = []
        for hit in hits[:limit]:
            tid = (
                str(hit.get("traceID") or hit.get("traceId") or "") if isinstance(hit, dict) else ""
            )
            if not tid:
                continue
            try:
                one = fetch_trace("tempo", base, tid, timeout=timeout)
            except TraceNotFoundError as exc:  # expired between search and fetch
                warnings.append(str(exc))
                continue
            spans.extend(s for t in one.traces for s in t.spans)
        return TraceSet(assemble_traces(spans, "tempo-v1"), "tempo-v1", url, warnings)
    if backend == "jaeger":
        params = {
            "service": service,
            "start": str(int(start_s * 1e6)),
            "end": str(int(end_s * 1e6)),
            "limit": str(limit),
        }
        url = f"{base}/api/traces?{urllib.parse.urlencode(params)}"
        return parse_document(get_json(url, timeout=timeout), url)
    if backend == "jaeger-v3":
        # Jaeger renamed these parameters to camelCase and keeps the snake_case ones as
        # deprecated aliases for a while; sending both works with old and new versions.
        params = {
            "query.serviceName": service,
            "query.service_name": service,
            "query.startTimeMin": _rfc3339(start_s),
            "query.start_time_min": _rfc3339(start_s),
            "query.startTimeMax": _rfc3339(end_s),
            "query.start_time_max": _rfc3339(end_s),
            "query.searchDepth": str(limit),
            "query.num_traces": str(limit),
        }
        url = f"{base}/api/v3/traces?{urllib.parse.urlencode(params)}"
        try:
            doc = get_json(url, timeout=timeout)
        except _HTTPStatusError as exc:
            if exc.status == 404:  # api/v3 answers "No traces found" with a 404
                return TraceSet([], "jaeger-v3", url)
            raise
        return parse_document(doc, url)
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
