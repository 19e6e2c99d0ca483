"""A bounded load test of ``effens serve`` on 127.0.0.1, beside offline ``effens predict``.

    python scripts/benchmark_serve.py --run runs/demo --images data/demo/test --out serve.json

1. ``effens predict`` over the images as one whole process: offline img/s.
2. A real server (``effens serve RUN`` on a free loopback port), then single-image requests
   from client threads at concurrency 1, 8 and 32 (a bounded number each; the last run
   ``--requests`` long): img/s, p50/p95/p99 latency, failed requests, the server's RSS
   before and after, and its batch sizes (from ``/metrics``).

The clients run on the same machine as the server: on a small CPU they take part of it.
Results (with the machine and its CPU flags) go to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from bench_common import machine, report_json  # noqa: E402

from ensemble.data import expand_inputs  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _post(url: str, name: str, data: bytes) -> tuple[int, float]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            ok = r.status == 200 and not json.loads(r.read())["results"][0]["error"]
    except (urllib.error.URLError, OSError, ValueError):
        ok = False
    return (200 if ok else 0), time.perf_counter() - t0


def _load(url: str, files: list[tuple[str, bytes]], concurrency: int, n: int) -> dict:
    items = [files[i % len(files)] for i in range(n)]
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        got = list(pool.map(lambda f: _post(url, *f), items))
    wall = time.perf_counter() - t0
    lat = sorted(s for _, s in got)
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000  # noqa: E731
    return {
        "concurrency": concurrency,
        "requests": n,
        "failed": sum(1 for c, _ in got if c != 200),
        "img_s": n / wall,
        "wall_s": wall,
        "p50_ms": q(0.50),
        "p95_ms": q(0.95),
        "p99_ms": q(0.99),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--images", required=True, help="a folder (recursive) of photos")
    ap.add_argument("--requests", type=int, default=2000, help="requests of each concurrency-32 run (two)")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    paths = expand_inputs([args.images])
    files = [(Path(p).name, Path(p).read_bytes()) for p in paths]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "ensemble",
                "predict",
                args.run,
                args.images,
                "--out",
                str(Path(tmp) / "p.csv"),
                "-q",
            ],
            check=True,
        )
        offline_s = time.perf_counter() - t0
    offline = {
        "images": len(paths),
        "wall_s": offline_s,
        "img_s": len(paths) / offline_s,
        "per_image_ms": 1000 * offline_s / len(paths),
    }
    print(
        f"offline effens predict: {len(paths)} images in {offline_s:.1f} s = {offline['img_s']:.1f} img/s", flush=True
    )

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ensemble",
            "serve",
            args.run,
            "--port",
            str(port),
            "--max-batch",
            str(args.max_batch),
            "--max-wait-ms",
            str(args.max_wait_ms),
            "-q",
        ]
    )
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit(f"the server exited with {server.returncode}")
            try:
                if urllib.request.urlopen(url + "/v1/ready", timeout=5).status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        ready_s = time.perf_counter() - t0
        rss_before = _rss_mb(server.pid)
        runs = []
        # the last load repeats the first concurrency-32 one: RSS after each shows growth that stops
        # (buffers for each batch size, allocated once) apart from growth that goes on (a leak)
        for concurrency, n in (
            (1, min(200, args.requests)),
            (8, min(800, args.requests)),
            (32, args.requests),
            (32, args.requests),
        ):
            r = _load(url + "/v1/predict", files, concurrency, n)
            r["rss_mb_after"] = _rss_mb(server.pid)
            runs.append(r)
            print(
                f"concurrency {concurrency:>2}: {n} requests, {r['failed']} failed, {r['img_s']:.1f} img/s, "
                f"p50 {r['p50_ms']:.0f} ms, p95 {r['p95_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, "
                f"server RSS {r['rss_mb_after']:.0f} MB",
                flush=True,
            )
        rss_after = _rss_mb(server.pid)
        metrics = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
        batches = {
            int(line.split('size="')[1].split('"')[0]): int(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("effens_batch_size_total{")
        }
    finally:
        server.terminate()
        code = server.wait(60)
    c32, c1 = runs[2], runs[0]
    doc = {
        "run": args.run,
        "images": args.images,
        "offline": offline,
        "server_ready_s": ready_s,
        "load": runs,
        "rss_mb": {"before": rss_before, "after": rss_after},
        "batch_sizes": batches,
        "server_exit": code,
        "targets": {
            "c32_vs_offline": c32["img_s"] / offline["img_s"],
            "c1_p50_minus_offline_per_image_ms": c1["p50_ms"] - offline["per_image_ms"],
        },
        "machine": machine(),
    }
    print(
        f"concurrency 32 / offline: {doc['targets']['c32_vs_offline']:.2f}x; concurrency-1 p50 - offline per "
        f"image: {doc['targets']['c1_p50_minus_offline_per_image_ms']:+.0f} ms; RSS {rss_before:.0f} -> "
        f"{rss_after:.0f} MB; server exit {code}"
    )
    report_json(doc, args.out)


if __name__ == "__main__":
    main()
