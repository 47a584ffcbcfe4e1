"""The ``sluice`` command: ``serve`` and ``check-config`` (CONTRACT §1)."""

from __future__ import annotations

import argparse
import dataclasses
import sys

import yaml

from proxy.accounting import Prices
from proxy.config import ConfigError, Config, exposure_problem, load_config, resolve_path

EXIT_INVALID_CONFIG = 2


def _load(path: str | None, host: str | None = None, port: int | None = None) -> Config:
    """Load and validate the config and its price file, with ``--host``/``--port`` applied,
    or exit 2 naming every problem (the exposure rule included: it depends on the host)."""
    try:
        config = load_config(path)
        Prices.load(config.pricing_file)
        server = dataclasses.replace(
            config.server,
            host=host if host is not None else config.server.host,
            port=port if port is not None else config.server.port,
        )
        config = dataclasses.replace(config, server=server)
        problem = exposure_problem(config)
        if problem:
            raise ConfigError([problem])
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        raise SystemExit(EXIT_INVALID_CONFIG) from None
    return config


def _serve(args: argparse.Namespace) -> None:
    path = resolve_path(args.config)
    config = _load(path, args.host, args.port)
    from proxy.server import serve

    serve(config, path, workers=args.workers, log_format=args.log_format)


def _check_config(args: argparse.Namespace) -> None:
    config = _load(resolve_path(args.path or args.config))
    yaml.safe_dump(config.masked(), sys.stdout, sort_keys=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice", description="An OpenAI-compatible LLM gateway.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", help="config file (default: $SLUICE_CONFIG, else config/sluice.yaml)")
    serve.add_argument("--host", help="overrides server.host")
    serve.add_argument("--port", type=int, help="overrides server.port")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.add_argument("--log-format", choices=("json", "console"), default="json")
    serve.set_defaults(run=_serve)
    check = commands.add_parser("check-config", help="validate a config and print it resolved, secrets masked")
    check.add_argument("path", nargs="?", help="config file (default: $SLUICE_CONFIG, else config/sluice.yaml)")
    check.add_argument("--config", help=argparse.SUPPRESS)
    check.set_defaults(run=_check_config)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
