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
                        help="address to bind; any other than the loopback needs --token")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument("--token", default=None,
                        help=f"access token required on every request (or ${TOKEN_ENV})")
    parser.add_argument("--max-tokens-cap", type=int, default=512,
                        help="the largest max_tokens a chat request may ask for")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads per generation (default: torch's; 1 suits small models "
                             "on a busy machine)")
    parser.add_argument("--stale-after", type=float, default=900.0,
                        help="seconds without a log line after which a job no longer counts as running")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> StudioSettings:
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if not is_loopback(args.host) and not token:
        raise SystemExit(f"refusing to listen on {args.host}, which is not a loopback address, "
                         f"without an access token: pass --token or set ${TOKEN_ENV}")
    workdir = args.directory.resolve()
    config = args.config if args.config.is_absolute() else Path.cwd() / args.config
    if not config.is_file():
        raise SystemExit(f"{args.config}: no such config file")
    return StudioSettings(config=config, workdir=workdir, token=token,
                          max_tokens_cap=args.max_tokens_cap, stale_after_s=args.stale_after,
                          threads=args.threads)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    args = parse_args(argv)
    settings = settings_from(args)
    app = create_app(settings)
    print(f"studio: http://{args.host}:{args.port}/ over {settings.workdir}", file=sys.stderr)
    # Open live pushes would hold a shutdown up; they are cut after a few seconds.
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                timeout_graceful_shutdown=3)


if __name__ == "__main__":
    main()
