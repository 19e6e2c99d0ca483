"""``effens serve RUN``: a JSON API and an upload page over HTTP (or on Ray Serve)."""

from __future__ import annotations

from . import command, options


def arguments(p) -> None:
    from ..combining.strategies import strategy_names

    p.add_argument("run", help=options.RUN_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=options.port, default=8000)
    options.add_strategy(p, strategy_names(), "default: the run's combiner.strategy")
    p.add_argument(
        "--max-batch",
        type=options.positive_int,
        default=16,
        metavar="N",
        help="merge concurrent requests' images into batches of up to N",
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        metavar="M",
        help="wait at most M ms for more images before running a batch",
    )
    p.add_argument("--max-files", type=options.positive_int, default=16, help="images per request")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="request body limit")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    p.add_argument(
        "--max-header-kb",
        type=float,
        default=16.0,
        metavar="KB",
        help="request line and headers together; more: 431 (or 400 while still arriving)",
    )
    p.add_argument(
        "--keep-alive",
        type=float,
        default=5.0,
        metavar="S",
        help="close a connection that has not sent a whole request head within S seconds "
        "of opening or of its last answer",
    )
    p.add_argument(
        "--max-connections",
        type=options.positive_int,
        default=128,
        metavar="N",
        help="open connections; a request beyond them is answered 503",
    )
    p.add_argument("--api-key-file", help="require this key (X-API-Key or Authorization: Bearer)")
    p.add_argument("--ray", action="store_true", help="serve as a Ray Serve deployment (pip install 'ray[serve]')")
    p.add_argument("--replicas", type=options.positive_int, default=2, help="with --ray: copies of the app")
    options.add_decisions(p)
    options.add_inference(p)


def _check_limits(args) -> None:
    if args.adapt_bn:
        raise options.UsageError(
            "--adapt-bn re-estimates statistics on all images at once; a server sees "
            "them one request at a time, so `serve` does not take it",
            culprit="--adapt-bn",
        )
    for flag, value in (
        ("--max-wait-ms", args.max_wait_ms),
        ("--max-body-mb", args.max_body_mb),
        ("--timeout", args.timeout),
        ("--max-header-kb", args.max_header_kb),
        ("--keep-alive", args.keep_alive),
    ):
        if not (value >= 0 and value < float("inf")) or (flag != "--max-wait-ms" and value <= 0):
            raise options.UsageError(f"`{flag}` must be a positive number; got {value}", culprit=flag)


def run(args) -> int:
    from ..files import RunError

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise RunError(
            f"`effens serve` needs FastAPI and uvicorn ({exc.name} is not installed): pip install 'effens[serve]'"
        ) from None
    from ..serving.app import ServeLimits, ServeSettings, read_api_key, serve, serve_on_ray

    _check_limits(args)
    settings = ServeSettings(
        args.strategy,
        options.inference(args),
        options.decisions(args),
        args.max_batch,
        args.max_wait_ms,
        ServeLimits(
            args.max_body_mb,
            args.max_files,
            timeout_s=args.timeout,
            max_header_kb=args.max_header_kb,
            keep_alive_s=args.keep_alive,
            max_connections=args.max_connections,
        ),
        read_api_key(args.api_key_file) if args.api_key_file else None,
    )
    if args.ray:
        try:
            from ray import serve as _  # noqa: F401
        except ImportError as exc:
            raise RunError(f"--ray needs Ray Serve ({exc.name} is not installed): pip install 'ray[serve]'") from None
        import logging

        from ..runfolder import load_run

        load_run(args.run)  # a bad run is one line here, not a failed replica
        if args.keep_alive != 5.0 or args.max_connections != 128:
            logging.getLogger("effens").warning(
                "--ray: Ray's proxy holds the connections, so --keep-alive and "
                "--max-connections do not apply (--max-header-kb does)"
            )
        serve_on_ray(args.run, args.host, args.port, settings, args.replicas)
    else:
        serve(args.run, args.host, args.port, settings)
    return 0


command(
    "serve",
    "serve a run over HTTP: a JSON API and an upload page",
    arguments,
    run,
    backend="serving.app",
    output=None,
    position=40,
)
