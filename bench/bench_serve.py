"""Load test of `steeldefect serve` on this machine (run by hand, not by pytest; loopback only, bounded).

    .venv/bin/python bench/bench_serve.py [--requests 2000] [--concurrency 1,4,16] [--model-dir models]
                                          [--images data/synthetic/train_images] [--n-images 64] [--max-batch 16]
                                          [--max-delay-ms 0] [--engine openvino|keras]

First, in this process: the engine's own time for one image (`predict_on_batch` on one preprocessed image, the median
and 99th percentile of 200, with the service's LATENCY hint) and `steeldefect predict`'s throughput on the same images
(the command's code path, the Predictor, once loaded; best of two passes over 256 of them). Then it starts the service
on 127.0.0.1 (a free port), waits until it is ready and, for each concurrency, sends `--requests` POST /predict requests
(raw image/jpeg bodies of the images in turn) from that many asyncio tasks over keep-alive httpx connections. It prints
per concurrency: p50 / p95 / p99 latency, throughput, errors (anything but 200), the server's RSS after the first 500
requests and at the end (growth between them) and throughput / `steeldefect predict`; then the same at the highest
concurrency (above 1) with batching off (--max-batch 1: what batching buys), the goals of issue 30 and the load average
before and after (others may be using the machine: compare figures of one run only). The last four columns come from
the service's own /metrics over each level: the mean ms a request spent in the service (request: from its arrival to
its answer) and decoding its image (decode, while the engine scores earlier requests), a batch in the worker (score:
engine and answers) and in the engine alone. Each answer's
Server-Timing header gives its own batch's engine time: the goal line sets the p99 latency at concurrency 1 against
the engine's median in the service over the same requests (the engine's speed differs between processes here by up to
a third), and gives the p99 of what the service adds to each request's engine call. The service is stopped with
SIGTERM and must exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
STEELDEFECT = Path(sys.executable).parent / "steeldefect"
HISTOGRAMS = {  # the service's histograms (serve/monitor.py) behind the table's last four columns
    "request": 'steeldefect_request_seconds_{}{{endpoint="predict"}}',
    "decode": "steeldefect_decode_seconds_{}",
    "score": "steeldefect_score_seconds_{}",
    "engine": "steeldefect_engine_seconds_{}",
}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def local_figures(model_dir: Path, files: list[str], engine: str | None) -> tuple[float, float, float]:
    """(the engine's median and 99th percentile seconds for one image, as the service runs it (OpenVINO's
    LATENCY hint), `steeldefect predict`'s images per second (the command's THROUGHPUT hint))."""
    import tensorflow as tf

    from steeldefect.preprocess import decode_and_preprocess
    from steeldefect.serve.predictor import Predictor

    p = Predictor(model_dir, engine=engine, hint="LATENCY")  # as the service's engine
    one = decode_and_preprocess(tf.constant(Path(files[0]).read_bytes()), p.image_size)[None].numpy()
    times = []
    for _ in range(201):
        start = time.perf_counter()
        p.model.predict_on_batch(one)
        times.append(time.perf_counter() - start)
    paths = (files * (256 // len(files) + 1))[:256]
    p, best = Predictor(model_dir, engine=engine), 0.0
    for _ in range(2):
        start = time.perf_counter()
        p.predict(paths)
        best = max(best, len(paths) / (time.perf_counter() - start))
    return float(np.median(times[1:])), float(np.percentile(times[1:], 99)), best


def start_service(model_dir: Path, log: Path, *args: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(STEELDEFECT), "serve", "--model-dir", str(model_dir), "--port", str(port), *args]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the service was not ready within 300 s:\n{log.read_text()[-3000:]}")


async def load(url: str, bodies: list[bytes], requests: int, concurrency: int, pid: int) -> dict:
    """Send `requests` POST /predict from `concurrency` tasks; latencies, errors, RSS after the first 500 and at
    the end, wall time."""
    import httpx

    latencies, engine, errors, sent, marks = [], [], 0, 0, {}
    first = min(500, requests // 4 or 1)

    async def worker(client):
        nonlocal errors, sent
        while sent < requests:
            i, sent = sent, sent + 1
            start = time.perf_counter()
            try:
                r = await client.post(f"{url}/predict", content=bodies[i % len(bodies)],
                                      headers={"Content-Type": "image/jpeg"})  # fmt: skip
                errors += r.status_code != 200
                engine.append(server_timing(r.headers.get("server-timing", "")).get("engine", np.nan))
            except httpx.HTTPError:
                errors += 1
                engine.append(np.nan)
            latencies.append(time.perf_counter() - start)
            if len(latencies) == first:
                marks["rss_first"] = rss_mib(pid)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ms = np.percentile(latencies, [50, 95, 99]) * 1000
    added = np.array(latencies) * 1000 - np.array(engine)  # what the service adds to its engine call, per request
    return {"p50": ms[0], "p95": ms[1], "p99": ms[2], "rate": requests / wall, "errors": errors,
            "rss_first": marks.get("rss_first", float("nan")), "rss_end": rss_mib(pid),
            "engine_p50": np.nanmedian(engine), "engine_p99": np.nanpercentile(engine, 99),
            "added_p99": np.nanpercentile(added, 99)}  # fmt: skip


def server_timing(header: str) -> dict[str, float]:
    """The ms of each part of a Server-Timing header ("engine;dur=41.2, score;dur=50.3, total;dur=52.0")."""
    parts = (part.split(";dur=") for part in header.split(", ") if ";dur=" in part)
    return {name: float(ms) for name, ms in parts}


def timings(url: str) -> dict[str, float]:
    """The sums and counts of the service's request, scoring and engine histograms (GET /metrics)."""
    import httpx

    lines = httpx.get(f"{url}/metrics", timeout=10).text.splitlines()
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in lines if line and not line.startswith("#"))}


def means(before: dict, after: dict) -> dict[str, float]:
    """Mean ms per request (request) and per request's decoding (decode), per batch scored (score: engine +
    answers) and per engine call, between two `timings`."""
    out = {}
    for key, name in HISTOGRAMS.items():
        total, count = (after.get(name.format(k), 0) - before.get(name.format(k), 0) for k in ("sum", "count"))
        out[key] = total / count * 1000 if count else float("nan")
    return out


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="per concurrency (default 2000)")
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated (default 1,4,16)")
    parser.add_argument("--model-dir", type=Path, default=Path("models"))
    parser.add_argument("--images", type=Path, default=Path("data/synthetic/train_images"))
    parser.add_argument("--n-images", type=int, default=64, help="distinct images sent in turn (default 64)")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-delay-ms", type=float, default=0.0)
    parser.add_argument("--engine", choices=("openvino", "keras"), default=None)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    files = sorted(str(p) for p in args.images.glob("*.jpg"))[: args.n_images]
    if not files or not (args.model_dir / "model_meta.json").is_file():
        print(f"skipped: needs .jpg images in {args.images} and an exported model in {args.model_dir}")
        return 0
    from PIL import Image

    sizes = {Image.open(f).size for f in files}
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    print(f"{len(files)} JPEGs of {', '.join(f'{w}x{h}' for w, h in sizes)}, {args.requests} requests per level")
    engine_s, engine_p99, predict_rate = local_figures(args.model_dir, files, args.engine)
    print(f"engine alone, one image: {engine_s * 1000:.1f} ms (p99 {engine_p99 * 1000:.1f} ms); steeldefect predict: "
          f"{predict_rate:.1f} img/s", flush=True)  # fmt: skip
    bodies = [Path(f).read_bytes() for f in files]
    engine = ["--engine", args.engine] if args.engine else []
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_serve.{os.getpid()}.log"
    runs = {}
    print(f"\n{'batch':>5} {'conc':>4} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'img/s':>6} {'x predict':>9} "
          f"{'errors':>6} {'RSS start':>9} {'@first':>7} {'end':>7} {'growth':>6} {'request':>7} {'decode':>7} "
          f"{'score':>7} {'engine':>7}", flush=True)  # fmt: skip
    for batch in (args.max_batch, 1) if levels[-1] > 1 else (args.max_batch,):  # one at a time: nothing to batch
        options = ["--max-batch", str(batch), "--max-delay-ms", str(args.max_delay_ms if batch > 1 else 0), *engine]
        proc, url = start_service(args.model_dir, log, *options)
        rss_start = rss_mib(proc.pid)
        for c in levels if batch > 1 else levels[-1:]:
            before = timings(url)
            r = asyncio.run(load(url, bodies, args.requests, c, proc.pid))
            r = runs[(batch, c)] = {**r, "rss_start": rss_start, **means(before, timings(url))}
            growth = (r["rss_end"] / r["rss_first"] - 1) * 100  # each row as soon as it is measured
            print(f"{batch:>5} {c:>4} {r['p50']:>7.1f} {r['p95']:>7.1f} {r['p99']:>7.1f} {r['rate']:>6.1f} "
                  f"{r['rate'] / predict_rate:>9.2f} {r['errors']:>6} {r['rss_start']:>9.0f} {r['rss_first']:>7.0f} "
                  f"{r['rss_end']:>7.0f} {growth:>5.1f}% {r['request']:>7.1f} {r['decode']:>7.1f} {r['score']:>7.1f} "
                  f"{r['engine']:>7.1f}",
                  flush=True)  # fmt: skip
        code = stop(proc)
        if code != 0:
            print(f"warning: the service exited {code} after SIGTERM (expected 0); see {log}")
    top = runs[(args.max_batch, levels[-1])]
    if (1, levels[-1]) in runs:
        print(f"\nbatching at concurrency {levels[-1]}: {top['rate'] / runs[(1, levels[-1])]['rate']:.2f}x the "
              f"throughput of --max-batch 1")  # fmt: skip
    if (args.max_batch, 1) in runs:
        one = runs[(args.max_batch, 1)]
        print(f"goal p99 at concurrency 1 <= 1.3x the engine's one-image time: {one['p99'] / (engine_s * 1000):.2f}x "
              f"the engine timed in this process before (its own p99: {engine_p99 / engine_s:.2f}x); "
              f"{one['p99'] / one['engine_p50']:.2f}x the engine's median in the service over the same requests "
              f"(its own p99 there: {one['engine_p99'] / one['engine_p50']:.2f}x); the service's p99 addition to "
              f"each request's engine call: {one['added_p99']:.1f} ms = {one['added_p99'] / one['engine_p50']:.2f}x "
              f"that median")  # fmt: skip
    print(f"goal throughput at concurrency {levels[-1]} >= 0.9x steeldefect predict: {top['rate'] / predict_rate:.2f}x")
    print(f"errors: {sum(r['errors'] for r in runs.values())} in {len(runs) * args.requests} requests")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
