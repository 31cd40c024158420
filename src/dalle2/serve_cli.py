"""``dalle2 serve``: the OpenAI Images API compatible server and its web page.

Only argparse is imported at module level; FastAPI, uvicorn, torch and the pipelines load in the handler.
"""

from __future__ import annotations

import argparse
import errno
import os
from pathlib import Path
from typing import Any

from dalle2.cli_options import float_range, int_range
from dalle2.errors import Dalle2Error

API_KEY_ENV = "DALLE2_API_KEY"

SERVE_HELP = """\
Serve models through the OpenAI Images API (DALL·E 2 contract), plus a web page at http://HOST:PORT/.

  POST /v1/images/generations | /v1/images/edits | /v1/images/variations, GET /v1/models[/ID]
  GET /v1/files/NAME (response_format=url), /healthz, /metrics (Prometheus), /docs (OpenAPI)

Model ids are the folders' names; dall-e-2 is an alias of the first. Sizes: each model's native sizes and
256x256, 512x512, 1024x1024 (made at the largest native size, resized with Lanczos). Requests without a seed
are batched into shared model calls; requests with a seed (extra field) run alone and are reproducible.
With --api-key (or DALLE2_API_KEY) every /v1 route except /v1/files, and /metrics, need
`Authorization: Bearer KEY`."""

SERVE_EXAMPLES = """\
examples:
  dalle2 serve runs/shapes --port 8000
  DALLE2_API_KEY=secret dalle2 serve runs/shapes runs/gan --max-batch 32 --out served/
  python -c "from openai import OpenAI; c = OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='x'); \\
print(c.images.generate(prompt='a red circle', size='256x256').data[0].url)\""""


_seconds = float_range(0, unit="a number of seconds")
_positive_seconds = float_range(0, low_open=True, unit="a number of seconds")


def _size(text: str) -> str:
    from dalle2.serve.registry import parse_size_name  # no heavy imports there

    try:
        parse_size_name(text)
    except Dalle2Error as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text.strip().lower()


def load_models(folders: list[str]) -> dict[str, Any]:
    """Model id -> pipeline for the folders (none: the default model of ``resolve_model``)."""
    import dalle2
    from dalle2.pipeline import resolve_model
    from dalle2.serve.registry import unique_names

    paths = [resolve_model(f) for f in folders] if folders else [resolve_model(None)]
    return {name: dalle2.load(path) for name, path in zip(unique_names(paths), paths, strict=True)}


def prepare_out(out: str | None) -> Path | None:
    """The ``--out`` folder, created if missing and checked writable; an ``OSError`` naming the path if it cannot
    be (``dalle2.cli.main`` prints it in one line)."""
    if not out:
        return None
    folder = Path(out).expanduser()
    folder.mkdir(parents=True, exist_ok=True)  # FileExistsError (a file), NotADirectoryError, PermissionError
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "Permission denied", str(folder))
    return folder


def cmd_serve(args: argparse.Namespace) -> None:
    import logging

    import uvicorn

    from dalle2.serve import ServeOptions, create_app

    out = prepare_out(args.out)  # before the models load: a bad --out fails at once, in one line
    models = load_models(args.models)
    options = ServeOptions(
        default_size=args.default_size,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        queue_size=args.queue_size,
        timeout_s=args.timeout_s,
        file_ttl_s=args.file_ttl_s,
        out=out,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
    )
    app = create_app(models, options)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for model_id, pipe in models.items():
        sizes = ", ".join(app.state.registry.models[model_id].size_names)
        print(f"model {model_id}: {getattr(pipe, 'kind', '?')} pipeline, sizes {sizes}", flush=True)
    print(f"serving on http://{args.host}:{args.port}/ (API at /v1, docs at /docs)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level=args.log_level)


def register(commands: Any, add: Any) -> None:
    """Add ``serve`` to the ``dalle2`` sub-commands."""
    from dalle2.cli_options import HelpFormatter

    p = add(commands, "serve", "serve models through the OpenAI Images API, with a web page", cmd_serve)
    p.description, p.epilog, p.formatter_class = SERVE_HELP, SERVE_EXAMPLES, HelpFormatter
    p.add_argument("models", nargs="*", metavar="MODEL_DIR", help="pipeline folders (the first is the default)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int_range(0), default=8000, metavar="PORT", help="port to listen on")
    p.add_argument("--api-key", help=f"require this key (Bearer); default: ${API_KEY_ENV}, else no key")
    p.add_argument(
        "--default-size", type=_size, metavar="WxH", help="size when a request has none (default: native output)"
    )
    p.add_argument(
        "--max-batch",
        type=int_range(1),
        default=16,
        metavar="N",
        help="most images per model call (1: no batching)",
    )
    p.add_argument(
        "--max-wait-ms", type=_seconds, default=20.0, metavar="MS", help="how long a batch waits for more requests"
    )
    p.add_argument(
        "--queue-size", type=int_range(1), default=64, metavar="N", help="waiting requests per model before 429"
    )
    p.add_argument(
        "--timeout-s", type=_positive_seconds, default=120.0, metavar="S", help="per request, queue included (then 503)"
    )
    p.add_argument(
        "--file-ttl-s", type=_positive_seconds, default=3600.0, metavar="S", help="how long url files are served"
    )
    p.add_argument("--out", metavar="DIR", help="folder for those files (default: a temporary folder)")
    p.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error"), help="uvicorn log level"
    )
