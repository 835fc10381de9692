"""CLIP_benchmark's own zero-shot metric on an hf-unified folder through the adapter, against our evaluation."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from clip_benchmark import models as benchmark_models
from clip_benchmark.metrics import zeroshot_classification
from tiny_models import tiny_config

from hf_unified import UniCLModel, UniCLProcessor
from hf_unified.prompts import build_zero_shot_classifier
from hf_unified.tokenization import train_caption_tokenizer
from hf_unified.training.data import synthetic_data
from hf_unified.training.outputs.clip_benchmark import load_hf_unified, register
from hf_unified.training.outputs.evaluation import zero_shot_accuracy

CLASSES = list(synthetic_data.SHAPES)


class Shapes(torch.utils.data.Dataset):
    classes = CLASSES

    def __init__(self, transform, count=24):
        rng = random.Random(0)
        self.items = []
        for _ in range(count):
            a = synthetic_data.sample_attributes(rng, "eval")
            image = synthetic_data.render(a["shape"], a["colour"], a["size"], a["position"], 32, rng)
            self.items.append((image, CLASSES.index(a["shape"])))
        self.transform = transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        image, label = self.items[index]
        return self.transform(image), label


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unicl")
    tokenizer = train_caption_tokenizer([f"a {c}." for c in CLASSES] * 5, vocab_size=300)
    torch.manual_seed(0)
    config = tiny_config("unicl")
    config.text_config.vocab_size = len(tokenizer)
    config.text_config.eos_token_id = tokenizer.eos_token_id
    UniCLModel(config).save_pretrained(folder)
    UniCLProcessor(UniCLProcessor.default_image_processor(32), tokenizer).save_pretrained(folder)
    return folder


def test_clip_benchmark_zero_shot_equals_ours(folder):
    model, transform, tokenizer = load_hf_unified(str(folder), pretrained="none")
    loader = torch.utils.data.DataLoader(Shapes(transform), batch_size=8)
    # CLIP_benchmark's own classifier and classification loop (its `evaluate` then calls `accuracy`, which fails
    # on numpy >= 2.3: `float()` of a 1-element array; an upstream bug, so top-k is taken here from its logits).
    their_classifier = zeroshot_classification.zero_shot_classifier(
        model, tokenizer, CLASSES, ["a {c}."], "cpu", amp=False
    )
    logits, target = zeroshot_classification.run_classification(model, their_classifier, loader, "cpu", amp=False)
    top5 = logits.topk(5, dim=1).indices
    theirs = {
        "acc1": (top5[:, 0] == target).float().mean().item(),
        "acc5": (top5 == target[:, None]).any(1).float().mean().item(),
    }
    inner = model.model
    with torch.no_grad():
        images = torch.cat([inner.get_image_features(pixel_values=x).pooler_output for x, _ in loader])
        labels = torch.cat([y for _, y in loader])
        classifier = build_zero_shot_classifier(inner, tokenizer.tokenizer, CLASSES, ["a {}."])
    ours = zero_shot_accuracy(F.normalize(images, dim=-1), labels, classifier, ks=(1, 5))
    torch.testing.assert_close(their_classifier.T, classifier, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits, 100.0 * F.normalize(images, dim=-1) @ classifier.T, rtol=0, atol=1e-3)
    assert theirs["acc1"] == pytest.approx(ours["top1_accuracy"], abs=1e-9)
    assert theirs["acc5"] == pytest.approx(ours["top5_accuracy"], abs=1e-9)


def test_registered_as_a_model_type(folder):
    register()
    assert "hf_unified" in benchmark_models.MODEL_TYPES
    model, transform, tokenizer = benchmark_models.load_clip("hf_unified", str(folder), "none", None, device="cpu")
    tokens = tokenizer(["a circle.", "a ring."])
    assert model.encode_text(tokens).shape == (2, 16)
    with pytest.raises(ValueError, match="carries its own weights"):
        load_hf_unified(str(folder), pretrained="laion400m_e32")
