"""``voxline.tls.certificate.expiry``: when the certificates a process presents expire.

One observable gauge (unit ``s``, Prometheus ``voxline_tls_certificate_expiry_seconds``): the
not-after time, in Unix seconds, of each certificate the process presents, with attribute
``voxline.tls.role`` = ``server`` (its serving certificate) or ``client`` (the certificate it
presents on its channels, mTLS). A process without TLS observes nothing, so no series exists.

:func:`telemetry.sdk.init_telemetry` registers the gauge in every process; the TLS code says
what to observe through :meth:`telemetry.sdk.Telemetry.watch_certificate`, giving a callable
that returns the current not-after (the one in effect after any reload). This module knows
nothing of files or X.509: it stays free of the services and of any crypto library.

Callbacks run on the metric reader's thread at each collection, never on a request path. A
failing callable skips that observation (WARNING once per role, then DEBUG).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from telemetry import names

_logger = logging.getLogger(__name__)

#: Returns a certificate's not-after in Unix seconds, or None when there is none to report.
NotAfter = Callable[[], float | None]


class CertificateExpiry:
    """The ``voxline.tls.certificate.expiry`` gauge of one meter and what it observes."""

    def __init__(self, meter: metrics.Meter) -> None:
        self._lock = threading.Lock()
        self._sources: dict[str, NotAfter] = {}
        self._warned: set[str] = set()
        meter.create_observable_gauge(
            names.METRIC_TLS_CERTIFICATE_EXPIRY,
            callbacks=[self._observe],
            unit=names.UNIT_SECONDS,
            description=(
                "Unix time at which the TLS certificate this process presents expires "
                "(not-after), per role (server, client)."
            ),
        )

    def watch(self, role: str, not_after: NotAfter) -> None:
        """Observe ``not_after()`` under ``voxline.tls.role=role`` (replacing that role's)."""
        if role not in names.TLS_ROLES:
            raise ValueError(f"TLS role must be one of {sorted(names.TLS_ROLES)}, not {role!r}")
        with self._lock:
            self._sources[role] = not_after

    def _observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            sources = sorted(self._sources.items())
        out: list[Observation] = []
        for role, not_after in sources:
            try:
                value = not_after()
            except Exception as exc:
                level = logging.DEBUG if role in self._warned else logging.WARNING
                self._warned.add(role)
                _logger.log(level, "TLS %s certificate expiry not observed: %s", role, exc)
                continue
            if value is not None:
                out.append(Observation(float(value), {names.ATTR_TLS_ROLE: role}))
        return out
