"""``dalle2 serve`` driven by the official ``openai`` client and by raw HTTP (see the spec, section 7).

One server with the tiny trained unCLIP pipeline (16x16 base, 32x32 output) answers the real-model tests;
small servers with fake pipelines test batching, backpressure, timeouts, keys and the GAN-like model.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dalle2
from dalle2.serve import ServeOptions, create_app
from dalle2.serve.files import FileStore
from tests.serve_support import FakePipe, ServerThread, open_png, png_bytes, prompt_color

openai = pytest.importorskip("openai")

PROMPT = "a red circle above a blue square"


@pytest.fixture(scope="module")
def tiny_pipe(tiny_unclip: Path):
    return dalle2.load(tiny_unclip)


@pytest.fixture(scope="module")
def server(tiny_pipe) -> str:
    app = create_app({"unclip-tiny": tiny_pipe}, ServeOptions(max_wait_ms=5))
    with ServerThread(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60)


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def raw(server: str, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None):
    """A request exactly as given (no path normalisation): (status, headers, parsed JSON or bytes)."""
    host, port = server.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        headers = dict(headers or {})
        if body and "Transfer-Encoding" not in headers:
            headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            connection.putheader(key, value)
        connection.endheaders()
        if body:
            connection.send(body)
        response = connection.getresponse()
        data = response.read()
        try:
            data = json.loads(data)
        except ValueError:
            pass
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        connection.close()


def multipart(fields: dict[str, str], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, filename, data in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: image/png\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def assert_error(body: dict, param: str | None = None, code: str | None = None) -> None:
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param, body
    if code is not None:
        assert body["error"]["code"] == code, body


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def rgba_with_hole(size: int = 32) -> Image.Image:
    """An opaque pattern whose left half is fully transparent (the area to edit)."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (size, size, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    pixels[:, : size // 2, 3] = 0
    return Image.fromarray(pixels, "RGBA")


# ----------------------------------------------------------------------------------- the real model
def test_generate_urls_serve_pngs_of_the_requested_size(client):
    result = client.images.generate(model="dall-e-2", prompt=PROMPT, n=2, size="256x256", response_format="url")
    assert isinstance(result.created, int) and len(result.data) == 2
    for item in result.data:
        assert item.b64_json is None and item.url.startswith(str(client.base_url).removesuffix("v1/"))
        status, headers, data = fetch(item.url)
        assert status == 200 and headers["content-type"] == "image/png"
        assert open_png(data).size == (256, 256)


def test_generate_b64_at_each_native_size(client):
    for size, side in (("16x16", 16), ("32x32", 32)):
        result = client.images.generate(prompt=PROMPT, size=size, response_format="b64_json")
        (item,) = result.data
        assert item.url is None
        assert open_png(base64.b64decode(item.b64_json)).size == (side, side)


def test_default_size_is_the_native_output_and_seed_reproduces_the_pipeline(client, tiny_pipe):
    kwargs = {"prompt": PROMPT, "n": 2, "response_format": "b64_json", "extra_body": {"seed": 5}}
    first = client.images.generate(**kwargs)
    again = client.images.generate(**kwargs)
    images = [open_png(base64.b64decode(d.b64_json)) for d in first.data]
    assert [im.size for im in images] == [(32, 32), (32, 32)]
    assert [d.b64_json for d in first.data] == [d.b64_json for d in again.data]
    direct = tiny_pipe([PROMPT], n=2, seed=5)  # a seeded request runs alone: same images as the pipeline
    assert all(np.array_equal(arr(a), arr(b)) for a, b in zip(images, direct, strict=True))


def test_steps_and_guidance_reach_the_unclip_pipeline(client):
    def image(**extra):
        body = {"seed": 3, **extra}
        result = client.images.generate(prompt=PROMPT, size="16x16", response_format="b64_json", extra_body=body)
        return arr(open_png(base64.b64decode(result.data[0].b64_json)))

    plain = image()
    assert not np.array_equal(plain, image(steps=2))
    assert not np.array_equal(plain, image(guidance=8.0))


def test_edit_keeps_the_opaque_pixels(client):
    source = rgba_with_hole(32)
    result = client.images.edit(
        image=("image.png", png_bytes(source), "image/png"), prompt=PROMPT, n=2, size="32x32",
        response_format="b64_json", extra_body={"seed": 1},
    )  # fmt: skip
    assert len(result.data) == 2
    kept = arr(source)[:, 16:]
    for item in result.data:
        out = open_png(base64.b64decode(item.b64_json))
        assert out.size == (32, 32)
        assert np.array_equal(arr(out)[:, 16:], kept)  # the opaque right half is untouched
        assert not np.array_equal(arr(out)[:, :16], arr(source)[:, :16])  # the transparent half is redrawn


def test_edit_with_a_separate_mask_and_an_upscaled_size(client):
    source = rgba_with_hole(32).convert("RGB")
    mask = Image.new("RGBA", (32, 32), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 32, 8))  # top quarter transparent: edit it
    result = client.images.edit(
        image=("image.png", png_bytes(source), "image/png"),
        mask=("mask.png", png_bytes(mask), "image/png"),
        prompt=PROMPT,
        size="256x256",
    )
    status, _, data = fetch(result.data[0].url)
    assert status == 200 and open_png(data).size == (256, 256)


def test_variations(client):
    source = Image.new("RGB", (48, 48), (200, 30, 30))
    with pytest.warns(DeprecationWarning):
        result = client.images.create_variation(
            image=("v.png", png_bytes(source), "image/png"), n=3, size="32x32", response_format="b64_json"
        )
    images = [open_png(base64.b64decode(d.b64_json)) for d in result.data]
    assert [im.size for im in images] == [(32, 32)] * 3
    assert not np.array_equal(arr(images[0]), arr(images[1]))


def test_models_list_and_retrieve(client):
    ids = [m.id for m in client.models.list()]
    assert ids == ["dall-e-2", "unclip-tiny"]
    model = client.models.retrieve("unclip-tiny")
    assert model.object == "model" and model.owned_by == "dalle2"
    alias = client.models.retrieve("dall-e-2").model_dump()
    assert alias["root"] == "unclip-tiny" and alias["default_size"] == "32x32"
    assert alias["sizes"] == ["16x16", "32x32", "256x256", "512x512", "1024x1024"]
    with pytest.raises(openai.NotFoundError) as error:
        client.models.retrieve("nope")
    assert error.value.code == "model_not_found"


# ---------------------------------------------------------------------------- errors via the client
@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"size": "1000x1000"}, "size"),
        ({"size": "64x64"}, "size"),
        ({"n": 11}, "n"),
        ({"n": 0}, "n"),
        ({"prompt": "x" * 1001}, "prompt"),
        ({"prompt": None}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"style": "vivid"}, "style"),
        ({"response_format": "jpeg"}, "response_format"),
        ({"quality": "hd"}, "quality"),
        ({"background": "transparent"}, "background"),
        ({"output_format": "webp"}, "output_format"),
        ({"extra_body": {"seed": -1}}, "seed"),
        ({"extra_body": {"steps": 0}}, "steps"),
        ({"extra_body": {"guidence": 3}}, "guidence"),
    ],
)
def test_generate_bad_requests(client, kwargs, param):
    kwargs = {"prompt": PROMPT, **kwargs}
    with pytest.raises(openai.BadRequestError) as error:
        client.images.generate(**kwargs)
    assert error.value.status_code == 400 and error.value.param == param
    assert error.value.request_id and error.value.request_id.startswith("req_")


def test_stream_true_is_a_bad_request(client):
    with pytest.raises(openai.BadRequestError) as error:
        client.images.generate(prompt=PROMPT, stream=True)
    assert error.value.param == "stream"


def test_nulls_mean_defaults(client):
    result = client.images.generate(prompt=PROMPT, n=None, size=None, response_format=None, user="u1")
    assert len(result.data) == 1 and result.data[0].url


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as error:
        client.images.generate(prompt=PROMPT, model="dall-e-3")
    assert error.value.code == "model_not_found" and error.value.param == "model"


def test_upload_errors(client):
    opaque = png_bytes(Image.new("RGB", (32, 32), (1, 2, 3)))
    cases = [
        (client.images.create_variation, {"image": ("a.jpg", b"\xff\xd8\xff\xe0not a png", "image/jpeg")}, "image"),
        (client.images.create_variation, {"image": ("a.png", png_bytes(Image.new("RGB", (32, 24))), "image/png")},
         "image"),
        (client.images.edit, {"image": ("a.png", opaque, "image/png"), "prompt": PROMPT}, "image"),  # no alpha
        (client.images.edit, {"image": ("a.png", opaque, "image/png"), "prompt": PROMPT,
                              "mask": ("m.png", png_bytes(rgba_with_hole(16)), "image/png")}, "mask"),
        (client.images.edit, {"image": ("a.png", png_bytes(rgba_with_hole(32)), "image/png"), "prompt": "x" * 1001},
         "prompt"),
        (client.images.edit, {"image": ("a.png", png_bytes(rgba_with_hole(32)), "image/png"), "prompt": PROMPT,
                              "size": "100x100"}, "size"),
    ]  # fmt: skip
    for method, kwargs, param in cases:
        with pytest.warns(DeprecationWarning) if method == client.images.create_variation else nullcontext():
            with pytest.raises(openai.BadRequestError) as error:
                method(**kwargs)
        assert error.value.param == param, (kwargs, error.value.body)


# ------------------------------------------------------------------------------------- raw HTTP
def test_unknown_routes_and_methods(server):
    status, headers, body = raw(server, "POST", "/v1/images/foo", b"{}", {"Content-Type": "application/json"})
    assert status == 404 and body["error"]["message"] == "Invalid URL (POST /v1/images/foo)"
    assert headers["x-request-id"].startswith("req_")
    status, _, body = raw(server, "GET", "/v1/images/generations")
    assert status == 405
    assert_error(body)


def test_wrong_content_types_and_bad_json(server):
    form, content_type = multipart({"prompt": PROMPT}, [])
    status, _, body = raw(server, "POST", "/v1/images/generations", form, {"Content-Type": content_type})
    assert status == 400
    assert_error(body, code="unsupported_content_type")
    body_json = json.dumps({"prompt": PROMPT}).encode()
    status, _, body = raw(server, "POST", "/v1/images/edits", body_json, {"Content-Type": "application/json"})
    assert status == 400
    assert_error(body, code="unsupported_content_type")
    for garbage in (b"{not json", b"[1, 2]", b"\xff\xfe\x00", b"[" * 50_000, b'{"prompt": "a", "n": 1e999}', b""):
        status, _, body = raw(server, "POST", "/v1/images/generations", garbage, {"Content-Type": "application/json"})
        assert status == 400, garbage[:20]
        assert_error(body)
    status, _, body = raw(server, "POST", "/v1/images/variations", b"--x\r\nbroken", {"Content-Type":
                          "multipart/form-data; boundary=x"})  # fmt: skip
    assert status == 400
    assert_error(body)


def test_huge_bodies_are_refused(server):
    big = b'{"prompt": "' + b"a" * (20 * 1024 * 1024) + b'"}'
    status, _, body = raw(server, "POST", "/v1/images/generations", big, {"Content-Type": "application/json"})
    assert status == 413
    assert_error(body, code="request_too_large")
    # no Content-Length: counted while read
    chunk = b"a" * (1024 * 1024)
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(12)) + b"0\r\n\r\n"
    status, _, body = raw(server, "POST", "/v1/images/generations", chunked,
                          {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})  # fmt: skip
    assert status == 413
    assert_error(body)
    # an image of 4 MB or more: the spec's 400
    noise = np.random.default_rng(0).integers(0, 256, (1400, 1400, 3), dtype=np.uint8)
    big_png = png_bytes(Image.fromarray(noise))
    assert len(big_png) >= 4 * 1024 * 1024
    form, content_type = multipart({}, [("image", "big.png", big_png)])
    status, _, body = raw(server, "POST", "/v1/images/variations", form, {"Content-Type": content_type})
    assert status == 400
    assert_error(body, param="image")


def test_files_route_refuses_anything_but_its_own_names(server, tmp_path):
    for path in ("/v1/files/../../etc/passwd", "/v1/files/..%2F..%2Fetc%2Fpasswd", "/v1/files/%2e%2e",
                 "/v1/files/passwd", "/v1/files/" + "0" * 32 + ".png", "/v1/files/" + "0" * 32 + ".png%00",
                 "/v1/files/..", "/v1/files/.%2e/.%2e/etc/passwd"):  # fmt: skip
        status, _, body = raw(server, "GET", path)
        assert status == 404, path
        assert_error(body)
        assert b"root:" not in json.dumps(body).encode()


def bomb_png(width: int, height: int) -> bytes:
    """A small PNG that declares ``width`` x ``height`` pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))  # fmt: skip

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    idat = zlib.compress(b"\x00" * 100_000, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bombs_and_corrupt_pngs(server):
    good = png_bytes(Image.new("RGB", (32, 32), (9, 9, 9)))
    corrupt = good[:40] + b"\x00" * 20 + good[60:]
    cases = {
        "bomb": bomb_png(100_000, 100_000),
        "4097 square": bomb_png(4097, 4097),
        "zero": bomb_png(0, 0),
        "truncated": good[: len(good) // 2],
        "corrupt": corrupt,
        "header only": b"\x89PNG\r\n\x1a\n",
    }
    for name, data in cases.items():
        form, content_type = multipart({"n": "1"}, [("image", "x.png", data)])
        status, _, body = raw(server, "POST", "/v1/images/variations", form, {"Content-Type": content_type})
        assert status == 400, name
        assert_error(body, param="image")


def test_pillows_own_bomb_check_is_a_bad_request_too(server, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 32x32 = 1024 pixels > 2 x 100: DecompressionBombError
    form, content_type = multipart({}, [("image", "x.png", png_bytes(Image.new("RGB", (32, 32))))])
    status, _, body = raw(server, "POST", "/v1/images/variations", form, {"Content-Type": content_type})
    assert status == 400
    assert_error(body, param="image", code="image_too_large")


def test_framework_validation_errors_become_400s():
    import asyncio

    from fastapi.exceptions import RequestValidationError

    app = create_app({"fake": FakePipe()})
    handler = app.exception_handlers[RequestValidationError]
    error = RequestValidationError([{"loc": ("query", "limit"), "msg": "Input should be a valid integer"}])
    response = asyncio.run(handler(None, error))
    assert response.status_code == 400
    body = json.loads(response.body)
    assert_error(body, param="limit")
    app.state.files.close()


def test_multipart_shapes(server):
    image = png_bytes(Image.new("RGB", (32, 32), (9, 9, 9)))
    # image[] holding one file is accepted; two files are an array
    form, content_type = multipart({"size": "16x16"}, [("image[]", "a.png", image)])
    status, _, body = raw(server, "POST", "/v1/images/variations", form, {"Content-Type": content_type})
    assert status == 200 and len(body["data"]) == 1
    form, content_type = multipart({}, [("image[]", "a.png", image), ("image[]", "b.png", image)])
    status, _, body = raw(server, "POST", "/v1/images/variations", form, {"Content-Type": content_type})
    assert status == 400
    assert_error(body, param="image", code="invalid_type")
    assert body["error"]["message"] == "Invalid type for 'image': expected a file, but got an array instead."
    # missing image; image as text; a scalar as a file; n not a number; stream=true
    for fields, files, param in (
        ({"n": "1"}, [], "image"),
        ({"image": "abc"}, [], "image"),
        ({}, [("image", "a.png", image), ("n", "n.png", b"2")], "n"),
        ({"n": "two"}, [("image", "a.png", image)], "n"),
        ({"prompt": "hi"}, [("image", "a.png", image)], "prompt"),
    ):
        form, content_type = multipart(fields, files)
        status, _, body = raw(server, "POST", "/v1/images/variations", form, {"Content-Type": content_type})
        assert status == 400, (fields, body)
        assert_error(body, param=param)
    form, content_type = multipart({"prompt": PROMPT, "stream": "true"}, [("image", "a.png", image)])
    status, _, body = raw(server, "POST", "/v1/images/edits", form, {"Content-Type": content_type})
    assert status == 400
    assert_error(body, param="stream")


def test_health_metrics_docs_and_log_lines(server, client, caplog):
    with caplog.at_level(logging.INFO, logger="dalle2.serve"):
        client.images.generate(prompt=PROMPT, n=1, size="16x16")
        deadline = time.monotonic() + 5
        while not any('"route": "/v1/images/generations"' in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline
            time.sleep(0.01)
    line = next(json.loads(r.getMessage()) for r in caplog.records if "/v1/images/generations" in r.getMessage())
    assert {"route", "model", "n", "size", "latency_ms", "status"} <= set(line)
    assert line["model"] == "unclip-tiny" and line["size"] == "16x16" and line["status"] == 200
    status, _, body = raw(server, "GET", "/healthz")
    assert status == 200 and body["status"] == "ok"
    assert raw(server, "GET", "/nope")[0] == 404
    status, headers, text = raw(server, "GET", "/metrics")
    text = text.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    for name in ('dalle2_requests_total{route="/v1/images/generations",method="POST",status="200"}',
                 "dalle2_errors_total{", 'dalle2_queue_depth{model="unclip-tiny"}', "dalle2_batch_images_bucket{",
                 "dalle2_request_duration_seconds_bucket{", 'dalle2_images_total{model="unclip-tiny"'):  # fmt: skip
        assert name in text, name
    status, _, spec = raw(server, "GET", "/openapi.json")
    assert status == 200 and "/v1/images/generations" in spec["paths"] and "/v1/images/edits" in spec["paths"]
    status, _, page = raw(server, "GET", "/docs")
    assert status == 200
    status, headers, page = raw(server, "GET", "/")
    assert status == 200 and b"<title>dalle2</title>" in page and headers["content-type"].startswith("text/html")
    assert raw(server, "GET", "/static/app.js")[0] == 200
    assert raw(server, "GET", "/static/evil.js")[0] == 404


# ----------------------------------------------------------------------------- fake-pipeline servers
def concurrently(count: int, work) -> list:
    results: list = [None] * count
    barrier = threading.Barrier(count)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as error:  # collected for the test to look at
            results[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_concurrent_requests_are_batched_and_split_back():
    pipe = FakePipe(resolution=8, delay_s=0.05)
    app = create_app({"fake": pipe}, ServeOptions(max_batch=64, max_wait_ms=300))
    with ServerThread(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        prompts = [f"prompt number {i}" for i in range(8)]

        def work(i: int):
            return client.images.generate(prompt=prompts[i], n=1 + i % 3, size="8x8", response_format="b64_json")

        results = concurrently(8, work)
        seeded = concurrently(2, lambda i: client.images.generate(prompt="s", size="8x8", extra_body={"seed": i}))
    assert not any(isinstance(r, Exception) for r in results + seeded), results + seeded
    generate_calls = pipe.calls[: len(pipe.calls) - 2]
    assert len(generate_calls) < 8  # merged
    assert sum(len(c["prompts"]) * c["n"] for c in generate_calls) == sum(1 + i % 3 for i in range(8))
    for i, result in enumerate(results):  # each request got its own prompt's images, n of them
        assert len(result.data) == 1 + i % 3
        for item in result.data:
            image = open_png(base64.b64decode(item.b64_json))
            assert image.getpixel((0, 0)) == prompt_color(prompts[i])
    assert sorted(c["seed"] for c in pipe.calls[-2:]) == [0, 1]  # seeded requests ran alone, with their seed
    assert all(len(c["prompts"]) == 1 for c in pipe.calls[-2:])


def test_max_batch_one_makes_one_call_per_request():
    pipe = FakePipe(resolution=8, delay_s=0.02)
    app = create_app({"fake": pipe}, ServeOptions(max_batch=1, max_wait_ms=100))
    with ServerThread(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        results = concurrently(4, lambda i: client.images.generate(prompt=f"p{i}", size="8x8"))
    assert not any(isinstance(r, Exception) for r in results)
    assert len(pipe.calls) == 4


def test_full_queue_is_a_rate_limit_and_slow_requests_time_out():
    pipe = FakePipe(resolution=8, delay_s=0.6)
    app = create_app({"fake": pipe}, ServeOptions(max_batch=1, max_wait_ms=0, queue_size=1))
    with ServerThread(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        results = concurrently(4, lambda i: client.images.generate(prompt=f"p{i}", size="8x8"))
        limited = [r for r in results if isinstance(r, openai.RateLimitError)]
        assert limited, results
        assert limited[0].code == "rate_limit_exceeded"
        assert int(limited[0].response.headers["retry-after"]) >= 1
        assert any(not isinstance(r, Exception) for r in results)
    pipe = FakePipe(resolution=8, delay_s=1.0)
    app = create_app({"fake": pipe}, ServeOptions(timeout_s=0.2))
    with ServerThread(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError) as error:
            client.images.generate(prompt="slow", size="8x8")
        assert error.value.status_code == 503 and error.value.code == "timeout"


def test_api_key_and_gan_like_models(tmp_path):
    gan = FakePipe(resolution=8)
    app = create_app({"gan": gan}, ServeOptions(api_key="sk-test-0123456789", out=tmp_path / "files"))
    with ServerThread(app) as url:
        wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-wrong-key-000000", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as error:
            wrong.images.generate(prompt=PROMPT)
        assert error.value.code == "invalid_api_key" and "sk-wrong" not in str(error.value)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        assert raw(url, "GET", "/metrics")[0] == 401
        assert raw(url, "GET", "/healthz")[0] == 200
        assert raw(url, "GET", "/")[0] == 200
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-test-0123456789", max_retries=0)
        result = client.images.generate(prompt=PROMPT, size="256x256")
        status, _, data = fetch(result.data[0].url)  # file URLs need no key
        assert status == 200 and open_png(data).size == (256, 256)
        assert list((tmp_path / "files").iterdir())  # written into --out
        image = ("a.png", png_bytes(Image.new("RGBA", (8, 8))), "image/png")
        with pytest.raises(openai.BadRequestError) as error, pytest.warns(DeprecationWarning):
            client.images.create_variation(image=image)
        assert error.value.param == "model" and "variations" in error.value.message
        with pytest.raises(openai.BadRequestError) as error:
            client.images.edit(image=image, prompt=PROMPT)
        assert error.value.param == "model"
        with pytest.raises(openai.BadRequestError) as error:
            client.images.generate(prompt=PROMPT, extra_body={"steps": 4})
        assert error.value.param == "steps"
        assert raw(url, "GET", "/metrics", headers={"Authorization": "Bearer sk-test-0123456789"})[0] == 200


def test_file_store_names_and_expiry(tmp_path):
    store = FileStore(tmp_path, ttl_s=60)
    name = store.save(b"\x89PNG fake")
    assert store.path(name) == tmp_path / name
    (tmp_path / "keep.txt").write_text("not ours")
    for bad in ("../" + name, "keep.txt", name.upper(), name + "/", "", "." + name):
        assert store.path(bad) is None
    assert store.cleanup(now=time.time() + 30) == 0
    assert store.cleanup(now=time.time() + 120) == 1
    assert store.path(name) is None and (tmp_path / "keep.txt").exists()
    temporary = FileStore(None, ttl_s=1)
    temporary.close()
    assert not temporary.folder.exists()


# ------------------------------------------------------------------------------------------ the CLI
def test_serve_command(monkeypatch, capsys, tiny_unclip):
    import subprocess
    import sys

    import uvicorn

    from dalle2.cli import main

    light = subprocess.run(
        [sys.executable, "-c", "import sys; from dalle2.cli import build_parser; build_parser(); "
         "print(sorted(m for m in ('fastapi', 'uvicorn', 'torch') if m in sys.modules))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert light.stdout.strip() == "[]"  # `dalle2 --help` stays fast
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "--max-batch" in capsys.readouterr().out
    from dalle2 import pipeline

    with monkeypatch.context() as patch:  # an install without the bundled models
        patch.setattr(pipeline, "__file__", str(tiny_unclip / "missing" / "pipeline.py"))
        assert main(["serve"]) == 2
        assert "no model given and the bundled 'unclip' model is not in this install" in capsys.readouterr().err
    assert main(["serve", str(tiny_unclip / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["serve", str(tiny_unclip), "--default-size", "64x64"]) == 2
    assert "64x64" in capsys.readouterr().err

    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: started.update(app=app, **kwargs))
    monkeypatch.setenv("DALLE2_API_KEY", "from-env")
    argv = ["serve", str(tiny_unclip), str(tiny_unclip), "--port", "9999", "--max-batch", "4", "--default-size",
            "256x256"]  # fmt: skip
    assert main(argv) == 0
    app = started["app"]
    assert started["port"] == 9999 and started["host"] == "127.0.0.1"
    assert app.state.registry.ids() == ["dall-e-2", "unclip-tiny", "unclip-tiny-2"]
    assert app.state.options.api_key == "from-env" and app.state.options.max_batch == 4
    assert app.state.registry.get(None).default == 256
    app.state.files.close()

    started.clear()
    assert main(["serve", "--port", "9998"]) == 0  # no folder: the bundled unCLIP model
    assert started["app"].state.registry.ids() == ["dall-e-2", "unclip-shapes"]
    started["app"].state.files.close()
