"""Load test of ``dalle2 serve``: concurrent clients for a fixed time, with and without batching.

    OMP_NUM_THREADS=1 python benchmarks/serve_load.py [--model DIR] [--clients 16] [--seconds 20]

Without ``--model`` it serves the tests' tiny unCLIP model (built on the fly, ~10 s). For each
``--max-batch`` setting (default: 16, then 1 = no batching) it starts ``dalle2 serve`` as a subprocess,
runs ``--clients`` threads that each send text-to-image requests back to back (keep-alive, no seed, so
requests may be merged) for ``--seconds``, checks every response (status 200, ``n`` items, each a PNG of the
requested size) and reports images/s, p50/p99 latency, 5xx count, invalid responses, and the mean number of
images per model call (from ``/metrics``). Poisoned batches (issue 23): every ``--poison-every``-th request of
each client (default 8; 0: none) has a prompt that is not valid text (a lone surrogate, as a JSON escape), so
poisoned requests meet valid ones in the batcher; they must get a 400 while every valid request still gets its
images: the 5xx and invalid columns count valid requests only. Writes ``benchmarks/results/serve_load.{json,md}``.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from serve_harness import Server, machine, metric_sum, request, tiny_model

POISONED = ["a \ud800 circle", "a red \udcff circle", "\udc00\ud800"]  # JSON: "\\ud800" escapes
PROMPTS = ["a red circle", "a blue square above a green triangle", "two yellow stars", "a purple heart",
           "an orange cross left of a gray circle", "three green squares"]  # fmt: skip


def check(status: int, body: Any, n: int, size: int) -> bool:
    from PIL import Image

    if status != 200 or not isinstance(body, dict) or len(body.get("data", [])) != n:
        return False
    for item in body["data"]:
        data = base64.b64decode(item["b64_json"])
        if not data.startswith(b"\x89PNG\r\n\x1a\n"):
            return False
        with Image.open(io.BytesIO(data)) as image:
            if image.size != (size, size):
                return False
    return True


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def poison_refused(status: int, body: Any) -> bool:
    return status == 400 and isinstance(body, dict) and (body.get("error") or {}).get("param") == "prompt"


def run_load(port: int, clients: int, seconds: float, size: int, n: int, poison_every: int = 0) -> dict[str, Any]:
    records: list[tuple[float, int, bool]] = []  # valid requests: (latency, status, ok)
    poisoned: list[tuple[int, bool]] = []  # poisoned requests: (status, refused with a 400 on 'prompt')
    lock = threading.Lock()
    start_barrier = threading.Barrier(clients + 1)
    deadline: list[float] = []

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        start_barrier.wait()
        i = 0
        while time.monotonic() < deadline[0]:
            poison = poison_every > 0 and i % poison_every == poison_every - 1
            prompt = POISONED[(k + i) % len(POISONED)] if poison else PROMPTS[(k + i) % len(PROMPTS)]
            body = {"prompt": prompt, "n": n, "size": f"{size}x{size}", "response_format": "b64_json"}
            t = time.monotonic()
            try:
                status, _, parsed = request(port, "POST", "/v1/images/generations", json.dumps(body).encode(),
                                            {"Content-Type": "application/json"}, connection=conn)  # fmt: skip
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
                status, parsed = 0, None
            latency = time.monotonic() - t
            with lock:
                if poison:
                    poisoned.append((status, poison_refused(status, parsed)))
                else:
                    records.append((latency, status, check(status, parsed, n, size)))
            i += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    deadline.append(time.monotonic() + seconds)
    t0 = time.monotonic()
    start_barrier.wait()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    latencies = [r[0] for r in records if r[1] == 200]
    good = sum(1 for r in records if r[2])
    return {
        "requests": len(records),
        "ok": good,
        "invalid": len(records) - good,
        "status_5xx": sum(1 for r in records if r[1] >= 500),
        "connection_errors": sum(1 for r in records if r[1] == 0),
        "statuses": {str(s): sum(1 for r in records if r[1] == s) for s in sorted({r[1] for r in records})},
        "seconds": round(elapsed, 2),
        "images": good * n,
        "images_per_second": round(good * n / elapsed, 3),
        "requests_per_second": round(good / elapsed, 3),
        "latency_ms": {
            "p50": round(1000 * percentile(latencies, 0.5), 1),
            "p99": round(1000 * percentile(latencies, 0.99), 1),
            "mean": round(1000 * statistics.fmean(latencies), 1) if latencies else None,
        },
        "poisoned": {
            "requests": len(poisoned),
            "refused_400": sum(1 for _, refused in poisoned if refused),
            "status_5xx": sum(1 for status, _ in poisoned if status >= 500),
            "statuses": {str(s): sum(1 for r in poisoned if r[0] == s) for s in sorted({r[0] for r in poisoned})},
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="pipeline folder (default: the tiny test model, built on the fly)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--size", type=int, default=None, help="image side (default: the model's native output)")
    parser.add_argument("-n", type=int, default=1, help="images per request")
    parser.add_argument("--max-batch", type=int, nargs="+", default=[16, 1], help="settings to compare")
    parser.add_argument("--max-wait-ms", type=float, default=20.0)
    parser.add_argument("--poison-every", type=int, default=8, help="every Nth request is poisoned (0: none)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--name", default="serve_load")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dalle2-bench-") as tmp:
        model = Path(args.model) if args.model else tiny_model(Path(tmp) / "tiny")
        run(args, model)


def run(args: argparse.Namespace, model: Path) -> None:
    import dalle2

    size = args.size or dalle2.load(model).resolution
    runs = []
    for max_batch in args.max_batch:
        options = ["--max-batch", str(max_batch), "--max-wait-ms", str(args.max_wait_ms), "--queue-size", "256"]
        with Server([model], *options) as server:
            for _ in range(2):  # warm-up
                request(server.port, "POST", "/v1/images/generations",
                        json.dumps({"prompt": "warm up", "size": f"{size}x{size}"}).encode(),
                        {"Content-Type": "application/json"})  # fmt: skip
            before = request(server.port, "GET", "/metrics")[2].decode()
            result = run_load(server.port, args.clients, args.seconds, size, args.n, args.poison_every)
            after = request(server.port, "GET", "/metrics")[2].decode()
            calls = metric_sum(after, "dalle2_batch_images_count") - metric_sum(before, "dalle2_batch_images_count")
            made = metric_sum(after, "dalle2_batch_images_sum") - metric_sum(before, "dalle2_batch_images_sum")
            result["model_calls"] = int(calls)
            result["images_per_call"] = round(made / calls, 2) if calls else None
            result["healthy_after"] = request(server.port, "GET", "/healthz")[0] == 200 and server.alive
        runs.append({"max_batch": max_batch, **result})
        print(json.dumps(runs[-1]), flush=True)

    report = {"model": str(args.model or "tiny test model (16x16 decoder, 32x32 upsampler)"), "size": size,
              "n": args.n, "clients": args.clients, "seconds": args.seconds, "max_wait_ms": args.max_wait_ms,
              "poison_every": args.poison_every, "machine": machine(), "runs": runs}  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    poison_line = "Poisoned requests: none (--poison-every 0)."
    if args.poison_every:
        poison_line = (
            f"Poisoned requests: every {args.poison_every}th request of each client has a prompt that is not valid "
            "text (lone surrogates); requests, images/s, latency, 5xx and invalid count the valid requests only."
        )
    md = [
        "# dalle2 serve: load",
        "",
        f"Command: `python benchmarks/serve_load.py{' --model ' + args.model if args.model else ''} "
        f"--clients {args.clients} --seconds {args.seconds:g} --poison-every {args.poison_every}`",
        "",
        f"Model: {report['model']}; {size}x{size}, n={args.n} per request, {args.clients} concurrent clients "
        f"(keep-alive, no seed), {args.seconds:g} s per setting. Machine: {json.dumps(report['machine'])}.",
        "",
        poison_line,
        "",
        "| --max-batch | requests | images/s | p50 ms | p99 ms | images per model call | 5xx | invalid | poisoned: "
        "400 / sent | healthy |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        p = r["poisoned"]
        md.append(f"| {r['max_batch']} | {r['requests']} | {r['images_per_second']} | {r['latency_ms']['p50']} | "
                  f"{r['latency_ms']['p99']} | {r['images_per_call']} | {r['status_5xx']} | {r['invalid']} | "
                  f"{p['refused_400']} / {p['requests']} | {'yes' if r['healthy_after'] else 'NO'} |")  # fmt: skip
    (out / f"{args.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
