"""The demo Space: pushed to the loopback Hub as a space repo linked to its model, and its app, started on 127.0.0.1
where hf_unified cannot be imported, answers a gradio_client call with the pipeline's scores."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import _BLOCK_PACKAGE
from huggingface_hub import constants
from huggingface_hub.repocard import metadata_load
from PIL import Image
from test_hub_models import save_tiny_unicl
from transformers import pipeline

from hf_unified.hub.push import push_folder
from hf_unified.hub.endpoint import HANDLER_FILE
from hf_unified.hub.space import APP_FILE, CONFIG_FILE, IMAGE_PROCESSING_FILE, push_space, space_files

TOKEN = "hf_" + "SpaceTokenThatMustNeverBePrinted0123"
MODEL_ID = "test-org/unicl-tiny"
LABELS = "red circle, blue square, green triangle"


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, tiny_clip_tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("space") / "unicl-tiny"
    save_tiny_unicl(folder, tiny_clip_tokenizer)
    return folder


@pytest.fixture
def hub(monkeypatch):
    from hub_server import FakeHub

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    with FakeHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        yield server


def test_space_is_pushed_as_a_space_repo_linked_to_the_model(model_folder, hub, tmp_path):
    push_folder(model_folder, MODEL_ID)
    result = push_space(MODEL_ID)
    space = hub.repos["spaces/test-org/unicl-tiny-demo"]
    assert space.repo_type == "space" and space.sdk == "gradio"
    assert result.repo_url == f"{hub.endpoint}/spaces/test-org/unicl-tiny-demo"
    files = hub.files("test-org/unicl-tiny-demo", repo_type="space")
    assert sorted(files) == [
        "README.md",
        APP_FILE,
        HANDLER_FILE,
        IMAGE_PROCESSING_FILE,
        "requirements.txt",
        CONFIG_FILE,
    ]
    package = Path(__file__).parents[1] / "hf_unified"
    assert files[APP_FILE] == (package / "hub" / "space_app.py").read_bytes()
    assert files[HANDLER_FILE] == (package / "hub" / "endpoint_handler.py").read_bytes()  # serves every request
    assert files[IMAGE_PROCESSING_FILE] == (package / "image_processing.py").read_bytes()  # its bounded decoding
    assert json.loads(files[CONFIG_FILE])["trust_remote_code"] is True  # the model needs its own code
    (tmp_path / "README.md").write_bytes(files["README.md"])
    metadata = metadata_load(tmp_path / "README.md")
    assert metadata["sdk"] == "gradio" and metadata["app_file"] == APP_FILE and metadata["models"] == [MODEL_ID]
    assert any(line.startswith("transformers") for line in files["requirements.txt"].decode().splitlines())
    assert all(r.authorization == f"Bearer {TOKEN}" for r in hub.requests if r.method != "HEAD")

    # With a native export the app runs that instead, without custom code; the README links both models.
    from hf_unified.hub.export import export_clip

    push_folder(export_clip(model_folder, tmp_path / "clip").output_dir, f"{MODEL_ID}-clip")
    push_space(MODEL_ID, native_model_id=f"{MODEL_ID}-clip")
    files = hub.files("test-org/unicl-tiny-demo", repo_type="space")
    config = json.loads(files[CONFIG_FILE])
    assert config["model_id"] == f"{MODEL_ID}-clip" and config["trust_remote_code"] is False
    (tmp_path / "README.md").write_bytes(files["README.md"])
    assert metadata_load(tmp_path / "README.md")["models"] == [MODEL_ID, f"{MODEL_ID}-clip"]


def test_space_push_failure_is_one_clear_message(model_folder, hub):
    from hf_unified.hub.push import HubPushError

    push_folder(model_folder, MODEL_ID)
    hub.fail_on("commit", 403)
    with pytest.raises(HubPushError) as error:
        push_space(MODEL_ID)
    message = str(error.value)
    assert "the demo Space of test-org/unicl-tiny" in message and "failed while trying to upload the files" in message
    assert "the space repository test-org/unicl-tiny-demo exists on the Hub, but no commit was made" in message
    assert TOKEN not in message
    with pytest.raises(HubPushError, match="cannot read test-org/missing's config.json"):
        push_space("test-org/missing")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_app_answers_like_the_pipeline_without_the_package(model_folder, tmp_path):
    import gradio_client  # the 'space' extra, part of 'dev'

    app_dir = tmp_path / "space"
    app_dir.mkdir()
    for name, data in space_files(str(model_folder), trust_remote_code=True, labels=LABELS).items():
        (app_dir / name).write_bytes(data)
    image = tmp_path / "shape.png"
    Image.new("RGB", (40, 40), (30, 60, 200)).save(image)

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "hf_modules"),
    }
    script = _BLOCK_PACKAGE + "\nimport runpy\nrunpy.run_path('app.py', run_name='__main__')\n"
    # `timeout` ends the server by itself even if this test dies before its own clean-up.
    server = subprocess.Popen(
        ["timeout", "300", sys.executable, "-c", script],
        cwd=app_dir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 240
        while True:  # bounded: until the app answers, exits, or the deadline passes
            if server.poll() is not None:
                pytest.fail(f"the app exited ({server.returncode}):\n{server.stdout.read()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("the app did not start within 240 s")
                time.sleep(0.5)
        client = gradio_client.Client(url, verbose=False)
        answer = client.predict(
            gradio_client.handle_file(str(image)), LABELS, "This is a photo of {}.", api_name="/classify"
        )
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    got = {entry["label"]: entry["confidence"] for entry in answer["confidences"]}
    expected = pipeline("zero-shot-image-classification", model=str(model_folder))(
        Image.open(image), candidate_labels=[label.strip() for label in LABELS.split(",")]
    )
    assert answer["label"] == expected[0]["label"]
    assert sorted(got) == sorted(entry["label"] for entry in expected)
    for entry in expected:
        assert abs(got[entry["label"]] - entry["score"]) < 1e-5
