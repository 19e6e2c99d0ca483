"""``effens serve``: a trained run as a web service (FastAPI on uvicorn) and an upload page.

The run is loaded once (its hashes checked) and answered by the same
:class:`~ensemble.prediction.ImagePredictor` as ``effens predict``, so a photo gets the same
row either way. Uploaded images are checked (size, count, magic bytes, pixels) and decoded
in worker threads; concurrent requests' images are merged into batches of up to
``max_batch`` (waiting at most ``max_wait_ms`` for company) and run in one worker thread,
so the event loop never waits on a forward. Every failure is a JSON body ``{"error": ...}``
with a 4xx/5xx code; nothing a client sends is a path or a URL.

    effens serve runs/demo --port 8000
    curl -F files=@photo.jpg http://127.0.0.1:8000/v1/predict
"""

import asyncio
import contextlib
import dataclasses
import hmac
import io
import logging
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import __version__
from .prediction import DecisionOptions, ImagePredictor, InferenceOptions

log = logging.getLogger(__name__)

#: magic bytes of the image formats accepted (JPEG, PNG, WebP, BMP, GIF, TIFF)
MAGIC = ((b"\xff\xd8\xff", "jpeg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"RIFF", "webp"), (b"BM", "bmp"),
         (b"GIF8", "gif"), (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"))
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclasses.dataclass(frozen=True)
class ServeLimits:
    """What one request may hold; beyond these it is refused (413) before any decoding."""

    max_body_mb: float = 32.0        # the whole request body
    max_files: int = 16              # images per request
    max_pixels: int = 40_000_000     # per image, read from its header (decompression bombs)
    timeout_s: float = 30.0          # per request, decoding and inference included (504 after)


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    """How the service answers; the defaults are the run's own (strategy, runtime, decisions)."""

    strategy: str | None = None
    options: InferenceOptions = InferenceOptions()
    decisions: dict | None = None    # coverage / review_rate / target_accuracy on top of the run's
    max_batch: int = 16
    max_wait_ms: float = 5.0
    limits: ServeLimits = ServeLimits()
    api_key: str | None = None       # required on /v1/predict and /v1/model when set


class Refused(Exception):
    """A request answered with ``status`` and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def image_kind(data: bytes) -> str | None:
    """The format named by the file's first bytes, or None (not an image we accept)."""
    for magic, kind in MAGIC:
        if data.startswith(magic) and (kind != "webp" or data[8:12] == b"WEBP"):
            return kind
    return None


def decode_upload(data: bytes, size: int, max_pixels: int) -> np.ndarray:
    """One uploaded file -> RGB uint8 at the run's decode size, as ``predict`` decodes a file;
    :class:`ValueError` with a one-line reason when it is not a usable image."""
    from PIL import Image

    from .images import BadImageError, decode_image

    if not data:
        raise ValueError("empty file")
    if image_kind(data) is None:
        raise ValueError("not an image (accepted: JPEG, PNG, WebP, BMP, GIF, TIFF)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's bomb warning: the limit below decides
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
    except Image.DecompressionBombError:
        raise ValueError(f"more than the {max_pixels:,} pixels allowed per image") from None
    except Exception as exc:  # noqa: BLE001 - any header PIL cannot read is one reason
        raise ValueError(f"cannot read the image header ({type(exc).__name__})") from None
    if w * h > max_pixels:
        raise ValueError(f"{w} x {h} px is more than the {max_pixels:,} pixels allowed per image")
    try:
        return decode_image(io.BytesIO(data), size)
    except BadImageError as exc:
        raise ValueError(str(exc).split(": ", 1)[-1]) from None


class Metrics:
    """Counters and histograms, written in Prometheus' text format at ``/metrics``."""

    def __init__(self) -> None:
        self.requests: dict[int, int] = {}
        self.images = self.image_errors = 0
        self.latency = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.batches: dict[int, int] = {}

    def request(self, status: int, seconds: float) -> None:
        self.requests[status] = self.requests.get(status, 0) + 1
        self.latency[next((i for i, b in enumerate(LATENCY_BUCKETS) if seconds <= b), len(LATENCY_BUCKETS))] += 1
        self.latency_sum += seconds

    def text(self) -> str:
        out = ["# HELP effens_requests_total Requests by HTTP status.", "# TYPE effens_requests_total counter"]
        out += [f'effens_requests_total{{code="{c}"}} {n}' for c, n in sorted(self.requests.items())]
        out += ["# HELP effens_images_total Images answered (with or without an error).",
                "# TYPE effens_images_total counter", f"effens_images_total {self.images}",
                "# HELP effens_image_errors_total Images that could not be decoded.",
                "# TYPE effens_image_errors_total counter", f"effens_image_errors_total {self.image_errors}",
                "# HELP effens_request_seconds Request latency.", "# TYPE effens_request_seconds histogram"]
        total = 0
        for bound, n in zip([*map(str, LATENCY_BUCKETS), "+Inf"], self.latency):
            total += n
            out.append(f'effens_request_seconds_bucket{{le="{bound}"}} {total}')
        out += [f"effens_request_seconds_sum {self.latency_sum:.6f}", f"effens_request_seconds_count {total}",
                "# HELP effens_batch_size_total Forward passes by batch size.",
                "# TYPE effens_batch_size_total counter"]
        out += [f'effens_batch_size_total{{size="{s}"}} {n}' for s, n in sorted(self.batches.items())]
        return "\n".join(out) + "\n"


class Batcher:
    """Merges the images of concurrent requests into batches for one inference thread."""

    def __init__(self, predictor: ImagePredictor, max_batch: int, max_wait_ms: float, metrics: Metrics) -> None:
        self.predictor, self.max_batch, self.max_wait = predictor, max(1, max_batch), max(0.0, max_wait_ms) / 1000
        self.metrics = metrics
        self.queue: asyncio.Queue | None = None
        self.forward = ThreadPoolExecutor(1, thread_name_prefix="effens-forward")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.forward.shutdown(wait=True)

    async def answer(self, array: np.ndarray) -> dict:
        if self.task is None:  # an app mounted in another one gets no lifespan: start on first use
            self.start()
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((array, future))
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get_nowait() if loop.time() >= deadline else
                                 await asyncio.wait_for(self.queue.get(), deadline - loop.time()))
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
            batch = [(a, f) for a, f in batch if not f.done()]  # a request that timed out meanwhile
            if not batch:
                continue
            self.metrics.batches[len(batch)] = self.metrics.batches.get(len(batch), 0) + 1
            keys = [str(i) for i in range(len(batch))]
            try:
                rows = await loop.run_in_executor(self.forward, self.predictor.rows, keys, [a for a, _ in batch], {})
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the one reason
                log.error("inference failed: %s: %s", type(exc).__name__, exc)
                for _, f in batch:
                    if not f.done():
                        f.set_exception(Refused(500, f"inference failed: {type(exc).__name__}"))
                continue
            for (_, f), row in zip(batch, rows):
                if not f.done():
                    f.set_result(row)


def _check_key(headers, api_key: str | None) -> None:
    if api_key is None:
        return
    given = headers.get("x-api-key") or ""
    auth = headers.get("authorization") or ""
    if auth.lower().startswith("bearer "):
        given = given or auth[7:].strip()
    if not hmac.compare_digest(given.encode(), api_key.encode()):
        raise Refused(401, "missing or wrong API key (send it as `X-API-Key` or `Authorization: Bearer`)")


def model_card(ens, predictor: ImagePredictor, settings: ServeSettings, run: str) -> dict:
    """What ``GET /v1/model`` answers: classes, members, strategy, runtime and the run's hashes."""
    from .runfolder import weights_hash

    plan = settings.options.plan(ens)
    return {"classes": predictor.classes, "members": predictor.names,
            "members_used": [n for n, u in zip(ens.combiner_.names(settings.strategy), predictor.used) if u],
            "strategy": settings.strategy or ens.combiner_.strategy, "runtime": plan["runtime"],
            "precision": plan["precision"], "decisions": predictor.decisions.columns(),
            "weights_sha256": {fm.name: weights_hash(fm.meta) for fm in ens.members_},
            "max_files": settings.limits.max_files,
            "effens": __version__, "run": run}


def create_app(run: str, settings: ServeSettings = ServeSettings()):
    """The FastAPI app serving ``run`` (mount it in your own ASGI app, or run it with uvicorn)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
    from starlette.exceptions import HTTPException

    from .runfolder import RunFolder, load_run
    from .serve_page import PAGE

    ens = load_run(run)
    run_decisions = RunFolder(run).read_config().decision
    decisions = DecisionOptions.from_settings(run_decisions, **(settings.decisions or {}))
    predictor = ImagePredictor(ens, settings.strategy, settings.options, decisions)
    metrics = Metrics()
    batcher = Batcher(predictor, settings.max_batch, settings.max_wait_ms, metrics)
    decode_pool = ThreadPoolExecutor(2, thread_name_prefix="effens-decode")
    state = {"ready": False}
    limits = settings.limits
    card = model_card(ens, predictor, settings, str(run))
    if card["runtime"] == "torch":
        from members.allocator import keep_freed_memory

        keep_freed_memory()  # now, before the forward thread's first allocation (members/allocator.py)

    warming = asyncio.Lock()

    async def warm() -> None:
        """Compile and warm every member once (at start-up, or on the first /v1/ready of a
        mounted app, which gets no lifespan); the warm-up batch is not counted."""
        async with warming:
            if state["ready"]:
                return
            blank = np.zeros((predictor.size, predictor.size, 3), dtype=np.uint8)
            await batcher.answer(blank)
            metrics.batches.clear()
            state["ready"] = True

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await warm()
        log.info("serving %s (%s; %s)", run, card["strategy"], card["runtime"])
        try:
            yield
        finally:
            state["ready"] = False
            await batcher.stop()
            decode_pool.shutdown(wait=False)

    app = FastAPI(title="effens", version=__version__, lifespan=lifespan,
                  description="A bagged ensemble of EfficientNet classifiers as a service.")

    def _error(status: int, reason: str) -> JSONResponse:
        return JSONResponse({"error": " ".join(str(reason).split())}, status_code=status)

    @app.exception_handler(Refused)
    async def _refused(request, exc: Refused):
        return _error(exc.status, str(exc))

    @app.exception_handler(HTTPException)
    async def _http(request, exc: HTTPException):
        return _error(exc.status_code, exc.detail if isinstance(exc.detail, str) else "request refused")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):
        return _error(422, "malformed request")

    @app.exception_handler(Exception)
    async def _crash(request, exc: Exception):
        log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return _error(500, f"internal error ({type(exc).__name__})")

    @app.middleware("http")
    async def _count(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        if request.url.path.startswith("/v1/predict"):
            metrics.request(response.status_code, time.perf_counter() - t0)
        return response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(PAGE)

    @app.get("/v1/health")
    async def health() -> dict:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/v1/ready")
    async def ready():
        """Every member is loaded and warm: requests are answered at full speed."""
        if not state["ready"]:
            await warm()
        return {"ready": True}

    @app.get("/v1/model")
    async def model(request: Request) -> dict:
        """Classes, members, strategy, runtime and the run's weights hashes."""
        _check_key(request.headers, settings.api_key)
        return card

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> str:
        """Requests, errors, latency and batch sizes in Prometheus' text format."""
        return metrics.text()

    @app.post("/v1/predict")
    async def predict(request: Request, coverage: float | None = None, coverage_by_class: bool | None = None,
                      review_rate: float | None = None, target_accuracy: float | None = None) -> dict:
        """Upload one or more images as multipart ``files`` fields; one answer per image, in order.
        ``coverage`` / ``review_rate`` / ``target_accuracy`` (query) ask this request for a
        prediction set or a review decision other than the server's."""
        _check_key(request.headers, settings.api_key)
        asked = None
        given = {"coverage": coverage, "by_class": coverage_by_class, "review_rate": review_rate,
                 "target_accuracy": target_accuracy}
        if any(v is not None for v in given.values()):
            from .decisions import DecisionError

            merged = {k: v for k, v in (settings.decisions or {}).items() if v is not None}
            if review_rate is not None or target_accuracy is not None:  # the request's rule replaces the server's
                merged.pop("review_rate", None)
                merged.pop("target_accuracy", None)
            merged.update({k: v for k, v in given.items() if v is not None})
            try:
                asked = DecisionOptions.from_settings(run_decisions, **merged)
            except DecisionError as exc:
                reason = str(exc)
                for flag in ("coverage-by-class", "coverage", "review-rate", "target-accuracy"):
                    reason = reason.replace(f"--{flag}", flag.replace("-", "_"))
                raise Refused(400, reason) from None
        try:
            return await asyncio.wait_for(_predict(request, asked), limits.timeout_s)
        except asyncio.TimeoutError:
            raise Refused(504, f"not answered within {limits.timeout_s:g} s") from None
        except Refused:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug: one JSON line for the client, the reason in the log
            log.error("POST /v1/predict failed: %s: %s", type(exc).__name__, exc)
            raise Refused(500, f"internal error ({type(exc).__name__})") from None

    async def _predict(request: Request, asked: DecisionOptions | None) -> dict:
        files = await _read_files(request)
        loop = asyncio.get_running_loop()
        decoded = await asyncio.gather(*(loop.run_in_executor(decode_pool, _decode, data) for _, data in files))
        answers = await asyncio.gather(*(batcher.answer(a) for a, _ in decoded if a is not None))
        it = iter(answers)
        rows = []
        for (name, _), (array, reason) in zip(files, decoded):
            if array is None:
                row = predictor.rows([name], [None], {name: reason}, key="file")[0]
            else:
                row = {"file": name, **{k: v for k, v in next(it).items() if k != "path"}}
            rows.append(row)
        if asked is not None:
            rows = predictor.redecide(rows, asked)
        metrics.images += len(rows)
        metrics.image_errors += sum(1 for r in rows if r["error"])
        if all(r["error"] for r in rows):
            return JSONResponse({"error": f"none of the {len(rows)} image(s) could be read (first: "
                                          f"{rows[0]['error']})", "results": rows}, status_code=422)
        return {"strategy": card["strategy"], "results": rows}

    def _decode(data: bytes) -> tuple[np.ndarray | None, str]:
        try:
            return decode_upload(data, predictor.size, limits.max_pixels), ""
        except ValueError as exc:
            return None, str(exc)
        except Exception as exc:  # noqa: BLE001 - this image's row says so; the others are answered
            log.warning("an upload could not be decoded: %s: %s", type(exc).__name__, exc)
            return None, f"cannot decode image ({type(exc).__name__})"

    async def _read_files(request: Request) -> list[tuple[str, bytes]]:
        if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            raise Refused(415, "send the images as multipart/form-data fields named `files`")
        limit = int(limits.max_body_mb * 1024 * 1024)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise Refused(413, f"the request body ({int(declared):,} bytes) is over the limit of {limit:,} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise Refused(413, f"the request body is over the limit of {limit:,} bytes")
        if not body:
            raise Refused(400, "empty request: send images as multipart fields named `files`")
        request._body = bytes(body)  # starlette parses the form from the body read above
        try:
            form = await request.form(max_files=limits.max_files, max_fields=limits.max_files + 16)
        except HTTPException as exc:
            if "too many files" in str(exc.detail).lower():
                raise Refused(413, f"more than {limits.max_files} images in one request") from None
            raise Refused(413 if "many" in str(exc.detail).lower() else 400, str(exc.detail)) from None
        except Exception as exc:  # noqa: BLE001 - a body that is not multipart: one reason
            raise Refused(400, f"malformed multipart body ({type(exc).__name__})") from None
        uploads = [v for k, v in form.multi_items() if k == "files" and hasattr(v, "read")]
        if not uploads:
            raise Refused(400, "no images: send them as multipart fields named `files`")
        if len(uploads) > limits.max_files:
            raise Refused(413, f"{len(uploads)} images in one request; at most {limits.max_files}")
        out = []
        for i, up in enumerate(uploads):
            name = (up.filename or f"image{i}").replace("\\", "/").rsplit("/", 1)[-1][:200]
            out.append((name, await up.read()))
        await form.close()
        return out

    app.state.predictor, app.state.metrics = predictor, metrics
    return app


def serve(run: str, host: str = "127.0.0.1", port: int = 8000, settings: ServeSettings = ServeSettings()) -> None:
    """Run the app with uvicorn until SIGINT/SIGTERM (in-flight requests finish; exit 0)."""
    import uvicorn

    app = create_app(run, settings)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: reachable from other machines%s", host,
                    "" if settings.api_key else " and without an API key (--api-key-file)")
    uvicorn.run(app, host=host, port=port, log_level="warning",
                timeout_graceful_shutdown=max(30, int(settings.limits.timeout_s) + 5))


def serve_on_ray(run: str, host: str = "127.0.0.1", port: int = 8000, settings: ServeSettings = ServeSettings(),
                 replicas: int = 2) -> None:
    """The same app as a Ray Serve deployment of ``replicas`` copies behind Ray's HTTP proxy
    (a local Ray, or the cluster that ``RAY_ADDRESS`` names), until SIGINT/SIGTERM."""
    import os
    import signal
    from pathlib import Path

    import ray
    from ray import serve as ray_serve

    run = str(Path(run).resolve())  # replicas may start in another working folder
    threads = max(1, (os.cpu_count() or 1) // replicas) if not os.environ.get("RAY_ADDRESS") else None

    def build():  # runs in each replica: its own copy of the run, batcher and limits
        return create_app(run, settings)

    def stop(signum, frame):
        raise KeyboardInterrupt

    ray.init(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    signal.signal(signal.SIGTERM, stop)  # after ray.init, which installs an aborting handler of its own
    try:
        try:
            ray_serve.start(http_options={"host": host, "port": port})
        except ray.exceptions.RayError as exc:  # its HTTP proxy died (port taken, machine overloaded): one line
            from .files import RunError

            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise RunError(f"Ray Serve could not start its HTTP proxy on {host}:{port} ({type(exc).__name__}: "
                           f"{first}); check that the port is free and the machine has memory and cores to spare"
                           ) from None
        options = {"num_cpus": 0}
        if threads:  # replicas sharing this machine split its cores
            options["runtime_env"] = {"env_vars": {"OMP_NUM_THREADS": str(threads)}}
        deployment = ray_serve.deployment(ray_serve.ingress(build)(), name="effens", num_replicas=replicas,
                                          ray_actor_options=options)
        log.info("serving %s on Ray Serve: %d replicas at http://%s:%d", run, replicas, host, port)
        ray_serve.run(deployment.bind(), name="effens", route_prefix="/", blocking=True)
    except KeyboardInterrupt:
        pass
    finally:
        ray_serve.shutdown()
        ray.shutdown()


def read_api_key(path: str) -> str:
    """The key in ``path`` (one line; surrounding whitespace ignored); refused when empty."""
    from .files import RunError, refuse_irregular

    refuse_irregular(path, "--api-key-file")
    try:
        key = open(path, encoding="utf-8").read().strip()
    except OSError as exc:
        raise RunError(f"{path}: cannot read the API key file ({exc.strerror or exc})") from None
    if not key:
        raise RunError(f"{path}: the API key file is empty")
    return key
