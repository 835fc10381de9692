"""Every shipped config in training/configs/ trains two steps at tiny size, so none rots: its objective and settings
as written, only the sizes, the data, the tokenizer and the run's length shrunk (a copy of the YAML with the tiny
values merged in: towers of width 32, the embedded shapes data in the config's own layout of labelled and captioned
sources, one tokenizer trained once, a tiny CLIP checkpoint for the configs that start from one)."""

from __future__ import annotations

import copy

import pytest
import yaml
from training_helpers import ROOT, TINY_TEXT, TINY_VISION, losses, train_script

from hf_unified.training.methods import config_class

pytest_plugins = ("training_fixtures",)  # shapes, fresh_accelerate_state
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
CONFIGS = ROOT / "training" / "configs"
RECIPES = sorted(path.stem for path in CONFIGS.glob("*.yaml"))
TINY_SWIN = {"embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2], "window_size": 4, "patch_size": 4}
# MS-CLIP: the shipped tiny layout (conv stem of total stride 8), 32 wide.
MSCLIP_TINY = yaml.safe_load((CONFIGS / "msclip-tiny.yaml").read_text())["model_config"]
MSCLIP_TINY = {**MSCLIP_TINY, "hidden_size": 32, "intermediate_size": 64, "projection_dim": 16}
MSCLIP_TINY.pop("logit_scale_init_value")  # not a size: the recipe's own stays
# The run's length, the machine and the outputs: two logged steps of 8 samples, nothing published or exported.
RUN = {
    "max_steps": 2,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "warmup_steps": 1,
    "logging_steps": 1,
    "save_steps": 0,
    "eval_steps": 0,
    "do_eval": False,
    "num_workers": 0,
    "shuffle_buffer_size": 16,
    "image_size": 32,
    "max_text_length": 16,
    "gradient_checkpointing": False,
    "disable_tqdm": True,
}
DROPPED = ("report_to", "export_clip", "push_to_hub", "hub_model_id", "tokenizer_vocab_size")


def tiny_tower(tower: dict, default: dict) -> dict:
    """A recipe's tower config at tiny size: its kind and settings (activation, ...), tiny widths and depths; the
    vocabulary, positions and special ids come from the test's tokenizer."""
    kind = tower.get("model_type", default["model_type"])
    keep = {k: v for k, v in tower.items() if k not in ("vocab_size", "max_position_embeddings", "image_size")}
    keep = {k: v for k, v in keep.items() if not k.endswith("_token_id")}
    return {**keep, **(TINY_SWIN if kind == "swin" else {**default, "model_type": kind})}


def tiny_model_config(recipe: dict) -> dict:
    model_config = copy.deepcopy(recipe.get("model_config") or {})
    if recipe.get("init_from_clip"):  # the checkpoint gives the towers
        return model_config
    if recipe["model_type"] == "msclip":
        sizes = {k: v for k, v in model_config.items() if k not in MSCLIP_TINY and not k.endswith("_token_id")}
        return {
            k: v
            for k, v in {**sizes, **MSCLIP_TINY}.items()
            if k not in ("vocab_size", "max_position_embeddings", "image_size")
        }
    model_config["vision_config"] = tiny_tower(model_config.get("vision_config", {}), TINY_VISION)
    model_config["text_config"] = tiny_tower(model_config.get("text_config", {}), TINY_TEXT)
    model_config["projection_dim"] = 16
    if "augmentation_hidden_size" in model_config or recipe["model_type"] == "uniclip":
        model_config["augmentation_hidden_size"] = 16
    return model_config


def shapes_sources(recipe: dict, shapes) -> dict:
    """The shapes data in the recipe's layout: a labelled source where it has one (image -> class), a captioned one
    where it has captions, as webdataset shards."""
    labels = recipe.get("label_column") or ["none"]
    count = len(recipe.get("train_data") or [None])
    labels = labels * count if len(labels) == 1 else labels
    labelled = [label != "none" for label in labels]
    return {
        "train_data": [f"{shapes}/train-*.tar"] * count,
        "train_format": ["webdataset"] * count,
        "image_column": ["jpg"],
        "label_column": ["cls" if has else "none" for has in labelled],
        "text_column": ["none" if has else "txt" for has in labelled],
        "eval_data": "",  # no evaluation (the evaluation routes have their own tests) and no card examples
        "eval_format": None,
        "class_names_file": f"{shapes}/classes.json",
        "label_vocabulary_file": None,
        "embedded_data_dir": str(shapes),
    }


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, shapes):
    from hf_unified.tokenization import train_caption_tokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    texts = [f"a {colour} {shape}" for colour in ("red", "green", "blue") for shape in ("circle", "square")]
    train_caption_tokenizer(texts * 20, vocab_size=300, model_max_length=16).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory, tokenizer_dir):
    """A tiny transformers CLIPModel folder (random weights) with the test's tokenizer and a 32 px processor."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = tmp_path_factory.mktemp("clip")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    text = {k: v for k, v in TINY_TEXT.items() if k != "model_type"}
    text.update(vocab_size=len(tokenizer), max_position_embeddings=16, eos_token_id=tokenizer.eos_token_id)
    text.update(bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = {k: v for k, v in TINY_VISION.items() if k != "model_type"}
    CLIPModel(
        CLIPConfig(text_config=text, vision_config={**vision, "image_size": 32}, projection_dim=16)
    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("name", RECIPES)
def test_every_shipped_config_trains_two_tiny_steps(name, tmp_path, shapes, tokenizer_dir, clip_dir):
    path = CONFIGS / f"{name}.yaml"
    model_args, _, train_args = train_script.parse_arguments(["--config", str(path)])  # the file as shipped
    recipe = yaml.safe_load(path.read_text())
    tiny = {key: value for key, value in recipe.items() if key not in DROPPED}
    tiny.update(RUN, **shapes_sources(recipe, shapes), model_config=tiny_model_config(recipe))
    tiny.update(output_dir=str(tmp_path / "run"), tokenizer_name_or_path=str(tokenizer_dir))
    if recipe.get("init_from_clip"):
        tiny.update(init_from_clip=str(clip_dir), tokenizer_name_or_path=None)
    if recipe.get("patch_dropout_final_steps"):
        tiny["patch_dropout_final_steps"] = 1  # of the 2 steps: one masked, one not
    file = tmp_path / f"{name}.yaml"
    file.write_text(yaml.safe_dump(tiny))
    train_script.main(["--config", str(file)])
    assert len(losses(tmp_path / "run")) == 2
    if not model_args.init_from_clip:  # the recipe's model config, at full size, is a valid config of its type
        assert config_class(model_args.model_type)(**model_args.config_kwargs).model_type == model_args.model_type
    assert train_args.max_steps > 2
