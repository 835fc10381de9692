"""The Inference Endpoints route that works with transformers 5 (issue 26): the custom container's server
(`hf_unified/hub/endpoint_server.py`, `endpoint/Dockerfile`) answers real HTTP requests on 127.0.0.1 through the
folder's `handler.py`, with 4xx statuses for bad requests; and the pipeline the default toolkit would build from
`HF_TASK` / `HF_TRUST_REMOTE_CODE` serves every model type, so the no-handler route works once the toolkit runs
transformers 5."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import _BLOCK_PACKAGE, free_port
from packaging.requirements import Requirement
from PIL import Image
from tiny_models import tiny_model

import hf_unified.hub.endpoint_server as endpoint_server
from hf_unified.hub.push import render_missing_files
from hf_unified.processing_msclip import MSCLIPProcessor
from hf_unified.processing_unicl import UniCLProcessor
from hf_unified.processing_uniclip import UniCLIPProcessor

ROOT = Path(__file__).resolve().parents[2]
SERVER = Path(endpoint_server.__file__)
LABELS = ["circle", "square", "triangle"]
TEMPLATE = "This is a photo of {}."  # the pipeline's and the handler's default
PROCESSORS = {"unicl": UniCLProcessor, "uniclip": UniCLIPProcessor, "msclip": MSCLIPProcessor}


def _image() -> Image.Image:
    image = Image.new("RGB", (48, 40), "white")
    image.paste((200, 30, 30), (10, 8, 30, 28))
    return image


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_clip_tokenizer) -> dict[str, dict]:
    """A saved tiny folder of each model type with the files a push adds (handler.py, requirements.txt), and the
    zero-shot scores the package's own model gives for `LABELS` on `_image()`."""
    root = tmp_path_factory.mktemp("endpoint-server")
    _image().save(root / "image.png")
    saved = {}
    for model_type, processor_class in PROCESSORS.items():
        folder = root / model_type
        model = tiny_model(model_type)
        processor = processor_class(processor_class.default_image_processor(32), tiny_clip_tokenizer)
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        (folder / "README.md").write_text("---\nlicense: mit\n---\n")
        for name, data in render_missing_files(folder, f"org/{model_type}").items():
            (folder / name).write_bytes(data)
        inputs = processor(
            text=[TEMPLATE.format(label) for label in LABELS], images=_image(), padding=True, return_tensors="pt"
        )
        with torch.no_grad():
            scores = model(**inputs).logits_per_image.softmax(-1)[0].tolist()
        saved[model_type] = {"folder": folder, "scores": dict(zip(LABELS, scores))}
    return saved


class Server:
    """`endpoint_server.py` run as the container runs it (a fresh Python where `hf_unified` cannot be imported)."""

    def __init__(self, model_dir: Path, cwd: Path, *options: str):
        self.port = free_port()
        code = _BLOCK_PACKAGE + (
            "import runpy, sys\n"
            f"sys.argv = ['endpoint_server.py', '--model_dir', {str(model_dir)!r}, '--host', '127.0.0.1', "
            f"'--port', '{self.port}', *{list(options)!r}]\n"
            f"runpy.run_path({str(SERVER)!r}, run_name='__main__')\n"
        )
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env |= {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(cwd / "hf_modules")}
        self.log = cwd / "server.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", code], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=log, text=True
            )
        line = self.process.stdout.readline()  # the server prints one line when it listens (or fails to start)
        if "serving" not in line:
            self.process.kill()
            raise AssertionError(line + self.log.read_text())

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def post_json(self, data) -> tuple[int, object]:
        return self.request("POST", "/", json.dumps(data).encode(), {"Content-Type": "application/json"})

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def _scores(answer: list[dict]) -> dict[str, float]:
    return {entry["label"]: entry["score"] for entry in answer}


def test_container_server_answers_http_requests_through_the_handler(folders, tmp_path):
    """Real HTTP on 127.0.0.1: the handler's answer equals the package model's scores (JSON with base64, and raw
    image bytes with the labels in the query string); every bad request gets a 4xx status and an error that says what
    to send, and the server goes on serving."""
    folder = Path(shutil.copytree(folders["unicl"]["folder"], tmp_path / "repository"))
    expected = folders["unicl"]["scores"]
    raw = (folders["unicl"]["folder"].parent / "image.png").read_bytes()
    server = Server(folder, tmp_path, "--max_body_bytes", "200000")
    try:
        assert server.request("GET", "/health") == (200, {"status": "ok"})
        request = {"inputs": base64.b64encode(raw).decode(), "parameters": {"candidate_labels": LABELS}}
        status, answer = server.post_json(request)
        assert status == 200, answer
        for label, score in _scores(answer).items():
            assert abs(score - expected[label]) < 1e-5, (label, score, expected[label])
        status, answer = server.request(
            "POST", "/predict?candidate_labels=circle,square,triangle", raw, {"Content-Type": "image/png"}
        )
        assert status == 200 and set(_scores(answer)) == set(LABELS), answer

        bad = {
            "no labels": (lambda: server.post_json({"inputs": request["inputs"]}), 400, "candidate_labels"),
            "not an image": (
                lambda: server.post_json({"inputs": "aGVsbG8=", "parameters": {"candidate_labels": LABELS}}),
                400,
                "not a readable image",
            ),
            "not JSON": (
                lambda: server.request("POST", "/", b"{inputs", {"Content-Type": "application/json"}),
                400,
                "not valid JSON",
            ),
            "a JSON list": (lambda: server.post_json([1, 2]), 400, "JSON object"),
            "too large": (
                lambda: server.request("POST", "/", b"x" * 200_001, {"Content-Type": "application/json"}),
                413,
                "at most 200,000",
            ),
            "text body": (lambda: server.request("POST", "/", b"hi", {"Content-Type": "text/plain"}), 415, "image"),
            "unknown route": (lambda: server.request("GET", "/models"), 404, "no route"),
        }
        for name, (send, status_expected, text) in bad.items():
            status, answer = send()
            assert status == status_expected and text in answer["error"], (name, status, answer)
        status, answer = server.post_json(request)  # still serving
        assert status == 200 and set(_scores(answer)) == set(LABELS)
    finally:
        server.stop()


def test_container_server_refuses_a_folder_without_a_model(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SERVER), "--model_dir", str(tmp_path), "--host", "127.0.0.1", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and f"cannot serve {tmp_path}" in done.stderr and "config.json" in done.stderr
    assert "Traceback" not in done.stderr


TOOLKIT = """
import json, os, sys
from PIL import Image
from transformers import pipeline

# The default toolkit's route for a repository without handler.py: HuggingFaceHandler(model_dir, task) builds
# get_pipeline(task=HF_TASK, model_dir) with trust_remote_code from HF_TRUST_REMOTE_CODE and, for image tasks,
# feature_extractor=model_dir on the CPU (device -1); a request is called as pipeline(inputs, **parameters).
task = os.environ["HF_TASK"]
trust_remote_code = os.environ.get("HF_TRUST_REMOTE_CODE", "0").lower() in ("1", "true")
image, labels, answers = Image.open(sys.argv[1]), json.loads(sys.argv[2]), {}
for model_dir in sys.argv[3:]:
    try:
        hf_pipeline = pipeline(
            task=task, model=model_dir, device=-1, feature_extractor=model_dir, trust_remote_code=trust_remote_code
        )
    except ValueError as error:
        answers[model_dir] = {"refused": str(error)}
        continue
    data = {"inputs": image, "parameters": {"candidate_labels": labels}}
    inputs, parameters = data.pop("inputs", data), data.pop("parameters", None)
    answers[model_dir] = {"model": type(hf_pipeline.model).__module__, "answer": hf_pipeline(inputs, **parameters)}
print(json.dumps(answers))
"""


def test_the_default_toolkits_pipeline_serves_every_model_type(folders, tmp_path):
    """What the toolkit builds from HF_TASK=zero-shot-image-classification and HF_TRUST_REMOTE_CODE=1 (without this
    package) answers the package model's scores on UniCL, UniCLIP and MS-CLIP folders; without HF_TRUST_REMOTE_CODE
    it refuses and runs no code. (The toolkit itself cannot be installed beside transformers 5: its route is replayed
    here, so that it is known to work the day the toolkit runs transformers 5.)"""
    image = next(iter(folders.values()))["folder"].parent / "image.png"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_TRUST_REMOTE_CODE")}
    env |= {
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "HF_TASK": endpoint_server.DEFAULT_TASK,
    }

    def run(folder_paths: list[str], **extra) -> dict:
        command = [sys.executable, "-c", _BLOCK_PACKAGE + TOOLKIT, str(image), json.dumps(LABELS), *folder_paths]
        done = subprocess.run(command, cwd=tmp_path, env=env | extra, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    unicl = str(folders["unicl"]["folder"])
    assert "trust_remote_code" in run([unicl])[unicl]["refused"] and not (tmp_path / "modules").exists()
    served = run([str(entry["folder"]) for entry in folders.values()], HF_TRUST_REMOTE_CODE="1")
    for model_type, entry in folders.items():
        answer = served[str(entry["folder"])]
        assert answer["model"].startswith("transformers_modules"), (model_type, answer)
        for label, score in _scores(answer["answer"]).items():
            assert abs(score - entry["scores"][label]) < 1e-5, (model_type, label, score, entry["scores"][label])


def _requirements(text: str) -> set[str]:
    return {str(Requirement(line)) for line in text.splitlines() if line.strip() and not line.startswith("#")}


def test_container_and_pushed_requirements_are_the_declared_core_requirements():
    """`endpoint/requirements.txt` (installed by `endpoint/Dockerfile`) and the `requirements.txt` every push writes
    (endpoint and Space) hold the core dependencies of pyproject.toml with its floors (transformers 5.20, torch 2.6:
    versions run); a stale install of the package would push old floors, and fails here. The Dockerfile copies the
    server the tests above run."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    from hf_unified.hub.endpoint import REQUIREMENTS_FILE, endpoint_files

    declared = {
        str(Requirement(line))
        for line in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    assert {"torch<=2.14.1,>=2.6", "transformers<6,>=5.20"} <= declared
    assert _requirements((ROOT / "endpoint" / "requirements.txt").read_text()) == declared
    assert _requirements(endpoint_files()[REQUIREMENTS_FILE].decode()) == declared
    dockerfile = (ROOT / "endpoint" / "Dockerfile").read_text()
    assert "COPY hf_unified/hub/endpoint_server.py" in dockerfile and "endpoint/requirements.txt" in dockerfile


def test_container_server_serves_a_native_export_through_the_toolkits_pipeline(folders, tmp_path):
    """A folder without handler.py (the native CLIP export: no custom code, so served in this process) is served by
    the pipeline the toolkit builds, with the scores of the model it was exported from; a request the pipeline cannot
    serve is a 4xx, not a crash."""
    import threading

    from hf_unified.hub.export import export_clip

    export_clip(folders["unicl"]["folder"], tmp_path / "clip")
    assert not (tmp_path / "clip" / "handler.py").exists()
    expected = folders["unicl"]["scores"]
    raw = (folders["unicl"]["folder"].parent / "image.png").read_bytes()
    server = endpoint_server.build_server(endpoint_server.load_handler(tmp_path / "clip", environ={}), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = Server.__new__(Server)  # its request helpers, on this in-process server
    client.port = server.server_address[1]
    try:
        status, answer = client.request("POST", "/?candidate_labels=circle,square", raw, {"Content-Type": "image/png"})
        assert status == 200 and set(_scores(answer)) == {"circle", "square"}, answer
        status, answer = client.post_json({"inputs": "aGVsbG8=", "parameters": {"candidate_labels": LABELS}})
        assert 400 <= status < 500, (status, answer)
        request = {"inputs": base64.b64encode(raw).decode(), "parameters": {"candidate_labels": LABELS}}
        status, answer = client.post_json(request)
        assert status == 200, answer
        for label, score in _scores(answer).items():
            assert abs(score - expected[label]) < 1e-5, (label, score, expected[label])
    finally:
        server.shutdown()
        server.server_close()
