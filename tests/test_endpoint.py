"""The Inference Endpoints handler pushed with every custom-code folder: run where hf_unified cannot be imported, it
answers what the zero-shot pipeline answers, and bad requests get a clear error in the returned JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_hub_models import save_tiny_unicl

from hf_unified.hub.endpoint import HANDLER_FILE, REQUIREMENTS_FILE, endpoint_files, handler_source
from hf_unified.hub.push import render_missing_files

LABELS = ["circle", "square", "triangle"]
DEFAULT_HYPOTHESIS_TEMPLATE = "This is a photo of {}."  # the handler's default (it is a file of the repository)


@pytest.fixture(scope="module")
def endpoint_folder(tmp_path_factory, tiny_clip_tokenizer) -> Path:
    """A saved tiny UniCL folder plus the files a push renders for it (card aside), as an endpoint receives it."""
    folder = tmp_path_factory.mktemp("endpoint") / "repo"
    model, processor = save_tiny_unicl(folder, tiny_clip_tokenizer)
    (folder / "README.md").write_text("---\nlicense: mit\n---\n")  # a card is not what this test is about
    for name, data in render_missing_files(folder, "org/model").items():
        (folder / name).write_bytes(data)

    image = Image.new("RGB", (48, 40), "white")
    image.paste((200, 30, 30), (10, 8, 30, 28))
    image.save(folder.parent / "image.png")
    # The scores the package's own model gives (in-process), the reference the handler must reproduce.
    texts = [DEFAULT_HYPOTHESIS_TEMPLATE.format(label) for label in LABELS]
    inputs = processor(text=texts, images=image, padding=True, return_tensors="pt")
    with torch.no_grad():
        scores = model(**inputs).logits_per_image.softmax(-1)[0].tolist()
    (folder.parent / "expected.json").write_text(json.dumps(dict(zip(LABELS, scores))))
    return folder


def test_custom_code_folders_get_the_handler_and_requirements(endpoint_folder):
    assert (endpoint_folder / HANDLER_FILE).read_bytes() == handler_source()
    requirements = (endpoint_folder / REQUIREMENTS_FILE).read_text().splitlines()
    assert any(line.startswith("transformers") and ">=5" in line for line in requirements), requirements
    assert any(line.startswith("torch") for line in requirements)
    assert not any("extra" in line or "pytest" in line for line in requirements)  # core requirements only
    assert set(endpoint_files()) == {HANDLER_FILE, REQUIREMENTS_FILE}
    source = handler_source().decode()
    assert "hf_unified" not in source.replace("hf-unified", "").split('"""', 2)[2]  # no import of the package


def test_handler_without_the_package_answers_like_the_pipeline(endpoint_folder, run_without_package, tmp_path):
    copy = Path(shutil.copytree(endpoint_folder, tmp_path / "repo"))
    image = endpoint_folder.parent / "image.png"
    result = run_without_package(
        f"""
        import base64, json, sys
        from PIL import Image
        sys.path.insert(0, {str(copy)!r})  # what the endpoint toolkit does with the repository folder
        from handler import EndpointHandler
        from transformers import pipeline

        handler = EndpointHandler({str(copy)!r})
        assert type(handler.classifier.model).__module__.startswith("transformers_modules")
        raw = open({str(image)!r}, "rb").read()
        pil = Image.open({str(image)!r})
        labels = {LABELS!r}
        b64 = base64.b64encode(raw).decode()

        def ask(inputs, **parameters):
            return handler({{"inputs": inputs, "parameters": {{"candidate_labels": labels, **parameters}}}})

        answers = {{
            "pil": ask(pil),
            "bytes": ask(raw, candidate_labels=", ".join(labels)),
            "base64": ask(b64),
            "data_uri": ask("data:image/png;base64," + b64),
            "template": ask(raw, hypothesis_template="a drawing of a {{}}"),
        }}
        classifier = pipeline("zero-shot-image-classification", model={str(copy)!r}, trust_remote_code=True)
        answers["pipeline"] = classifier(pil, candidate_labels=labels)
        answers["pipeline_template"] = classifier(
            pil, candidate_labels=labels, hypothesis_template="a drawing of a {{}}"
        )
        bad = {{
            "no_labels": handler({{"inputs": raw, "parameters": {{}}}}),
            "empty_labels": ask(raw, candidate_labels=" , "),
            "labels_not_strings": ask(raw, candidate_labels=[1, 2]),
            "not_an_image": ask(b"GIF89a but not really"),
            "not_base64": ask("this is text, not an image"),
            "wrong_type": ask(42),
            "no_inputs": handler({{"parameters": {{"candidate_labels": labels}}}}),
            "bad_template": ask(raw, hypothesis_template="no slot"),
        }}
        print("RESULT" + json.dumps({{"answers": answers, "bad": bad}}))
        """,
        cwd=tmp_path,
    )
    payload = json.loads(result.stdout.split("RESULT", 1)[1])
    answers, bad = payload["answers"], payload["bad"]
    pipeline_answer = answers["pipeline"]
    assert [entry["label"] for entry in pipeline_answer] == sorted(
        LABELS, key=lambda label: -{e["label"]: e["score"] for e in pipeline_answer}[label]
    )
    for kind in ("pil", "bytes", "base64", "data_uri"):
        assert [e["label"] for e in answers[kind]] == [e["label"] for e in pipeline_answer], kind
        for got, want in zip(answers[kind], pipeline_answer):
            assert abs(got["score"] - want["score"]) < 1e-6, kind
    assert answers["template"] == answers["pipeline_template"]
    expected = json.loads((endpoint_folder.parent / "expected.json").read_text())
    for entry in pipeline_answer:
        assert abs(entry["score"] - expected[entry["label"]]) < 1e-5  # = the package's own model in-process

    messages = {kind: answer["error"] for kind, answer in bad.items()}  # every bad request: {"error": ...}
    assert "candidate_labels must be a list of strings" in messages["no_labels"]
    assert "candidate_labels is empty" in messages["empty_labels"]
    assert "got [1, 2]" in messages["labels_not_strings"]
    assert "inputs is not a readable image (21 bytes" in messages["not_an_image"]
    assert "not base64-encoded image bytes" in messages["not_base64"]
    assert "inputs must be an image, got int" in messages["wrong_type"]
    assert "the request has no 'inputs'" in messages["no_inputs"]
    assert "hypothesis_template must be a string with one '{}'" in messages["bad_template"]
    assert all('{"inputs":' in m for k, m in messages.items() if k != "bad_template")  # says what to send
