"""UniCLIP: config, unified multi-positive loss (vs loop references and across 2 processes), augmentation-aware
embedding, processor, zero-shot scores. Tiny towers throughout; what every model keeps (save/load, attention
backends, remote code, ...) is the model contract, `tests/core/test_model_contract.py`."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
    CLIPTextConfig,
    CLIPVisionConfig,
    pipeline,
)

from hf_unified.configuration_contrastive import FUSION_MODES
from hf_unified.configuration_uniclip import UniCLIPConfig
from hf_unified.dual_encoder import HeadLinear, MLPProjection
from hf_unified.losses import contrastive_objective, similarity_logits
from hf_unified.modeling_uniclip import (
    UniCLIPModel,
)
from hf_unified.processing_uniclip import UniCLIPProcessor, uniclip_image_processor
from hf_unified.training.data.augmentation import (
    AUGMENTATION_PARAM_DIM,
    IDENTITY_PARAMS,
    MultiViewAugmentation,
    identity_params,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_SIZE = 32
VOCAB, BOS, EOS = 600, 598, 599  # the fixtures' tiny CLIP BPE tokenizer


@pytest.fixture(scope="module", autouse=True)
def registered():
    """Registers UniCLIP with the Auto classes as `import hf_unified` does once the package lists it."""
    AutoConfig.register("uniclip", UniCLIPConfig, exist_ok=True)
    AutoModel.register(UniCLIPConfig, UniCLIPModel, exist_ok=True)
    AutoModelForZeroShotImageClassification.register(UniCLIPConfig, UniCLIPModel, exist_ok=True)
    AutoProcessor.register(UniCLIPConfig, UniCLIPProcessor, exist_ok=True)


def tiny_config(**overrides) -> UniCLIPConfig:
    kwargs = dict(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            image_size=IMAGE_SIZE,
            patch_size=16,
        ),
        text_config=CLIPTextConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            vocab_size=VOCAB,
            max_position_embeddings=32,
            bos_token_id=BOS,
            eos_token_id=EOS,
            pad_token_id=EOS,
        ),
        projection_dim=16,
        augmentation_hidden_size=8,
        # A larger init than 0.02 so that the augmentation code visibly moves the embeddings of a fresh model.
        initializer_range=0.2,
    )
    kwargs.update(overrides)
    return UniCLIPConfig(**kwargs)


def tiny_model(seed: int = 0, **overrides) -> UniCLIPModel:
    torch.manual_seed(seed)
    return UniCLIPModel(tiny_config(**overrides)).eval()


def text_batch(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, BOS, (batch, 7), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    for row in range(batch):  # right padding after the end-of-text token, varying lengths
        length = 3 + row % 4
        input_ids[row, length] = EOS
        input_ids[row, length + 1 :] = EOS
        attention_mask[row, length + 1 :] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def multi_view_batch(batch: int, views: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed + 1)
    pixel_values = torch.randn(batch, views, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    params = identity_params((batch, views)) + 0.3 * torch.rand(
        batch, views, AUGMENTATION_PARAM_DIM, generator=generator
    )
    return {**text_batch(batch, seed), "pixel_values": pixel_values, "augmentation_params": params}


# --------------------------------------------------------------------------------------------------- config


def test_default_config_is_vit_b32_with_clip_text_tower():
    config = UniCLIPConfig()
    vision, text = config.vision_config, config.text_config
    assert (vision.model_type, vision.hidden_size, vision.num_hidden_layers, vision.patch_size, vision.image_size) == (
        "clip_vision_model",
        768,
        12,
        32,
        224,
    )
    assert (text.model_type, text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (
        "clip_text_model",
        512,
        12,
        8,
    )
    assert config.num_views == 2 and config.augmentation_param_dim == AUGMENTATION_PARAM_DIM
    assert config.identity_augmentation_params == list(IDENTITY_PARAMS)
    assert (config.augmentation_fusion, config.domain_similarity, config.contrastive_loss) == ("add", True, "mp_nce")
    # SimCLR's temperature 0.1 for image-image, CLIP's 0.07 for the pairs with text.
    assert config.logit_scale_init() == pytest.approx([math.log(10), math.log(1 / 0.07), math.log(1 / 0.07)])


def test_config_round_trip_with_dict_towers(tmp_path):
    config = UniCLIPConfig(
        vision_config={
            "model_type": "vit",
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "image_size": 32,
            "patch_size": 16,
        },
        text_config={
            "model_type": "bert",
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "vocab_size": 100,
        },
        num_views=3,
        augmentation_fusion="concat",
        logit_scale_init_value=[1.0, 2.0, 3.0],
        contrastive_loss="supcon",
    )
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, UniCLIPConfig)
    assert loaded.vision_config.model_type == "vit" and loaded.text_config.model_type == "bert"
    without_path = lambda c: {k: v for k, v in c.to_dict().items() if k != "_name_or_path"}  # noqa: E731
    assert without_path(loaded) == without_path(config)
    assert loaded.logit_scale_init() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"augmentation_fusion": "multiply"}, "augmentation_fusion"),
        ({"augmentation_fusion": "mlp", "augmentation_aware": False}, "'mlp'.*needs augmentation_aware=True"),
        ({"contrastive_loss": "triplet"}, "contrastive_loss"),
        ({"num_views": 0}, "num_views"),
        ({"augmentation_param_dim": 5}, "identity_augmentation_params"),
        ({"augmentation_param_dim": 3, "identity_augmentation_params": [0.0, 1.0]}, "identity_augmentation_params"),
        ({"logit_scale_init_value": [1.0, 2.0]}, "logit_scale_init_value"),
        ({"domain_similarity": False, "logit_scale_init_value": [1.0, 2.0]}, "logit_scale_init_value"),
        ({"vision_config": {"model_type": "no_such_tower"}}, "no_such_tower"),
        ({"text_pooling": "max"}, "text_pooling"),
        ({"intra_domain_pairs": "both"}, r"intra_domain_pairs must be one of \(False, True, 'image', 'text'\)"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UniCLIPConfig(**kwargs)


# ------------------------------------------------------------------------------------ loss vs loop references


def _unified_rows(image_view_embeds, text_embeds):
    """The (V+1)N embeddings in the loss's candidate order with their pair id and domain (0 image, 1 text)."""
    n, views, _ = image_view_embeds.shape
    rows = [(image_view_embeds[i, v], i, 0) for i in range(n) for v in range(views)]
    rows += [(text_embeds[i], i, 1) for i in range(n)]
    return rows


def _similarity(a, b, logit_scale, logit_offset):
    domain_pair = a[2] + b[2]
    cosine = float(a[0] @ b[0])
    scale = math.exp(logit_scale.reshape(-1)[domain_pair if logit_scale.numel() > 1 else 0].item())
    offset = 0.0 if logit_offset is None else logit_offset[domain_pair].item()
    return scale * (cosine - offset)


def loop_reference(image_view_embeds, text_embeds, logit_scale, logit_offset, variant):
    """Per-anchor, per-positive loops over the unified batch, straight from the formulas in methods.md."""
    rows = _unified_rows(image_view_embeds, text_embeds)
    pair_terms, anchor_terms = [], []
    for a, anchor in enumerate(rows):
        others = [b for b in range(len(rows)) if b != a]
        positives = [b for b in others if rows[b][1] == anchor[1]]
        negatives = [b for b in others if rows[b][1] != anchor[1]]
        sim = {b: _similarity(anchor, rows[b], logit_scale, logit_offset) for b in others}
        all_candidates = sum(math.exp(sim[b]) for b in others)
        only_negatives = sum(math.exp(sim[n]) for n in negatives)
        per_positive = []
        for p in positives:
            if variant == "mp_nce":
                per_positive.append(-math.log(math.exp(sim[p]) / (math.exp(sim[p]) + only_negatives)))
            else:  # supcon and infonce both keep every candidate in the denominator
                per_positive.append(-math.log(math.exp(sim[p]) / all_candidates))
        pair_terms += per_positive
        anchor_terms.append(sum(per_positive) / len(per_positive))
    if variant == "supcon":
        return sum(anchor_terms) / len(anchor_terms)
    return sum(pair_terms) / len(pair_terms)


def unified_contrastive_loss(images, texts, logit_scale, logit_offset=None, variant="mp_nce"):
    """UniCLIP's point of the objective: one space (intra-domain pairs), log-scales given per domain pair."""
    return contrastive_objective(
        images, texts, logit_scale.exp(), logit_offset, intra_domain_pairs=True, variant=variant
    )


def _random_embeddings(n=4, views=2, dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.nn.functional.normalize(
        torch.randn(n, views, dim, generator=generator, dtype=torch.float64), dim=-1
    )
    texts = torch.nn.functional.normalize(torch.randn(n, dim, generator=generator, dtype=torch.float64), dim=-1)
    return images, texts


@pytest.mark.parametrize("variant", ["mp_nce", "supcon", "infonce"])
@pytest.mark.parametrize("views", [1, 2, 3])
def test_unified_loss_matches_loop_reference(variant, views):
    images, texts = _random_embeddings(n=4, views=views, seed=views)
    logit_scale = torch.tensor([1.5, 2.5, 0.7], dtype=torch.float64)
    logit_offset = torch.tensor([0.3, -0.1, 0.2], dtype=torch.float64)
    loss = unified_contrastive_loss(images, texts, logit_scale, logit_offset, variant)
    expected = loop_reference(images, texts, logit_scale, logit_offset, variant)
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_shared_temperature_without_offset_matches_loop_reference():
    images, texts = _random_embeddings(n=3, views=2, seed=7)
    logit_scale = torch.tensor([2.0], dtype=torch.float64)
    loss = unified_contrastive_loss(images, texts, logit_scale, None, "mp_nce")
    assert loss.item() == pytest.approx(loop_reference(images, texts, logit_scale, None, "mp_nce"), rel=1e-10)


def test_mp_nce_differs_from_supcon_and_infonce():
    # With two positives per anchor the variants are different losses (a test that a switch is not ignored).
    images, texts = _random_embeddings(n=3, views=2, seed=1)
    scale, offset = torch.tensor([2.0, 2.0, 2.0], dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    values = {
        v: unified_contrastive_loss(images, texts, scale, offset, v).item() for v in ("mp_nce", "supcon", "infonce")
    }
    assert values["mp_nce"] < values["infonce"] and values["mp_nce"] != pytest.approx(values["supcon"])


def test_domain_scaled_similarity_formula():
    cosine = torch.tensor([[0.5, -0.2], [0.1, 0.9]])
    pairs = torch.tensor([[0, 1], [1, 2]])
    scale, offset = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0.1, 0.2, 0.3])
    expected = torch.tensor(
        [[1 * (0.5 - 0.1), math.e * (-0.2 - 0.2)], [math.e * (0.1 - 0.2), math.e**2 * (0.9 - 0.3)]]
    )
    torch.testing.assert_close(similarity_logits(cosine, pairs, scale.exp(), offset), expected)
    torch.testing.assert_close(similarity_logits(cosine, pairs, torch.tensor([1.0]).exp()), math.e * cosine)


def test_unified_loss_of_one_pair_is_defined_and_shapes_must_match():
    # One pair: every anchor has positives and no negative, so each MP-NCE term is -log(1) = 0.
    images, texts = _random_embeddings(n=1)
    loss = unified_contrastive_loss(images, texts, torch.zeros(3, dtype=torch.float64))
    assert loss.item() == pytest.approx(loop_reference(images, texts, torch.zeros(3), None, "mp_nce"), abs=1e-12)
    assert loss.item() == 0.0
    images, texts = _random_embeddings(n=3)
    with pytest.raises(ValueError, match="text_embeds must be"):
        unified_contrastive_loss(images, texts[:2], torch.zeros(3, dtype=torch.float64))


# ------------------------------------------------------------------------------------ model


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"augmentation_fusion": "concat"},
        {"augmentation_fusion": "mlp"},
        {"domain_similarity": False},
        {"contrastive_loss": "supcon"},
    ],
    ids=["add", "concat", "mlp", "shared-temperature", "supcon"],
)
def test_every_trainable_parameter_gets_a_gradient(overrides):
    model = tiny_model(**overrides).train()
    outputs = model(**multi_view_batch(4), return_loss=True)
    outputs.loss.backward()
    dead = [name for name, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not dead, f"parameters without gradient: {dead}"
    # logit_scale: image-image, image-text, text-text (the text-text one only through text-text negatives).
    assert model.logit_scale.shape == ((1,) if overrides.get("domain_similarity") is False else (3,))
    assert (model.logit_offset is None) == (overrides.get("domain_similarity") is False)


@pytest.mark.parametrize("fusion", FUSION_MODES)
def test_augmentation_params_change_training_embeddings_not_image_features(fusion):
    model = tiny_model(augmentation_fusion=fusion)
    batch = multi_view_batch(3)
    pixels = batch["pixel_values"][:, 0]
    with torch.no_grad():
        before = model(**batch, return_loss=True)
        features_before = model.get_image_features(pixels).pooler_output
        changed = dict(batch, augmentation_params=batch["augmentation_params"].flip(0))
        after = model(**changed, return_loss=True)
        features_after = model.get_image_features(pixels).pooler_output
    assert not torch.allclose(before.image_view_embeds, after.image_view_embeds, atol=1e-4)
    assert before.loss != after.loss
    torch.testing.assert_close(features_before, features_after, rtol=0, atol=0)
    # The text side is never conditioned.
    torch.testing.assert_close(before.text_embeds, after.text_embeds, rtol=0, atol=0)


@pytest.mark.parametrize("fusion", FUSION_MODES)
def test_inference_path_equals_get_image_features_and_identity_params(fusion):
    model = tiny_model(augmentation_fusion=fusion)
    batch = text_batch(3)
    pixels = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        outputs = model(**batch, pixel_values=pixels)
        features = model.get_image_features(pixels)
        explicit_identity = model(**batch, pixel_values=pixels, augmentation_params=identity_params((3,)))
        text_features = model.get_text_features(**batch)
    normalise = torch.nn.functional.normalize
    torch.testing.assert_close(outputs.image_embeds, normalise(features.pooler_output, dim=-1))
    torch.testing.assert_close(outputs.image_embeds, explicit_identity.image_embeds)
    torch.testing.assert_close(outputs.text_embeds, normalise(text_features.pooler_output, dim=-1))
    assert features.last_hidden_state.shape[0] == 3 and features.pooler_output.shape == (3, 16)
    assert outputs.image_view_embeds.shape == (3, 1, 16)
    # logits: image-text domain scale and offset on the cosine similarities.
    scale, offset = model.logit_scale.exp()[1], model.logit_offset[1]
    expected = scale * (outputs.image_embeds @ outputs.text_embeds.T - offset)
    torch.testing.assert_close(outputs.logits_per_image, expected)
    torch.testing.assert_close(outputs.logits_per_text, expected.T)
    # A batch of one gives the same embedding (no cross-example leakage in the head).
    with torch.no_grad():
        single = model.get_image_features(pixels[1:2]).pooler_output
    torch.testing.assert_close(single[0], features.pooler_output[1], atol=1e-5, rtol=1e-5)


def test_the_mlp_head_concatenates_the_code_into_a_two_layer_projection():
    """`augmentation_fusion="mlp"`: `visual_projection` is Linear(width + code, width) -> GELU -> Linear(width,
    projection_dim) without a last bias, fed the pooled feature and the augmentation code side by side."""
    model = tiny_model(augmentation_fusion="mlp")
    head, width, code_width = model.visual_projection, 32, 8  # image feature width, augmentation_hidden_size
    assert isinstance(head, MLPProjection) and isinstance(head.activation, torch.nn.GELU)
    assert head.fc1.weight.shape == (width, width + code_width) and head.fc1.bias.shape == (width,)
    assert head.fc2.weight.shape == (16, width) and head.fc2.bias is None
    assert model.augmentation_encoder.fc2.weight.shape == (code_width, 8)
    assert not hasattr(model.visual_projection, "weight")  # no Linear left behind under the same name
    pooled = torch.randn(3, width)
    params = identity_params((3,)) + 0.3 * torch.rand(3, AUGMENTATION_PARAM_DIM)
    with torch.no_grad():
        got = model._project_image(pooled, params)
        code = model.augmentation_encoder(params)
        expected = head.fc2(torch.nn.functional.gelu(head.fc1(torch.cat([pooled, code], dim=-1))))
        identity = model._project_image(pooled, identity_params((3,)))
    assert got.shape == (3, 16)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(model._project_image(pooled), identity)  # inference: the identity parameters
    assert not torch.allclose(got, identity, atol=1e-4)


def test_the_mlp_head_needs_augmentation_awareness_also_when_changed_in_place():
    config = tiny_config(augmentation_fusion="mlp")
    config.augmentation_aware = False
    with pytest.raises(ValueError, match="augmentation_fusion='mlp'.*needs augmentation_aware=True.*set"):
        UniCLIPModel(config)


@pytest.mark.parametrize("model_type", ["uniclip", "msclip"])
def test_the_heads_mlps_initialise_as_the_config_says(model_type):
    """Every layer of the augmentation encoder and of the MLP head draws `normal(0, initializer_range)` with zero
    biases, MS-CLIP included (whose own init scheme knows only its blocks and the linear projections; transformers
    never initialises a parameterless container of a model defined outside it, hence `HeadLinear`)."""
    from tiny_models import tiny_model as tiny_method_model

    extra = {"augmentation_aware": True, "num_views": 2} if model_type == "msclip" else {}
    model = tiny_method_model(model_type, augmentation_fusion="mlp", augmentation_hidden_size=64, **extra)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, HeadLinear)}
    assert set(layers) == {
        "augmentation_encoder.fc1",
        "augmentation_encoder.fc2",
        "visual_projection.fc1",
        "visual_projection.fc2",
    }
    for name, layer in layers.items():
        assert 0.015 < layer.weight.std().item() < 0.025, name  # initializer_range 0.02
        assert layer.bias is None or not layer.bias.any(), name


def test_multi_view_outputs_use_view_zero():
    model = tiny_model()
    batch = multi_view_batch(3)
    with torch.no_grad():
        outputs = model(**batch)
        view0 = model.get_image_features(batch["pixel_values"][:, 0], batch["augmentation_params"][:, 0])
    assert outputs.loss is None and outputs.image_view_embeds.shape == (3, 2, 16)
    torch.testing.assert_close(outputs.image_embeds, torch.nn.functional.normalize(view0.pooler_output, dim=-1))
    assert outputs.logits_per_image.shape == (3, 3)


def test_tuple_output_and_single_modality():
    model = tiny_model()
    batch = text_batch(2)
    with torch.no_grad():
        as_tuple = model(**batch, pixel_values=torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE), return_dict=False)
        text_only = model(**batch)
    assert torch.is_tensor(as_tuple[0])  # logits_per_image first when there is no loss
    assert (
        text_only.image_embeds is None
        and text_only.logits_per_image is None
        and text_only.text_embeds.shape == (2, 16)
    )


def test_clear_errors_for_views_params_and_missing_inputs():
    model = tiny_model()
    batch = multi_view_batch(2, views=3)
    with pytest.raises(ValueError, match="3 views per image but config.num_views is 2"):
        model(**batch)
    batch = multi_view_batch(2)
    with pytest.raises(ValueError, match=r"augmentation_param_dim=11"):
        model(**dict(batch, augmentation_params=batch["augmentation_params"][..., :5]))
    with pytest.raises(ValueError, match=r"augmentation_params must have shape \[2, 2, 11\]"):
        model(**dict(batch, augmentation_params=batch["augmentation_params"][:1]))
    with pytest.raises(ValueError, match="need augmentation_params"):
        model(**dict(batch, augmentation_params=None))
    with pytest.raises(ValueError, match=r"augmentation_params must have shape \[2, 11\]"):
        model.get_image_features(batch["pixel_values"][:, 0], augmentation_params=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="pixel_values must be"):
        model(pixel_values=torch.randn(2, 2, 2, 3, IMAGE_SIZE, IMAGE_SIZE))
    with pytest.raises(ValueError, match="needs both"):
        model(pixel_values=batch["pixel_values"], augmentation_params=batch["augmentation_params"], return_loss=True)
    with pytest.raises(ValueError, match="pairs image i with text i"):
        model(
            **dict(batch, input_ids=batch["input_ids"][:1], attention_mask=batch["attention_mask"][:1]),
            return_loss=True,
        )


def test_similarity_parameters_start_at_the_config_values():
    model = tiny_model(logit_scale_init_value=[1.0, 2.0, 3.0], logit_offset_init_value=0.25)
    assert model.logit_scale.tolist() == [1.0, 2.0, 3.0] and model.logit_offset.tolist() == [0.25] * 3
    shared = tiny_model(domain_similarity=False, logit_scale_init_value=1.5)
    assert shared.logit_scale.tolist() == [1.5] and shared.logit_offset is None
    assert "logit_offset" not in dict(shared.named_parameters())


def test_auto_model_from_config_trains_a_step_on_multi_view_input():
    torch.manual_seed(0)
    model = AutoModel.from_config(tiny_config(initializer_range=0.02))
    assert isinstance(model, UniCLIPModel)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = multi_view_batch(4)
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    first = model(**batch, return_loss=True).loss
    first.backward()
    optimizer.step()
    optimizer.zero_grad()
    unchanged = [name for name, p in model.named_parameters() if torch.equal(p, initial[name])]
    assert not unchanged, f"not updated by one step: {unchanged}"
    second = model(**batch, return_loss=True).loss
    assert torch.isfinite(first) and second < first


def test_loss_with_real_augmentation_views():
    # The training data path end to end: PIL images -> MultiViewAugmentation -> the model's loss.
    torch.manual_seed(0)
    aug = MultiViewAugmentation(num_views=2, size=IMAGE_SIZE)
    rng = np.random.default_rng(0)
    views, params = zip(*(aug(Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))) for _ in range(3)))
    model = tiny_model()
    loss = model(
        **text_batch(3), pixel_values=torch.stack(views), augmentation_params=torch.stack(params), return_loss=True
    ).loss
    assert torch.isfinite(loss) and loss > 0


def test_model_loss_is_the_unified_loss_over_its_embeddings():
    model = tiny_model(domain_similarity=True, logit_offset_init_value=[0.1, -0.2, 0.3])
    with torch.no_grad():
        model.logit_scale.copy_(torch.tensor([1.0, 2.0, 1.5]))
        outputs = model(**multi_view_batch(3), return_loss=True)
    expected = loop_reference(
        outputs.image_view_embeds.double(),
        outputs.text_embeds.double(),
        model.logit_scale.double(),
        model.logit_offset.double(),
        "mp_nce",
    )
    assert outputs.loss.item() == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------ data parallelism

_DISTRIBUTED_SCRIPT = """
import sys
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

sys.path.insert(0, {repo_root!r})
from hf_unified.modeling_uniclip import UniCLIPModel

FOLDER, OUT = {folder!r}, {out!r}
SHARDS = [slice(0, 3), slice(3, 5)]  # uneven on purpose: ranks hold different numbers of pairs


def worker(rank, world_size):
    dist.init_process_group("gloo", init_method="file://" + FOLDER + "/rendezvous", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    # float64 so that the comparison can be tight: summation order differs between one and two processes.
    model = UniCLIPModel.from_pretrained(FOLDER).double().train()
    batch = {{k: v[SHARDS[rank]] for k, v in load_file(FOLDER + "/batch.safetensors").items()}}
    results = {{}}
    for variant in ("mp_nce", "supcon", "infonce"):
        model.config.contrastive_loss = variant
        model.zero_grad()
        loss = model(**batch, return_loss=True).loss
        loss.backward()
        # What DDP does: average the losses (for logging) and the gradients over ranks.
        loss = loss.detach().clone()
        dist.all_reduce(loss)
        results[variant + "/loss"] = loss / world_size
        for name, p in model.named_parameters():
            grad = p.grad.clone()
            dist.all_reduce(grad)
            results[variant + "/grad/" + name] = grad / world_size
    if rank == 0:
        save_file(results, OUT)
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(worker, args=(2,), nprocs=2)
"""


def test_two_process_loss_and_gradients_equal_one_process(tmp_path):
    model = tiny_model(seed=3, logit_offset_init_value=[0.1, 0.0, -0.1]).train()
    batch = {k: v.double() if v.is_floating_point() else v for k, v in multi_view_batch(5, seed=3).items()}
    model.save_pretrained(tmp_path)
    save_file({k: v.contiguous() for k, v in batch.items()}, str(tmp_path / "batch.safetensors"))
    out = tmp_path / "distributed.safetensors"
    script = _DISTRIBUTED_SCRIPT.format(repo_root=str(REPO_ROOT), folder=str(tmp_path), out=str(out))
    # A script file, not `python -c`: spawned workers re-import the main module to find `worker`.
    script_path = tmp_path / "two_ranks.py"
    script_path.write_text(script)
    result = subprocess.run([sys.executable, str(script_path)], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    distributed = load_file(str(out))

    model = UniCLIPModel.from_pretrained(tmp_path).double().train()
    for variant in ("mp_nce", "supcon", "infonce"):
        model.config.contrastive_loss = variant
        model.zero_grad()
        loss = model(**batch, return_loss=True).loss
        loss.backward()
        torch.testing.assert_close(distributed[variant + "/loss"], loss.detach(), rtol=1e-10, atol=1e-12)
        for name, p in model.named_parameters():
            torch.testing.assert_close(
                distributed[variant + "/grad/" + name],
                p.grad,
                rtol=1e-8,
                atol=1e-12,
                msg=lambda m, variant=variant, name=name: f"{variant} {name}: {m}",
            )


# ------------------------------------------------------------------------------------ save / load / Hub


@pytest.fixture(scope="module")
def saved_model_folder(tmp_path_factory, tiny_clip_tokenizer):
    """A saved tiny UniCLIP model + processor with non-default similarity parameters."""
    folder = tmp_path_factory.mktemp("uniclip")
    model = tiny_model(seed=5)
    with torch.no_grad():
        model.logit_scale.copy_(torch.tensor([1.0, 1.7, 0.5]))
        model.logit_offset.copy_(torch.tensor([0.2, -0.1, 0.05]))
    model.save_pretrained(folder)
    UniCLIPProcessor(uniclip_image_processor(IMAGE_SIZE), tiny_clip_tokenizer).save_pretrained(folder)
    return folder, model


def test_processor_round_trip(saved_model_folder):
    folder, _ = saved_model_folder
    processor = AutoProcessor.from_pretrained(folder)
    assert isinstance(processor, UniCLIPProcessor)
    image = Image.fromarray(np.full((50, 40, 3), 128, dtype=np.uint8))
    inputs = processor(text=["a photo", "a longer photo of a cat"], images=[image], padding=True, return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    # CLIP mean/std, the same constants as MultiViewAugmentation.
    expected = (128 / 255 - torch.tensor(processor.image_processor.image_mean)) / torch.tensor(
        processor.image_processor.image_std
    )
    torch.testing.assert_close(inputs["pixel_values"][0, :, 0, 0], expected, atol=1e-2, rtol=0)
    assert inputs["input_ids"].shape[0] == 2


def _test_image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))


def test_zero_shot_pipeline(saved_model_folder):
    folder, model = saved_model_folder
    classifier = pipeline("zero-shot-image-classification", model=str(folder))
    labels = ["cat", "dog", "car"]
    scores = classifier(_test_image(), candidate_labels=labels)
    assert sorted(s["label"] for s in scores) == sorted(labels)
    assert sum(s["score"] for s in scores) == pytest.approx(1.0, abs=1e-5)
    # The scores are the softmax of the model's image-text logits.
    processor = UniCLIPProcessor.from_pretrained(folder)
    inputs = processor(
        text=[f"This is a photo of {label}." for label in labels],
        images=[_test_image()],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        probs = model(**inputs).logits_per_image.softmax(-1)[0]
    by_label = {s["label"]: s["score"] for s in scores}
    for label, prob in zip(labels, probs.tolist()):
        assert by_label[label] == pytest.approx(prob, abs=1e-5)
