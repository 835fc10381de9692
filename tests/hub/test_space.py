"""The demo Space: pushed to the loopback Hub as a space repo linked to its model, and its app, started on 127.0.0.1
where hf_unified cannot be imported, answers a gradio_client call with the pipeline's scores, and every bad request
with its own message (`gradio.Error`) while it goes on serving."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import _BLOCK_PACKAGE
from hostile_inputs import CAP_ADDRESS_SPACE, grey16_png, png_bytes, png_header, thin_png, ztxt_bomb_png
from huggingface_hub import constants
from huggingface_hub.repocard import metadata_load
from PIL import Image
from test_hub_models import save_tiny_unicl
from transformers import pipeline

from hf_unified.hub.endpoint import HANDLER_FILE
from hf_unified.hub.push import push_folder
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
    package = Path(__file__).parents[2] / "hf_unified"
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


def test_a_new_space_is_private_unless_asked(model_folder, hub, capsys):
    """Before, `python -m hf_unified.hub.space` created the Space public unless --private was given."""
    from hf_unified.hub.space import main

    push_folder(model_folder, MODEL_ID)
    assert main([MODEL_ID]) == 0
    assert main([MODEL_ID, "--space_id", "test-org/public-demo", "--hub_private", "false"]) == 0
    created = [json.loads(r.body) for r in hub.requests if r.path == "/api/repos/create"]
    assert [(c["name"], c.get("visibility")) for c in created if c.get("type") == "space"] == [
        ("unicl-tiny-demo", "private"),
        ("public-demo", "public"),
    ]
    assert hub.repos["spaces/test-org/unicl-tiny-demo"].private
    assert not hub.repos["spaces/test-org/public-demo"].private
    assert "pushed the Space" in capsys.readouterr().out


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


@pytest.mark.skipif(not Path("/proc/self/statm").is_file(), reason="the address-space cap reads /proc (Linux)")
def test_app_answers_like_the_pipeline_without_the_package(model_folder, tmp_path):
    """The app, under an address-space cap (a gigabyte allocation fails at once), answers like the pipeline, shows
    its own message for every bad request (the hostile images of the attack among them) and goes on serving."""
    import gradio_client  # the 'space' extra, part of 'dev'
    from gradio_client.exceptions import AppError

    app_dir = tmp_path / "space"
    app_dir.mkdir()
    for name, data in space_files(str(model_folder), trust_remote_code=True, labels=LABELS).items():
        (app_dir / name).write_bytes(data)
    image = tmp_path / "shape.png"
    Image.new("RGB", (40, 40), (30, 60, 200)).save(image)
    payloads = {
        "thin": thin_png(),
        "bomb": png_header(20_000, 10_000),
        "144mp": png_header(12_000, 12_000),
        "ztxt": ztxt_bomb_png(),
        "not-an-image": b"GIF89a, but not really",
        "grey16": grey16_png(0.46),
        "grey8": png_bytes(Image.new("L", (16, 12), 117)),
    }
    for name, payload in payloads.items():
        (tmp_path / f"{name}.png").write_bytes(payload)

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "hf_modules"),
    }
    script = (
        _BLOCK_PACKAGE
        + CAP_ADDRESS_SPACE
        + "import gradio, torch, transformers\ncap_address_space(3)\n"
        + "import runpy\nrunpy.run_path('app.py', run_name='__main__')\n"
    )
    log = tmp_path / "app.log"  # a file, not a pipe nobody reads while the app runs
    # `timeout` ends the server by itself even if this test dies before its own clean-up.
    with log.open("w") as output:
        server = subprocess.Popen(
            ["timeout", "300", sys.executable, "-c", script], cwd=app_dir, env=env, stdout=output, stderr=output
        )
    url = f"http://127.0.0.1:{port}/"
    errors, answers = {}, {}
    try:
        deadline = time.monotonic() + 240
        while True:  # bounded: until the app answers, exits, or the deadline passes
            if server.poll() is not None:
                pytest.fail(f"the app exited ({server.returncode}):\n{log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("the app did not start within 240 s")
                time.sleep(0.5)
        client = gradio_client.Client(url, verbose=False)
        with urllib.request.urlopen(url + "config", timeout=30) as response:  # what the page draws
            components = [component["type"] for component in json.loads(response.read())["components"]]

        def ask(path, labels=LABELS, template="This is a photo of {}."):
            return client.predict(gradio_client.handle_file(str(path)), labels, template, api_name="/classify")

        answer = ask(image)
        bad = {name: (tmp_path / f"{name}.png", LABELS, "This is a photo of {}.") for name in list(payloads)[:5]}
        bad |= {
            "label_of_5000_characters": (image, "x" * 5000, "This is a photo of {}."),
            "too_many_labels": (image, ", ".join(f"label {index}" for index in range(101)), "{}"),
            "no_labels": (image, " , ", "{}"),
            "template_with_other_fields": (image, LABELS, "a {} of {animal}"),
        }
        for name, request in bad.items():
            try:
                ask(*request)
                errors[name] = "answered"
            except AppError as error:
                errors[name] = str(error)
        for name in ("grey16", "grey8"):
            answers[name] = ask(tmp_path / f"{name}.png")
        answers["after_the_bad_requests"] = ask(image)
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

    # The handler's own messages, not gradio's generic error; and the app still answers, the same.
    messages = {
        "thin": "the image is 1000000 x 1, an aspect ratio of 1,000,000:1, more than max_aspect_ratio=20",
        "bomb": "inputs is too large an image to classify: the image is larger than PIL accepts",
        "144mp": "the image is 12000 x 12000 = 144,000,000 pixels, more than max_image_pixels=64,000,000",
        "ztxt": "inputs is not a readable image (19551 bytes: ValueError: Decompressed data too large",
        "not-an-image": "inputs is not a readable image (22 bytes: UnidentifiedImageError",
        "label_of_5000_characters": "is 5,000 characters; at most 1000 are read",
        "too_many_labels": "candidate_labels has 101 labels; at most 100 are scored",
        "no_labels": "candidate_labels is empty: give at least one label",
        "template_with_other_fields": "hypothesis_template must be a string with one '{}' where the label goes",
    }
    for name, message in messages.items():
        assert message in errors[name], (name, errors[name])
    assert answers["after_the_bad_requests"] == answer
    assert "image" in components and "uploadedimage" not in components  # gradio's own image input on the page
    grey16 = {entry["label"]: entry["confidence"] for entry in answers["grey16"]["confidences"]}
    grey8 = {entry["label"]: entry["confidence"] for entry in answers["grey8"]["confidences"]}
    assert grey16.keys() == grey8.keys() and all(abs(grey16[k] - grey8[k]) < 1e-6 for k in grey8)
