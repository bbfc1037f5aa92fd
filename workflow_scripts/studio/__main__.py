"""Start the studio: `python -m workflow_scripts.studio [--config ...] [--host ...] [--port ...]`."""
from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from pathlib import Path

from workflow_scripts.common.cli import parser as cli_parser
from workflow_scripts.studio.app import StudioSettings, create_app
from workflow_scripts.studio.openai_api import RequestLimits

TOKEN_ENV = "STUDIO_TOKEN"


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli_parser(__doc__, prog="python -m workflow_scripts.studio")
    parser.add_argument("--config", type=Path, default=Path("config/config.yaml"),
                        help="the workflow config")
    parser.add_argument("--directory", type=Path, default=Path("."),
                        help="the Snakemake working directory with results/ and logs/")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind; any other than the loopback needs --token, and "
                             "then TLS (--certfile/--keyfile) or --insecure-http")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="another name a request's Host header may carry (the name people "
                             "use to reach this machine); repeatable. Other Hosts get 400")
    parser.add_argument("--certfile", type=Path, default=None,
                        help="TLS certificate chain (PEM): serve https")
    parser.add_argument("--keyfile", type=Path, default=None, help="TLS private key (PEM)")
    parser.add_argument("--insecure-http", action="store_true",
                        help="serve plain http on a non-loopback address even with a token "
                             "(the token then crosses the network readable)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument("--token", default=None,
                        help=f"access token required on every request (or ${TOKEN_ENV})")
    parser.add_argument("--max-tokens-cap", type=int, default=512,
                        help="the largest max_tokens a chat request may ask for")
    parser.add_argument("--max-batch", type=int, default=16,
                        help="requests decoded together per base model")
    parser.add_argument("--queue-depth", type=int, default=32,
                        help="requests that may wait per base model beyond the batch; more get "
                             "429 with Retry-After")
    parser.add_argument("--no-batching", action="store_true",
                        help="one generation at a time per base model (as before batching)")
    parser.add_argument("--max-body-bytes", type=int, default=RequestLimits.max_body_bytes,
                        help="largest request body; a larger one gets 413")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads per generation (default: torch's; 1 suits small models "
                             "on a busy machine)")
    parser.add_argument("--stale-after", type=float, default=900.0,
                        help="seconds without a log line after which a job no longer counts as running")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> StudioSettings:
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if (args.certfile is None) != (args.keyfile is None):
        raise SystemExit("--certfile and --keyfile go together")
    for path in (args.certfile, args.keyfile):
        if path is not None and not path.is_file():
            raise SystemExit(f"{path}: no such file")
    tls = args.certfile is not None
    if not is_loopback(args.host):
        if not token:
            raise SystemExit(f"refusing to listen on {args.host}, which is not a loopback address, "
                             f"without an access token: pass --token or set ${TOKEN_ENV}")
        if not tls and not args.insecure_http:
            raise SystemExit(f"refusing to send the access token over plain http on {args.host}: "
                             f"pass --certfile and --keyfile to serve https, or --insecure-http")
    for name, value in (("--max-batch", args.max_batch), ("--max-body-bytes", args.max_body_bytes)):
        if value < 1:
            raise SystemExit(f"{name} must be at least 1, not {value}")
    if args.queue_depth < 0:
        raise SystemExit(f"--queue-depth must be 0 or more, not {args.queue_depth}")
    workdir = args.directory.resolve()
    config = args.config if args.config.is_absolute() else Path.cwd() / args.config
    if not config.is_file():
        raise SystemExit(f"{args.config}: no such config file")
    return StudioSettings(config=config, workdir=workdir, token=token,
                          max_tokens_cap=args.max_tokens_cap, stale_after_s=args.stale_after,
                          threads=args.threads, host=args.host,
                          allowed_hosts=tuple(args.allowed_host), secure_cookie=tls,
                          batching=not args.no_batching, max_batch=args.max_batch,
                          queue_depth=args.queue_depth,
                          limits=RequestLimits(max_body_bytes=args.max_body_bytes))


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    args = parse_args(argv)
    settings = settings_from(args)
    app = create_app(settings)
    scheme = "https" if args.certfile else "http"
    print(f"studio: {scheme}://{args.host}:{args.port}/ over {settings.workdir}", file=sys.stderr)
    # Open live pushes would hold a shutdown up; they are cut after a few seconds.
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                timeout_graceful_shutdown=3,
                ssl_certfile=str(args.certfile) if args.certfile else None,
                ssl_keyfile=str(args.keyfile) if args.keyfile else None)


if __name__ == "__main__":
    main()
