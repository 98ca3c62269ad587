"""The in-process OTLP receiver for tests: :class:`telemetry.otlp_receiver.OtlpReceiver`, and
the pytest fixture ``otlp_receiver``.

From another test module (tests/ has no ``__init__.py``; pytest puts tests/ on ``sys.path``)
either wrap the class in a local fixture (what tests/test_telemetry_lib.py does) or import the
ready-made fixture::

    from otlp_receiver import otlp_receiver  # noqa: F401, F811  (pytest fixture)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from telemetry.otlp_receiver import OtlpReceiver

__all__ = ["OtlpReceiver", "otlp_receiver"]


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """A started :class:`OtlpReceiver`, stopped after the test."""
    with OtlpReceiver() as receiver:
        yield receiver
