"""`steeldefect serve`: the exported model as a long-running HTTP service (FastAPI on uvicorn).

Endpoints: the KServe / Triton "Open Inference Protocol" (v2) that Triton, OpenVINO Model Server, KServe and MLServer
share (GET /v2/health/live, /v2/health/ready, /v2, /v2/models/steeldefect[/ready], POST
/v2/models/steeldefect/infer with a BYTES input `image_bytes` holding encoded images: base64 strings in JSON, or
Triton's binary tensor extension as tritonclient sends them), a plain POST /predict (multipart field `image`, or a
raw image/jpeg or image/png body) and GET /metrics (Prometheus, serve/monitor.py). Both prediction endpoints answer
with the fields of a `steeldefect predict` CSV row plus the threshold and the model's version (the export's
fingerprint). The model is loaded once, in the background (the OpenVINO self-check included), so the health
endpoints answer from the start: ready once that passed; a failure stops the service with its message (exit 2).
Requests go through the dynamic batcher (serve/batching.py); uncertain images to the review queue (serve/review.py).

Bad input is refused with a JSON {"error": ...} and a 4xx before it reaches the engine: a body over MAX_BODY (413,
while reading it: at most MAX_BODY bytes are held), an image over MAX_PIXELS (413, from its header, before
decoding), zero bytes, not a JPEG or PNG (400), a truncated image (400, from the decoder), a wrong content type (415),
an unknown model (404). SIGTERM stops accepting connections, answers the requests in flight, then exits 0.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import importlib.metadata
import io
import json
import math
import signal
import struct
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from contextvars import ContextVar
from pathlib import Path

import numpy as np
import pandas as pd
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from steeldefect.errors import UserError
from steeldefect.serve import drift
from steeldefect.serve.batching import Batcher
from steeldefect.serve.monitor import Monitor
from steeldefect.serve.review import ReviewQueue

MODEL_NAME, INPUT = "steeldefect", "image_bytes"
TIMING: ContextVar[dict] = ContextVar("timing")  # the Server-Timing figures of the request this task answers
MAX_BODY = 16 * 2**20  # bytes of one request body; a 1600x256 JPEG is ~0.1-0.4 MB, a PNG ~1.2 MB
MAX_PIXELS = 25_000_000  # width x height of one image (1600x256 = 0.4 million)
FORMATS = ("JPEG", "PNG")  # what `steeldefect predict` reads from a folder, so the review queue can go back to it
IMAGE_TYPES = ("image/jpeg", "image/png")
META_FIELDS = ("engine", "precision")  # per-row fields that are the same for every image: v2 parameters


class Refused(Exception):
    """A request the service will not score: its HTTP status and a message saying what to send instead."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def image_format(data: bytes) -> str:
    """JPEG or PNG, read from the image's header only (Pillow decodes nothing before `load`); Refused otherwise."""
    if not data:
        raise Refused(400, "the image is empty (0 bytes): send the bytes of a JPEG or PNG file.")
    try:
        with warnings.catch_warnings(), Image.open(io.BytesIO(data)) as image:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            kind, (width, height) = image.format, image.size
    except UnidentifiedImageError:
        raise Refused(400, "not an image (Pillow recognizes no image format in it): send a JPEG or PNG file.") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise Refused(400, f"not a readable JPEG or PNG header ({type(e).__name__}: {e}).") from None
    if kind not in FORMATS:
        raise Refused(400, f"a {kind} image: send a JPEG or PNG.")
    if width * height > MAX_PIXELS:
        raise Refused(
            413,
            f"the image is {width}x{height} pixels, more than the {MAX_PIXELS / 1e6:g} million accepted (the model "
            "looks at a resized copy anyway): send the camera's image, e.g. 1600x256.",
        )
    return kind


async def read_body(request: Request) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed MAX_BODY: from Content-Length before
    reading anything, else while reading it."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise Refused(413, f"the body is {int(declared):,} bytes, more than the {MAX_BODY:,} accepted: send one image.")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                raise Refused(413, f"the body is more than the {MAX_BODY:,} bytes accepted: send one image.")
    except ClientDisconnect:
        raise Refused(499, "the client disconnected before sending the whole body") from None
    return bytes(body)


def warm_up_image() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(out, "JPEG")
    return out.getvalue()


def plain(value):
    """A JSON value from a table cell: None for NaN / NA, Python numbers for NumPy ones."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


class TimedEngine:
    """The Predictor's engine (Keras model or OpenVINOEngine), each `predict_on_batch` call timed into `histogram`
    and added to `seconds` (the scoring resets it per batch); the rest passes through."""

    def __init__(self, engine, histogram):
        self.engine, self.histogram, self.seconds = engine, histogram, 0.0

    def predict_on_batch(self, images):
        start = time.perf_counter()
        try:
            return self.engine.predict_on_batch(images)
        finally:
            elapsed = time.perf_counter() - start
            self.histogram.observe(elapsed)
            self.seconds += elapsed

    def __getattr__(self, name):
        return getattr(self.engine, name)


class Service:
    """The model, the batcher, the metrics and the review queue of one `steeldefect serve` process."""

    def __init__(
        self,
        model_dir: Path,
        max_batch: int,
        max_delay: float,
        predictor_args: dict,
        review_dir: Path | None = None,
        band: tuple[float, float] | None = None,
        review_cap: int = 1000,
    ):
        """`predictor_args`: engine, threshold, class_threshold of the Predictor."""
        self.model_dir, self.max_batch, self.max_delay = model_dir, max_batch, max_delay
        self.predictor_args = predictor_args
        self.review_dir, self.band, self.review_cap = review_dir, band, review_cap
        self.predictor, self.failure, self.server = None, None, None
        self.ready = threading.Event()
        self.monitor = Monitor(None)
        self.review: ReviewQueue | None = None
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="review")
        # each request's images are decoded as they arrive, in this thread, while the engine scores the batch before
        self.decoder = ThreadPoolExecutor(1, thread_name_prefix="decode")
        self.batcher = Batcher(self.score, max_batch, max_delay)

    def load(self) -> None:
        """Load the model and its self-check (in a thread: the health endpoints answer meanwhile); on failure
        keep the error and stop the server."""
        from steeldefect.serve.predictor import Predictor

        try:
            # LATENCY: a lone request on every core (half the THROUGHPUT hint's time for one image on 2 cores);
            # a batch scores as fast either way (docs/inference.md, Serve)
            p = Predictor(self.model_dir, batch_size=self.max_batch, hint="LATENCY", **self.predictor_args)
            self.monitor.reference = drift.read_reference(self.model_dir) or {}
            centre = p.threshold if p.threshold is not None else 0.5
            self.band = self.band or (max(0.0, centre - 0.2), min(1.0, centre + 0.2))
            if self.review_dir is not None:
                self.review = ReviewQueue(self.review_dir, self.band, self.review_cap)
            p.predict([warm_up_image()])  # the first call traces the preprocessing: not on a client's time
            p.model = TimedEngine(p.model, self.monitor.engine_time)
        except BaseException as e:  # noqa: BLE001 - reported by `serve` once the server has stopped
            self.failure = e
            if self.server is not None:
                self.server.should_exit = True
            return
        for notice in p.notices:
            print(notice, file=sys.stderr if notice.startswith("warning:") else sys.stdout, flush=True)
        if not self.monitor.reference:
            print(f"no {drift.DRIFT_REFERENCE} in {self.model_dir} (an older export): no drift figure", flush=True)
        self.predictor = p
        self.ready.set()
        print(
            f"ready: model {p.version} ({p.name}, image size {p.image_size[0]}x{p.image_size[1]}), batches of up to "
            f"{self.max_batch} within {self.max_delay * 1000:g} ms, uncertainty band {self.band[0]:g}-{self.band[1]:g}"
            + (f", review queue {self.review_dir} (cap {self.review_cap})" if self.review else ""),
            flush=True,
        )

    def uncertain(self, answer: dict) -> bool:
        lo, hi = self.band
        if answer.get("probability") is not None:
            return lo <= answer["probability"] <= hi
        return any(lo <= v <= hi for k, v in answer.items() if k.startswith("p_") and v is not None)

    def score(self, items: list[tuple[bytes, str, str, np.ndarray | None]]) -> list:
        """(data, format, name, decoded image or None) per image -> (its answer, its batch's {"engine": s, "score":
        s}), or a Refused for an image the decoder rejects. Runs in the batcher's worker thread."""
        p = self.predictor
        p.model.seconds, start = 0.0, time.perf_counter()
        data, names, decoded = ([item[k] for item in items] for k in (0, 2, 3))
        prediction = p.predict(data, names=names, decoded=decoded)
        timing = {"engine": p.model.seconds, "score": time.perf_counter() - start}
        self.monitor.score_time.observe(timing["score"])
        answers, rows, flags = [], [], []
        for i, row in enumerate(prediction.table.to_dict("records")):
            if i in prediction.failed:
                answers.append(Refused(400, f"{row['error']}: send a complete JPEG or PNG file."))
                continue
            answer = {k: plain(v) for k, v in row.items() if k not in ("path", "error")}
            answer.update(threshold=p.threshold, model_name=MODEL_NAME, model_version=p.version)
            if p.class_thresholds:
                answer["class_thresholds"] = p.class_thresholds
            answers.append((answer, timing))
            rows.append(answer)
            flags.append(self.uncertain(answer))
            if flags[-1] and self.review is not None:
                self.writer.submit(self.to_review, items[i], answer)
        if rows:
            self.monitor.scored(rows, flags)
        return answers

    def to_review(self, item: tuple, answer: dict) -> None:
        data, kind, name, _ = item
        try:
            written = self.review.add(data, kind, {"received_as": name, **answer})
        except OSError as e:  # a full disk must not stop the service: counted, and said once per image
            print(f"warning: review queue {self.review_dir}: cannot write ({e})", file=sys.stderr, flush=True)
            self.monitor.review.labels("failed").inc()
            return
        self.monitor.review.labels("written" if written else "refused_full").inc()

    async def predict(self, images: list[tuple[bytes, str]]) -> list[dict]:
        """The answers for (data, name) images, each checked first; the first refusal is raised."""
        if not self.ready.is_set():
            raise Refused(503, "the model is still loading (its self-check runs at start): poll /v2/health/ready.")
        kinds = [image_format(data) for data, _ in images]
        loop, start = asyncio.get_running_loop(), time.perf_counter()
        decoded = [await loop.run_in_executor(self.decoder, self.predictor.decode, data) for data, _ in images]
        decode = time.perf_counter() - start
        self.monitor.decode_time.observe(decode)
        items = [(data, kind, name, array) for (data, name), kind, array in zip(images, kinds, decoded)]
        results = await asyncio.gather(*(self.batcher.submit(item) for item in items), return_exceptions=True)
        for i, result in enumerate(results):
            if isinstance(result, Exception):
                if isinstance(result, Refused) and len(results) > 1:
                    raise Refused(result.status, f"image {i} of the request: {result.message}")
                raise result
        timing = TIMING.get(None)
        if timing is not None:  # the request's Server-Timing: its decoding, and its slowest image's batch
            timing["decode"] = decode
            for name in ("engine", "score"):
                timing[name] = max(t[name] for _, t in results)
        return [answer for answer, _ in results]


def v2_images(head: dict, binary: bytes) -> list[bytes]:
    """The encoded images of a v2 infer request: its one BYTES input `image_bytes`, as base64 strings in `data`,
    or, with parameters.binary_data_size, as Triton's binary tensor (4-byte little-endian length + bytes each)."""
    inputs = head.get("inputs") if isinstance(head, dict) else None
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise Refused(400, f'"inputs" must hold one tensor, {{"name": "{INPUT}", "datatype": "BYTES", ...}}.')
    tensor = inputs[0]
    if tensor.get("name") != INPUT or tensor.get("datatype") != "BYTES":
        raise Refused(
            400,
            f'the input must be named "{INPUT}" with datatype BYTES (got {tensor.get("name")!r}, '
            f"{tensor.get('datatype')!r}).",
        )
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size != len(binary):
            raise Refused(400, f"binary_data_size {size!r} does not match the {len(binary)} bytes after the JSON.")
        images, at = [], 0
        while at + 4 <= len(binary):
            (n,) = struct.unpack_from("<I", binary, at)
            images.append(binary[at + 4 : at + 4 + n])
            at += 4 + n
        if at != len(binary):
            raise Refused(400, "the binary BYTES tensor is cut short (each element: 4-byte length, then the bytes).")
    else:
        data = tensor.get("data")
        data = [data] if isinstance(data, str) else data
        if not isinstance(data, list) or not data or not all(isinstance(x, str) for x in data):
            raise Refused(400, '"data" must be a list of base64 strings, one encoded JPEG or PNG each.')
        try:
            images = [base64.b64decode(x, validate=True) for x in data]
        except binascii.Error as e:
            raise Refused(400, f'an element of "data" is not base64 ({e}).') from None
    if not images:
        raise Refused(400, f"the input {INPUT} holds no image.")
    return images


def v2_answer(answers: list[dict], request_id) -> dict:
    """A v2 infer response: one output tensor per field (FP32 numbers, INT64 integers, BYTES strings; a
    missing box is -1), the fields common to all images as parameters."""
    common = {k: answers[0][k] for k in (*META_FIELDS, "threshold", "class_thresholds") if k in answers[0]}
    outputs = []
    for name in answers[0]:
        if name in common or name in ("model_name", "model_version"):
            continue
        values = [a[name] for a in answers]
        kind = {str: "BYTES", bool: "INT64", int: "INT64"}.get(type(next((v for v in values if v is not None), 0.0)))
        kind = kind or "FP32"
        values = [-1 if v is None and kind == "INT64" else v for v in values]
        outputs.append({"name": name, "datatype": kind, "shape": [len(values)], "data": values})
    reply = {
        "model_name": MODEL_NAME,
        "model_version": answers[0]["model_version"],
        "parameters": common,
        "outputs": outputs,
    }
    return {**reply, "id": request_id} if request_id is not None else reply


def check_model(name: str) -> None:
    if name != MODEL_NAME:
        raise Refused(404, f'no model named "{name}" here; this service serves "{MODEL_NAME}".')


async def answer(service: Service, endpoint: str, work) -> Response:
    """`work()`'s JSON, or its refusal as {"error": ...} with its status; counted and timed in the metrics, and
    timed in a Server-Timing header (W3C Server Timing, ms): `total` (in the service), and for a scored request
    `decode` (its images), `score` (its batch's engine call and answers) and `engine` (that call alone)."""
    start, timing = time.perf_counter(), {}
    TIMING.set(timing)
    try:
        body, status = await work(), 200
    except Refused as e:
        body, status = {"error": e.message}, e.status
    timing["total"] = time.perf_counter() - start
    service.monitor.request(endpoint, status, timing["total"])
    header = ", ".join(f"{name};dur={seconds * 1000:.3f}" for name, seconds in timing.items())
    return JSONResponse(body, status, headers={"Server-Timing": header})


async def model_metadata(service: Service, name: str) -> dict:
    check_model(name)
    p = service.predictor
    if p is None:
        raise Refused(503, "the model is still loading: poll /v2/health/ready.")
    boxes = ["box_x0", "box_y0", "box_x1", "box_y1"]
    outputs = [
        *(["probability", "predicted"] if "probability" in p.outputs else []),
        *[f"p_{n}" for n in p.class_names],
        *(["classes"] if p.class_names else []),
        *(["defect_area_share", *boxes] if p.map_threshold is not None else []),
    ]
    kinds = {"predicted": "INT64", "classes": "BYTES", **dict.fromkeys(boxes, "INT64")}
    return {
        "name": MODEL_NAME,
        "versions": [p.version],
        "platform": p.engine,
        "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": n, "datatype": kinds.get(n, "FP32"), "shape": [-1]} for n in outputs],
        "parameters": {"precision": p.precision, "image_size": list(p.image_size), "threshold": p.threshold},
    }


async def infer(service: Service, name: str, request: Request) -> dict:
    """POST /v2/models/{name}/infer: JSON, or a JSON header + binary tensors (Inference-Header-Content-Length)."""
    check_model(name)
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if kind not in ("application/json", "application/octet-stream") or "content-encoding" in request.headers:
        raise Refused(
            415,
            f"{kind}: send v2 JSON (application/json, uncompressed), with the image as a "
            f'BYTES input "{INPUT}" (base64 strings, or Triton\'s binary extension).',
        )
    body = await read_body(request)
    split = request.headers.get("inference-header-content-length")
    at = int(split) if split and split.isdigit() and int(split) <= len(body) else len(body)
    try:
        head = json.loads(body[:at])
    except ValueError as e:
        raise Refused(400, f"the request is not JSON ({e}).") from None
    images = v2_images(head, body[at:])
    answers = await service.predict([(data, f"{name} request image {i}") for i, data in enumerate(images)])
    return v2_answer(answers, head.get("id") if isinstance(head, dict) else None)


async def predict(service: Service, request: Request) -> dict:
    """POST /predict: a multipart form's field `image`, or the image as the body."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ("multipart/form-data", *IMAGE_TYPES):
        raise Refused(
            415,
            f"content type {kind or '(none)'!r}: send a multipart form with the field "
            "`image` (curl -F image=@x.jpg), or the image itself as image/jpeg or image/png.",
        )
    body, name = await read_body(request), "request body"
    if kind == "multipart/form-data":
        body, name = await form_image(request, body)
    return (await service.predict([(body, name)]))[0]


def build_app(service: Service) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app):
        service.batcher.start()
        threading.Thread(target=service.load, name="load", daemon=True).start()
        yield
        await service.batcher.stop()
        service.decoder.shutdown(wait=True)
        service.writer.shutdown(wait=True)

    app = FastAPI(title="steeldefect", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):  # unknown paths and methods: JSON like every other error
        return JSONResponse({"error": f"{request.method} {request.url.path}: {e.detail}"}, e.status_code)

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        if service.ready.is_set():
            return {"ready": True}
        return JSONResponse({"ready": False, "reason": "loading the model and running its self-check"}, 503)

    @app.get("/v2")
    async def server_metadata():
        version = importlib.metadata.version("steeldefect")
        return {"name": "steeldefect", "version": version, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/models/{name}")
    async def metadata(name: str):
        return await answer(service, "metadata", lambda: model_metadata(service, name))

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str):
        async def work():
            await model_metadata(service, name)  # 404 or 503 until ready
            return {"name": name, "ready": True}

        return await answer(service, "ready", work)

    @app.post("/v2/models/{name}/infer")
    async def infer_route(name: str, request: Request):
        return await answer(service, "infer", lambda: infer(service, name, request))

    @app.post("/predict")
    async def predict_route(request: Request):
        return await answer(service, "predict", lambda: predict(service, request))

    @app.get("/metrics")
    async def metrics():
        return Response(service.monitor.text(), media_type=CONTENT_TYPE_LATEST)

    return app


async def form_image(request: Request, body: bytes) -> tuple[bytes, str]:
    """The `image` field of a multipart body already read (bounded by read_body), and its file name."""

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=10)
    except HTTPException as e:
        raise Refused(400, f"not a multipart form ({e.detail}).") from None
    field = form.get("image")
    if field is None:
        raise Refused(400, f"no form field `image` (got {', '.join(form.keys()) or 'none'}): curl -F image=@x.jpg.")
    if isinstance(field, str):
        return field.encode(), "form field image"
    return await field.read(), field.filename or "form field image"


def serve(
    model_dir: Path,
    host: str,
    port: int,
    engine: str | None,
    max_batch: int,
    max_delay_ms: float,
    threshold=None,
    class_threshold=None,
    review_dir=None,
    review_band=None,
    review_cap: int = 1000,
) -> int:
    """Run the service until SIGTERM or Ctrl-C; 0 after a drained SIGTERM, UserError when the model cannot be
    loaded or its self-check fails."""
    predictor_args = {"engine": engine, "threshold": threshold, "class_threshold": class_threshold}
    service = Service(
        Path(model_dir), max_batch, max_delay_ms / 1000, predictor_args, review_dir, review_band, review_cap
    )
    config = uvicorn.Config(
        build_app(service), host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=None
    )
    service.server = server = uvicorn.Server(config)
    print(f"steeldefect serve: http://{host}:{port}, loading the model in {model_dir}", flush=True)
    # uvicorn drains on SIGTERM, then raises the signal again under the handler found at start: make that a no-op,
    # so a drained stop exits 0
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    except SystemExit:  # uvicorn's way out when it cannot bind (it logged why)
        raise UserError(f"cannot listen on {host}:{port} (see the message above): is the port in use?") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    if service.failure is not None:
        raise service.failure
    print("steeldefect serve: stopped", flush=True)
    return 0
