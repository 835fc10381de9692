"""train.py's pretrained starts: two pretrained towers (a tiny ViT and a tiny BERT saved here), a CLIP checkpoint
through the model class's `from_clip`, and a clear error where a class lacks the constructor. Either start saves the
bounded `DualEncoderImageProcessor` with the checkpoint's own preprocessing settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from training_helpers import train_script, write_config

from hf_unified.tokenization import train_caption_tokenizer

pytest_plugins = ("training_fixtures",)  # shapes, fresh_accelerate_state
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture(scope="module")
def towers(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny ViT with its image processor and a tiny BERT with a caption tokenizer, saved like Hub checkpoints."""
    from transformers import BertConfig, BertModel, ViTConfig, ViTImageProcessor, ViTModel

    root = tmp_path_factory.mktemp("towers")
    tiny = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ViTModel(ViTConfig(image_size=32, patch_size=8, **tiny)).save_pretrained(root / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "vit")
    tokenizer = train_caption_tokenizer([f"a {c} shape." for c in ("red", "blue", "green")] * 4, vocab_size=270)
    BertModel(BertConfig(vocab_size=len(tokenizer), max_position_embeddings=32, **tiny)).save_pretrained(root / "bert")
    tokenizer.save_pretrained(root / "bert")
    return root / "vit", root / "bert"


def assert_bounded_with_the_settings_of(saved, own) -> None:
    """`saved` (the image processor a run saved) is the bounded `DualEncoderImageProcessor` giving the pixels `own`
    (the starting checkpoint's processor, which resizes any image it is given) gives, and refuses a thin image."""
    from hf_unified.image_processing import DualEncoderImageProcessor, ImageTooLarge

    assert type(own).__name__ != "DualEncoderImageProcessor" and isinstance(saved, DualEncoderImageProcessor)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    torch.testing.assert_close(
        saved(images=image, return_tensors="pt")["pixel_values"],
        own(images=image, return_tensors="pt")["pixel_values"],
        rtol=0,
        atol=0,
    )
    thin = Image.new("RGB", (4000, 2))
    assert own(images=thin, return_tensors="pt")["pixel_values"].ndim == 4  # resized, whatever it costs
    with pytest.raises(ImageTooLarge, match="an aspect ratio of 2,000:1, more than max_aspect_ratio=20"):
        saved(images=thin, return_tensors="pt")


def test_training_from_two_pretrained_towers(tmp_path, shapes, towers):
    from transformers import AutoImageProcessor, AutoModel, AutoProcessor, AutoTokenizer

    vit, bert = towers
    config = write_config(tmp_path, shapes, do_eval=False, model_config={"projection_dim": 16})
    out = tmp_path / "run"
    flags = ["--vision_model_name_or_path", str(vit), "--text_model_name_or_path", str(bert)]
    train_script.main(["--config", str(config), "--max_steps", "2", "--output_dir", str(out), *flags])
    saved = json.loads((out / "config.json").read_text())
    assert saved["vision_config"]["model_type"] == "vit" and saved["text_config"]["model_type"] == "bert"
    processor = AutoProcessor.from_pretrained(out)
    assert_bounded_with_the_settings_of(processor.image_processor, AutoImageProcessor.from_pretrained(vit))
    assert processor.tokenizer.get_vocab() == AutoTokenizer.from_pretrained(bert).get_vocab()  # the tower's own
    assert processor.tokenizer.model_max_length == 32  # truncates at the text tower's positions
    assert type(AutoModel.from_pretrained(out)).__name__ == "UniCLModel"


def test_init_from_clip_calls_the_model_class_constructor(tmp_path, shapes, towers, monkeypatch):
    """`--init_from_clip` goes through `model_class.from_clip(path, **model_config)` and the CLIP folder's
    tokenizer and image processor (the constructor itself is the model files' and tested there)."""
    from transformers import AutoImageProcessor, AutoProcessor, CLIPImageProcessor

    from hf_unified import UniCLConfig, UniCLModel

    clip = tmp_path / "clip"
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(clip)
    train_caption_tokenizer(["a red circle."] * 4, vocab_size=270).save_pretrained(clip)
    calls = []

    def from_clip(cls, path, **config_kwargs):
        calls.append((path, config_kwargs))
        from training_helpers import TINY_TEXT, TINY_VISION

        text = {**TINY_TEXT, "vocab_size": 270}
        return cls(UniCLConfig(vision_config={**TINY_VISION, "image_size": 32}, text_config=text, **config_kwargs))

    monkeypatch.setattr(UniCLModel, "from_clip", classmethod(from_clip), raising=False)
    config = write_config(tmp_path, shapes, do_eval=False, model_config={"projection_dim": 16})
    out = tmp_path / "run"
    train_script.main(
        ["--config", str(config), "--max_steps", "1", "--output_dir", str(out), "--init_from_clip", str(clip)]
    )
    assert calls == [(str(clip), {"projection_dim": 16})]
    assert json.loads((out / "training_args.json").read_text())["init_from_clip"] == str(clip)
    saved = AutoProcessor.from_pretrained(out).image_processor
    assert_bounded_with_the_settings_of(saved, AutoImageProcessor.from_pretrained(clip))


def test_a_class_without_the_constructor_gets_a_clear_error(tmp_path, shapes, monkeypatch):
    from hf_unified import UniCLIPModel

    monkeypatch.setattr(UniCLIPModel, "from_vision_text_pretrained", None, raising=False)  # as if it had none
    config = write_config(tmp_path, shapes, "uniclip", do_eval=False)
    flags = ["--vision_model_name_or_path", "v", "--text_model_name_or_path", "t"]
    with pytest.raises(ValueError, match=r"UniCLIPModel \(model_type 'uniclip'\) has no from_vision_text_pretrained"):
        train_script.main(["--config", str(config), "--output_dir", str(tmp_path / "run"), *flags])


def test_starting_points_are_exclusive():
    with pytest.raises(ValueError, match="choose one starting point"):
        train_script.parse_arguments(["--init_from_clip", "a", "--model_name_or_path", "b"])
    with pytest.raises(ValueError, match="together"):
        train_script.parse_arguments(["--vision_model_name_or_path", "a"])


def test_export_clip_writes_a_transformers_clip_folder(tmp_path, shapes, tiny_clip_tokenizer):
    from transformers import CLIPModel

    tokenizer = tmp_path / "tokenizer"
    tiny_clip_tokenizer.save_pretrained(tokenizer)  # end-of-text 599: CLIPTextModel pools where the model does
    # 32 text positions: the export's own check tokenizes its sample texts without truncation (up to 18 tokens).
    config = write_config(tmp_path, shapes, do_eval=False, max_text_length=32)
    out, export = tmp_path / "run", tmp_path / "clip"
    flags = ["--tokenizer_name_or_path", str(tokenizer), "--export_clip", str(export)]
    train_script.main(["--config", str(config), "--max_steps", "1", "--output_dir", str(out), *flags])
    assert type(CLIPModel.from_pretrained(export)).__name__ == "CLIPModel"


def test_export_clip_of_a_model_that_cannot_be_one_fails_before_training(tmp_path, shapes):
    from training_helpers import TINY_TEXT, TINY_VISION

    # Mean-pooled texts: no CLIPModel computes that.
    model_config = {
        "projection_dim": 16,
        "vision_config": TINY_VISION,
        "text_config": TINY_TEXT,
        "text_pooling": "mean",
    }
    config = write_config(tmp_path, shapes, do_eval=False, model_config=model_config)
    out = tmp_path / "run"
    with pytest.raises(
        ValueError, match=r"--export_clip: this model cannot be exported as a CLIPModel: .*text_pooling is 'mean'"
    ):
        train_script.main(["--config", str(config), "--output_dir", str(out), "--export_clip", str(tmp_path / "clip")])
    assert not (out / "training_log.jsonl").exists()
