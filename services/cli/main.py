"""`voxline` command line: say, voices, serve, demo."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

from services.cli.client import list_voices, synthesize
from services.cli.stack import LocalStack, StackError
from services.cli.trace import add_trace_commands, print_attribution
from services.http import DEFAULT_PORT as DEFAULT_HTTP_PORT
from services.runtime.config import DEFAULT_PORTS
from services.runtime.tls import ClientTLS

DEFAULT_SERVER = f"127.0.0.1:{DEFAULT_PORTS['gateway']}"
DEMO_TEXT = (
    "Hello from Voxline. This sentence travelled through four gRPC services: "
    "the text frontend, the acoustic model, and the vocoder, on 22 November 2026."
)


def _run_dir(base: str) -> Path:
    return Path(base) / time.strftime("%Y%m%d-%H%M%S")


def cmd_say(args: argparse.Namespace) -> int:
    result = synthesize(
        args.server,
        args.text,
        stream=args.stream,
        voice=args.voice,
        speaker=args.speaker,
        seed=args.seed,
        speaking_rate=args.rate,
        sample_rate=args.sample_rate,
        timeout=args.timeout,
        tls=_client_tls(args),
        api_token=args.api_token,
    )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(result.wav())
    ttfa = f"  TTFA {result.first_audio_s * 1000:.0f} ms" if result.first_audio_s else ""
    print(
        f"wrote {out}: {result.duration_s:.2f} s of audio at {result.sample_rate} Hz"
        f"  elapsed {result.elapsed_s:.2f} s{ttfa}  RTF {result.rtf:.2f}"
    )
    return 0


def cmd_voices(args: argparse.Namespace) -> int:
    reply = list_voices(args.server, tls=_client_tls(args), api_token=args.api_token)
    for v in reply.voices:
        flag = "" if v.trained else "  [UNTRAINED]"
        default = " (default)" if v.name == reply.default_voice else ""
        print(
            f"{v.name}{default}  {v.architecture}  {v.language_code}  "
            f"{v.native_sample_rate_hz} Hz{flag}"
        )
        if v.speakers:
            print(f"    speakers: {', '.join(v.speakers)}")
        print(f"    model: {v.model_version}")
        print(f"    {v.description}")
    return 0


def cmd_voices_import(args: argparse.Namespace) -> int:
    """Import a Piper voice into a Voxline voice folder; a refusal is one line, exit 2."""
    # Imported here: it needs torch and onnx, which the rest of the CLI never loads.
    from services.voices.piper_import import ImportRefused, import_piper_voice

    config = Path(args.config) if args.config else None
    try:
        folder = import_piper_voice(Path(args.model), config, Path(args.out), args.name)
    except ImportRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"imported {args.model} -> {folder}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Keep the local stack up until Ctrl-C/SIGTERM, restarting a service that crashes."""
    # /metrics on 9464-9467, the ports deploy/prometheus/prometheus-local.yml scrapes.
    metrics_ports = {"gateway": 9464, "frontend": 9465, "acoustic": 9466, "vocoder": 9467}
    http_port = {"http": args.http_port} if args.http_port else {}
    stack = LocalStack(
        _run_dir(args.run_dir),
        ports={**DEFAULT_PORTS, **http_port},
        extra_args={s: ["--prometheus-port", str(p)] for s, p in metrics_ports.items()},
        supervise=True,
        http=bool(http_port),
    )
    print(f"starting the local stack (logs and telemetry in {stack.run_dir}) ...", flush=True)
    stack.start()
    print(f"Voxline is serving. Gateway: {stack.gateway}   Ctrl-C to stop.")
    print("  metrics: http://127.0.0.1:9464/metrics (gateway) ... :9467 (vocoder)")
    if args.http_port:
        print(f"  OpenAI-compatible HTTP API: {stack.http_url}/v1 (POST /audio/speech)")
    print(f'  try: voxline say "Hello there." -o out/hello.wav --server {stack.gateway}')
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    print("stopping ...")
    stack.stop()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """What `make run` does: start, synthesise the demo sentence, report, stop."""
    stack = LocalStack(_run_dir(args.run_dir), supervise=True)
    print(f"starting gateway + frontend + acoustic + vocoder (run dir {stack.run_dir}) ...")
    t0 = time.perf_counter()
    with stack:
        print(f"all four services SERVING after {time.perf_counter() - t0:.1f} s")
        for voice in list_voices(stack.gateway).voices:
            if not voice.trained:
                print(f"note: voice {voice.name}: {voice.description}")
        result = synthesize(stack.gateway, args.text, stream=True)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(result.wav())
        print(f"wrote {out}")
        print(
            f"  audio duration  {result.duration_s:.2f} s ({result.sample_rate} Hz, mono, 16-bit)"
        )
        print(f"  TTFA            {(result.first_audio_s or 0) * 1000:.0f} ms (streaming)")
        print(f"  RTF             {result.rtf:.3f} (elapsed {result.elapsed_s:.2f} s)")
    # After the stack stopped, every service has flushed its telemetry files.
    print()
    print_attribution(stack.run_dir)
    return 0


def _add_client_flags(parser: argparse.ArgumentParser) -> None:
    """How to reach a secured gateway (docs/security.md); each flag also reads VOXLINE_*."""

    def add(flag: str, help_: str) -> None:
        env = "VOXLINE_" + flag.upper().replace("-", "_")
        parser.add_argument(f"--{flag}", default=os.environ.get(env, ""), help=f"{help_} (${env})")

    add("api-token", "bearer token for a gateway run with --api-token")
    add("tls-ca", "connect over TLS, trusting this PEM CA")
    add("tls-client-cert", "PEM client certificate to present (mTLS)")
    add("tls-client-key", "PEM private key of --tls-client-cert")
    add("tls-server-name", "name to verify in the server certificate (default: the host)")


def _client_tls(args: argparse.Namespace) -> ClientTLS:
    return ClientTLS(args.tls_ca, args.tls_client_cert, args.tls_client_key, args.tls_server_name)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="voxline", description="Voxline text-to-speech")
    sub = p.add_subparsers(dest="command", required=True)

    say = sub.add_parser("say", help="synthesise text to a WAV file")
    say.add_argument("text")
    say.add_argument("-o", "--output", default="out.wav")
    say.add_argument("--stream", action="store_true", help="use SynthesizeStream")
    say.add_argument("--voice", default="", help="voice name (voxline voices; empty: default)")
    say.add_argument("--speaker", default="", help="speaker of a multi-speaker voice")
    say.add_argument(
        "--seed", type=int, default=None, help="noise seed (VITS voices): same seed, same audio"
    )
    say.add_argument("--rate", type=float, default=None, help="speaking rate (1.0 = normal)")
    say.add_argument("--sample-rate", type=int, default=0, help="output Hz (0 = native)")
    say.add_argument("--server", default=DEFAULT_SERVER, help="gateway host:port")
    say.add_argument("--timeout", type=float, default=120.0)
    _add_client_flags(say)
    say.set_defaults(fn=cmd_say)

    voices = sub.add_parser("voices", help="list voices (or: voices import MODEL.onnx)")
    voices.add_argument("--server", default=DEFAULT_SERVER)
    _add_client_flags(voices)
    voices.set_defaults(fn=cmd_voices)
    # `voxline voices` alone still lists; `voxline voices import ...` converts a Piper voice.
    voices_sub = voices.add_subparsers(dest="voices_command", required=False)
    imp = voices_sub.add_parser("import", help="import a Piper (VITS) .onnx voice")
    imp.add_argument("model", metavar="MODEL.onnx")
    imp.add_argument("--config", metavar="MODEL.onnx.json", help="default: MODEL.onnx.json")
    imp.add_argument("--out", required=True, metavar="DIR", help="folder of voice folders")
    imp.add_argument("--name", help="voice folder name (default: the model file's stem)")
    imp.set_defaults(fn=cmd_voices_import)

    serve = sub.add_parser("serve", help="start the local stack until Ctrl-C")
    serve.add_argument("--run-dir", default="runs")
    serve.add_argument(
        "--http-port",
        type=int,
        default=int(os.environ.get("VOXLINE_HTTP_PORT", DEFAULT_HTTP_PORT)),
        help="port of the OpenAI-compatible HTTP service (0 = don't start it; $VOXLINE_HTTP_PORT)",
    )
    serve.set_defaults(fn=cmd_serve)

    demo = sub.add_parser("demo", help="start, synthesise a demo sentence, stop (make run)")
    demo.add_argument("--text", default=DEMO_TEXT)
    demo.add_argument("--out", default="out/demo.wav")
    demo.add_argument("--run-dir", default="runs")
    demo.set_defaults(fn=cmd_demo)

    add_trace_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        return 1
    except StackError as exc:
        print(f"error: the local stack failed to start: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
