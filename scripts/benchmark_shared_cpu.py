"""effens on a CPU it shares: whole processes idle, beside one busy core and beside two.

    python scripts/benchmark_shared_cpu.py --out shared_cpu.json [--quick]

Three workloads, each a whole process (start-up included), as a user meets them:
``train`` (one Lite0 member, 2 epochs at 128 px on the shipped demo data), ``predict``
(that run over the 90 demo test photos) and ``serve`` (that run behind ``effens serve`` on a
free loopback port, 30 single-photo requests one after another). Each runs under three
loads, started beside it and stopped after it:

- ``idle``: nothing else;
- ``one``: a single-threaded torch process training a small CNN (one core busy, as a
  tester's process);
- ``both``: a two-threaded torch process training the same CNN (both cores busy, with
  libgomp's default spin-waiting, as any other torch program).

and OpenMP wait policies for effens itself (``--policies``): ``spin``
(``GOMP_SPINCOUNT=300000``, what libgomp does when nothing is set: effens before issue #41
item 13), ``default`` (what effens now sets for itself when the user sets neither
``OMP_WAIT_POLICY`` nor ``GOMP_SPINCOUNT``), ``passive`` (``OMP_WAIT_POLICY=PASSIVE``: sleep at
once) and ``short`` (``GOMP_SPINCOUNT=10000``: spin briefly, then sleep). The trained weights' SHA-256 is recorded under every load and policy:
it must be one value (the load never changes a number).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench_common import machine, report_json  # noqa: E402

LOAD_CODE = """
import torch, torch.nn as nn
torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
opt = torch.optim.SGD(net.parameters(), lr=0.01)
x, y = torch.randn(16, 3, 64, 64), torch.randint(0, 10, (16,))
while True:
    opt.zero_grad(); nn.functional.cross_entropy(net(x), y).backward(); opt.step()
"""

POLICIES = {
    "spin": {"GOMP_SPINCOUNT": "300000"},
    "default": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "short": {"GOMP_SPINCOUNT": "10000"},
}
LOADS = {"idle": None, "one": "1", "both": "2"}


def _env(policy: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(POLICIES[policy])
    env["PYTHONPATH"] = str(ROOT)
    return env


def _start_load(threads: str | None) -> subprocess.Popen | None:
    if threads is None:
        return None
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["OMP_NUM_THREADS"] = threads
    proc = subprocess.Popen([sys.executable, "-c", LOAD_CODE], env=env)
    time.sleep(3.0)  # let it import torch and start stepping
    return proc


def _effens(*argv: str) -> list[str]:
    return [sys.executable, "-m", "ensemble", *argv]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, path: Path) -> None:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{path.name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    with urllib.request.urlopen(req, timeout=300) as r:
        r.read()


def _serve(run: Path, photos: list[Path], env: dict, requests: int) -> float:
    """Seconds from starting ``effens serve`` to the last of ``requests`` answers."""
    port = _free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(_effens("serve", str(run), "--port", str(port), "-q"), env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600
        while True:
            try:
                urllib.request.urlopen(base + "/v1/ready", timeout=5).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("effens serve did not start")
                time.sleep(0.2)
        for i in range(requests):
            _post(base + "/v1/predict", photos[i % len(photos)])
        return time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _config(work: Path, epochs: int) -> Path:
    import yaml

    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    member = demo["members"][0]
    member["image_size"] = 128
    member["train"]["epochs"] = epochs
    cfg = {
        "seed": 0,
        "data": {k: str(ROOT / v) for k, v in demo["data"].items()},
        "members": [member],
        "combiner": {"strategy": "soft"},
    }
    path = work / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _one(work: Path, policy: str, load: str, epochs: int, requests: int) -> dict:
    env = _env(policy)
    run = work / f"run-{policy}-{load}"
    loader = _start_load(LOADS[load])
    try:
        train_s = _timed(_effens("train", str(_config(work, epochs)), "--out", str(run), "-q"), env)
        test = ROOT / "data" / "demo" / "test"
        predict_s = _timed(
            _effens("predict", str(run), str(test), "--out", str(work / f"p-{policy}-{load}.csv"), "-q"), env
        )
        serve_s = _serve(run, sorted(test.rglob("*.jpg")), env, requests)
    finally:
        if loader is not None:
            loader.kill()
            loader.wait()
    weights = next(run.glob("members/*/model.safetensors"))
    return {
        "policy": policy,
        "load": load,
        "train_s": round(train_s, 1),
        "predict_s": round(predict_s, 1),
        "serve_s": round(serve_s, 1),
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="write the figures here as JSON")
    p.add_argument("--loads", default="idle,one,both")
    p.add_argument("--policies", default="spin,default")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--requests", type=int, default=30)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for load in args.loads.split(","):
            for policy in args.policies.split(","):  # side by side under each load
                rows.append(_one(Path(tmp), policy, load, args.epochs, args.requests))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    digests = {r["weights_sha256"] for r in rows}
    report_json(
        {
            "machine": machine(),
            "rows": rows,
            "same_weights_everywhere": len(digests) == 1,
            "command": " ".join(sys.argv),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
