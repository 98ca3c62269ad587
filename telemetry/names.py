"""Every telemetry name Voxline emits: span names, metric names, units, attribute keys and
their bounded value sets.

This module is the single source of truth: services, dashboards, the collector config and
docs/telemetry.md all refer to these constants. Renaming anything here is a breaking change
for dashboards and alerts, so do it only together with docs/telemetry.md.

Naming follows the OpenTelemetry semantic conventions:
- metric and attribute names are lowercase, dot-namespaced, ``snake_case`` within a segment;
- durations are histograms in seconds (unit ``s``), sizes in bytes (``By``);
- counts of discrete things use an annotation unit such as ``{request}``;
- a metric name is never also a namespace of another metric (so the brief's
  ``voxline.stage.requests.inflight`` became ``voxline.stage.active_requests``, because
  ``voxline.stage.requests`` is itself a metric; compare ``http.server.active_requests``).
- RPC attributes are the ones opentelemetry-instrumentation-grpc 0.66b2 *really* emits
  (``rpc.system``, ``rpc.service``, ``rpc.method``, ``rpc.grpc.status_code``), not the newer
  spec names, so RPC spans and RPC metrics can be joined on the same keys.
"""

from __future__ import annotations

from typing import Final

# ---------------------------------------------------------------------------------------------
# Instrumentation scope and resource
# ---------------------------------------------------------------------------------------------

#: Instrumentation scope name used for Voxline's own tracer and meter.
INSTRUMENTATION_SCOPE: Final = "voxline"
#: ``service.namespace`` resource attribute of every Voxline service.
SERVICE_NAMESPACE: Final = "voxline"
#: Default ``deployment.environment.name`` when ``VOXLINE_ENVIRONMENT`` is unset.
DEFAULT_ENVIRONMENT: Final = "local"

RESOURCE_SERVICE_NAME: Final = "service.name"
RESOURCE_SERVICE_VERSION: Final = "service.version"
RESOURCE_SERVICE_NAMESPACE: Final = "service.namespace"
RESOURCE_SERVICE_INSTANCE_ID: Final = "service.instance.id"
RESOURCE_DEPLOYMENT_ENVIRONMENT: Final = "deployment.environment.name"
RESOURCE_K8S_POD_NAME: Final = "k8s.pod.name"

# Environment variables read by Voxline (the standard OTEL_* ones are listed in docs).
ENV_ENVIRONMENT: Final = "VOXLINE_ENVIRONMENT"
ENV_PROMETHEUS_PORT: Final = "VOXLINE_PROMETHEUS_PORT"
ENV_PROMETHEUS_HOST: Final = "VOXLINE_PROMETHEUS_HOST"
#: Downward-API friendly alternative to ``k8s.pod.name`` in ``OTEL_RESOURCE_ATTRIBUTES``.
ENV_K8S_POD_NAME: Final = "K8S_POD_NAME"

# ---------------------------------------------------------------------------------------------
# Bounded value sets
# ---------------------------------------------------------------------------------------------

STAGE_GATEWAY: Final = "gateway"
STAGE_FRONTEND: Final = "frontend"
STAGE_ACOUSTIC: Final = "acoustic"
STAGE_VOCODER: Final = "vocoder"
#: Values of :data:`ATTR_STAGE`.
STAGES: Final = frozenset({STAGE_GATEWAY, STAGE_FRONTEND, STAGE_ACOUSTIC, STAGE_VOCODER})

PHASE_QUEUE: Final = "queue"
PHASE_PREPROCESS: Final = "preprocess"
PHASE_INFERENCE: Final = "inference"
PHASE_POSTPROCESS: Final = "postprocess"
#: Time a streaming handler is blocked on the wire: waiting for the caller's next input
#: message (e.g. the vocoder waiting for mel chunks) or for flow control to take its output.
PHASE_TRANSFER: Final = "transfer"
#: Values of :data:`ATTR_PHASE`.
PHASES: Final = frozenset(
    {PHASE_QUEUE, PHASE_PREPROCESS, PHASE_INFERENCE, PHASE_POSTPROCESS, PHASE_TRANSFER}
)

OUTCOME_OK: Final = "ok"
OUTCOME_ERROR: Final = "error"
#: Values of :data:`ATTR_OUTCOME`.
OUTCOMES: Final = frozenset({OUTCOME_OK, OUTCOME_ERROR})

SYNTHESIS_METHOD_UNARY: Final = "unary"
SYNTHESIS_METHOD_STREAM: Final = "stream"
#: Text streamed in (SynthesizeTextStream), audio streamed out.
SYNTHESIS_METHOD_TEXT_STREAM: Final = "text_stream"
#: Values of :data:`ATTR_SYNTHESIS_METHOD`.
SYNTHESIS_METHODS: Final = frozenset(
    {SYNTHESIS_METHOD_UNARY, SYNTHESIS_METHOD_STREAM, SYNTHESIS_METHOD_TEXT_STREAM}
)

#: Value of :data:`ATTR_VOICE` for a voice id that is not one of the configured voices (keeps
#: the attribute bounded even if a client sends garbage).
VOICE_OTHER: Final = "other"

SIGNAL_TRACES: Final = "traces"
SIGNAL_METRICS: Final = "metrics"

#: Which certificate a process presents: its serving one, or its client one on channels (mTLS).
TLS_ROLE_SERVER: Final = "server"
TLS_ROLE_CLIENT: Final = "client"
#: Values of :data:`ATTR_TLS_ROLE`.
TLS_ROLES: Final = frozenset({TLS_ROLE_SERVER, TLS_ROLE_CLIENT})

DROP_REASON_QUEUE_FULL: Final = "queue_full"
DROP_REASON_EXPORT_FAILED: Final = "export_failed"
DROP_REASON_SHUTDOWN: Final = "shutdown"

# ---------------------------------------------------------------------------------------------
# Attribute keys
# ---------------------------------------------------------------------------------------------

#: Pipeline stage (:data:`STAGES`).
ATTR_STAGE: Final = "voxline.stage"
#: Phase inside a stage (:data:`PHASES`).
ATTR_PHASE: Final = "voxline.phase"
#: ``ok`` or ``error`` (:data:`OUTCOMES`).
ATTR_OUTCOME: Final = "voxline.outcome"
#: Configured voice id, or :data:`VOICE_OTHER`.
ATTR_VOICE: Final = "voxline.voice"
#: Gateway API flavour, ``unary``, ``stream`` or ``text_stream`` (:data:`SYNTHESIS_METHODS`).
ATTR_SYNTHESIS_METHOD: Final = "voxline.synthesis.method"
#: Span attribute: seconds a stream's listener was left without audio (double).
ATTR_STALL_DURATION: Final = "voxline.stall.duration"
#: Span attributes of a streaming RPC's phases, one per phase (int[]): flat
#: ``[start_offset_us, duration_us, ...]`` pairs relative to the span's start. A stream
#: records its per-chunk phases here instead of as child spans, so its span count grows with
#: its sentences, not its chunks (:func:`phase_intervals_attribute`).
ATTR_PHASE_INTERVALS_TEMPLATE: Final = "voxline.phase.{phase}.intervals_us"
#: Span attribute: phase intervals left out of a span's timeline past :data:`MAX_PHASE_INTERVALS`.
ATTR_PHASE_INTERVALS_DROPPED: Final = "voxline.phase.intervals_dropped"
#: Most intervals one span's timeline keeps per phase (the longest text streams ~600 windows).
MAX_PHASE_INTERVALS: Final = 4096
#: Span attribute: number of requests in a model batch (int).
ATTR_BATCH_SIZE: Final = "voxline.batch.size"
#: Span attribute: share of a padded batch that is padding, 0..1 (double).
ATTR_BATCH_PADDING: Final = "voxline.batch.padding_ratio"
#: Scheduling class of a request (:data:`PRIORITIES`): bounded, usable as a metric label.
ATTR_PRIORITY: Final = "voxline.priority"
PRIORITY_INTERACTIVE: Final = "interactive"
PRIORITY_BULK: Final = "bulk"
PRIORITIES: Final = frozenset({PRIORITY_INTERACTIVE, PRIORITY_BULK})
#: Input text length as a bounded class (:func:`text_length_class`), so dashboards can tell
#: whether long texts are the ones that suffer.
ATTR_TEXT_LENGTH_CLASS: Final = "voxline.text.length_class"
TEXT_LENGTH_SHORT: Final = "short"  # up to one sentence or so
TEXT_LENGTH_MEDIUM: Final = "medium"  # a paragraph
TEXT_LENGTH_LONG: Final = "long"
TEXT_LENGTH_CLASSES: Final = frozenset({TEXT_LENGTH_SHORT, TEXT_LENGTH_MEDIUM, TEXT_LENGTH_LONG})
#: Upper bounds (characters, inclusive) of the short and medium classes.
TEXT_LENGTH_BOUNDS: Final = (120, 800)


def text_length_class(characters: int) -> str:
    """The bounded class of a text of ``characters`` characters."""
    if characters <= TEXT_LENGTH_BOUNDS[0]:
        return TEXT_LENGTH_SHORT
    return TEXT_LENGTH_MEDIUM if characters <= TEXT_LENGTH_BOUNDS[1] else TEXT_LENGTH_LONG


#: Span attribute: length of the input text in characters (int) — never the text itself.
ATTR_TEXT_LENGTH: Final = "voxline.text.length"
#: Span attribute on the gateway's server span: the request id its response carries (the
#: caller's ``request_id``, or the one the gateway made up), so ``voxline trace REQUEST_ID``
#: finds the trace. Never a metric label (unbounded).
ATTR_REQUEST_ID: Final = "voxline.request.id"
#: Span attribute: number of phonemes / tokens fed to the acoustic model (int).
ATTR_TOKEN_COUNT: Final = "voxline.token.count"
#: Span attribute: duration of produced audio in seconds (double).
ATTR_AUDIO_DURATION: Final = "voxline.audio.duration"
#: Span attribute: compute device, e.g. ``cpu`` or ``cuda:0``.
ATTR_DEVICE: Final = "voxline.device"
#: Span attribute: model precision, e.g. ``float32``, ``float16``.
ATTR_DTYPE: Final = "voxline.dtype"
#: Span attributes: the stage's model name and version.
ATTR_MODEL_NAME: Final = "voxline.model.name"
ATTR_MODEL_VERSION: Final = "voxline.model.version"
#: Span attribute: mel frames produced or consumed (int).
ATTR_MEL_FRAMES: Final = "voxline.mel.frames"
#: Span attribute: number of sentences in the request (int).
ATTR_SENTENCE_COUNT: Final = "voxline.sentence.count"
#: Span attribute: output sample rate in Hz (int).
ATTR_SAMPLE_RATE: Final = "voxline.audio.sample_rate"
#: Span event on the gateway's root and synthesis spans when the first audio is sent.
EVENT_FIRST_AUDIO: Final = "first_audio"

# RPC keys exactly as opentelemetry-instrumentation-grpc 0.66b2 emits them.
ATTR_RPC_SYSTEM: Final = "rpc.system"
ATTR_RPC_SERVICE: Final = "rpc.service"
#: The RPC method name without service, e.g. ``Synthesize``. Also used on stage metrics.
ATTR_RPC_METHOD: Final = "rpc.method"
#: Numeric gRPC status code (0 = OK, 3 = INVALID_ARGUMENT, ...).
ATTR_RPC_GRPC_STATUS_CODE: Final = "rpc.grpc.status_code"
#: Set on error spans: the gRPC status code name (e.g. ``INVALID_ARGUMENT``) or exception type.
ATTR_ERROR_TYPE: Final = "error.type"
RPC_SYSTEM_GRPC: Final = "grpc"

#: Stage metrics' "method" attribute is the RPC method being served.
ATTR_METHOD: Final = ATTR_RPC_METHOD

#: ``server`` or ``client`` (:data:`TLS_ROLES`): the certificate a TLS metric describes.
ATTR_TLS_ROLE: Final = "voxline.tls.role"

# Telemetry self-monitoring.
ATTR_SIGNAL: Final = "signal"
ATTR_DROP_REASON: Final = "reason"

# Hardware (semantic conventions, hardware/GPU, development status).
ATTR_HW_ID: Final = "hw.id"
ATTR_HW_VENDOR: Final = "hw.vendor"
ATTR_HW_MODEL: Final = "hw.model"
ATTR_HW_TYPE: Final = "hw.type"
HW_TYPE_GPU: Final = "gpu"
HW_VENDOR_NVIDIA: Final = "NVIDIA"

# ---------------------------------------------------------------------------------------------
# The trace id in responses (docs/telemetry.md, "The trace id of a response")
# ---------------------------------------------------------------------------------------------

#: gRPC initial metadata key / HTTP header: the response's trace id, 32 lowercase hex digits.
TRACE_ID_RESPONSE_KEY: Final = "voxline-trace-id"
#: W3C Trace Context Level 2 ``traceresponse``: ``00-<trace id>-<server span id>-<flags>``,
#: sent as an HTTP header and as gRPC initial metadata.
TRACE_RESPONSE_KEY: Final = "traceresponse"

# ---------------------------------------------------------------------------------------------
# Units (UCUM, as OpenTelemetry uses them)
# ---------------------------------------------------------------------------------------------

UNIT_SECONDS: Final = "s"
UNIT_BYTES: Final = "By"
UNIT_RATIO: Final = "1"
UNIT_CELSIUS: Final = "Cel"
UNIT_WATTS: Final = "W"
UNIT_REQUESTS: Final = "{request}"
UNIT_CHARACTERS: Final = "{char}"
UNIT_ITEMS: Final = "{item}"

# ---------------------------------------------------------------------------------------------
# Metric names
# ---------------------------------------------------------------------------------------------

# Per stage (frontend, acoustic, vocoder; gateway too where it makes sense).
METRIC_STAGE_DURATION: Final = "voxline.stage.duration"
METRIC_STAGE_QUEUE_DURATION: Final = "voxline.stage.queue.duration"
METRIC_STAGE_ACTIVE_REQUESTS: Final = "voxline.stage.active_requests"
METRIC_STAGE_REQUESTS: Final = "voxline.stage.requests"
METRIC_STAGE_BATCH_SIZE: Final = "voxline.stage.batch.size"

# Gateway, end to end.
METRIC_SYNTHESIS_DURATION: Final = "voxline.synthesis.duration"
METRIC_SYNTHESIS_TIME_TO_FIRST_AUDIO: Final = "voxline.synthesis.time_to_first_audio"
METRIC_SYNTHESIS_REAL_TIME_FACTOR: Final = "voxline.synthesis.real_time_factor"
#: Seconds a stream's listener, playing in real time from the first audio, would have been
#: without audio (0 for a stream that never ran dry).
METRIC_SYNTHESIS_STALL_DURATION: Final = "voxline.synthesis.stall.duration"
METRIC_SYNTHESIS_AUDIO_DURATION: Final = "voxline.synthesis.audio.duration"
METRIC_SYNTHESIS_CHARACTERS: Final = "voxline.synthesis.characters"
#: Unary answers made but not delivered (the call ended cancelled as gRPC sent them).
METRIC_SYNTHESIS_UNDELIVERED: Final = "voxline.synthesis.undelivered"

# RPC (recorded by telemetry.grpc; the OTel gRPC instrumentation records no metrics).
METRIC_RPC_SERVER_DURATION: Final = "rpc.server.call.duration"
METRIC_RPC_CLIENT_DURATION: Final = "rpc.client.call.duration"

# Telemetry pipeline health.
METRIC_TELEMETRY_DROPPED: Final = "voxline.telemetry.dropped"

#: Unix time (seconds) at which the certificate this process presents stops being valid (its
#: not-after), per :data:`ATTR_TLS_ROLE`; read from the certificate files in effect, so a
#: rotation shows without a restart (:mod:`telemetry.certificates`).
METRIC_TLS_CERTIFICATE_EXPIRY: Final = "voxline.tls.certificate.expiry"

# GPU via NVML (hardware semantic conventions).
METRIC_HW_GPU_UTILIZATION: Final = "hw.gpu.utilization"
METRIC_HW_GPU_MEMORY_USAGE: Final = "hw.gpu.memory.usage"
METRIC_HW_GPU_MEMORY_LIMIT: Final = "hw.gpu.memory.limit"
METRIC_HW_TEMPERATURE: Final = "hw.temperature"
METRIC_HW_POWER: Final = "hw.power"
# This process's PyTorch CUDA caching allocator.
METRIC_GPU_TORCH_MEMORY_ALLOCATED: Final = "voxline.gpu.torch.memory.allocated"
METRIC_GPU_TORCH_MEMORY_RESERVED: Final = "voxline.gpu.torch.memory.reserved"

#: Names of every metric :mod:`telemetry.gpu` may register.
GPU_METRICS: Final = frozenset(
    {
        METRIC_HW_GPU_UTILIZATION,
        METRIC_HW_GPU_MEMORY_USAGE,
        METRIC_HW_GPU_MEMORY_LIMIT,
        METRIC_HW_TEMPERATURE,
        METRIC_HW_POWER,
        METRIC_GPU_TORCH_MEMORY_ALLOCATED,
        METRIC_GPU_TORCH_MEMORY_RESERVED,
    }
)

# ---------------------------------------------------------------------------------------------
# Span names
# ---------------------------------------------------------------------------------------------
# gRPC server/client spans are named by the instrumentation: "/<package.Service>/<Method>".

#: Gateway: the whole synthesis of one request, under the gRPC server span.
SPAN_SYNTHESIS: Final = "voxline.synthesis"
#: An ERROR span under a unary request's root whose answer was made but not delivered.
SPAN_UNDELIVERED: Final = "voxline.synthesis.undelivered"
#: Phase spans are named "<stage>.<phase>", e.g. "acoustic.inference"; see phase_span_name().
SPAN_PHASE_TEMPLATE: Final = "{stage}.{phase}"
#: One model batch made of several requests (span links point at the requests' spans).
SPAN_BATCH_TEMPLATE: Final = "{stage}.batch"

#: gRPC services never traced nor counted (probes and tooling, pure noise).
UNTRACED_GRPC_SERVICE_PREFIXES: Final = ("grpc.health.v1.Health", "grpc.reflection.")


def phase_span_name(stage: str, phase: str) -> str:
    """Return the span name for ``phase`` of ``stage``, e.g. ``"vocoder.inference"``."""
    return SPAN_PHASE_TEMPLATE.format(stage=stage, phase=phase)


def batch_span_name(stage: str) -> str:
    """Return the span name of a model batch of ``stage``, e.g. ``"acoustic.batch"``."""
    return SPAN_BATCH_TEMPLATE.format(stage=stage)


def phase_intervals_attribute(phase: str) -> str:
    """The span attribute holding a stream's ``phase`` intervals, e.g.
    ``"voxline.phase.inference.intervals_us"``."""
    return ATTR_PHASE_INTERVALS_TEMPLATE.format(phase=phase)
