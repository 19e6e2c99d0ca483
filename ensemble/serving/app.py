"""``effens serve``: a trained run as a web service (FastAPI on uvicorn) and an upload page.

The run is loaded once (its hashes checked) and answered by the same
:class:`~ensemble.serving.answers.ImagePredictor` as ``effens predict``, so a photo gets the same
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
import errno
import functools
import hmac
import io
import json
import logging
import socket
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from members.registry import Registry

from .. import __version__
from .answers import DecisionOptions, ImagePredictor, InferenceOptions

log = logging.getLogger(__name__)

#: magic bytes of the image formats accepted (JPEG, PNG, WebP, BMP, GIF, TIFF)
MAGIC = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"RIFF", "webp"),
    (b"BM", "bmp"),
    (b"GIF8", "gif"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: the query names of the decision flags, in a request's error messages
QUERY_NAMES = {
    "--coverage-by-class": "coverage_by_class",
    "--coverage": "coverage",
    "--review-rate": "review_rate",
    "--target-accuracy": "target_accuracy",
}


@dataclasses.dataclass(frozen=True)
class ServeLimits:
    """What one request may hold; beyond these it is refused (413) before any decoding."""

    max_body_mb: float = 32.0  # the whole request body
    max_files: int = 16  # images per request
    max_pixels: int = 40_000_000  # per image, read from its header (decompression bombs)
    timeout_s: float = 30.0  # per request, decoding and inference included (504 after)
    max_header_kb: float = 16.0  # the request line and headers together (431, or 400 from h11 when huge)
    keep_alive_s: float = 5.0  # a connection without a whole request head this long is closed
    max_connections: int = 128  # open connections; a request beyond them is answered 503


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    """How the service answers; the defaults are the run's own (strategy, runtime, decisions)."""

    strategy: str | None = None
    options: InferenceOptions = InferenceOptions()
    decisions: dict | None = None  # coverage / review_rate / target_accuracy on top of the run's
    max_batch: int = 16
    max_wait_ms: float = 5.0
    limits: ServeLimits = ServeLimits()
    api_key: str | None = None  # required on /v1/predict and /v1/model when set


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

    from ..images import BadImageError, decode_image

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
        out += [
            "# HELP effens_images_total Images answered (with or without an error).",
            "# TYPE effens_images_total counter",
            f"effens_images_total {self.images}",
            "# HELP effens_image_errors_total Images that could not be decoded.",
            "# TYPE effens_image_errors_total counter",
            f"effens_image_errors_total {self.image_errors}",
            "# HELP effens_request_seconds Request latency.",
            "# TYPE effens_request_seconds histogram",
        ]
        total = 0
        for bound, n in zip([*map(str, LATENCY_BUCKETS), "+Inf"], self.latency):
            total += n
            out.append(f'effens_request_seconds_bucket{{le="{bound}"}} {total}')
        out += [
            f"effens_request_seconds_sum {self.latency_sum:.6f}",
            f"effens_request_seconds_count {total}",
            "# HELP effens_batch_size_total Forward passes by batch size.",
            "# TYPE effens_batch_size_total counter",
        ]
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

    def start(self) -> asyncio.Queue:
        """Open the queue and start batching on the running loop; returns the queue."""
        queue: asyncio.Queue = asyncio.Queue()
        self.queue, self.task = queue, asyncio.get_running_loop().create_task(self._loop(queue))
        return queue

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.forward.shutdown(wait=True)

    async def answer(self, array: np.ndarray) -> dict:
        queue = self.queue  # set with the task, by start()
        if queue is None:  # an app mounted in another one gets no lifespan: start on first use
            queue = self.start()
        future = asyncio.get_running_loop().create_future()
        await queue.put((array, future))
        return await future

    async def _loop(self, queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    batch.append(
                        queue.get_nowait()
                        if loop.time() >= deadline
                        else await asyncio.wait_for(queue.get(), deadline - loop.time())
                    )
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


def head_size(scope: dict) -> int:
    """Bytes of a request's line and headers, as the client sent them (give or take spaces)."""
    line = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + 16
    return line + sum(len(k) + len(v) + 4 for k, v in scope.get("headers", ()))


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
    """What ``GET /v1/model`` answers: classes, members, strategy, runtime, the run's hashes
    and the run folder's name."""
    from ..runfolder import weights_hash

    plan = settings.options.plan(ens)
    return {
        "classes": predictor.classes,
        "members": predictor.names,
        "members_used": [n for n, u in zip(ens.combiner_.names(settings.strategy), predictor.used) if u],
        "strategy": settings.strategy or ens.combiner_.strategy,
        "runtime": plan["runtime"],
        "precision": plan["precision"],
        "decisions": predictor.decisions.columns(),
        "weights_sha256": {fm.name: weights_hash(fm.meta) for fm in ens.members_},
        "max_files": settings.limits.max_files,
        "effens": __version__,
        "run": Path(run).resolve().name,
    }  # its name: no server path in an answer


@dataclasses.dataclass
class Service:
    """What every route shares: the run loaded once, its predictor, the batcher that merges
    requests' images, the metrics, the decoding threads and the model card."""

    run: str
    settings: ServeSettings
    ens: Any
    run_decisions: Any  # the run's own `decision:` settings
    predictor: ImagePredictor
    metrics: Metrics
    batcher: Batcher
    decode_pool: ThreadPoolExecutor
    card: dict
    ready: bool = False
    warming: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)

    @classmethod
    def load(cls, run: str, settings: ServeSettings) -> "Service":
        """Load ``run`` (its hashes checked) with the server's strategy, runtime and decisions."""
        from ..runfolder import RunFolder, load_run

        ens = load_run(run)
        run_decisions = RunFolder(run).read_config().decision
        decisions = DecisionOptions.from_settings(run_decisions, **(settings.decisions or {}))
        predictor = ImagePredictor(ens, settings.strategy, settings.options, decisions)
        metrics = Metrics()
        batcher = Batcher(predictor, settings.max_batch, settings.max_wait_ms, metrics)
        card = model_card(ens, predictor, settings, str(run))
        if card["runtime"] == "torch":
            from members.allocator import keep_freed_memory

            keep_freed_memory()  # now, before the forward thread's first allocation (members/allocator.py)
        return cls(
            str(run),
            settings,
            ens,
            run_decisions,
            predictor,
            metrics,
            batcher,
            ThreadPoolExecutor(2, thread_name_prefix="effens-decode"),
            card,
        )

    @property
    def limits(self) -> ServeLimits:
        return self.settings.limits

    async def warm(self) -> None:
        """Compile and warm every member once (at start-up, or on the first /v1/ready of a
        mounted app, which gets no lifespan); the warm-up batch is not counted."""
        async with self.warming:
            if self.ready:
                return
            blank = np.zeros((self.predictor.size, self.predictor.size, 3), dtype=np.uint8)
            await self.batcher.answer(blank)
            self.metrics.batches.clear()
            self.ready = True

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        await self.warm()
        log.info("serving %s (%s; %s)", self.run, self.card["strategy"], self.card["runtime"])
        try:
            yield
        finally:
            self.ready = False
            await self.batcher.stop()
            self.decode_pool.shutdown(wait=False)

    def asked(self, given: dict) -> DecisionOptions | None:
        """A request's own decisions on top of the server's, checked as at start-up (bounds,
        finite, enough calibration images) before any work: 400 with the one reason."""
        if all(v is None for v in given.values()):
            return None
        from ..combining.decisions import DecisionError

        merged = {k: v for k, v in (self.settings.decisions or {}).items() if v is not None}
        if given["review_rate"] is not None or given["target_accuracy"] is not None:
            merged.pop("review_rate", None)  # the request's rule replaces the server's
            merged.pop("target_accuracy", None)
        merged.update({k: v for k, v in given.items() if v is not None})
        try:
            asked = DecisionOptions.from_settings(self.run_decisions, **merged)
            self.predictor.check(asked)
        except DecisionError as exc:
            reason = str(exc)
            for flag, name in QUERY_NAMES.items():
                reason = reason.replace(flag, name)
            raise Refused(400, reason) from None
        return asked

    async def predict(self, request, asked: DecisionOptions | None):
        """One answer per uploaded image, in order (a JSON 422 when none could be read)."""
        from fastapi.responses import JSONResponse

        files = await self.read_files(request)
        loop = asyncio.get_running_loop()
        decoded = await asyncio.gather(
            *(loop.run_in_executor(self.decode_pool, self.decode, data) for _, data in files)
        )
        answers = iter(await asyncio.gather(*(self.batcher.answer(a) for a, _ in decoded if a is not None)))
        rows = []
        for (name, _), (array, reason) in zip(files, decoded):
            if array is None:
                rows.append(self.predictor.rows([name], [None], {name: reason}, key="file")[0])
            else:
                rows.append({"file": name, **{k: v for k, v in next(answers).items() if k != "path"}})
        if asked is not None:
            rows = self.predictor.redecide(rows, asked)
        self.metrics.images += len(rows)
        self.metrics.image_errors += sum(1 for r in rows if r["error"])
        if all(r["error"] for r in rows):
            return JSONResponse(
                {
                    "error": f"none of the {len(rows)} image(s) could be read (first: {rows[0]['error']})",
                    "results": rows,
                },
                status_code=422,
            )
        return {"strategy": self.card["strategy"], "results": rows}

    def decode(self, data: bytes) -> tuple[np.ndarray | None, str]:
        """One upload decoded, or None and the reason this image's row gives."""
        try:
            return decode_upload(data, self.predictor.size, self.limits.max_pixels), ""
        except ValueError as exc:
            return None, str(exc)
        except Exception as exc:  # noqa: BLE001 - this image's row says so; the others are answered
            log.warning("an upload could not be decoded: %s: %s", type(exc).__name__, exc)
            return None, f"cannot decode image ({type(exc).__name__})"

    async def read_files(self, request) -> list[tuple[str, bytes]]:
        """The multipart ``files`` of a request, every limit checked while the body arrives."""
        from starlette.exceptions import HTTPException

        limits = self.limits
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


# ---------------------------------------------------------------- routes: one registered piece each
#: what a route's plain return value becomes
ResponseKind = Literal["json", "html", "text"]


@dataclasses.dataclass(frozen=True)
class Route:
    """One endpoint: ``endpoint(service)`` makes the function FastAPI calls (its parameters
    are the request's, as in any FastAPI route; its docstring is its documentation).
    ``keyed``: needs the API key when one is set, checked before anything of the request is
    parsed; ``response``: what a plain return value becomes (``json``, ``html`` or ``text``);
    ``in_docs``: listed in /docs and /openapi.json."""

    path: str
    method: str
    endpoint: Callable[[Service], Callable]
    keyed: bool = False
    response: ResponseKind = "json"
    in_docs: bool = True


ROUTES: Registry[Route] = Registry("serve route")


def route(
    path: str, method: str = "GET", *, keyed: bool = False, response: ResponseKind = "json", in_docs: bool = True
) -> Callable:
    """Register a route of every app :func:`create_app` makes: decorates a function of the
    :class:`Service` that returns the endpoint (registered as ``"METHOD /path"``)."""
    if not path.startswith("/") or method not in ("GET", "POST", "PUT", "DELETE", "PATCH"):
        raise ValueError(f"a serve route needs a path starting with / and an HTTP method; got {method} {path}")
    if response not in ("json", "html", "text"):
        raise ValueError(f"a serve route's `response` must be json, html or text; got {response!r}")

    def register(factory: Callable[[Service], Callable]) -> Callable[[Service], Callable]:
        ROUTES.add(f"{method} {path}", Route(path, method, factory, keyed, response, in_docs), owner=factory.__module__)
        return factory

    return register


def keyed_paths() -> set[str]:
    """The paths that need the API key when one is set."""
    return {r.path.rstrip("/") for r in ROUTES.values() if r.keyed}


@route("/", response="html", in_docs=False)
def upload_page(service: Service) -> Callable:
    """The upload page: pick photos, see the answers (:mod:`ensemble.serving.upload_page`)."""
    from fastapi.responses import HTMLResponse

    from .upload_page import PAGE

    async def page():
        return HTMLResponse(PAGE)

    return page


@route("/v1/health")
def health(service: Service) -> Callable:
    """Liveness: the process is up."""

    async def health() -> dict:
        """The process is up."""
        return {"status": "ok"}

    return health


@route("/v1/ready")
def ready(service: Service) -> Callable:
    """Readiness: every member loaded and warm (warms a mounted app on first call)."""

    async def ready():
        """Every member is loaded and warm: requests are answered at full speed."""
        if not service.ready:
            await service.warm()
        return {"ready": True}

    return ready


@route("/v1/model", keyed=True)
def model(service: Service) -> Callable:
    """The model card: classes, members, strategy, runtime, the run's weights hashes."""

    async def model() -> dict:
        """Classes, members, strategy, runtime and the run's weights hashes."""
        return service.card

    return model


@route("/metrics", response="text")
def prometheus(service: Service) -> Callable:
    """Requests, errors, latency and batch sizes in Prometheus' text format."""

    async def prometheus() -> str:
        """Requests, errors, latency and batch sizes in Prometheus' text format."""
        return service.metrics.text()

    return prometheus


@route("/v1/predict", "POST", keyed=True)
def predict(service: Service) -> Callable:
    """Uploaded photos answered as `effens predict` answers them, batched across requests."""
    from fastapi import Request

    async def predict(
        request: Request,
        coverage: float | None = None,
        coverage_by_class: bool | None = None,
        review_rate: float | None = None,
        target_accuracy: float | None = None,
    ) -> dict:
        """Upload one or more images as multipart ``files`` fields; one answer per image, in order.
        ``coverage`` / ``review_rate`` / ``target_accuracy`` (query) ask this request for a
        prediction set or a review decision other than the server's."""
        asked = service.asked(
            {
                "coverage": coverage,
                "by_class": coverage_by_class,
                "review_rate": review_rate,
                "target_accuracy": target_accuracy,
            }
        )
        timeout = service.limits.timeout_s
        try:
            return await asyncio.wait_for(service.predict(request, asked), timeout)
        except asyncio.TimeoutError:
            raise Refused(504, f"not answered within {timeout:g} s") from None
        except Refused:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug: one JSON line for the client, the reason in the log
            log.error("POST /v1/predict failed: %s: %s", type(exc).__name__, exc)
            raise Refused(500, f"internal error ({type(exc).__name__})") from None

    return predict


# ---------------------------------------------------------------- the app: a few named steps
def create_app(run: str, settings: ServeSettings = ServeSettings()):
    """The FastAPI app serving ``run`` (mount it in your own ASGI app, or run it with uvicorn):
    the run loaded once, JSON errors, the guards before routing, every registered route."""
    from fastapi import FastAPI

    service = Service.load(run, settings)
    app = FastAPI(
        title="effens",
        version=__version__,
        lifespan=service.lifespan,
        description="A bagged ensemble of EfficientNet classifiers as a service.",
    )
    _add_error_handlers(app)
    _add_guards(app, service)
    _add_routes(app, service)
    app.state.service, app.state.predictor, app.state.metrics = service, service.predictor, service.metrics
    return app


def _error(status: int, reason: str):
    """Every failure's body: ``{"error": one line}``."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": " ".join(str(reason).split())}, status_code=status)


def _add_error_handlers(app) -> None:
    """Refusals, HTTP errors, malformed requests and crashes all answer one JSON line."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

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


def _add_guards(app, service: Service) -> None:
    """Middleware, outermost last: request counting, the header size limit, the API key."""
    from fastapi import Request

    keyed, limits, api_key = keyed_paths(), service.limits, service.settings.api_key

    @app.middleware("http")
    async def _authenticate(request: Request, call_next):
        """The API key before routing and parsing: a stranger learns nothing of a request's
        shape (no 422 or 405 before the 401)."""
        path = request.scope["path"][len(request.scope.get("root_path", "")) :]  # mounted: under its prefix
        if api_key is not None and path.rstrip("/") in keyed:
            try:
                _check_key(request.headers, api_key)
            except Refused as exc:
                return _error(exc.status, str(exc))
        return await call_next(request)

    @app.middleware("http")
    async def _head_size(request: Request, call_next):
        """Headers over ``max_header_kb`` (ones that reached the app whole in one read; larger
        ones never get here, see :func:`serve`): 431 before the key or anything else (the
        middleware added last runs first)."""
        size = head_size(request.scope)
        if size > limits.max_header_kb * 1024:
            return _error(
                431,
                f"the request headers ({size:,} bytes) are over the limit of "
                f"{int(limits.max_header_kb * 1024):,} bytes",
            )
        return await call_next(request)

    @app.middleware("http")
    async def _count(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        if request.url.path.startswith("/v1/predict"):
            service.metrics.request(response.status_code, time.perf_counter() - t0)
        return response


def _add_routes(app, service: Service) -> None:
    """Every registered route, in registration order."""
    from fastapi.responses import HTMLResponse, PlainTextResponse

    classes = {"html": HTMLResponse, "text": PlainTextResponse}  # json: FastAPI's default
    for r in ROUTES.values():
        shown_as = {"response_class": classes[r.response]} if r.response in classes else {}
        app.add_api_route(r.path, r.endpoint(service), methods=[r.method], include_in_schema=r.in_docs, **shown_as)


def serve(run: str, host: str = "127.0.0.1", port: int = 8000, settings: ServeSettings = ServeSettings()) -> None:
    """Run the app with uvicorn until SIGINT/SIGTERM (in-flight requests finish; exit 0)."""
    import uvicorn

    with _listening_socket(host, port) as sock:  # before the warm-up: a port in use is one line at once
        app = create_app(run, settings)
        if host not in ("127.0.0.1", "localhost", "::1"):
            log.warning(
                "serving on %s: reachable from other machines%s",
                host,
                "" if settings.api_key else " and without an API key (--api-key-file)",
            )
        limits = settings.limits
        # h11 (not httptools, which has no limit on headers) refuses a head over the limit while
        # it is still arriving; more than max_connections open: 503 (uvicorn counts the asking one)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            http=_guarded_h11(),
            h11_max_incomplete_event_size=int(limits.max_header_kb * 1024),
            timeout_keep_alive=limits.keep_alive_s,
            limit_concurrency=limits.max_connections + 1,
            timeout_graceful_shutdown=max(30, int(limits.timeout_s) + 5),
        )
        server = uvicorn.Server(config)
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # SIGINT/SIGTERM once in-flight requests are done: a clean exit
            pass
    if not server.started:
        raise SystemExit(3)  # the app failed to start (uvicorn has logged why), as `uvicorn.run` exits


def _listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (as uvicorn binds one), or one line naming the flag."""
    from members.errors import EffensError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = (
            "is in use; choose another `--port`"
            if exc.errno == errno.EADDRINUSE
            else f"cannot be bound: {exc.strerror}"
        )
        raise EffensError(f"--host/--port: {host}:{port} {why}") from None
    return sock


@functools.cache
def _guarded_h11() -> type:
    """uvicorn's h11 protocol that also closes a connection which has not sent a whole request
    head within ``timeout_keep_alive`` of opening or of its last answer (uvicorn only times
    the wait after an answer, and restarts it on every byte: a client that sends nothing, or
    a header a byte at a time, would hold its connection for ever)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11(H11Protocol):
        head_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
            self.head_timer = self.loop.call_later(self.timeout_keep_alive, self._head_overdue)

        def _head_overdue(self) -> None:
            if self.conn.their_state is h11.IDLE:  # no request head since the timer was armed
                self.timeout_keep_alive_handler()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            """A head over the limit: 431 and the app's one-line JSON, then close."""
            limit = self.config.h11_max_incomplete_event_size
            if limit is None or len(self.conn.trailing_data[0]) <= limit:
                return super().send_400_response(msg)
            body = json.dumps({"error": f"the request headers are over the limit of {limit:,} bytes"}).encode()
            headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
            for event in (h11.Response(status_code=431, headers=headers), h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    return GuardedH11


def serve_on_ray(
    run: str, host: str = "127.0.0.1", port: int = 8000, settings: ServeSettings = ServeSettings(), replicas: int = 2
) -> None:
    """The same app as a Ray Serve deployment of ``replicas`` copies behind Ray's HTTP proxy
    (a local Ray, or the cluster that ``RAY_ADDRESS`` names), until SIGINT/SIGTERM."""
    import os
    import signal
    from pathlib import Path

    import ray
    from ray import serve as ray_serve

    run = str(Path(run).resolve())  # replicas may start in another working folder
    from ..parallel import available_cores

    threads = max(1, available_cores() // replicas) if not os.environ.get("RAY_ADDRESS") else None

    def build():  # runs in each replica: its own copy of the run, batcher and limits
        return create_app(run, settings)

    def stop(signum, frame):
        raise KeyboardInterrupt

    if not os.environ.get("RAY_ADDRESS"):  # a local proxy: a port in use is one line now, not after Ray starts
        _listening_socket(host, port).close()
    ray.init(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    signal.signal(signal.SIGTERM, stop)  # after ray.init, which installs an aborting handler of its own
    try:
        try:
            ray_serve.start(http_options={"host": host, "port": port})
        except ray.exceptions.RayError as exc:  # its HTTP proxy died (port taken, machine overloaded): one line
            from ..files import RunError

            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise RunError(
                f"Ray Serve could not start its HTTP proxy on {host}:{port} ({type(exc).__name__}: "
                f"{first}); check that the port is free and the machine has memory and cores to spare"
            ) from None
        options: dict[str, Any] = {"num_cpus": 0}
        if threads:  # replicas sharing this machine split its cores
            options["runtime_env"] = {"env_vars": {"OMP_NUM_THREADS": str(threads)}}
        deployment = ray_serve.deployment(
            ray_serve.ingress(build)(), name="effens", num_replicas=replicas, ray_actor_options=options
        )
        log.info("serving %s on Ray Serve: %d replicas at http://%s:%d", run, replicas, host, port)
        ray_serve.run(deployment.bind(), name="effens", route_prefix="/", blocking=True)
    except KeyboardInterrupt:
        pass
    finally:
        ray_serve.shutdown()
        ray.shutdown()


def read_api_key(path: str) -> str:
    """The key in ``path`` (one line; surrounding whitespace ignored); refused when empty."""
    from ..files import RunError, refuse_irregular

    refuse_irregular(path, "--api-key-file")
    try:
        key = open(path, encoding="utf-8").read().strip()
    except OSError as exc:
        raise RunError(f"{path}: cannot read the API key file ({exc.strerror or exc})") from None
    if not key:
        raise RunError(f"{path}: the API key file is empty")
    return key
