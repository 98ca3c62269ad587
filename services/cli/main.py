"""`voxline` command line: say, voices, serve, demo."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from services.cli.client import (
    WavFile,
    error_trace_id,
    list_voices,
    readable_details,
    synthesize,
)
from services.cli.stack import STAGES, TRANSPORTS, LocalStack, StackError, free_port
from services.cli.trace import add_trace_commands, print_attribution
from services.http import DEFAULT_PORT as DEFAULT_HTTP_PORT
from services.runtime.config import DEFAULT_PORTS, add_flag
from services.runtime.tls import ClientTLS, ServerTLS, TLSConfigError

DEFAULT_SERVER = f"127.0.0.1:{DEFAULT_PORTS['gateway']}"
DEMO_TEXT = (
    "Hello from Voxline. This sentence travelled through four gRPC services: "
    "the text frontend, the acoustic model, and the vocoder, on 22 November 2026."
)


def _run_dir(base: str) -> Path:
    return Path(base) / time.strftime("%Y%m%d-%H%M%S")


SAY_DEFAULT_OUTPUT = "out.wav"
#: `voxline say -` reads the text from stdin; `-o -` writes the WAV to stdout.
STDIO = "-"


def _say_text(text: str) -> str:
    if text != STDIO:
        return text
    if sys.stdin.isatty():
        print("reading the text from stdin (end it with Ctrl-D) ...", file=sys.stderr)
    return sys.stdin.buffer.read().decode("utf-8", errors="replace")


def cmd_say(args: argparse.Namespace) -> int:
    """Synthesise to a WAV file (streamed into it as it arrives) or to stdout (`-o -`).

    stdout gets only the WAV then, written once complete so its header holds the real sizes
    (tools reading a pipe trust them); every message goes to stderr. The trace id and request
    id are printed on stderr, after the audio or the error.
    """
    to_stdout = args.output == STDIO
    sink = None if to_stdout else WavFile(Path(args.output))
    try:
        result = synthesize(
            args.server,
            _say_text(args.text),
            stream=not args.unary,
            voice=args.voice,
            speaker=args.speaker,
            seed=args.seed,
            speaking_rate=args.rate,
            sample_rate=args.sample_rate,
            timeout=args.timeout,
            tls=_client_tls(args),
            api_token=args.api_token,
            on_audio=sink.write if sink is not None else None,
        )
    except grpc.RpcError as exc:
        if sink is not None:
            sink.discard()
        code = exc.code().name  # type: ignore[attr-defined]
        details = readable_details(exc.details())  # type: ignore[attr-defined]
        print(f"error: {code}: {details}", file=sys.stderr)
        if hint := _tls_hint(args, exc):
            print(f"hint: {hint}", file=sys.stderr)
        trace_id = error_trace_id(exc)
        if trace_id:
            print(f"trace id {trace_id}  (voxline trace {trace_id})", file=sys.stderr)
        return 1
    except BaseException:
        if sink is not None:
            sink.discard()
        raise
    if sink is not None:
        sink.commit(result.sample_rate)
        where = str(sink.path)
    else:
        sys.stdout.buffer.write(result.wav())
        sys.stdout.buffer.flush()
        where = "stdout"
    ttfa = f"  TTFA {result.first_audio_s * 1000:.0f} ms" if result.first_audio_s else ""
    rate = f" at rate {args.rate:g}" if args.rate is not None else ""
    print(
        f"wrote {where}: {result.duration_s:.2f} s of audio at {result.sample_rate} Hz{rate}"
        f"  elapsed {result.elapsed_s:.2f} s{ttfa}  RTF {result.rtf:.2f}",
        file=sys.stderr if to_stdout else sys.stdout,
    )
    ids = f"trace id {result.trace_id or '(none)'}  request id {result.request_id or '(none)'}"
    hint = f"  (voxline trace {result.trace_id})" if result.trace_id else ""
    print(ids + hint, file=sys.stderr)
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


#: The TLS flags of `voxline serve`, each also `VOXLINE_TLS_*` (docs/security.md, "Local TLS").
SERVE_TLS_FLAGS = (
    ("tls-cert", "every gRPC service serves TLS with this PEM certificate (SAN 127.0.0.1)"),
    ("tls-key", "PEM private key of --tls-cert"),
    ("tls-client-ca", "every gRPC port requires client certificates this PEM CA signed (mTLS)"),
    ("tls-ca", "CA the stack's own clients trust (empty: --tls-cert, if self-signed)"),
    ("tls-client-cert", "client certificate the stack's own clients present (for mTLS)"),
    ("tls-client-key", "PEM private key of --tls-client-cert"),
    ("tls-server-name", "name to verify in --tls-cert instead of 127.0.0.1"),
)


def _serve_tls(args: argparse.Namespace) -> tuple[dict[str, list[str]], ClientTLS]:
    """The services' TLS flags and the stack's own client TLS (health checks, gateway ->
    stages, HTTP front -> gateway) for `voxline serve --tls-...`; TLSConfigError if they
    are inconsistent or name unusable files.

    Every flag is passed, empty ones too, so a `VOXLINE_TLS_*` in the environment of a
    plaintext stack cannot turn TLS on in one service and not in the others.
    """
    server = ServerTLS(args.tls_cert, args.tls_key, args.tls_client_ca)
    if args.tls_client_ca and not args.tls_client_cert:
        raise TLSConfigError(
            "--tls-client-ca (mTLS) needs --tls-client-cert/--tls-client-key: the stack's "
            "own clients (the gateway, the HTTP front, the start-up checks) present it"
        )
    if not server.enabled and (args.tls_ca or args.tls_client_cert):
        raise TLSConfigError("--tls-ca and --tls-client-cert need --tls-cert/--tls-key")
    client = ClientTLS(
        args.tls_ca or args.tls_cert,
        args.tls_client_cert,
        args.tls_client_key,
        args.tls_server_name,
    )
    if server.enabled:
        server.credentials()  # reads and checks the files now: an error names the file
        client.credentials()
    served = [
        f"--tls-cert={server.cert}",
        f"--tls-key={server.key}",
        f"--tls-client-ca={server.client_ca}",
    ]
    calling = [
        f"--tls-ca={client.ca}",
        f"--tls-client-cert={client.cert}",
        f"--tls-client-key={client.key}",
        f"--tls-server-name={client.server_name}",
    ]
    flags = {s: [*served, *calling] for s in (*STAGES, "gateway")}
    flags["http"] = calling
    return flags, client


def _say_hint(stack: LocalStack) -> str:
    """The `voxline say` line that reaches this stack."""
    flags = f" --server {stack.gateway}"
    if stack.tls.enabled:
        flags += f" --tls-ca {stack.tls.ca}"
    if stack.tls.cert:
        flags += f" --tls-client-cert {stack.tls.cert} --tls-client-key {stack.tls.key}"
    if stack.tls.server_name:
        flags += f" --tls-server-name {stack.tls.server_name}"
    return f'{_voxline_command()} say "Hello there." -o out/hello.wav{flags}'


def _voxline_command() -> str:
    """How to run `voxline` from here: the name when it is on PATH, else the venv's script
    (`make serve` runs the venv's Python without activating it)."""
    script = Path(sys.executable).with_name("voxline")
    on_path = shutil.which("voxline")
    if on_path and Path(on_path).resolve() == script.resolve():
        return "voxline"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def cmd_serve(args: argparse.Namespace) -> int:
    """Keep the local stack up until Ctrl-C/SIGTERM/SIGHUP, restarting a service that crashes.

    The first signal stops intake and drains: the HTTP front, then the gateway, then the
    stages (LocalStack.stop), so requests in flight finish; a second one kills at once.
    """
    try:
        tls_flags, tls = _serve_tls(args)
        if tls.enabled and args.transport == "unix":
            raise TLSConfigError(
                "--transport unix serves the stages on Unix sockets, without TLS (only this "
                "host's processes reach them): drop the --tls-* flags or use --transport tcp"
            )
    except TLSConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # /metrics on 9464-9467, the ports deploy/prometheus/prometheus-local.yml scrapes.
    metrics_ports = {"gateway": 9464, "frontend": 9465, "acoustic": 9466, "vocoder": 9467}
    if args.free_ports:
        metrics_ports = {s: free_port() for s in metrics_ports}
        ports = None  # LocalStack picks free ones (the HTTP front's too)
    else:
        ports = {**DEFAULT_PORTS, **({"http": args.http_port} if args.http_port else {})}
    extra = {s: ["--prometheus-port", str(p)] for s, p in metrics_ports.items()}
    for service, flags in tls_flags.items():
        extra[service] = [*extra.get(service, []), *flags]
    stack = LocalStack(
        _run_dir(args.run_dir),
        ports=ports,
        extra_args=extra,
        tls=tls,
        supervise=True,
        http=bool(args.http_port),
        transport=args.transport,
    )
    # The services run in their own sessions (a terminal's Ctrl-C reaches only this process):
    # every way this process is asked to stop must stop them too, in order.
    stopping = threading.Event()
    started = False

    def on_signal(signum: int, _frame: object) -> None:
        if stopping.is_set() or not started:  # a second signal, or still starting: now
            raise KeyboardInterrupt
        stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    mode = ("mTLS" if args.tls_client_ca else "TLS") if tls.enabled else "plaintext"
    if args.transport == "unix":
        mode += "; stages on Unix sockets"
    print(
        f"starting the local stack ({mode}; logs and telemetry in {stack.run_dir}) ...",
        flush=True,
    )
    try:
        stack.start(progress=lambda line: print(line, flush=True))
    except KeyboardInterrupt:  # start() stopped what it had started
        print("interrupted while starting; stopped", flush=True)
        return 130
    started = True
    print(f"Voxline is serving. Gateway: {stack.gateway} ({mode})   Ctrl-C to stop.")
    first, last = metrics_ports["gateway"], metrics_ports["vocoder"]
    print(f"  metrics: http://127.0.0.1:{first}/metrics (gateway) ... :{last} (vocoder)")
    if args.http_port:
        print(f"  OpenAI-compatible HTTP API: {stack.http_url}/v1 (POST /audio/speech)")
    print(f"  try: {_say_hint(stack)}", flush=True)
    stopping.wait()
    print(
        "stopping: new requests refused, requests in flight finish (Ctrl-C again to kill) ...",
        flush=True,
    )
    try:
        codes = stack.stop()
    except KeyboardInterrupt:  # stop() killed what was left
        print("killed", flush=True)
        return 130
    unclean = {s: c for s, c in codes.items() if c != 0}
    print(f"stopped{f' (exit codes {unclean})' if unclean else ''}", flush=True)
    return 1 if unclean else 0


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
    """`voxline` and its commands (say, voices, serve, demo, trace)."""
    p = argparse.ArgumentParser(prog="voxline", description="Voxline text-to-speech")
    sub = p.add_subparsers(dest="command", required=True)
    _add_say(sub)
    _add_voices(sub)
    _add_serve(sub)
    _add_demo(sub)
    add_trace_commands(sub)
    return p


def _add_say(sub: Any) -> None:
    """`voxline say`: text to a WAV file (streamed by default)."""
    say = sub.add_parser(
        "say",
        help="synthesise text to a WAV file",
        description="Synthesise text to a WAV file. Streams by default (SynthesizeStream): a "
        "file grows as the audio arrives and its header is final when done; with -o - the "
        "complete WAV goes to stdout once done (so its header holds the real sizes) and "
        "messages go to stderr. The trace id and request id are printed on stderr: "
        "`voxline trace ID` shows where the time went.",
    )
    say.add_argument("text", help="the text to speak; - reads it from stdin")
    say.add_argument(
        "-o",
        "--output",
        default=SAY_DEFAULT_OUTPUT,
        metavar="FILE",
        help=f"WAV file to write, - for stdout (default: {SAY_DEFAULT_OUTPUT})",
    )
    method = say.add_mutually_exclusive_group()
    method.add_argument(
        "--unary", action="store_true", help="one Synthesize call (default: SynthesizeStream)"
    )
    method.add_argument(
        "--stream", action="store_true", help="SynthesizeStream (the default; kept for scripts)"
    )
    say.add_argument(
        "--voice", default="", help="voice name, see `voxline voices` (default: the server's)"
    )
    say.add_argument(
        "--speaker", default="", help="speaker of a multi-speaker voice (default: its first)"
    )
    say.add_argument(
        "--seed",
        type=int,
        default=None,
        help="noise seed (VITS voices): same seed, same audio (default: a fresh one per call)",
    )
    say.add_argument(
        "--rate", type=float, default=None, help="speaking rate, 0.25 to 4 (default: 1, normal)"
    )
    say.add_argument(
        "--sample-rate",
        type=int,
        default=0,
        metavar="HZ",
        help="output sample rate (default: 0, the voice's native rate)",
    )
    say.add_argument(
        "--server", default=DEFAULT_SERVER, help=f"gateway host:port (default: {DEFAULT_SERVER})"
    )
    say.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="deadline in seconds (default: 120)",
    )
    _add_client_flags(say)
    say.set_defaults(fn=cmd_say)


def _add_voices(sub: Any) -> None:
    """`voxline voices` (list) and `voxline voices import`."""
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


def _add_serve(sub: Any) -> None:
    """`voxline serve`: the local stack until Ctrl-C."""
    serve = sub.add_parser("serve", help="start the local stack until Ctrl-C")
    serve.add_argument("--run-dir", default="runs")
    serve.add_argument(
        "--http-port",
        type=int,
        default=int(os.environ.get("VOXLINE_HTTP_PORT", DEFAULT_HTTP_PORT)),
        help="port of the OpenAI-compatible HTTP service (0 = don't start it; $VOXLINE_HTTP_PORT)",
    )
    serve.add_argument(
        "--free-ports",
        action="store_true",
        help="free loopback ports for every service and /metrics (to run beside another stack)",
    )
    serve.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default=os.environ.get("VOXLINE_TRANSPORT", "tcp"),
        help="how the gateway reaches the stages: loopback TCP ports, or Unix sockets in the "
        "run dir (co-located stages, docs/deploy.md; the gateway keeps its TCP port) "
        "($VOXLINE_TRANSPORT; default: tcp)",
    )
    for flag, help_ in SERVE_TLS_FLAGS:
        add_flag(serve, flag, str, "", help_)
    serve.set_defaults(fn=cmd_serve)


def _add_demo(sub: Any) -> None:
    """`voxline demo`: start, synthesise a demo sentence, stop (`make run`)."""
    demo = sub.add_parser("demo", help="start, synthesise a demo sentence, stop (make run)")
    demo.add_argument("--text", default=DEMO_TEXT)
    demo.add_argument("--out", default="out/demo.wav")
    demo.add_argument("--run-dir", default="runs")
    demo.set_defaults(fn=cmd_demo)


def _tls_hint(args: argparse.Namespace, exc: grpc.RpcError) -> str:
    """What to try when a call could not connect for want of TLS ('' if nothing fits).

    gRPC tells a client whose handshake a TLS port refused no more than `Socket closed`
    (UNAVAILABLE): a plaintext client, or one without a certificate on an mTLS port.
    """
    details = str(exc.details() or "")  # type: ignore[attr-defined]
    refused = "failed to connect" in details and details.endswith("Socket closed")
    if exc.code() != grpc.StatusCode.UNAVAILABLE or not refused:  # type: ignore[attr-defined]
        return ""
    if not getattr(args, "tls_ca", "") and not getattr(args, "tls_client_cert", ""):
        return "the server may require TLS: pass --tls-ca CA.pem (docs/security.md)"
    if not getattr(args, "tls_client_cert", ""):
        return (
            "the server may require a client certificate (mTLS): pass --tls-client-cert "
            "and --tls-client-key"
        )
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        if hint := _tls_hint(args, exc):
            print(f"hint: {hint}", file=sys.stderr)
        return 1
    except StackError as exc:
        print(f"error: the local stack failed to start: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
