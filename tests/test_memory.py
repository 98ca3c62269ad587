"""Memory stays flat: a soak of varied requests through the real stack (bench/soak.py).

Varied lengths are what made RSS grow (freed pages stranded in malloc's heaps, see
services/runtime/memory.py); the same sentence repeated never showed it. The bounds are in
docs/reliability.md ("Memory"), with the run that measured them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import soak
from services.cli.stack import SERVICES, LocalStack

#: Requests after the warm-up (the requirement: at least 500).
REQUESTS = 500
WARMUP = 50
#: Short texts (2-8 words) so the soak takes minutes on 2 cores; still ~all distinct.
MAX_WORDS = 8
#: RSS slope over the second half (MiB per 100 requests) and growth from the end of the
#: warm-up to the end (MiB), per service. Measured with the trim and the bounded oneDNN
#: cache (docs/reliability.md "Memory"): slopes 0.4-1.4, growth -1 to +10 MiB. Without
#: them the vocoder grew +74 MiB (in process: +300 MiB in 60 calls) and the acoustic stage
#: sloped 2.2-5.9 MiB per 100 requests.
BOUNDS = {
    "vocoder": (2.0, 40.0),
    "gateway": (2.0, 40.0),
    "frontend": (3.0, 40.0),
    "acoustic": (3.0, 40.0),
}


@pytest.mark.timeout(1800)
def test_rss_stays_flat_over_varied_requests(tmp_path: Path) -> None:
    with LocalStack(tmp_path) as stack:
        result = soak(
            stack, REQUESTS, warmup=WARMUP, sample_every=25, concurrency=2, max_words=MAX_WORDS
        )
    assert result["errors"] == []
    figures = {s: (r["slope_mib_per_100"], r["growth_mib"]) for s, r in result["services"].items()}
    print(f"\nRSS (slope MiB/100 requests, growth MiB) after {WARMUP} warm-up: {figures}")
    for service in SERVICES:
        slope, growth = figures[service]
        max_slope, max_growth = BOUNDS[service]
        assert slope < max_slope, (service, figures)
        assert growth <= max_growth, (service, figures)
