"""OpenAI-compatible HTTP front end of the gateway (`POST /v1/audio/speech`, `GET /v1/models`).

Kept import-light: the local stack reads the default port from here.
"""

#: The HTTP service's port (8080: what OpenAI-style clients usually point at locally).
DEFAULT_PORT = 8080
#: Liveness (the process serves HTTP) and readiness (the gateway is SERVING) endpoints.
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
