"""The Inference Endpoints handler pushed with every custom-code folder: run where hf_unified cannot be imported, it
answers what the zero-shot pipeline answers, and every bad request (hostile images under an address-space cap,
malformed fields, a tokenizer's Rust panic) gets a clear error in the returned JSON while the handler goes on."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from hostile_inputs import CAP_ADDRESS_SPACE, grey16_png, png_bytes, png_header, thin_png, ztxt_bomb_png
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


@pytest.mark.skipif(not Path("/proc/self/statm").is_file(), reason="the address-space cap reads /proc (Linux)")
def test_handler_without_the_package_answers_like_the_pipeline(endpoint_folder, run_without_package, tmp_path):
    """Good requests get the pipeline's answer; every bad one (the hostile payloads of the attack among them, under an
    address-space cap that makes a gigabyte allocation fail at once) gets a clear error, and the handler goes on."""
    copy = Path(shutil.copytree(endpoint_folder, tmp_path / "repo"))
    image = endpoint_folder.parent / "image.png"
    payloads = {
        "thin": thin_png(),
        "bomb": png_header(20_000, 10_000),
        "144mp": png_header(12_000, 12_000),
        "ztxt": ztxt_bomb_png(),
        "grey16": grey16_png(0.46),
        "grey8": png_bytes(Image.new("L", (16, 12), 117)),
    }
    for name, payload in payloads.items():
        (tmp_path / f"{name}.png").write_bytes(payload)
    result = run_without_package(
        CAP_ADDRESS_SPACE
        + textwrap.dedent(
            f"""
        import base64, io, json, sys
        from PIL import Image
        sys.path.insert(0, {str(copy)!r})  # what the endpoint toolkit does with the repository folder
        from handler import EndpointHandler
        from transformers import pipeline, PreTrainedTokenizerFast
        from tokenizers import Regex, Tokenizer, pre_tokenizers
        from tokenizers.models import WordLevel

        handler = EndpointHandler({str(copy)!r})
        assert type(handler.classifier.model).__module__.startswith("transformers_modules")
        raw = open({str(image)!r}, "rb").read()
        pil = Image.open({str(image)!r})
        labels = {LABELS!r}
        b64 = base64.b64encode(raw).decode()
        payloads = {{name: open({str(tmp_path)!r} + f"/{{name}}.png", "rb").read() for name in {list(payloads)!r}}}

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
        cap_address_space(2)  # from here on, a gigabyte allocation fails at once
        panicky = Tokenizer(WordLevel({{"[UNK]": 0}}, unk_token="[UNK]"))
        panicky.pre_tokenizer = pre_tokenizers.Split(Regex("^(a|aa)+$"), behavior="removed")
        bad = {{
            "no_labels": handler({{"inputs": raw, "parameters": {{}}}}),
            "empty_labels": ask(raw, candidate_labels=" , "),
            "labels_not_strings": ask(raw, candidate_labels=[1, 2]),
            "not_an_image": ask(b"GIF89a but not really"),
            "not_base64": ask("this is text, not an image"),
            "wrong_type": ask(42),
            "no_inputs": handler({{"parameters": {{"candidate_labels": labels}}}}),
            "bad_template": ask(raw, hypothesis_template="no slot"),
            "data_uri_without_comma": ask("data:image/png;base64" + b64),
            "data_uri_not_base64": ask("data:image/png," + b64),
            "template_with_other_fields": ask(raw, hypothesis_template="a {{}} of {{animal}}"),
            "template_with_two_slots": ask(raw, hypothesis_template="{{}} and {{}}"),
            "template_format_spec": ask(raw, hypothesis_template="{{:>999999999}}"),
            "label_of_5000_characters": ask(raw, candidate_labels=["x" * 5000]),
            "too_many_labels": ask(raw, candidate_labels=[f"label {{i}}" for i in range(101)]),
            "hypothesis_too_long": ask(raw, candidate_labels=["cat " * 200]),
            "parameters_not_an_object": handler({{"inputs": raw, "parameters": "circle, square"}}),
            "ztxt_png": ask(payloads["ztxt"]),
            "bomb": ask(payloads["bomb"]),
            "144mp": ask(payloads["144mp"]),
            "thin": ask(payloads["thin"]),
            "thin_pil": ask(Image.open(io.BytesIO(payloads["thin"]))),  # as the toolkit hands over an upload
            "thin_base64": ask(base64.b64encode(payloads["thin"]).decode()),
        }}
        tokenizer = handler.classifier.tokenizer  # a tokenizer whose regex panics in Rust on this label
        handler.classifier.tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=panicky, unk_token="[UNK]", pad_token="[UNK]"
        )
        bad["tokenizer_panic"] = ask(raw, candidate_labels=["a" * 40 + "!"], hypothesis_template="{{}}")
        handler.classifier.tokenizer = tokenizer
        answers["after_the_bad_requests"] = ask(raw)
        answers["grey16"], answers["grey8"] = ask(payloads["grey16"]), ask(payloads["grey8"])
        try:
            classifier(Image.open(io.BytesIO(payloads["thin"])), candidate_labels=labels)
        except ValueError as error:  # the pipeline route: the repository's image processor refuses it
            answers["pipeline_thin"] = f"{{type(error).__name__}}: {{error}}"
        print("RESULT" + json.dumps({{"answers": answers, "bad": bad}}))
        """
        ),
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
    assert all('{"inputs":' in m for k, m in messages.items() if k != "tokenizer_panic")  # says what to send
    template_rule = "hypothesis_template must be a string with one '{}' where the label goes and no other field"
    expected = {
        "data_uri_without_comma": "inputs is a data: URI without the comma before its data",
        "data_uri_not_base64": "inputs is a data: URI that is not base64 ('data:image/png')",
        "template_with_other_fields": template_rule
        + " (write literal braces as '{{' and '}}'); got 'a {} of {animal}'",
        "template_with_two_slots": template_rule,
        "template_format_spec": template_rule,
        "label_of_5000_characters": "candidate label '" + "x" * 40 + "'... is 5,000 characters",
        "too_many_labels": "candidate_labels has 101 labels; at most 100 are scored",
        "hypothesis_too_long": "tokens; the model reads at most 77: shorten the label or the hypothesis_template",
        "parameters_not_an_object": "parameters must be an object, got str",
        "ztxt_png": "inputs is not a readable image (19551 bytes: ValueError: Decompressed data too large",
        "bomb": "inputs is too large an image to classify: the image is larger than PIL accepts",
        "144mp": "inputs is too large an image to classify: the image is 12000 x 12000 = 144,000,000 pixels",
        "thin": "the image is 1000000 x 1, an aspect ratio of 1,000,000:1, more than max_aspect_ratio=20",
        "thin_pil": "the image is 1000000 x 1, an aspect ratio of 1,000,000:1",
        "thin_base64": "the image is 1000000 x 1, an aspect ratio of 1,000,000:1",
        "tokenizer_panic": "the model failed on this request (PanicException: ",
    }
    for kind, text in expected.items():
        assert text in messages[kind], (kind, messages[kind])
    assert answers["after_the_bad_requests"] == answers["bytes"]  # still serving, the same answers
    for got, want in zip(answers["grey16"], answers["grey8"]):  # 16-bit 46% grey reads as 8-bit 117, not white
        assert got["label"] == want["label"] and abs(got["score"] - want["score"]) < 1e-6
    assert answers["pipeline_thin"].startswith("ImageTooLarge: the image is 1000000 x 1")
