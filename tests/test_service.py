"""`steeldefect serve`: the real service in a subprocess (one for the module, on the tiny pipeline's model), over
real HTTP (httpx, tritonclient, raw sockets): its answers are `steeldefect predict`'s, bad input is a 4xx JSON
error, readiness, metrics, the review queue and its cap, SIGTERM drains; the drift reference export writes."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from steeldefect.errors import UserError
from steeldefect.serve import drift
from steeldefect.serve.cli import main
from steeldefect.serve.service import MAX_BODY

STEELDEFECT = Path(sys.executable).parent / "steeldefect"
CAP = 3  # the review queue's cap; the band 0,1 sends every image there
FIELDS = ["probability", "predicted", "engine", "precision"]  # the tiny model's CSV columns but path and error


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(models: Path, log: Path, *args: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [str(STEELDEFECT), "serve", "--model-dir", str(models), "--port", str(port), *args]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env), port


def wait_ready(proc: subprocess.Popen, port: int, log: Path, timeout: float = 180) -> list[int]:
    """The statuses /v2/health/ready gave until it said ready."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"serve exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            seen.append(httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=5).status_code)
        except httpx.TransportError:
            pass
        if seen and seen[-1] == 200:
            return seen
        time.sleep(0.1)
    raise AssertionError(f"not ready in {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def service(pipeline, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    review, log = root / "review", root / "serve.log"
    args = ["--review-dir", str(review), "--review-band", "0,1", "--review-cap", str(CAP), "--max-delay-ms", "20"]
    proc, port = start(pipeline / "models", log, *args)
    try:
        seen = wait_ready(proc, port, log)
        yield {
            "proc": proc,
            "url": f"http://127.0.0.1:{port}",
            "port": port,
            "review": review,
            "seen": seen,
            "log": log,
        }
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


@pytest.fixture(scope="module")
def images(pipeline) -> list[Path]:
    return [pipeline / p for p in pd.read_csv(pipeline / "data/split/test.csv").path]


def post_image(url: str, data: bytes, kind: str = "image/jpeg") -> httpx.Response:
    return httpx.post(f"{url}/predict", content=data, headers={"Content-Type": kind}, timeout=60)


def metrics(url: str) -> dict[str, float]:
    lines = httpx.get(f"{url}/metrics", timeout=10).text.splitlines()
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in lines if line and not line.startswith("#"))}


def raw_exchange(port: int, head: bytes, parts=(), pause: float = 0.0) -> tuple[int, dict]:
    """Send `head` then `parts` (each after `pause` s) on a fresh connection; the status and JSON answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head)
        try:
            for part in parts:
                time.sleep(pause)
                sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):  # the server answered early and closed
            pass
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status, _, body = answer.partition(b"\r\n\r\n")
    return int(status.split()[1]), json.loads(body)


def request_head(length: int | None, kind: str = "image/jpeg") -> bytes:
    size = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: {kind}\r\n{size}\r\nConnection: close\r\n\r\n".encode()


@pytest.mark.slow
def test_ready_only_once_the_model_is_loaded_and_checked(service):
    seen, url = service["seen"], service["url"]
    assert seen[0] == 503 and seen[-1] == 200, seen  # listening while TensorFlow loads and the IR is checked
    assert "self-check on this CPU: passed" in service["log"].read_text()
    assert httpx.get(f"{url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{url}/v2/models/steeldefect/ready").json()["ready"] is True
    meta = httpx.get(f"{url}/v2/models/steeldefect").json()
    assert meta["inputs"] == [{"name": "image_bytes", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in meta["outputs"]] == ["probability", "predicted"] and meta["platform"] == "openvino"


@pytest.mark.slow
def test_answers_equal_steeldefect_predict(service, images, pipeline, tmp_path):
    import tritonclient.http as triton

    assert main(["predict", *map(str, images), "--model-dir", str(pipeline / "models"), "--output",
                 str(tmp_path / "p.csv"), "--no-progress"]) == 0  # fmt: skip
    expected = pd.read_csv(tmp_path / "p.csv")
    assert list(expected.columns) == ["path", *FIELDS, "error"]
    url, datas = service["url"], [p.read_bytes() for p in images]
    version = httpx.get(f"{url}/v2/models/steeldefect").json()["versions"][0]
    multipart = [
        httpx.post(f"{url}/predict", files={"image": (p.name, d, "image/jpeg")}) for p, d in zip(images, datas)
    ]
    raw = [post_image(url, d) for d in datas]
    for answer in [r.json() for r in multipart + raw]:
        assert answer["model_version"] == version and answer["threshold"] == 0.5
    served = {"multipart": [r.json() for r in multipart], "raw": [r.json() for r in raw]}
    request = {"id": "7", "inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [len(datas)],
                                      "data": [base64.b64encode(d).decode() for d in datas]}]}  # fmt: skip
    v2 = httpx.post(f"{url}/v2/models/steeldefect/infer", json=request, timeout=60).json()
    assert v2["id"] == "7" and v2["model_version"] == version
    outputs = {o["name"]: o["data"] for o in v2["outputs"]}
    served["v2 json"] = [{**v2["parameters"], **{k: v[i] for k, v in outputs.items()}} for i in range(len(datas))]
    client = triton.InferenceServerClient(f"127.0.0.1:{service['port']}")
    assert client.is_server_ready() and client.get_model_metadata("steeldefect")["versions"] == [version]
    tensor = triton.InferInput("image_bytes", [len(datas)], "BYTES")
    tensor.set_data_from_numpy(np.array(datas, dtype=object))  # Triton's binary tensor extension
    result = client.infer("steeldefect", [tensor])
    served["tritonclient"] = [
        {"probability": p, "predicted": d, **result.get_response()["parameters"]}
        for p, d in zip(result.as_numpy("probability"), result.as_numpy("predicted"))
    ]
    for how, answers in served.items():
        got = pd.DataFrame(answers)[FIELDS]
        np.testing.assert_allclose(got.probability, expected.probability, atol=1e-5, err_msg=how)
        pd.testing.assert_frame_equal(got.drop(columns="probability"), expected[FIELDS[1:]], check_dtype=False)


def huge_png() -> bytes:
    """A PNG whose header says 10000x10000 (its data is 8x8: only a decoder would notice)."""
    out = io.BytesIO()
    Image.new("L", (8, 8)).save(out, "PNG")
    data = bytearray(out.getvalue())
    data[16:24] = struct.pack(">II", 10000, 10000)  # IHDR's width and height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.slow
def test_bad_input_is_a_4xx_json_error_and_the_service_goes_on(service, images):
    url, jpeg = service["url"], images[0].read_bytes()
    cases = {
        "not an image": (post_image(url, b"hello, not an image"), 400, "not an image"),
        "truncated JPEG": (post_image(url, jpeg[: len(jpeg) // 3]), 400, "not a readable image"),
        "zero bytes": (post_image(url, b""), 400, "empty (0 bytes)"),
        "10000x10000": (post_image(url, huge_png(), "image/png"), 413, "10000x10000 pixels"),
        "content type": (post_image(url, jpeg, "text/plain"), 415, "content type 'text/plain'"),
        "no image field": (httpx.post(f"{url}/predict", files={"file": ("x.jpg", jpeg)}), 400, "no form field"),
        "unknown model": (httpx.get(f"{url}/v2/models/resnet"), 404, 'no model named "resnet"'),
        "unknown model infer": (httpx.post(f"{url}/v2/models/resnet/infer", json={}), 404, "no model named"),
        "v2 not base64": (
            httpx.post(
                f"{url}/v2/models/steeldefect/infer",
                json={"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]},
            ),  # fmt: skip
            400,
            "not base64",
        ),
        "v2 wrong input": (httpx.post(f"{url}/v2/models/steeldefect/infer", json={"inputs": []}), 400, "one tensor"),
        "v2 not JSON": (httpx.post(f"{url}/v2/models/steeldefect/infer", content=b"{"), 400, "not JSON"),
        "unknown path": (httpx.get(f"{url}/v3"), 404, "GET /v3"),
    }
    for name, (response, status, message) in cases.items():
        assert response.status_code == status, (name, response.text)
        assert message in response.json()["error"], (name, response.text)
    assert post_image(url, jpeg).status_code == 200  # the worker lives on
    assert not [k for k, v in metrics(url).items() if k.startswith("steeldefect_requests_total") and 'code="5' in k]


@pytest.mark.slow
def test_a_100_mb_body_is_refused_while_reading(service):
    port = service["port"]
    status, answer = raw_exchange(port, request_head(100 * 2**20))  # refused from Content-Length: nothing read
    assert status == 413 and "104,857,600 bytes" in answer["error"]
    chunk = b"%x\r\n%s\r\n" % (2**20, b"\xff" * 2**20)
    status, answer = raw_exchange(port, request_head(None), [chunk] * (MAX_BODY // 2**20 + 8))  # no length given
    assert status == 413 and f"{MAX_BODY:,} bytes" in answer["error"]


@pytest.mark.slow
def test_a_client_that_disconnects_does_no_harm(service, images):
    port, jpeg = service["port"], images[0].read_bytes()
    with socket.create_connection(("127.0.0.1", port)) as sock:  # gone in the middle of the body
        sock.sendall(request_head(len(jpeg)) + jpeg[:1000])
    with socket.create_connection(("127.0.0.1", port)) as sock:  # gone before its answer
        sock.sendall(request_head(len(jpeg)) + jpeg)
    time.sleep(1)
    assert post_image(service["url"], jpeg).status_code == 200
    assert metrics(service["url"]).get('steeldefect_requests_total{code="499",endpoint="predict"}') == 1


@pytest.mark.slow
def test_metrics_move_with_requests(service, images):
    url = service["url"]
    before = metrics(url)
    for path in images[:2]:
        r = post_image(url, path.read_bytes())
        assert r.status_code == 200
        # W3C Server-Timing, ms: the decoding and the batch's scoring (its engine call a part) are parts of the request
        timing = {k: float(v) for k, v in (part.split(";dur=") for part in r.headers["server-timing"].split(", "))}
        assert 0 < timing["engine"] < timing["score"] and 0 < timing["decode"]
        assert timing["decode"] + timing["score"] < timing["total"]
    after = metrics(url)
    key = 'steeldefect_requests_total{code="200",endpoint="predict"}'
    assert after[key] - before.get(key, 0) == 2
    for name in ("steeldefect_batch_size_count", 'steeldefect_probability_count{output="probability"}'):
        assert after[name] - before.get(name, 0) >= (1 if "batch" in name else 2), name
    calls = after["steeldefect_batch_size_count"] - before.get("steeldefect_batch_size_count", 0)
    spent = {}
    for part in ("engine", "score"):  # one engine call and one scoring per batch; the engine's time is a part
        name = f"steeldefect_{part}_seconds"
        assert after[f"{name}_count"] - before.get(f"{name}_count", 0) == calls, name
        spent[part] = after[f"{name}_sum"] - before.get(f"{name}_sum", 0)
    assert 0 < spent["engine"] < spent["score"]
    assert after["steeldefect_decode_seconds_count"] - before.get("steeldefect_decode_seconds_count", 0) == 2
    decisions = [k for k in after if k.startswith("steeldefect_decisions_total")]
    assert sum(after[k] - before.get(k, 0) for k in decisions) == 2
    assert 'steeldefect_request_seconds_count{endpoint="predict"}' in after
    assert np.isfinite(after['steeldefect_drift_psi{output="probability"}'])  # drift_reference.json was exported
    assert after["steeldefect_uncertain_share"] == 1.0  # --review-band 0,1


@pytest.mark.slow
def test_review_queue_fills_to_its_cap_and_predict_reads_it_back(service, images, pipeline, tmp_path):
    url, review = service["url"], service["review"]
    answers = [post_image(url, p.read_bytes()).json() for p in images[: CAP + 1]]
    time.sleep(0.5)  # written by the review thread
    written = sorted(review.glob("*.jpg"))
    assert len(written) == CAP and len(list(review.glob("*.json"))) == CAP
    assert not list(review.glob(".*"))  # no temporary files left
    assert metrics(url)['steeldefect_review_images_total{outcome="refused_full"}'] >= 1
    sidecars = [json.loads(p.with_suffix(".json").read_text()) for p in written]
    assert all(s["review_band"] == [0, 1] and s["model_version"] == answers[0]["model_version"] for s in sidecars)
    args = ["predict", str(review), "--model-dir", str(pipeline / "models"), "--output", str(tmp_path / "r.csv")]
    assert main([*args, "--no-progress"]) == 0  # the .json sidecars are not images to it
    back = pd.read_csv(tmp_path / "r.csv")
    assert list(back.path) == list(map(str, written)) and back.error.isna().all()
    np.testing.assert_allclose(back.probability, [s["probability"] for s in sidecars], atol=1e-5)


@pytest.mark.slow
def test_drift_reference_is_the_validation_split_histogram(pipeline):
    reference = json.loads((pipeline / "models" / drift.DRIFT_REFERENCE).read_text())
    val = pd.read_csv(pipeline / "data/predictions/val.csv")  # the predict stage: Keras on the validation split
    assert reference["edges"] == list(drift.EDGES) and reference["counts"]["probability"] == drift.histogram(
        val.probability
    )
    assert sum(reference["counts"]["probability"]) == len(val)


def test_psi(tmp_path):
    shares = np.array([0.3, 0.2, 0.1, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.1])
    assert drift.psi(shares, shares * 1000) == pytest.approx(0, abs=1e-12)
    assert drift.psi(shares, shares[::-1] * 1000) > 0.25 and np.isnan(drift.psi(shares, np.zeros(10)))
    assert drift.histogram([0, 0.05, 0.1, 0.99, 1.0, np.nan]) == [2, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    drift.write_reference(tmp_path, {"probability": np.array([0.1, 0.9])}, "test")
    assert drift.read_reference(tmp_path)["probability"].sum() == pytest.approx(1)
    (tmp_path / drift.DRIFT_REFERENCE).write_text('{"edges": [0, 1], "counts": {}}')
    with pytest.raises(UserError, match="bin edges"):
        drift.read_reference(tmp_path)


@pytest.mark.slow
def test_refuses_to_start_when_the_self_check_fails(pipeline, tmp_path):
    models = shutil.copytree(pipeline / "models", tmp_path / "models")
    csv = models / "openvino/reference/reference.csv"
    table = pd.read_csv(csv)
    table["keras_probability"] = 1 - table.keras_probability  # the IR no longer agrees with "Keras"
    table.to_csv(csv, index=False)
    proc, _ = start(models, tmp_path / "log")
    assert proc.wait(180) == 2
    said = (tmp_path / "log").read_text()
    assert "error: " in said and "disagrees with the Keras model on this CPU" in said and "ready:" not in said


@pytest.mark.slow
def test_sigterm_drains_the_requests_in_flight(service, images):
    """The last test of the module: it stops the module's service."""
    proc, port, jpeg = service["proc"], service["port"], images[0].read_bytes()
    results = []

    def slow_client():  # half the body now, the rest after the SIGTERM
        results.append(raw_exchange(port, request_head(len(jpeg)) + jpeg[:1000], [jpeg[1000:]], pause=1.5))

    clients = [threading.Thread(target=slow_client) for _ in range(3)]
    for c in clients:
        c.start()
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(httpx.ConnectError):  # no new connections while draining
        httpx.get(f"{service['url']}/v2/health/live")
    for c in clients:
        c.join(60)
    assert [status for status, _ in results] == [200] * 3 and all("probability" in a for _, a in results)
    assert proc.wait(60) == 0
    assert "steeldefect serve: stopped" in service["log"].read_text()
