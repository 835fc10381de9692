"""The contract every model of the package keeps, run over the three methods and UniCLIP's MLP image head (as
transformers' `ModelTesterMixin` and timm's `test_models.py` run theirs over every architecture): save/load round
trip, Auto classes, attention backends, gradient checkpointing, a batch of one, bad inputs, the single-modality
models and the feature-extraction pipelines, remote code without the package, hidden states and old checkpoints.

What is particular to a method (UniCL's labels, UniCLIP's views and similarity, MS-CLIP's sharing) stays in its own
test file.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from conftest import run_without_package
from PIL import Image
from safetensors.torch import load_file, save_file
from tiny_models import IMAGE_SIZE, VOCAB, batch, tiny_config, tiny_model
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
    PreTrainedModel,
    pipeline,
)

import hf_unified
from hf_unified.tokenization import train_caption_tokenizer

# The cases: (model type, config overrides). MS-CLIP's contract runs on the released architecture: conv stem,
# parallel branch with BatchNorm, partial sharing. "uniclip-mlp": the augmentation code into a 2-layer MLP head.
CASES = {
    "unicl": ("unicl", {}),
    "uniclip": ("uniclip", {}),
    "uniclip-mlp": ("uniclip", {"augmentation_fusion": "mlp"}),
    "msclip": ("msclip", {"preset": "ms-clip-s"}),
}
PREFIX = {"unicl": "UniCL", "uniclip": "UniCLIP", "msclip": "MSCLIP"}
CAPTIONS = ["a red square", "a blue circle", "a photo of a dog", "a green triangle"] * 3


def _classes(model_type: str) -> tuple[type, type, type, type]:
    """The dual encoder, its vision and text models with projection, and its processor."""
    prefix = PREFIX[model_type]
    return tuple(
        getattr(hf_unified, prefix + suffix)
        for suffix in ("Model", "VisionModelWithProjection", "TextModelWithProjection", "Processor")
    )


def _inputs(model, n: int = 3) -> dict[str, torch.Tensor]:
    """A training batch: multi-view images with augmentation parameters for augmentation-aware models."""
    views = model.config.num_views if model.config.augmentation_aware else 0
    return batch(n, views=views)


def _images(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """`(batch, channels, height, width)` images of a batch (view 0 of multi-view input)."""
    pixel_values = inputs["pixel_values"]
    return pixel_values[:, 0] if pixel_values.ndim == 5 else pixel_values


@pytest.fixture(scope="module", params=CASES)
def case(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def model_type(case) -> str:
    return CASES[case][0]


def contract_model(case: str, seed: int = 0):
    model_type, overrides = CASES[case]
    return tiny_model(model_type, seed, **overrides)


@pytest.fixture(scope="module")
def model(case):
    return contract_model(case)


@pytest.fixture(scope="module")
def tokenizer():
    return train_caption_tokenizer(CAPTIONS, vocab_size=64)


@pytest.fixture(scope="module")
def saved(case, model_type, model, tokenizer, tmp_path_factory):
    """The model saved with a processor, as a trained folder is pushed."""
    folder = tmp_path_factory.mktemp(f"{case}-tiny")
    model.save_pretrained(folder)
    processor_class = _classes(model_type)[3]
    processor_class(processor_class.default_image_processor(IMAGE_SIZE), tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def image() -> Image.Image:
    generator = torch.Generator().manual_seed(0)
    return Image.fromarray(torch.randint(0, 256, (40, 36, 3), generator=generator, dtype=torch.uint8).numpy())


# ------------------------------------------------------------------------------------------------------------------
# Save / load and the Auto classes


def test_save_load_round_trip_is_exact(model_type, model, saved):
    loaded, info = AutoModel.from_pretrained(saved, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert type(loaded) is _classes(model_type)[0]
    loaded.eval()
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():  # parameters and buffers (BN statistics, position ids)
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    inputs = _inputs(model)
    with torch.no_grad():
        expected, actual = model(**inputs, return_loss=True), loaded(**inputs, return_loss=True)
    for key in ("loss", "logits_per_image", "image_view_embeds", "text_embeds"):
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=key)
    assert (saved / "model.safetensors").is_file()
    auto_map = json.loads((saved / "config.json").read_text())["auto_map"]
    class_path = f"modeling_{model_type}.{PREFIX[model_type]}Model"
    assert auto_map["AutoModel"] == auto_map["AutoModelForZeroShotImageClassification"] == class_path
    # The remote code is the model's own files: no training module, nothing that needs torchvision.
    assert not (saved / "augmentation.py").exists()
    for code_file in saved.glob("*.py"):
        code = code_file.read_text()
        assert "import torchvision" not in code and "from torchvision" not in code, code_file.name


def test_auto_classes_resolve_the_method(model_type, saved):
    model_class, _, _, processor_class = _classes(model_type)
    config = AutoConfig.from_pretrained(saved)
    assert type(config) is model_class.config_class and config.model_type == model_type
    assert type(AutoModel.from_config(config)) is model_class
    assert type(AutoModelForZeroShotImageClassification.from_config(config)) is model_class
    assert type(AutoProcessor.from_pretrained(saved)) is processor_class


# ------------------------------------------------------------------------------------------------------------------
# Attention backends and gradient checkpointing


ATTENTION_CASES = {
    "unicl": dict(model_type="unicl"),
    "unicl-vit-bert": dict(model_type="unicl", vision="vit", text="bert", text_pooling="cls"),
    "uniclip": dict(model_type="uniclip"),
    "msclip-ms-clip-s": dict(model_type="msclip", preset="ms-clip-s"),
    "msclip-separate": dict(model_type="msclip", preset="separate"),
}


def _attention_case_config(model_type: str, vision: str = "clip", text: str = "clip", preset=None, **overrides):
    from tiny_models import tiny_text, tiny_vision

    if model_type != "msclip" and (vision, text) != ("clip", "clip"):
        overrides.update(vision_config=tiny_vision(vision), text_config=tiny_text(text))
    return tiny_config(model_type, preset, **overrides)


@pytest.mark.parametrize("case", ATTENTION_CASES)
def test_eager_and_sdpa_attention_agree(case):
    config = _attention_case_config(**ATTENTION_CASES[case])
    torch.manual_seed(0)
    eager = AutoModel.from_config(copy.deepcopy(config), attn_implementation="eager").eval()
    sdpa = AutoModel.from_config(copy.deepcopy(config), attn_implementation="sdpa").eval()
    sdpa.load_state_dict(eager.state_dict())
    # The switch reaches every tower (one config object per tower).
    for module in sdpa.modules():
        if isinstance(module, PreTrainedModel):
            assert module.config._attn_implementation == "sdpa", type(module).__name__
    for module in eager.modules():
        if isinstance(module, PreTrainedModel):
            assert module.config._attn_implementation == "eager", type(module).__name__
    inputs = _inputs(eager)
    with torch.no_grad():
        expected, actual = eager(**inputs, return_loss=True), sdpa(**inputs, return_loss=True)
    for key in ("image_view_embeds", "text_embeds", "logits_per_image", "loss"):
        torch.testing.assert_close(actual[key], expected[key], atol=1e-5, rtol=1e-4, msg=key)


def test_gradient_checkpointing_gives_the_same_gradients(case):
    plain, checkpointed = contract_model(case, seed=1).train(), contract_model(case, seed=1).train()
    checkpointed.activation_checkpointing_enable()
    assert checkpointed.is_activation_checkpointing
    towers = [m for m in checkpointed.modules() if isinstance(m, PreTrainedModel) and m is not checkpointed]
    assert all(tower.is_activation_checkpointing for tower in towers)
    inputs = _inputs(plain)
    for model in (plain, checkpointed):
        model(**inputs, return_loss=True).loss.backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        assert p.grad is not None, name
        torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-4, msg=name)


# ------------------------------------------------------------------------------------------------------------------
# A batch of one and bad inputs


def test_a_batch_of_one_has_the_defined_loss(model):
    # One item: its only candidates are its own embeddings (or, in one space, its own views and text), all
    # positives: each term is -log(1) = 0 for every variant.
    loss = model(**_inputs(model, n=1), return_loss=True).loss
    assert math.isfinite(loss.item()) and loss.item() == pytest.approx(0.0, abs=1e-6)


def test_one_item_gives_its_row_of_the_batch(model):
    inputs = _inputs(model, n=4)
    images = _images(inputs)
    with torch.no_grad():
        together = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values=images)
        for i in range(4):
            length = int(inputs["attention_mask"][i].sum())  # unpadded, as a single text is tokenised
            alone = model(
                input_ids=inputs["input_ids"][i : i + 1, :length],
                attention_mask=inputs["attention_mask"][i : i + 1, :length],
                pixel_values=images[i : i + 1],
            )
            torch.testing.assert_close(alone.text_embeds[0], together.text_embeds[i], atol=1e-5, rtol=0)
            torch.testing.assert_close(alone.image_embeds[0], together.image_embeds[i], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x: {**x, "pixel_values": (x["pixel_values"] * 50).to(torch.uint8)}, "floating-point.*processor"),
        (lambda x: {**x, "pixel_values": x["pixel_values"][..., :1, :, :]}, "1 channels, the image encoder takes 3"),
        (
            lambda x: {**x, "pixel_values": torch.zeros(*x["pixel_values"].shape[:-2], 48, 48)},
            r"32.*48|48.*32",  # the size given and the size the encoder takes
        ),
        (lambda x: {**x, "input_ids": x["input_ids"][:, :0], "attention_mask": x["attention_mask"][:, :0]}, "empty"),
        (lambda x: {**x, "input_ids": x["input_ids"] + VOCAB}, "outside the vocabulary \\[0, 600\\)"),
        (lambda x: {**x, "input_ids": x["input_ids"] - 1000}, "outside the vocabulary"),
        (
            lambda x: {
                **x,
                "attention_mask": torch.cat([torch.zeros_like(x["attention_mask"][:1]), x["attention_mask"][1:]]),
            },
            "texts \\[0\\] are empty",
        ),
        (lambda x: {**x, "attention_mask": x["attention_mask"][:, :3]}, "attention_mask .* must have the shape"),
        (lambda x: {**x, "input_ids": x["input_ids"].float()}, "integer tensor"),
        (
            lambda x: {
                **x,
                "input_ids": x["input_ids"].repeat(1, 6),
                "attention_mask": x["attention_mask"].repeat(1, 6),
            },
            "takes at most 32",
        ),
        (
            lambda x: {**x, "input_ids": x["input_ids"][:2], "attention_mask": x["attention_mask"][:2]},
            "3 images and 2 texts",
        ),
    ],
)
def test_bad_inputs_get_a_clear_value_error(model, change, message):
    with pytest.raises(ValueError, match=message):
        model(**change(_inputs(model)), return_loss=True)


def test_missing_inputs_are_named(model):
    inputs = _inputs(model)
    with pytest.raises(ValueError, match="empty batch"):
        model.get_image_features(pixel_values=torch.zeros(0, 3, IMAGE_SIZE, IMAGE_SIZE))
    with pytest.raises(ValueError, match="needs both input_ids and pixel_values"):
        model(pixel_values=inputs["pixel_values"], return_loss=True)
    with pytest.raises(ValueError, match="give input_ids, pixel_values or both"):
        model()


# ------------------------------------------------------------------------------------------------------------------
# Parameters, config views, hidden states, old checkpoints


def test_no_parameter_is_zero_dimensional_and_no_split_modules_exist(model):
    assert all(p.ndim >= 1 for p in model.parameters()), [n for n, p in model.named_parameters() if p.ndim == 0]
    classes = {type(m).__name__ for m in model.modules()}
    assert model._no_split_modules and set(model._no_split_modules) <= classes, model._no_split_modules


def test_generic_tower_config_views(model):
    config = model.config
    assert config.text_config.vocab_size == VOCAB
    assert config.vision_config.num_channels == 3 and config.vision_config.hidden_size > 0
    assert config.text_config.hidden_size > 0 and config.get_text_config().vocab_size == VOCAB


def test_hidden_states_follow_the_config_and_match_the_layer_count(saved):
    loaded = AutoModel.from_pretrained(saved, output_hidden_states=True).eval()
    inputs = {k: v for k, v in _inputs(loaded).items() if k != "labels"}
    with torch.no_grad():
        outputs = loaded(**inputs)
    text_layers = loaded.config.text_config.num_hidden_layers
    assert len(outputs.text_model_output.hidden_states) == text_layers + 1
    if loaded.config.model_type == "msclip":  # the view counts the blocks images run
        assert len(outputs.vision_model_output.hidden_states) == loaded.config.vision_config.num_hidden_layers + 1
    else:
        assert outputs.vision_model_output.hidden_states is not None
    with torch.no_grad():
        plain = loaded(**inputs, output_hidden_states=False)
    assert plain.text_model_output.hidden_states is None


def test_checkpoints_with_a_zero_dimensional_logit_scale_still_load(model_type, model, tmp_path):
    folder = tmp_path / model_type
    model.save_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    assert weights["logit_scale"].shape == model.logit_scale.shape and weights["logit_scale"].ndim == 1
    if model.logit_scale.numel() > 1:
        return  # per-domain-pair scales (UniCLIP) were never saved 0-D: the 1-D shape above is the whole check
    weights["logit_scale"] = torch.tensor(2.5)  # as saved before the parameter became 1-D
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    loaded = AutoModel.from_pretrained(folder)
    assert loaded.logit_scale.shape == (1,) and loaded.logit_scale.item() == 2.5
    loaded.save_pretrained(tmp_path / f"{model_type}-again")
    assert load_file(tmp_path / f"{model_type}-again" / "model.safetensors")["logit_scale"].tolist() == [2.5]


# ------------------------------------------------------------------------------------------------------------------
# The single-modality models and the feature-extraction pipelines


def test_single_modality_models_load_from_the_dual_folder_and_agree(model_type, model, saved):
    _, vision_class, text_class, _ = _classes(model_type)
    vision = vision_class.from_pretrained(saved).eval()
    text = text_class.from_pretrained(saved).eval()
    inputs = _inputs(model)
    images = _images(inputs)
    with torch.no_grad():
        expected_image = model.get_image_features(images).pooler_output
        expected_text = model.get_text_features(inputs["input_ids"], inputs["attention_mask"]).pooler_output
        image_output = vision(pixel_values=images)
        text_output = text(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    # The projected embedding first (what the pipelines return) and as the pooled output (`pool=True`).
    for output, expected in ((image_output, expected_image), (text_output, expected_text)):
        torch.testing.assert_close(output[0], expected)
        torch.testing.assert_close(output.embeds, expected)
        torch.testing.assert_close(output.pooler_output, expected)
    assert not any("text" in name for name, _ in vision.named_parameters())
    assert not any("vision" in name or "visual" in name for name, _ in text.named_parameters())


def _expected_embeddings(model, processor, image: Image.Image, caption: str) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
        input_ids = processor(text=[caption], return_tensors="pt")["input_ids"]
        return {
            "image": model.get_image_features(pixel_values).pooler_output,
            "text": model.get_text_features(input_ids).pooler_output,
        }


def test_pipelines_with_the_package(model_type, model, saved, image):
    """The feature-extraction pipelines on the single-modality models give the projected embedding, with and
    without `pool=True`; the zero-shot pipeline on the folder gets the dual encoder."""
    _, vision_class, text_class, _ = _classes(model_type)
    processor = AutoProcessor.from_pretrained(saved)
    expected = _expected_embeddings(model, processor, image, CAPTIONS[0])
    vision = vision_class.from_pretrained(saved)
    extractor = pipeline("image-feature-extraction", model=vision, image_processor=processor.image_processor)
    for pool in (False, True):
        features = extractor(image, pool=pool, return_tensors=True)
        torch.testing.assert_close(features.reshape(1, -1), expected["image"], atol=1e-5, rtol=0, msg=f"pool={pool}")
    text = text_class.from_pretrained(saved)
    features = pipeline("feature-extraction", model=text, tokenizer=processor.tokenizer)(
        CAPTIONS[0], return_tensors=True
    )
    torch.testing.assert_close(features.reshape(1, -1), expected["text"], atol=1e-5, rtol=0)
    classifier = pipeline("zero-shot-image-classification", model=str(saved))
    assert type(classifier.model) is _classes(model_type)[0]
    scores = classifier(image, candidate_labels=["cat", "dog", "ocean"])
    assert {s["label"] for s in scores} == {"cat", "dog", "ocean"}
    assert sum(s["score"] for s in scores) == pytest.approx(1.0, abs=1e-5)


# ------------------------------------------------------------------------------------------------------------------
# Remote code: a Python without this package loads every method's folder with `trust_remote_code=True`


REMOTE_CODE = """
import json, sys, torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModel, AutoProcessor, pipeline

results = {}
for case, folder in json.loads(sys.argv[1]).items():
    expected = load_file(folder + "/expected.safetensors")
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    inputs = {k: expected[k] for k in ("input_ids", "attention_mask", "pixel_values", "augmentation_params")
              if k in expected}
    with torch.no_grad():
        outputs = model(**inputs, return_loss=True)
    torch.testing.assert_close(outputs.image_view_embeds, expected["image_view_embeds"])
    torch.testing.assert_close(outputs.logits_per_image, expected["logits_per_image"])
    loss = outputs.loss
    image = Image.open(folder + "/image.png")
    classify = pipeline("zero-shot-image-classification", model=folder, trust_remote_code=True)
    scores = classify(image, candidate_labels=["red", "blue"])
    extract = pipeline("image-feature-extraction", model=folder, trust_remote_code=True)
    for pool in (False, True):
        features = extract(image, pool=pool, return_tensors=True).reshape(1, -1)
        torch.testing.assert_close(features, expected["image"], atol=1e-5, rtol=0)
    text_extract = pipeline("feature-extraction", model=folder, trust_remote_code=True)
    text_features = text_extract(CAPTION, return_tensors=True).reshape(1, -1)
    torch.testing.assert_close(text_features, expected["text"], atol=1e-5, rtol=0)
    results[case] = {
        "model": type(model).__name__,
        "model_module": type(model).__module__,
        "processor": type(processor).__name__,
        "extractor": type(extract.model).__name__,
        "text_extractor": type(text_extract.model).__name__,
        "score_total": sum(s["score"] for s in scores),
        "loss": float(loss),
    }
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def remote_code_results(tmp_path_factory, tokenizer, image):
    """One Python without the package loads every case's folder (one interpreter start for all)."""
    root = tmp_path_factory.mktemp("remote-code")
    folders = {}
    for case, (model_type, _) in CASES.items():
        model = contract_model(case)
        folder = root / case
        model.save_pretrained(folder)
        processor_class = _classes(model_type)[3]
        processor = processor_class(processor_class.default_image_processor(IMAGE_SIZE), tokenizer)
        processor.save_pretrained(folder)
        image.save(folder / "image.png")
        inputs = _inputs(model)
        with torch.no_grad():
            outputs = model(**inputs)
        expected = {
            **inputs,
            "image_view_embeds": outputs.image_view_embeds,
            "logits_per_image": outputs.logits_per_image,
            **{key: value for key, value in _expected_embeddings(model, processor, image, CAPTIONS[0]).items()},
        }
        save_file({k: v.contiguous() for k, v in expected.items()}, str(folder / "expected.safetensors"))
        folders[case] = str(folder)
    code = REMOTE_CODE.replace("sys.argv[1]", repr(json.dumps(folders))).replace("CAPTION", repr(CAPTIONS[0]))
    result = run_without_package(code, cwd=root)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_remote_code_loads_without_the_package(case, model_type, remote_code_results):
    report = remote_code_results[case]
    prefix = PREFIX[model_type]
    assert report["model"] == f"{prefix}Model" and report["model_module"].startswith("transformers_modules")
    assert report["processor"] == f"{prefix}Processor"
    assert report["extractor"] == f"{prefix}VisionModelWithProjection"
    assert report["text_extractor"] == f"{prefix}TextModelWithProjection"
    assert report["score_total"] == pytest.approx(1.0, abs=1e-5) and math.isfinite(report["loss"])
