"""Starting from pretrained weights: a transformers CLIPModel (`from_clip`), or a ViT and a BERT
(`from_vision_text_pretrained`), all built and saved locally in the test."""

from __future__ import annotations

import pytest
import torch
from tiny_models import BOS, EOS, IMAGE_SIZE, VOCAB, batch, text_batch, tiny_text, tiny_vision
from transformers import (
    AutoModel,
    BertModel,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    PreTrainedTokenizerFast,
    ViTModel,
)

from hf_unified import UniCLIPModel, UniCLIPProcessor, UniCLModel, UniCLProcessor
from hf_unified.configuration_contrastive import OBJECTIVE_PRESETS


def _tokenizer() -> PreTrainedTokenizerFast:
    from hf_unified.tokenization import train_caption_tokenizer

    return train_caption_tokenizer(["a photo of a cat", "a red square", "the digit three"] * 4, vocab_size=64)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """A tiny CLIPModel with its processor, as a Hub CLIP folder looks."""
    folder = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    config = CLIPConfig(vision_config=tiny_vision().to_dict(), text_config=tiny_text().to_dict(), projection_dim=16)
    clip = CLIPModel(config).eval()
    with torch.no_grad():
        clip.logit_scale.fill_(3.1)
    clip.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size=IMAGE_SIZE).save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    return folder


def _clip_outputs(folder, inputs):
    clip = CLIPModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return clip(**inputs)


@pytest.mark.parametrize(
    "model_class, objective, overrides",
    [
        (UniCLModel, "unicl", {}),
        (UniCLIPModel, "uniclip", {}),
        (UniCLIPModel, "uniclip", {"augmentation_fusion": "concat", "augmentation_hidden_size": 8}),
        (UniCLIPModel, "uniclip+unicl", {}),
        (UniCLModel, "clip", {}),
    ],
    ids=["unicl", "uniclip", "uniclip-concat", "uniclip+unicl", "clip"],
)
def test_from_clip_starts_exactly_at_the_clip_model(clip_folder, model_class, objective, overrides):
    model = model_class.from_clip(clip_folder, **OBJECTIVE_PRESETS[objective], **overrides).eval()
    inputs = {k: v for k, v in batch(4).items() if k != "labels"}
    expected = _clip_outputs(clip_folder, inputs)
    with torch.no_grad():
        got = model(**inputs)
    for key in ("image_embeds", "text_embeds", "logits_per_image", "logits_per_text"):
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-5, msg=key)
    # ... also for augmented views when the model is augmentation-aware: the new head starts neutral.
    if model.config.augmentation_aware:
        views = batch(4, views=model.config.num_views)
        with torch.no_grad():
            conditioned = model(pixel_values=views["pixel_values"], augmentation_params=views["augmentation_params"])
            plain = model(pixel_values=views["pixel_values"][:, 0])
        torch.testing.assert_close(conditioned.image_embeds, plain.image_embeds, rtol=0, atol=1e-6)


def test_from_clip_with_the_mlp_head_starts_it_fresh_and_says_so(clip_folder, caplog):
    """The 2-layer MLP image head cannot compute CLIP's linear projection: it starts fresh (a warning says so);
    the towers, the text side and the temperature are CLIP's."""
    from transformers.utils import logging

    logging.enable_propagation()  # transformers' handler writes to stderr; caplog reads propagated records
    try:
        with caplog.at_level("WARNING"):
            model = UniCLIPModel.from_clip(clip_folder, augmentation_fusion="mlp", augmentation_hidden_size=8).eval()
    finally:
        logging.disable_propagation()
    warning = [r.getMessage() for r in caplog.records if "augmentation_fusion='mlp'" in r.getMessage()]
    assert len(warning) == 1 and "starts fresh" in warning[0] and "differ from CLIP's" in warning[0]
    inputs = {k: v for k, v in batch(4).items() if k != "labels"}
    expected = _clip_outputs(clip_folder, inputs)
    with torch.no_grad():
        got = model(**inputs)
    torch.testing.assert_close(got.text_embeds, expected.text_embeds, rtol=0, atol=1e-5)
    torch.testing.assert_close(model.logit_scale[1], expected.logits_per_image.new_tensor(3.1), rtol=0, atol=0)
    assert not torch.allclose(got.image_embeds, expected.image_embeds, atol=1e-2)  # a fresh head
    clip = CLIPModel.from_pretrained(clip_folder)
    for ours, theirs in zip(model.vision_model.parameters(), clip.vision_model.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_from_clip_then_train_save_and_reload_through_the_auto_classes(clip_folder, tmp_path):
    model = UniCLIPModel.from_clip(clip_folder, **OBJECTIVE_PRESETS["uniclip+unicl"]).train()
    inputs = batch(6, views=2, seed=4, labels=[0, 1, 0, -1, 1, 2])
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        loss = model(**inputs, return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    processor = UniCLIPProcessor.from_pretrained_parts(clip_folder)
    assert processor.image_processor.crop_size["height"] == IMAGE_SIZE
    assert processor.tokenizer("a red cat")["input_ids"] == _tokenizer()("a red cat")["input_ids"]
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs, return_loss=True).loss, model(**inputs, return_loss=True).loss)


def test_legacy_clip_eos_id_is_pooled_at_the_end_of_text_token(tmp_path):
    # Older CLIP configs say eos_token_id=2 and pool at the largest id; the start must still be exact.
    torch.manual_seed(1)
    text = tiny_text().to_dict() | {"eos_token_id": 2, "bos_token_id": 1, "pad_token_id": 1}
    clip = CLIPModel(CLIPConfig(vision_config=tiny_vision().to_dict(), text_config=text, projection_dim=16))
    clip.save_pretrained(tmp_path)
    inputs = text_batch(3)
    inputs["input_ids"][inputs["input_ids"] == EOS] = VOCAB - 1  # the end-of-text token is the largest id
    with torch.no_grad():
        expected = clip.eval().get_text_features(**inputs).pooler_output
        got = UniCLModel.from_clip(tmp_path).eval().get_text_features(**inputs).pooler_output
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert BOS != VOCAB - 1


@pytest.fixture(scope="module")
def vit_and_bert(tmp_path_factory):
    vit_folder, bert_folder = tmp_path_factory.mktemp("vit"), tmp_path_factory.mktemp("bert")
    torch.manual_seed(2)
    ViTModel(tiny_vision("vit")).save_pretrained(vit_folder)
    CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size=IMAGE_SIZE).save_pretrained(vit_folder)
    BertModel(tiny_text("bert")).save_pretrained(bert_folder)
    _tokenizer().save_pretrained(bert_folder)
    return vit_folder, bert_folder


@pytest.mark.parametrize("model_class", [UniCLModel, UniCLIPModel])
def test_from_vision_text_pretrained_keeps_both_towers_and_pools_by_model_type(vit_and_bert, model_class, tmp_path):
    vit_folder, bert_folder = vit_and_bert
    model = model_class.from_vision_text_pretrained(vit_folder, bert_folder, projection_dim=16)
    assert (model.config.vision_pooling, model.config.text_pooling) == ("cls", "mean")
    for tower, folder, cls in ((model.vision_model, vit_folder, ViTModel), (model.text_model, bert_folder, BertModel)):
        reference = cls.from_pretrained(folder).state_dict()
        for name, tensor in tower.state_dict().items():
            torch.testing.assert_close(tensor, reference[name], rtol=0, atol=0, msg=name)
    processor_class = UniCLProcessor if model_class is UniCLModel else UniCLIPProcessor
    processor = processor_class.from_pretrained_parts(vit_folder, bert_folder)
    inputs = processor(
        text=["a red square", "a photo of a cat"],
        images=[torch.zeros(3, 40, 40)] * 2,
        padding=True,
        return_tensors="pt",
    )
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(6):
        loss = model(**inputs, return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    model.save_pretrained(tmp_path)
    assert isinstance(AutoModel.from_pretrained(tmp_path), model_class)
