"""ONNX export: each model type's image and text encoders run in onnxruntime give the PyTorch model's normalised
embeddings (and, with the scale and bias written beside them, its logits) at two batch sizes and two text lengths;
the command refuses what it must, writes atomically, and the user guide's example runs without this package."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_model, tiny_text, tiny_vision

pytest.importorskip("onnxruntime", reason="the onnx extra (pip install 'hf-unified[onnx]') is not installed")
pytest.importorskip("onnxscript", reason="the onnx extra (pip install 'hf-unified[onnx]') is not installed")

import onnxruntime  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import AutoImageProcessor, AutoTokenizer  # noqa: E402

import hf_unified.hub.onnx_export as onnx_export  # noqa: E402
from hf_unified.files import staging_folders  # noqa: E402
from hf_unified.hub.export import export_clip  # noqa: E402
from hf_unified.hub.onnx_export import IMAGE_FILE, ONNX_INFO_FILE, TEXT_FILE, main  # noqa: E402
from hf_unified.processing_msclip import MSCLIPProcessor, msclip_image_processor  # noqa: E402
from hf_unified.processing_unicl import UniCLProcessor, unicl_image_processor  # noqa: E402
from hf_unified.processing_uniclip import UniCLIPProcessor, uniclip_image_processor  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "serving-onnx.md"
PROCESSORS = {
    "unicl": (UniCLProcessor, unicl_image_processor),
    "uniclip": (UniCLIPProcessor, uniclip_image_processor),
    "msclip": (MSCLIPProcessor, msclip_image_processor),
}
# Two batch sizes and two padded lengths (the tiny tokenizer splits these into about 4 and 12 tokens).
SHORT_TEXTS = ["a cat"]
LONG_TEXTS = ["a photo of a cat", "two dogs playing in the snow on a sunny day", "a diagram", "a red circle"]
TOLERANCE = 1e-4


def _train_like(model: torch.nn.Module) -> None:
    """Moves every parameter off its initial value, as training would (non-zero offsets, biases, codes)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))


def _save_source(kind: str, folder: Path, tokenizer) -> torch.nn.Module:
    """A tiny `kind` model (MS-CLIP: the shared stack; UniCL: Swin and BERT towers; `uniclip-mlp`: UniCLIP with the
    MLP image head) saved with its processor; `clip`
    is the native export of a UniCL model whose graph is CLIP's."""
    if kind == "clip":
        model = tiny_model("unicl", vision_pooling="pooler", text_pooling="eos")
        _train_like(model)
        processor = UniCLProcessor(unicl_image_processor(32), tokenizer)
        export_clip(model, folder, processor=processor)
        from transformers import CLIPModel

        return CLIPModel.from_pretrained(folder).eval()
    # UniCL with the towers of its released checkpoints' kind (Swin images; BERT text, pooled at [CLS]): the CLIP
    # towers are covered by UniCLIP and the native export.
    towers = dict(vision_config=tiny_vision("swin"), text_config=tiny_text("bert"), text_pooling="cls")
    model_type, overrides = MODEL_TYPES[kind], {"unicl": towers, "uniclip-mlp": MLP_HEAD}.get(kind, {})
    model = tiny_model(model_type, **overrides)
    _train_like(model)
    processor_class, image_processor = PROCESSORS[model_type]
    model.save_pretrained(folder)
    processor_class(image_processor(32), tokenizer).save_pretrained(folder)
    return model


KINDS = ["unicl", "uniclip", "uniclip-mlp", "msclip", "clip"]
MODEL_TYPES = {"uniclip-mlp": "uniclip"} | {kind: kind for kind in ("unicl", "uniclip", "msclip")}
MLP_HEAD = {"augmentation_fusion": "mlp"}  # UniCLIP's augmentation code into a 2-layer MLP image head


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_clip_tokenizer):
    """`exports(kind) -> (model, output folder)`: the command run once per model type and module (for UniCL over an
    earlier folder, with --overwrite)."""
    done = {}

    def export(kind: str):
        if kind not in done:
            root = tmp_path_factory.mktemp(kind)
            model = _save_source(kind, root / "model", tiny_clip_tokenizer)
            output = root / "onnx"
            arguments = [str(root / "model"), str(output)]
            if kind == "unicl":
                output.mkdir()
                (output / "old.txt").write_text("an earlier export")
                arguments.append("--overwrite")
            assert main(arguments) == 0
            done[kind] = model, output
        return done[kind]

    return export


def _inputs(folder: Path, texts: list[str], images: int) -> tuple[dict, dict]:
    """Text and image inputs prepared with the exported tokenizer and image processor (numpy, as a server would)."""
    tokenizer, image_processor = AutoTokenizer.from_pretrained(folder), AutoImageProcessor.from_pretrained(folder)
    text = tokenizer(texts, padding=True, truncation=True, return_tensors="np")
    generator = torch.Generator().manual_seed(images)
    pixels = (torch.rand(images, 40, 36, 3, generator=generator) * 255).to(torch.uint8).numpy()
    image = image_processor([Image.fromarray(p) for p in pixels], return_tensors="np")
    return {"input_ids": text["input_ids"], "attention_mask": text["attention_mask"]}, dict(image)


@pytest.mark.parametrize("kind", KINDS)
def test_onnxruntime_matches_pytorch(exports, kind):
    model, folder = exports(kind)
    info = json.loads((folder / ONNX_INFO_FILE).read_text())
    image_session = onnxruntime.InferenceSession(str(folder / IMAGE_FILE), providers=["CPUExecutionProvider"])
    text_session = onnxruntime.InferenceSession(str(folder / TEXT_FILE), providers=["CPUExecutionProvider"])
    similarity = info["similarity"]
    lengths = set()
    for texts, images in ((SHORT_TEXTS, 1), (LONG_TEXTS, 3)):
        text, image = _inputs(folder, texts, images)
        lengths.add(text["input_ids"].shape[1])
        (image_embeds,) = image_session.run(["image_embeds"], {"pixel_values": image["pixel_values"]})
        (text_embeds,) = text_session.run(["text_embeds"], text)
        with torch.no_grad():
            expected = model(**{name: torch.from_numpy(value) for name, value in {**text, **image}.items()})
        image_embeds, text_embeds = torch.from_numpy(image_embeds), torch.from_numpy(text_embeds)
        logits = similarity["logit_scale"] * image_embeds @ text_embeds.T + similarity["logit_bias"]
        torch.testing.assert_close(image_embeds, expected.image_embeds, rtol=0, atol=TOLERANCE)
        torch.testing.assert_close(text_embeds, expected.text_embeds, rtol=0, atol=TOLERANCE)
        # A cosine off by at most 2 * TOLERANCE, times the scale.
        logits_tolerance = 2 * TOLERANCE * max(1.0, similarity["logit_scale"])
        torch.testing.assert_close(logits, expected.logits_per_image, rtol=0, atol=logits_tolerance)
        differences = [
            (got - want).abs().max().item()
            for got, want in (
                (image_embeds, expected.image_embeds),
                (text_embeds, expected.text_embeds),
                (logits, expected.logits_per_image),
            )
        ]
        print(
            f"{kind} batch {images}/{len(texts)} length {text['input_ids'].shape[1]}: max |onnxruntime - PyTorch| "
            "image_embeds {:.1e}, text_embeds {:.1e}, logits {:.1e}".format(*differences)
        )
        assert image_embeds.shape == (images, info["projection_dim"]) and text_embeds.shape[0] == len(texts)
    assert len(lengths) == 2, lengths
    assert max(info["max_abs_difference"].values()) <= TOLERANCE


@pytest.mark.parametrize("kind", KINDS)
def test_export_folder_is_self_contained(exports, kind):
    model, folder = exports(kind)
    names = sorted(path.name for path in folder.iterdir())
    assert names == sorted(
        [IMAGE_FILE, TEXT_FILE, ONNX_INFO_FILE, "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"]
    ), names  # the weights inside the graphs, no custom code, nothing left of an earlier folder
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert "auto_map" not in tokenizer_config and "processor_class" not in tokenizer_config
    assert AutoTokenizer.from_pretrained(folder).model_max_length == 32  # the model's positions
    info = json.loads((folder / ONNX_INFO_FILE).read_text())
    assert info["source_model_type"] == (model.config.model_type)
    if kind.startswith(
        "uniclip"
    ):  # the image-text pair of the per-domain-pair similarity; a non-zero offset after training
        pair = 1
        scale, offset = model.logit_scale[pair].exp().item(), model.logit_offset[pair].item()
        assert info["similarity"]["logit_scale"] == pytest.approx(scale)
        assert info["similarity"]["logit_bias"] == pytest.approx(-scale * offset) and offset != 0
        assert "domain pair" in info["similarity"]["domain_pairs"]


def _refusal(arguments: list[str], capsys) -> str:
    """The command's exit status 1 and its one-line message (after any progress bar of transformers' loading)."""
    capsys.readouterr()  # what the test printed while preparing
    assert main(arguments) == 1
    error = capsys.readouterr().err
    assert "Traceback" not in error and "hf-unified-export-onnx: " in error, error
    message = error[error.index("hf-unified-export-onnx: ") :]
    assert message.count("\n") == 1 and message.endswith("\n"), error
    return message


def _processorless_model(folder: Path) -> Path:
    tiny_model("unicl").save_pretrained(folder)
    return folder


def test_refuses_existing_output_without_overwrite(tmp_path, capsys):
    source = _processorless_model(tmp_path / "model")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    (source / "tokenizer.json").write_text("{}")
    (source / "preprocessor_config.json").write_text("{}")
    assert "--overwrite" in _refusal([str(source), str(tmp_path / "out")], capsys)
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda folder: folder.mkdir(), "not a saved model folder (no config.json)"),
        (lambda folder: None, "is not a folder"),
        (
            lambda folder: (folder.mkdir(), (folder / "config.json").write_text('{"model_type": "bert"}')),
            "holds a 'bert' model",
        ),
        (lambda folder: (folder.mkdir(), (folder / "config.json").write_text("[1, 2")), "not a model config"),
        (_processorless_model, "has no tokenizer and no image processor"),
    ],
    ids=["no-config", "missing", "other-type", "broken-config", "no-processor"],
)
def test_refuses_what_is_not_a_model(tmp_path, capsys, make, expected):
    make(tmp_path / "model")
    error = _refusal([str(tmp_path / "model"), str(tmp_path / "out")], capsys)
    assert expected in error
    assert not (tmp_path / "out").exists()


def test_refuses_output_inside_the_model_folder(tmp_path, capsys):
    source = _processorless_model(tmp_path / "model")
    (source / "tokenizer.json").write_text("{}")
    (source / "preprocessor_config.json").write_text("{}")
    assert "inside the source model folder" in _refusal([str(source), str(source / "onnx"), "--overwrite"], capsys)


def test_a_failed_check_writes_nothing(tmp_path, capsys, monkeypatch, tiny_clip_tokenizer):
    """The graphs are checked in the staging folder; a difference over atol publishes nothing and leaves no staging
    folder (the export itself is replaced by a stub writing a partial file: the check is what is tested)."""
    _save_source("msclip", tmp_path / "model", tiny_clip_tokenizer)

    def partial_export(model, inputs, folder):
        (folder / IMAGE_FILE).write_bytes(b"partial")

    monkeypatch.setattr(onnx_export, "_export_graphs", partial_export)
    monkeypatch.setattr(onnx_export, "compare_with_onnxruntime", lambda *_: {"image_embeds": 0.5, "text_embeds": 0})
    assert "by more than atol=0.0001" in _refusal([str(tmp_path / "model"), str(tmp_path / "out")], capsys)
    assert not (tmp_path / "out").exists() and staging_folders(tmp_path / "out") == []


def test_missing_onnx_extra_is_named(monkeypatch, tmp_path, capsys):
    real = onnx_export.importlib.util.find_spec
    monkeypatch.setattr(
        onnx_export.importlib.util, "find_spec", lambda name: None if name == "onnxscript" else real(name)
    )
    assert "pip install 'hf-unified[onnx]'" in _refusal([str(tmp_path), str(tmp_path / "out")], capsys)


def test_user_guide_example_runs_without_the_package(exports, tmp_path, run_without_package):
    """docs/serving-onnx.md's Python example, run as written on the MS-CLIP export (the folder and image paths set),
    in a Python where hf_unified cannot be imported: the ONNX route needs onnxruntime and transformers' tokenizer and
    image processor only."""
    _, folder = exports("msclip")
    (code,) = re.findall(r"^```py\n(.*?)^```", GUIDE.read_text(), flags=re.S | re.M)
    image = tmp_path / "image.png"
    Image.new("RGB", (40, 36), (200, 30, 30)).save(image)
    code = code.replace('"my-model-onnx"', repr(str(folder))).replace('"cat.jpg"', repr(str(image)))
    result = run_without_package(code, tmp_path)
    probabilities = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(probabilities) == {"a photo of a cat", "a photo of a dog"}
    assert sum(probabilities.values()) == pytest.approx(1, abs=1e-3)
