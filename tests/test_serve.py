"""`effens serve` (issue #26): a real uvicorn server on a free loopback port, called over
HTTP: the same answers as `effens predict`, batching under concurrency, every limit, the
API key, SIGTERM, and the upload page in headless Chromium."""

import base64
import concurrent.futures
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="`effens serve` needs FastAPI: pip install 'effens[serve]'")
pytest.importorskip("uvicorn", reason="`effens serve` needs uvicorn: pip install 'effens[serve]'")

from synth import Server  # noqa: E402
from synth import http_get as _get  # noqa: E402
from synth import http_post as _post  # noqa: E402


@pytest.fixture(scope="module")
def server(trained):
    _, run = trained
    srv = Server(run, "--max-files", "4", "--max-body-mb", "1", "--max-wait-ms", "150", "--review-rate", "0.2")
    yield srv
    srv.stop()


def _images(tiny_data, n=6):
    return sorted((tiny_data / "test").rglob("*.png"))[:n]


def test_answers_equal_effens_predict_on_the_same_files(server, trained, tiny_data, tmp_path):
    from ensemble.cli import main

    _, run = trained
    paths = _images(tiny_data, 4)
    out = tmp_path / "p.json"
    assert main(["predict", str(run), *map(str, paths), "--out", str(out), "--review-rate", "0.2", "-q"]) == 0
    want = json.loads(out.read_text())
    code, got = _post(server.url + "/v1/predict", [("files", p.name, p.read_bytes()) for p in paths])
    assert code == 200, got
    assert [r["file"] for r in got["results"]] == [p.name for p in paths]
    for w, g in zip(want, got["results"]):
        assert g["prediction"] == w["prediction"] and g["votes"] == w["votes"] and g["decision"] == w["decision"]
        assert g["error"] == "" and sorted(g["proba"]) == sorted(w["proba"])
        np.testing.assert_allclose([g["proba"][c] for c in w["proba"]], list(w["proba"].values()), atol=1e-6)


def test_health_model_docs_and_metrics(server, trained):
    assert _get(server.url + "/v1/health") == (200, b'{"status":"ok"}')
    code, body = _get(server.url + "/v1/model")
    card = json.loads(body)
    assert code == 200 and card["classes"] == ["circle", "square", "stripes"] and card["members"] == ["a", "b", "c"]
    assert card["runtime"] in ("openvino", "torch") and len(card["weights_sha256"]) == 3
    assert card["decisions"] == ["decision"]
    code, body = _get(server.url + "/docs")
    assert code == 200 and b"swagger" in body.lower()
    code, body = _get(server.url + "/openapi.json")
    assert code == 200 and "/v1/predict" in json.loads(body)["paths"]
    code, body = _get(server.url + "/metrics")
    text = body.decode()
    assert code == 200 and "# TYPE effens_request_seconds histogram" in text and "effens_images_total" in text


def test_concurrent_requests_are_batched(server, tiny_data):
    data = [(p.name, p.read_bytes()) for p in _images(tiny_data, 8)]

    def one(item):
        return _post(server.url + "/v1/predict", [("files", *item)])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, data))
    assert all(code == 200 and r["results"][0]["error"] == "" for code, r in answers)
    text = _get(server.url + "/metrics")[1].decode()
    sizes = {
        int(line.split('size="')[1].split('"')[0]): int(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("effens_batch_size_total{")
    }
    assert max(sizes) > 1, sizes  # 8 requests within 150 ms shared forward passes


def _png(w, h):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (120, 30, 200)).save(buf, "PNG")
    return buf.getvalue()


def test_every_malformed_request_is_a_json_4xx_and_the_server_keeps_serving(server, tiny_data):
    good = _images(tiny_data, 1)[0]
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(jpeg, "JPEG")
    cases = [
        ("empty body", dict(body=b""), 400),
        ("no multipart", dict(body=b'{"files": 1}', content_type="application/json"), 415),
        ("wrong field", dict(files=[("image", "x.png", good.read_bytes())]), 400),
        ("a text file", dict(files=[("files", "notes.txt", b"hello, not a photo")]), 422),
        ("truncated JPEG", dict(files=[("files", "cut.jpg", jpeg.getvalue()[:60])]), 422),
        ("1 x 100000 PNG", dict(files=[("files", "thin.png", _png(1, 100000))]), 422),
        ("5 files", dict(files=[("files", good.name, good.read_bytes())] * 5), 413),
    ]
    # a body over the limit is refused from its Content-Length, before it is sent (Expect: 100-continue)
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.putrequest("POST", "/v1/predict")
    conn.putheader("Content-Type", "multipart/form-data; boundary=x")
    conn.putheader("Content-Length", str(2 * 1024 * 1024))
    conn.putheader("Expect", "100-continue")
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and "over the limit" in json.loads(resp.read())["error"]
    conn.close()
    code, body = _post(server.url + "/v1/predict", files=[("files", good.name, good.read_bytes())] * 7)
    assert code == 413 and body["error"] == "more than 4 images in one request", body
    for what, kwargs, status in cases:
        code, body = _post(server.url + "/v1/predict", **kwargs)
        assert code == status, (what, code, body)
        assert isinstance(body["error"], str) and "\n" not in body["error"] and "Traceback" not in body["error"], what
        ok, answer = _post(server.url + "/v1/predict", [("files", good.name, good.read_bytes())])
        assert ok == 200 and answer["results"][0]["prediction"], what
    # one unreadable image among good ones: the others are still answered
    code, body = _post(
        server.url + "/v1/predict", [("files", "notes.txt", b"text"), ("files", good.name, good.read_bytes())]
    )
    assert code == 200 and body["results"][0]["error"] and body["results"][1]["prediction"]
    assert _get(server.url + "/v1/nothing-here")[0] == 404


def test_api_key_and_sigterm(trained, tiny_data, tmp_path):
    _, run = trained
    key = tmp_path / "key.txt"
    key.write_text("s3cret-key\n")
    srv = Server(run, "--api-key-file", str(key))
    try:
        good = _images(tiny_data, 1)[0]
        files = [("files", good.name, good.read_bytes())]
        assert _post(srv.url + "/v1/predict", files)[0] == 401
        assert _post(srv.url + "/v1/predict", files, {"X-API-Key": "wrong"})[0] == 401
        assert _get(srv.url + "/v1/model")[0] == 401
        assert _post(srv.url + "/v1/predict", files, {"X-API-Key": "s3cret-key"})[0] == 200
        assert _post(srv.url + "/v1/predict", files, {"Authorization": "Bearer s3cret-key"})[0] == 200
        assert _get(srv.url + "/v1/health")[0] == 200  # health stays open for the orchestrator
    finally:
        assert srv.stop() == 0  # SIGTERM: a clean exit


def test_bad_serve_arguments_are_one_line(trained, tmp_path):
    _, run = trained
    done = subprocess.run(
        [sys.executable, "-m", "ensemble", "serve", str(run), "--api-key-file", str(tmp_path / "absent.txt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "absent.txt: cannot read the API key file" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "ensemble", "serve", str(run), "--port", "70000"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "must be a TCP port, 1-65535; got 70000" in done.stderr
    with socket.socket() as taken:  # a port another process listens on: one line before the warm-up
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "ensemble", "serve", str(run), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"--host/--port: 127.0.0.1:{port} is in use; choose another `--port`" in done.stderr
    assert "inference on" not in done.stderr  # refused before any member was loaded


def test_create_app_mounted_in_another_asgi_app(trained, tiny_data, tmp_path):
    """No lifespan reaches a mounted app: it warms up on /v1/ready or its first request."""
    _, run = trained
    # the child binds port 0 itself and writes which port it got: no other test can take it in between
    said = tmp_path / "port"
    code = (
        "import socket, uvicorn\nfrom pathlib import Path\nfrom fastapi import FastAPI\n"
        "from ensemble.serving.app import create_app\n"
        f"outer = FastAPI()\nouter.mount('/effens', create_app({str(run)!r}))\n"
        "sock = socket.socket()\nsock.bind(('127.0.0.1', 0))\n"
        f"Path({str(said) + '.part'!r}).write_text(str(sock.getsockname()[1]))\n"
        f"Path({str(said) + '.part'!r}).replace({str(said)!r})\n"  # whole, or not there
        "uvicorn.Server(uvicorn.Config(outer, log_level='warning')).run(sockets=[sock])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not said.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        if not said.exists():
            proc.kill()
            raise AssertionError(f"the app did not start: {proc.communicate(timeout=60)[0][-3000:]}")
        url = f"http://127.0.0.1:{said.read_text()}/effens"
        while time.time() < deadline:
            try:
                if _get(url + "/v1/health")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        good = _images(tiny_data, 1)[0]
        status, body = _post(url + "/v1/predict", [("files", good.name, good.read_bytes())])
        assert status == 200 and body["results"][0]["prediction"], body
        assert _get(url + "/v1/ready") == (200, b'{"ready":true}')
    finally:
        if proc.returncode is None:  # not yet collected above
            proc.terminate()
            out = proc.communicate(timeout=60)[0]
    assert "Traceback" not in out, out[-3000:]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium here (Debian: apt-get install -y chromium); the page test needs a real browser",
)
def test_the_upload_page_sends_a_photo_and_shows_the_answer_in_chromium(server, tiny_data, tmp_path):
    photo = _images(tiny_data, 1)[0]
    data_url = "data:image/png;base64," + base64.b64encode(photo.read_bytes()).decode()
    url = server.url + "/#selftest=" + quote(data_url, safe="")
    dom = subprocess.run(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=180,
        env=dict(os.environ, HOME=str(tmp_path)),
    ).stdout
    assert 'data-answered="1"' in dom, dom[-3000:]
    _, answer = _post(server.url + "/v1/predict", [("files", photo.name, photo.read_bytes())])
    row = answer["results"][0]
    assert f'<div class="pred">{row["prediction"]}</div>' in dom
    assert dom.count('class="bar"') == 3 and "votes: a " in dom


def _skip_without_ray_serve() -> None:
    """Skip unless Ray Serve imports, tried in a child process so that this worker never imports Ray."""
    probe = subprocess.run([sys.executable, "-c", "from ray import serve"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("Ray Serve is not installed (pip install 'ray[serve]')")


def test_the_same_app_on_ray_serve_with_two_replicas(server, tiny_data, trained):
    import tempfile

    _skip_without_ray_serve()
    _, run = trained
    photo = _images(tiny_data, 1)[0]
    files = [("files", photo.name, photo.read_bytes())]
    _, want = _post(server.url + "/v1/predict", files)
    short = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    srv = Server(run, "--ray", "--replicas", "2", env={"RAY_ADDRESS": "", "RAY_TMPDIR": short})
    try:
        code, got = _post(srv.url + "/v1/predict", files)
        assert code == 200 and got["results"][0]["prediction"] == want["results"][0]["prediction"]
        np.testing.assert_allclose(
            list(got["results"][0]["proba"].values()), list(want["results"][0]["proba"].values()), atol=1e-6
        )
        assert json.loads(_get(srv.url + "/v1/model")[1])["members"] == ["a", "b", "c"]
    finally:
        assert srv.stop() == 0
        shutil.rmtree(short, ignore_errors=True)


def test_ray_serve_refuses_a_port_in_use_before_ray_starts(trained, tmp_path):
    _skip_without_ray_serve()
    _, run = trained
    ray_tmp = tmp_path / "ray"
    ray_tmp.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "ensemble", "serve", str(run), "--ray", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, "RAY_ADDRESS": "", "RAY_TMPDIR": str(ray_tmp)},
        )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"--host/--port: 127.0.0.1:{port} is in use; choose another `--port`" in done.stderr
    assert not any(ray_tmp.iterdir()), "Ray started (a session folder) before the port was checked"


def test_a_request_may_ask_for_its_own_prediction_sets_and_review(server, trained, tiny_data, tmp_path):
    from ensemble.cli import main

    _, run = trained
    paths = _images(tiny_data, 4)
    out = tmp_path / "p.json"
    assert (
        main(
            [
                "predict",
                str(run),
                *map(str, paths),
                "--out",
                str(out),
                "--coverage",
                "0.9",
                "--review-rate",
                "0.5",
                "-q",
            ]
        )
        == 0
    )
    want = json.loads(out.read_text())
    files = [("files", p.name, p.read_bytes()) for p in paths]
    code, got = _post(server.url + "/v1/predict?coverage=0.9&review_rate=0.5", files)
    assert code == 200, got
    for w, g in zip(want, got["results"]):
        assert (g["prediction_set"], g["decision"]) == (w["prediction_set"], w["decision"])
    code, body = _post(server.url + "/v1/predict?coverage=1.5", files)
    assert code == 400 and body["error"].startswith("`coverage` must be in"), body
    code, body = _post(server.url + "/v1/predict?review_rate=0.1&target_accuracy=0.9", files)
    assert code == 400 and "review_rate or target_accuracy" in body["error"], body


def _metric(url, name):
    text = _get(url + "/metrics")[1].decode()
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_bad_request_decisions_are_400_before_any_work(server, tiny_data):
    """The checks of start-up (finite, in bounds, enough calibration images) answer 400 before
    any image is decoded or run, not 500 after inference (#41)."""
    good = _images(tiny_data, 1)[0]
    files = [("files", good.name, good.read_bytes())]
    images = _metric(server.url, "effens_images_total")
    for query, reason in [
        ("coverage=nan", "`coverage` must be a finite number; got nan"),
        ("review_rate=nan", "`review_rate` must be a finite number; got nan"),
        ("target_accuracy=nan", "`target_accuracy` must be a finite number; got nan"),
        ("coverage=0.99", "coverage 0.99 needs at least 99 calibration images; got 18"),
        ("coverage=0.9&coverage_by_class=true", "needs at least 9 calibration images of class"),
    ]:
        code, body = _post(server.url + "/v1/predict?" + query, files)
        assert code == 400 and reason in body["error"] and "\n" not in body["error"], (query, code, body)
    assert _metric(server.url, "effens_images_total") == images  # nothing was decoded or run
    assert _post(server.url + "/v1/predict?coverage=0.5", files)[0] == 200


def test_a_tiny_coverage_asked_over_http_gives_the_smallest_sets(server, tiny_data):
    files = [("files", p.name, p.read_bytes()) for p in _images(tiny_data, 4)]
    sizes = []
    for coverage in ("1e-300", "1e-12", "0.001", "0.5"):
        code, body = _post(server.url + f"/v1/predict?coverage={coverage}", files)
        assert code == 200, body
        sizes.append(sum(len(r["prediction_set"].split("|")) if r["prediction_set"] else 0 for r in body["results"]))
    assert sizes[0] == sizes[1] == sizes[2] <= sizes[3], sizes


@pytest.fixture(scope="module")
def keyed(trained, tmp_path_factory):
    key = tmp_path_factory.mktemp("key") / "key.txt"
    key.write_text("s3cret-key\n")
    srv = Server(trained[1], "--api-key-file", str(key))
    yield srv
    srv.stop()


def test_the_key_is_checked_before_the_request_is_parsed_and_no_answer_names_a_server_path(keyed, trained):
    _, run = trained
    boundary = "multipart/form-data; boundary=x"
    strangers = [
        ("POST", "/v1/predict?coverage=abc&review_rate=[]", b"not multipart", "text/plain"),
        ("POST", "/v1/predict?coverage_by_class=maybe", b"--x\r\nbroken", boundary),
        ("GET", "/v1/predict", None, None),  # the wrong method: 401, not 405
        ("GET", "/v1/model?coverage=abc", None, None),
        ("POST", "/v1/model", b"{", "application/json"),
        ("GET", "/v1/model/", None, None),
    ]
    for method, route, body, kind in strangers:
        req = urllib.request.Request(
            keyed.url + route, data=body, method=method, headers={"Content-Type": kind} if kind else {}
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                code, answer = r.status, r.read()
        except urllib.error.HTTPError as e:
            code, answer = e.code, e.read()
        assert code == 401 and "API key" in json.loads(answer)["error"], (method, route, code, answer)
    key = {"X-API-Key": "s3cret-key"}
    code, card = _get(keyed.url + "/v1/model", key)
    assert code == 200 and json.loads(card)["run"] == run.name
    answers = [
        card,
        *(
            _get(keyed.url + r, key)[1]
            for r in ("/v1/health", "/v1/ready", "/metrics", "/openapi.json", "/v1/nothing", "/")
        ),
    ]
    answers.append(
        json.dumps(_post(keyed.url + "/v1/predict", [("files", "x.png", b"\x89PNG\r\n\x1a\nbroken")], key)[1]).encode()
    )
    for answer in answers:
        assert str(run.parent).encode() not in answer and str(run.resolve().parent).encode() not in answer


def _raw(port, data: bytes, wait: float = 10.0) -> bytes:
    """Send ``data`` on a fresh connection; everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        try:
            s.sendall(data)
        except OSError:  # the server closed while we were still sending: read what it said
            pass
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except OSError:
            pass
        return out


def test_connection_limits_big_headers_idle_and_too_many_connections(trained):
    """Headers, idle connections and open connections are bounded (uvicorn's defaults bound
    none of them): a 1 MB header and a 12 KB one are refused, connections that send nothing
    or trickle a header are closed after --keep-alive, and beyond --max-connections a
    request is answered 503 (#41)."""
    srv = Server(trained[1], "--keep-alive", "1", "--max-header-kb", "8", "--max-connections", "6")
    try:
        for size in (1024 * 1024, 12 * 1024):
            got = _raw(srv.port, b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n")
            status = int(got.split(b" ", 2)[1]) if got.startswith(b"HTTP/1.1 ") else None
            assert status == 431 and b"over the limit of 8,192 bytes" in got, (size, got[:300])
        assert _get(srv.url + "/v1/health")[0] == 200  # 7 KB of headers is fine
        assert _get(srv.url + "/v1/health", {"X-Fine": "a" * 7000})[0] == 200
        # six connections that send nothing, one that trickles a header, one that finished a request
        idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=8) for _ in range(6)]
        deadline = time.monotonic() + 10  # the server accepts the six on a loaded CPU in its own time
        while (status := _get(srv.url + "/v1/health")[0]) != 503 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status == 503  # a seventh is over --max-connections
        trickle = socket.create_connection(("127.0.0.1", srv.port), timeout=8)
        done = socket.create_connection(("127.0.0.1", srv.port), timeout=8)
        done.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        t0 = time.monotonic()
        trickle.sendall(b"GET /v1/health HTTP/1.1\r\n")
        closed = {}
        deadline = t0 + 6
        while time.monotonic() < deadline and len(closed) < 8:
            for i, s in enumerate([*idle, trickle, done]):
                if i in closed:
                    continue
                s.setblocking(False)
                try:
                    data = s.recv(65536)
                    if not data:
                        closed[i] = time.monotonic() - t0
                except BlockingIOError:
                    pass
                except OSError:
                    closed[i] = time.monotonic() - t0
            try:
                trickle.sendall(b"X: y\r\n")  # a header line every 0.2 s: never a whole head
            except OSError:
                pass
            time.sleep(0.2)
        for s in (*idle, trickle, done):
            s.close()
        assert len(closed) == 8 and max(closed.values()) < 3, closed  # all closed within ~1 s, not held
        assert _get(srv.url + "/v1/health")[0] == 200
    finally:
        assert srv.stop() == 0


ROUTE_PLUGIN = '''
from ensemble.serving.app import route


@route("/v1/classes", keyed=True)
def classes(service):
    async def classes() -> dict:
        """The run's classes, in order, and the requests answered so far."""
        return {"classes": service.predictor.classes, "requests": sum(service.metrics.requests.values())}

    return classes
'''


def _asgi_get(app, path: str, headers: dict | None = None):
    """One GET straight into an ASGI app (no server, no lifespan) -> (status, JSON body)."""
    import asyncio

    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


def test_a_plugin_route_is_served_behind_the_key_and_listed_in_the_docs(trained, tmp_path):
    """Issue #42 item 4: a serve route is one registered piece (path, method, endpoint factory)."""
    from ensemble.plugins import load_plugins
    from ensemble.serving.app import ROUTES, ServeSettings, create_app, route
    from members.registry import RegistryError

    (tmp_path / "routeplug.py").write_text(ROUTE_PLUGIN)
    load_plugins(["routeplug"], tmp_path)
    try:
        with pytest.raises(RegistryError, match="a serve route named 'GET /v1/classes' is already registered"):
            route("/v1/classes")(lambda service: None)
        app = create_app(str(trained[1]), ServeSettings(api_key="sesame"))
        assert _asgi_get(app, "/v1/classes") == (
            401,
            {"error": "missing or wrong API key (send it as `X-API-Key` or `Authorization: Bearer`)"},
        )
        assert _asgi_get(app, "/v1/classes", {"X-API-Key": "sesame"}) == (
            200,
            {"classes": ["circle", "square", "stripes"], "requests": 0},
        )
        assert "/v1/classes" in _asgi_get(app, "/openapi.json")[1]["paths"]
        assert _asgi_get(app, "/v1/health") == (200, {"status": "ok"})  # the built-in routes stay
    finally:
        ROUTES.remove("GET /v1/classes")
