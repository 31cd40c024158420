"""``create_app``: the OpenAI Images API compatible server (FastAPI) for dalle2 pipelines.

Routes: ``POST /v1/images/generations`` (JSON), ``POST /v1/images/edits`` and ``POST /v1/images/variations``
(multipart), ``GET /v1/models[/{id}]``, ``GET /v1/files/{name}`` (the PNGs of ``response_format=url``),
``GET /healthz``, ``GET /metrics`` (Prometheus), ``GET /docs`` (OpenAPI) and ``GET /`` (the web page).
Errors of every kind use the OpenAI error body (``dalle2.serve.errors``). Model calls run in one worker
thread per model, fed by the dynamic batcher (``dalle2.serve.batcher``); seeds and batching are explained
in ``dalle2.serve.jobs``. Statuses beyond the spec: 413 for a body over the cap, 429 with ``retry-after``
when a model's queue is full, 503 (``code: "timeout"``, with ``retry-after``) when a request is not done
within ``timeout_s``, 507 (``code: "insufficient_storage"``) when ``response_format=url`` images cannot be
stored because the disk is full. A model call that fails only hurts the request at fault (see
``dalle2.serve.batcher``): 400 if its input was the cause, else 500 with the request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.datastructures import UploadFile

from dalle2 import __version__
from dalle2.pipeline import PipelineError
from dalle2.serve import jobs
from dalle2.serve.batcher import Batcher, JobTimeout, QueueFull
from dalle2.serve.errors import ApiError, bad_request, install_error_handlers, server_error, too_large
from dalle2.serve.files import FileStore, FileStoreError
from dalle2.serve.metrics import Metrics
from dalle2.serve.middleware import ServeMiddleware
from dalle2.serve.options import MAX_BODY_BYTES, MAX_IMAGE_BYTES, MAX_JSON_BYTES, ServeOptions
from dalle2.serve.registry import ModelRegistry
from dalle2.serve.schemas import EDIT_FORM, ERRORS, GENERATION_BODY, VARIATION_FORM, ImagesResponse, Model, ModelList
from dalle2.serve.uploads import has_alpha, read_png, transparent_pixels
from dalle2.serve.validation import ImageRequest, parse_request
from dalle2.text_input import TextError

log = logging.getLogger("dalle2.serve")
PAGE = Path(__file__).parent / "page"
STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
MAX_FORM_FILES = 4
MAX_FORM_FIELDS = 64
MAX_FIELD_BYTES = 64 * 1024


def create_app(models: dict[str, Any], options: ServeOptions | None = None) -> FastAPI:
    """An app serving ``models`` (id -> pipeline; the first is the default, alias ``dall-e-2``)."""
    options = options or ServeOptions()
    registry = ModelRegistry(models, options.default_size)
    metrics = Metrics()
    files = FileStore(options.out, options.file_ttl_s)
    batchers = {
        model_id: Batcher(
            model_id,
            max_batch=options.max_batch,
            max_wait_s=options.max_wait_ms / 1000,
            queue_size=options.queue_size,
            metrics=metrics,
        )
        for model_id in registry.models
    }

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for batcher in batchers.values():
            batcher.start()
        cleaner = asyncio.create_task(_clean_periodically(files))
        try:
            yield
        finally:
            cleaner.cancel()
            for batcher in batchers.values():
                await batcher.stop()
            files.close()

    app = FastAPI(
        title="dalle2",
        version=__version__,
        description="OpenAI Images API (DALL·E 2 contract) for dalle2 models.",
        lifespan=lifespan,
    )
    app.state.registry, app.state.metrics, app.state.files, app.state.batchers = registry, metrics, files, batchers
    app.state.options = options
    install_error_handlers(app)
    app.add_middleware(ServeMiddleware, metrics=metrics, api_key=options.api_key, body_limit=MAX_BODY_BYTES)

    async def answer(request: Request, image_request: ImageRequest) -> JSONResponse:
        model = image_request.model
        request.state.log = {"kind": image_request.kind, "model": model.id, "n": image_request.n,
                             "size": image_request.size_name}  # fmt: skip
        batcher = batchers[model.id]
        try:
            images = await batcher.submit(
                jobs.batch_key(image_request), image_request.n, image_request, jobs.run_batch, options.timeout_s
            )
        except QueueFull as error:
            raise ApiError(
                429,
                f"The server is busy: {error.depth} requests are waiting for model `{model.id}`. "
                f"Please retry after {error.retry_after_s} s.",
                type="requests",
                code="rate_limit_exceeded",
                headers={"retry-after": str(error.retry_after_s)},
            ) from None
        except JobTimeout:
            raise ApiError(
                503,
                f"The request did not finish within the server's limit of {options.timeout_s:g} s. "
                "Try again, or ask for fewer images.",
                type="server_error",
                code="timeout",
                headers={"retry-after": str(batcher.retry_after_s())},
            ) from None
        except PipelineError as error:  # the request's input, alone in its call, was at fault
            raise bad_request(str(error), None, "invalid_value") from None
        except TextError as error:
            raise bad_request(f"{error}.", "prompt", "invalid_value") from None
        if len(images) != image_request.n:
            raise RuntimeError(f"the model made {len(images)} images, not {image_request.n}")
        base = str(request.base_url)
        try:
            data = await asyncio.to_thread(_encode, image_request, images, files, base)
        except FileStoreError as error:
            if error.full:
                raise ApiError(
                    507,
                    f"The server's disk is full, so it cannot store the images for response_format=url "
                    f"({error.reason}). Ask for response_format=b64_json, or try again later.",
                    type="server_error",
                    code="insufficient_storage",
                ) from None
            log.error("cannot store images in %s: %s (request id %s)", files.folder, error.reason,
                      getattr(request.state, "request_id", None))  # fmt: skip
            raise server_error(request, f"cannot store the images for response_format=url: {error.reason}") from None
        metrics.inc("dalle2_images_total", (("model", model.id), ("kind", image_request.kind)), len(images))
        return JSONResponse({"created": int(time.time()), "data": data})

    images_doc: dict[str, Any] = {"response_model": None, "responses": {200: {"model": ImagesResponse}, **ERRORS}}

    @app.post("/v1/images/generations", openapi_extra=GENERATION_BODY, **images_doc)
    async def generations(request: Request) -> JSONResponse:
        """Images from a text prompt (JSON body)."""
        _require_content_type(request, "application/json")
        body = await request.body()
        if len(body) > MAX_JSON_BYTES:
            raise too_large(MAX_JSON_BYTES)
        fields = _parse_json(body)
        return await answer(request, parse_request("generate", fields, registry))

    @app.post("/v1/images/edits", openapi_extra=EDIT_FORM, **images_doc)
    async def edits(request: Request) -> JSONResponse:
        """Inpainting: the transparent area of ``mask`` (or of ``image`` without a mask) redrawn from ``prompt``."""
        fields, uploads = await _read_form(request, ("image", "image[]", "mask"))
        image_request = parse_request("edit", fields, registry, form=True)
        image = await _read_upload(uploads, "image", fields)
        mask = await _read_upload(uploads, "mask", fields, required=False)
        _check_edit_images(image, mask)
        image_request.image, image_request.mask = image, mask
        return await answer(request, image_request)

    @app.post("/v1/images/variations", openapi_extra=VARIATION_FORM, **images_doc)
    async def variations(request: Request) -> JSONResponse:
        """Variations of an image: its CLIP image embedding decoded with fresh noise."""
        fields, uploads = await _read_form(request, ("image", "image[]"))
        image_request = parse_request("variation", fields, registry, form=True)
        image_request.image = await _read_upload(uploads, "image", fields)
        return await answer(request, image_request)

    @app.get("/v1/models", response_model=ModelList, responses=ERRORS)
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": registry.cards()}

    @app.get("/v1/models/{model_id}", response_model=Model, responses=ERRORS)
    async def retrieve_model(model_id: str) -> dict[str, Any]:
        return registry.get(model_id).card(model_id)

    @app.get("/v1/files/{name}", response_class=Response, responses={404: ERRORS[404]})
    async def get_file(request: Request, name: str) -> Response:
        """A PNG made by this server for ``response_format=url``, until it expires (``file_ttl_s``)."""
        path = files.path(name)
        content = await asyncio.to_thread(_read_bytes, path) if path is not None else None
        if content is None:
            raise ApiError(
                404,
                f"No file {name!r}: files are kept for {options.file_ttl_s:g} s after they are made.",
                code="file_not_found",
            )
        return Response(content, media_type="image/png", headers={"cache-control": "private, max-age=3600"})

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "models": list(registry.models),
            "queue": {model_id: len(b.queue) for model_id, b in batchers.items()},
        }

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((PAGE / "index.html").read_text(encoding="utf-8"))

    @app.get("/static/{name}", include_in_schema=False)
    async def static(request: Request, name: str) -> Response:
        if name not in STATIC:
            raise ApiError(404, f"Invalid URL ({request.method} {request.url.path})")
        return Response((PAGE / name).read_bytes(), media_type=STATIC[name])

    return app


# ------------------------------------------------------------------------------------------- helpers
async def _clean_periodically(files: FileStore) -> None:
    interval = max(0.5, min(60.0, files.ttl_s / 2))
    while True:
        await asyncio.sleep(interval)
        await asyncio.to_thread(files.cleanup)


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _encode(request: ImageRequest, images: list[Any], files: FileStore, base_url: str) -> list[dict[str, str]]:
    """Response items; if storing one image fails, the ones already stored for this request are removed."""
    data: list[dict[str, str]] = []
    saved: list[str] = []
    try:
        for image in images:
            png = jobs.to_png(image, request.size)
            if request.response_format == "b64_json":
                data.append({"b64_json": jobs.b64(png)})
            else:
                saved.append(files.save(png))
                data.append({"url": f"{base_url}v1/files/{saved[-1]}"})
    except BaseException:
        for name in saved:
            files.remove(name)
        raise
    return data


def _require_content_type(request: Request, expected: str) -> None:
    given = request.headers.get("content-type", "")
    if given.split(";")[0].strip().lower() != expected:
        raise bad_request(
            f"Unsupported content type: '{given}'. This API method only accepts '{expected}' requests, but you "
            f"specified the header 'Content-Type: {given}'. Please try again with a supported content type.",
            None,
            "unsupported_content_type",
        )


def _parse_json(body: bytes) -> dict[str, Any]:
    try:
        fields = json.loads(body)
    except (ValueError, RecursionError):
        raise bad_request(
            "We could not parse the JSON body of your request. The API expects a JSON object "
            "(Content-Type: application/json), but what was sent was not valid JSON.",
            None,
            "invalid_json",
        ) from None
    if not isinstance(fields, dict):
        raise bad_request("The request body must be a JSON object.", None, "invalid_json")
    return fields


async def _read_form(request: Request, file_fields: tuple[str, ...]) -> tuple[dict[str, str], dict[str, list]]:
    """Scalar parts (text) and file parts of a multipart body; a file where text belongs (or the reverse
    for ``file_fields``) and repeated scalar parts are 400s."""
    _require_content_type(request, "multipart/form-data")
    form = await request.form(max_files=MAX_FORM_FILES, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FIELD_BYTES)
    fields: dict[str, str] = {}
    uploads: dict[str, list[UploadFile]] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key not in file_fields:
                raise bad_request(
                    f"Invalid type for '{key}': expected a string, but got a file instead.", key, "invalid_type"
                )
            uploads.setdefault("image" if key == "image[]" else key, []).append(value)
        else:
            if key in fields:
                raise bad_request(f"'{key}' was given more than once.", key, "invalid_value")
            fields[key] = value
    return fields, uploads


async def _read_upload(uploads: dict[str, list], name: str, fields: dict[str, str], required: bool = True) -> Any:
    """The decoded PNG of file part ``name`` (None if it is optional and absent)."""
    parts = uploads.get(name, [])
    if name in fields or (name == "image" and "image[]" in fields):
        raise bad_request(
            f"Invalid type for '{name}': expected a file, but got a string instead.", name, "invalid_type"
        )
    if not parts:
        if not required:
            return None
        raise bad_request(f"'{name}' is a required property", name, "missing_required_parameter")
    if len(parts) > 1:
        raise bad_request(
            f"Invalid type for '{name}': expected a file, but got an array instead.", name, "invalid_type"
        )
    data = await parts[0].read(MAX_IMAGE_BYTES + 1)
    return await asyncio.to_thread(read_png, data, name)


def _check_edit_images(image: Any, mask: Any) -> None:
    if mask is not None:
        if mask.size != image.size:
            raise bad_request(
                f"Invalid mask image - image and mask must be the same size: the image is "
                f"{image.size[0]}x{image.size[1]}, the mask {mask.size[0]}x{mask.size[1]}.",
                "mask",
                "invalid_image_size",
            )
        if not has_alpha(mask):
            raise bad_request(
                f"Invalid mask image - format must be in ['RGBA', 'LA'], got {mask.mode}. The fully transparent "
                "pixels (alpha 0) of the mask mark the area to edit.",
                "mask",
                "invalid_image_format",
            )
        if transparent_pixels(mask) == 0:
            raise bad_request(
                "Invalid mask image - it has no fully transparent pixels (alpha 0), so there is nothing to edit.",
                "mask",
                "invalid_value",
            )
        return
    if not has_alpha(image):
        raise bad_request(
            f"Invalid input image - format must be in ['RGBA', 'LA'], got {image.mode}. Without a mask, the "
            "image's fully transparent pixels (alpha 0) mark the area to edit.",
            "image",
            "invalid_image_format",
        )
    if transparent_pixels(image) == 0:
        raise bad_request(
            "Invalid input image - it has no fully transparent pixels (alpha 0) and no mask was given, so there "
            "is nothing to edit.",
            "image",
            "invalid_value",
        )
