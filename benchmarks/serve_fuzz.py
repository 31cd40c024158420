"""Fuzz ``dalle2 serve`` with malformed requests: it must never answer 5xx, and must stay healthy.

    OMP_NUM_THREADS=1 python benchmarks/serve_fuzz.py [--model DIR] [--seed 0] [--random 300]

Without ``--model`` it serves the tests' tiny unCLIP model (built on the fly). Sends every JSON field of a
generation request a catalogue of wrong values, random JSON documents and random bytes under every content
type, mutated multipart uploads (bit flips, truncation, repeated parts, decompression-bomb headers, PNGs of
every Pillow mode), odd paths and methods, and broken HTTP framing (raw sockets). Then poisoned batches
(issue 23): rounds of concurrent valid requests (odd but valid text among them: NUL, right-to-left, combining
marks, 1,000 characters) sent together with one or two poisoned ones (lone surrogates, as JSON escapes), so
they meet in the batcher; every valid request must get its image and every poisoned one a 400.
Checks: no 5xx, every error answered by the app has the OpenAI error body, ``/healthz`` answers and a valid
request still works at the end. Writes ``benchmarks/results/serve_fuzz.{json,md}``.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import socket
import tempfile
import threading
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

from serve_harness import Server, machine, multipart, request, tiny_model

ROUTES = ("/v1/images/generations", "/v1/images/edits", "/v1/images/variations")
FIELDS = ("prompt", "model", "n", "size", "response_format", "quality", "style", "user", "stream", "seed", "steps",
          "guidance", "background", "output_format", "partial_images", "mystery")  # fmt: skip
VALUES: list[Any] = [None, True, False, 0, -1, 1, 11, 1.5, 2**64, -(2**63), 1e308, float("nan"), "", " ", "x" * 5000,
                     "💥\u0000", "256x256", "1024X1024", "dall-e-2", "url", "b64_json", [], {}, [1, 2], {"a": 1},
                     "true", "NaN"]  # fmt: skip
CONTENT_TYPES = (None, "application/json", "multipart/form-data", "multipart/form-data; boundary=zz",
                 "application/x-www-form-urlencoded", "text/plain", "image/png",
                 "application/json; charset=utf-16")  # fmt: skip


def png(mode: str, size: int = 32, **save: Any) -> bytes:
    from PIL import Image

    image = Image.new(mode, (size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save)
    return buffer.getvalue()


def bomb(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 6, 0, 0, 0])
    idat = zlib.compress(b"\0" * 65536)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 4 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([rng.randint(-(2**70), 2**70), rng.randint(-3, 12)])
    if kind == 3:
        return rng.choice([rng.uniform(-1e6, 1e6), 0.5, -0.0])
    if kind == 4:
        return "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(0, 40)))
    if kind == 5:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = list(FIELDS) + ["", "prompt ", "__proto__"]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randrange(6))}


def cases(rng: random.Random, random_count: int) -> list[tuple[str, str, str, dict[str, str], bytes]]:
    """(category, method, path, headers, body)."""
    out = []
    json_ct = {"Content-Type": "application/json"}
    gen = "/v1/images/generations"
    for field in FIELDS:
        for value in VALUES:
            body = {"prompt": "a red circle", "size": "16x16", field: value}
            out.append(("json-field", "POST", gen, json_ct, json.dumps(body).encode()))
    for _ in range(random_count):
        out.append(("json-random", "POST", gen, json_ct, json.dumps(random_json(rng)).encode()))
    for route in ROUTES:
        for content_type in CONTENT_TYPES:
            for _ in range(4):
                body = rng.randbytes(rng.choice([0, 1, 17, 600, 70_000]))
                headers = {"Content-Type": content_type} if content_type else {}
                out.append(("random-bytes", "POST", route, headers, body))
    image = png("RGBA")
    hole = bytearray(image)
    modes = ["1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16", "F"]
    for route in ("/v1/images/variations", "/v1/images/edits"):
        fields = {"prompt": "a red circle", "size": "16x16"} if route.endswith("edits") else {"size": "16x16"}
        for mode in modes:
            try:
                data = png(mode)
            except (OSError, ValueError):
                continue
            body, ct = multipart(fields, [("image", "a.png", data)])
            out.append(("png-modes", "POST", route, {"Content-Type": ct}, body))
            body, ct = multipart(fields, [("image", "a.png", image), ("mask", "m.png", data)])
            out.append(("png-modes", "POST", route, {"Content-Type": ct}, body))
        body, ct = multipart(fields, [("image", "a.png", png("RGBA", optimize=True))])
        out.append(("png-modes", "POST", route, {"Content-Type": ct}, body))
        for _ in range(40):
            flipped = bytearray(hole)
            for _ in range(rng.randrange(1, 8)):
                flipped[rng.randrange(8, len(flipped))] ^= 1 << rng.randrange(8)
            body, ct = multipart(fields, [("image", "a.png", bytes(flipped))])
            out.append(("png-bitflip", "POST", route, {"Content-Type": ct}, body))
        for dims in ((0, 0), (1, 2**31 - 1), (2**31 - 1, 2**31 - 1), (65535, 65535), (4097, 4097), (5000, 1)):
            body, ct = multipart(fields, [("image", "a.png", bomb(*dims))])
            out.append(("png-bomb", "POST", route, {"Content-Type": ct}, body))
        valid, ct = multipart(fields, [("image", "a.png", image)])
        for _ in range(30):
            cut = rng.randrange(len(valid))
            out.append(("multipart-truncated", "POST", route, {"Content-Type": ct}, valid[:cut]))
            mutated = bytearray(valid)
            for _ in range(rng.randrange(1, 20)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            out.append(("multipart-mutated", "POST", route, {"Content-Type": ct}, bytes(mutated)))
        for files in ([("image", "a.png", image)] * 5, [("mask", "m.png", image)], [("prompt", "p.png", image)],
                      [("image[]", "a.png", image), ("image", "b.png", image)]):  # fmt: skip
            body, ct = multipart(fields, files)
            out.append(("multipart-shape", "POST", route, {"Content-Type": ct}, body))
        body, ct = multipart({**fields, **{f"f{i}": "x" for i in range(100)}}, [("image", "a.png", image)])
        out.append(("multipart-shape", "POST", route, {"Content-Type": ct}, body))
        body, ct = multipart({**fields, "n": "9" * 100}, [("image", "a.png", image)])
        out.append(("multipart-shape", "POST", route, {"Content-Type": ct}, body))
    paths = ["/v1/files/../../etc/passwd", "/v1/files/..%2F..%2Fetc%2Fpasswd", "/v1/files/%2e%2e%2f%2e%2e",
             "/v1/files/" + "a" * 32 + ".png", "/v1/files/%00", "/v1/files/" + "../" * 50, "/" + "x" * 8000,
             "/v1/models/%ff%fe", "/v1/models/%F0%9F%92%A5", "/v1//images/generations", "/v1/images/generations?x=1",
             "/static/../../pyproject.toml", "/static/%2e%2e/app.py", "/metrics?format=json", "/docs/../openapi.json",
             "//etc/passwd", "/v1/models/dall-e-2/../../healthz"]  # fmt: skip
    for path in paths:
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"):
            out.append(("paths-methods", method, path, {}, b""))
    for route in (*ROUTES, "/v1/models", "/v1/models/dall-e-2", "/healthz", "/metrics", "/"):
        for method in ("PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE"):
            out.append(("paths-methods", method, route, {}, b""))
    for auth in ("Bearer", "Bearer ", "Basic abc", "Bearer " + "k" * 5000, "bearer \u00ff"):
        body = json.dumps({"prompt": "a red circle", "size": "16x16"}).encode()
        out.append(("headers", "POST", gen, {**json_ct, "Authorization": auth}, body))
    return out


POISONED = ["a \ud800 circle", "a red \udcff circle", "\udc00\ud800", "two stars \udfff"]  # JSON: "\\ud800" escapes
ODD_BUT_VALID = ["a red circle", "a red circle \x00", "\u202ea blue square", "a re\u0301d circle",
                 "a green \u2028 triangle", "two yellow stars " * 58 + "ok"]  # fmt: skip


def _send(port: int, prompt: str, results: list[Any], i: int) -> None:
    body = json.dumps({"prompt": prompt, "size": "16x16", "response_format": "b64_json"}).encode()
    try:
        results[i] = request(port, "POST", "/v1/images/generations", body, {"Content-Type": "application/json"})
    except OSError as error:
        results[i] = (0, {}, str(error))


def poisoned_batches(port: int, rounds: int, rng: random.Random) -> dict[str, Any]:
    """Rounds of 6 valid + 1-2 poisoned generation requests sent at once (one connection each)."""
    valid: Counter[str] = Counter()
    poisoned: Counter[str] = Counter()
    failures: list[dict[str, Any]] = []
    for _ in range(rounds):
        batch = [(False, rng.choice(ODD_BUT_VALID)) for _ in range(6)]
        for _ in range(rng.choice([1, 2])):
            batch.insert(rng.randrange(len(batch) + 1), (True, rng.choice(POISONED)))
        results: list[Any] = [None] * len(batch)
        threads = [threading.Thread(target=_send, args=(port, p, results, i)) for i, (_, p) in enumerate(batch)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for (is_poison, prompt), (status, _, body) in zip(batch, results, strict=True):
            if is_poison:
                poisoned[str(status)] += 1
                good = status == 400 and is_error_body(body) and body["error"]["param"] == "prompt"
            else:
                valid[str(status)] += 1
                good = status == 200 and isinstance(body, dict) and len(body.get("data", [])) == 1
            if not good and len(failures) < 20:
                failures.append({"category": "poisoned-batch", "poisoned": is_poison, "prompt": ascii(prompt)[:80],
                                 "status": status, "body": str(body)[:300]})  # fmt: skip
    return {
        "rounds": rounds,
        "valid_statuses": dict(sorted(valid.items())),
        "poisoned_statuses": dict(sorted(poisoned.items())),
        "valid_5xx": sum(n for s, n in valid.items() if int(s) >= 500),
        "valid_ok": valid.get("200", 0),
        "valid_requests": sum(valid.values()),
        "failures": failures,
    }


RAW_FRAMES = [
    b"GARBAGE\r\n\r\n",
    b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcde",
    b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 3\r\n\r\n"
    b'{"prompt": "a"}',
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n",
    b"GET /healthz HTTP/9.9\r\n\r\n",
    b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    b'{"prompt"',  # shorter than announced: the client gives up
]


def send_raw(port: int, frame: bytes) -> int:
    """The status of the first response to a raw frame (0: none before the connection closed or timed out)."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        try:
            sock.sendall(frame)
            data = sock.recv(65536)
        except (TimeoutError, ConnectionError):
            return 0
    if not data.startswith(b"HTTP/"):
        return 0
    return int(data.split(b" ", 2)[1])


def is_error_body(body: Any) -> bool:
    return (isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], dict)
            and set(body["error"]) == {"message", "type", "param", "code"})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="pipeline folder (default: the tiny test model, built on the fly)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--random", type=int, default=300, help="random JSON documents")
    parser.add_argument("--poison-rounds", type=int, default=10, help="rounds of poisoned batches")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--name", default="serve_fuzz")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dalle2-bench-") as tmp:
        model = Path(args.model) if args.model else tiny_model(Path(tmp) / "tiny")
        run(args, model)


def run(args: argparse.Namespace, model: Path) -> None:
    rng = random.Random(args.seed)
    todo = cases(rng, args.random)
    statuses: Counter[int] = Counter()
    by_category: dict[str, Counter[str]] = {}
    failures: list[dict[str, Any]] = []
    start = time.monotonic()
    with Server([model], "--timeout-s", "60", "--max-wait-ms", "50") as server:
        for category, method, path, headers, body in todo:
            try:
                status, _, parsed = request(server.port, method, path, body, headers, timeout=60)
            except OSError as error:
                status, parsed = 0, str(error)
            statuses[status] += 1
            by_category.setdefault(category, Counter())[str(status)] += 1
            bad = status >= 500 or status == 0 or (status >= 400 and method != "HEAD" and not is_error_body(parsed))
            if bad and len(failures) < 50:
                failures.append({"category": category, "method": method, "path": path[:100], "status": status,
                                 "body": str(parsed)[:300], "request": body[:200].decode("latin-1")})  # fmt: skip
        poison = poisoned_batches(server.port, args.poison_rounds, rng)
        failures += poison.pop("failures")
        raw = Counter()
        for frame in RAW_FRAMES:
            status = send_raw(server.port, frame)
            raw[status] += 1
            if status >= 500:
                failures.append({"category": "raw-framing", "status": status, "request": frame[:120].decode()})
        healthy = request(server.port, "GET", "/healthz")[0] == 200 and server.alive
        check = request(server.port, "POST", "/v1/images/generations", b'{"prompt": "a red circle", "n": 2}',
                        {"Content-Type": "application/json"})  # fmt: skip
        works = check[0] == 200 and len(check[2]["data"]) == 2
    seconds = time.monotonic() - start
    report = {
        "model": str(args.model or "tiny test model"),
        "seed": args.seed,
        "requests": len(todo),
        "raw_frames": len(RAW_FRAMES),
        "seconds": round(seconds, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "raw_frame_statuses": {str(k): v for k, v in sorted(raw.items())},
        "by_category": {k: dict(sorted(v.items())) for k, v in by_category.items()},
        "status_5xx": sum(v for k, v in statuses.items() if k >= 500)
        + sum(v for k, v in raw.items() if k >= 500)
        + poison["valid_5xx"]
        + sum(n for k, n in poison["poisoned_statuses"].items() if int(k) >= 500),
        "poisoned_batches": poison,
        "failures": failures,
        "healthy_after": healthy,
        "valid_request_after": works,
        "machine": machine(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    md = [
        "# dalle2 serve: fuzz",
        "",
        f"Command: `python benchmarks/serve_fuzz.py --seed {args.seed} --random {args.random} "
        f"--poison-rounds {args.poison_rounds}`",
        "",
        f"{len(todo)} malformed HTTP requests + {len(RAW_FRAMES)} broken raw frames in {seconds:.0f} s against "
        f"{report['model']}. **5xx: {report['status_5xx']}**, requests without a proper answer (no response, or "
        f"an error without the OpenAI error body): {len(failures)}. Healthy afterwards: "
        f"{'yes' if healthy else 'NO'}; a valid request afterwards: {'works' if works else 'FAILS'}.",
        "",
        "| category | statuses |",
        "|---|---|",
        *(f"| {k} | {', '.join(f'{s}: {n}' for s, n in v.items())} |" for k, v in report["by_category"].items()),
        f"| raw framing (h11) | {', '.join(f'{s}: {n}' for s, n in report['raw_frame_statuses'].items())} |",
        "",
        "(0 in raw framing: no response before the client gave up, as for a body shorter than its Content-Length.)",
        "",
        f"Poisoned batches: {poison['rounds']} rounds of 6 valid requests (odd but valid text among them) sent "
        f"at once with 1-2 requests whose prompt is not valid text (lone surrogates). Valid requests: "
        f"{poison['valid_ok']} of {poison['valid_requests']} got their image, **5xx: {poison['valid_5xx']}** "
        f"(statuses {poison['valid_statuses']}); poisoned requests: statuses {poison['poisoned_statuses']}.",
    ]
    (out / f"{args.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    if failures:
        print(json.dumps(failures[:10], indent=2))


if __name__ == "__main__":
    main()
