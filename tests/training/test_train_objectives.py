"""The objective's training settings through training/train.py: `--objective siglip` / `siglip+unicl` and
`--loss_chunk_size` on every model type, exact gradient accumulation by default, and FLIP's patch dropout with its
unmasked final steps, reproducible on resume and under `full_batch` accumulation."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file
from training_helpers import ROOT, assert_resumes_exactly, losses, train_script, write_config

from hf_unified.configuration_contrastive import OBJECTIVE_PRESETS
from hf_unified.training.arguments import ConfigError, ModelArguments, TrainArguments

pytest_plugins = ("training_fixtures",)  # shapes, fresh_accelerate_state
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

# MS-CLIP at the tiny size of the other towers (the shipped tiny layout, narrower).
MSCLIP_TINY = yaml.safe_load((ROOT / "training" / "configs" / "msclip-tiny.yaml").read_text())["model_config"]
MSCLIP_TINY = {**MSCLIP_TINY, "hidden_size": 32, "intermediate_size": 64, "projection_dim": 16}
del MSCLIP_TINY["logit_scale_init_value"]  # model_config fields win over the objective: let the preset's apply
LABELLED = {"label_column": ["cls", "none"], "text_column": ["none", "txt"], "train_probabilities": [0.5, 0.5]}


def tiny_config(tmp_path, shapes, model_type: str, **overrides):
    if model_type == "msclip":
        overrides.setdefault("model_config", dict(MSCLIP_TINY))
    if overrides.get("objective", "").endswith("+unicl"):  # positives from labels: images with labels, captions
        overrides.update(train_data=[f"{shapes}/train-*.tar"] * 2, **LABELLED)
    return write_config(tmp_path, shapes, model_type, do_eval=False, **overrides)


def saved_config(output_dir) -> dict:
    return json.loads((output_dir / "config.json").read_text())


@pytest.mark.parametrize(
    "model_type, objective, chunk",
    [("unicl", "siglip", "3"), ("uniclip", "siglip", "0"), ("msclip", "siglip", "5"), ("unicl", "siglip+unicl", "2")],
)
def test_siglip_trains_on_every_model_type_with_a_chunked_loss(tmp_path, shapes, model_type, objective, chunk):
    config = tiny_config(tmp_path, shapes, model_type, objective=objective)
    out = tmp_path / "run"
    train_script.main(
        ["--config", str(config), "--max_steps", "2", "--loss_chunk_size", chunk, "--output_dir", str(out)]
    )
    saved = saved_config(out)
    preset = OBJECTIVE_PRESETS[objective]
    assert {key: saved[key] for key in preset} == pytest.approx(preset)
    assert saved["contrastive_loss"] == "sigmoid" and saved["loss_chunk_size"] == int(chunk)
    values = losses(out)
    assert len(values) == 2 and all(value > 0 for value in values)


def test_a_chunked_loss_trains_as_the_dense_one(tmp_path, shapes):
    """`--loss_chunk_size 3` against `0` (dense), same run otherwise: the same losses and weights to rounding."""
    config = tiny_config(tmp_path, shapes, "uniclip", objective="uniclip+unicl")
    runs = {}
    for chunk in ("0", "3"):
        out = tmp_path / f"chunk-{chunk}"
        train_script.main(
            ["--config", str(config), "--max_steps", "3", "--loss_chunk_size", chunk, "--output_dir", str(out)]
        )
        runs[chunk] = out
    assert losses(runs["3"]) == pytest.approx(losses(runs["0"]), rel=1e-5)
    dense, chunked = load_file(runs["0"] / "model.safetensors"), load_file(runs["3"] / "model.safetensors")
    assert all(chunked[name] == pytest.approx(value, abs=1e-5) for name, value in dense.items())


def deterministic_config(tmp_path, shapes, **overrides):
    """UniCL with preprocessing that draws nothing (resize + centre crop, one prompt per class): runs that differ
    only in how a step's samples are split see the same samples."""
    return write_config(tmp_path, shapes, templates="name", crop_scale_min=1.0, do_eval=False, **overrides)


def test_accumulation_is_exact_by_default_and_the_startup_line_says_so(tmp_path, shapes, capsys):
    """2 micro-batches of 4, no mode given (and the loss in blocks of 3 rows): the losses of one batch of 8."""
    config = deterministic_config(tmp_path, shapes)
    reference, accumulated = tmp_path / "one-batch", tmp_path / "accumulated"
    train_script.main(["--config", str(config), "--max_steps", "3", "--output_dir", str(reference)])
    capsys.readouterr()
    train_script.main(
        ["--config", str(config), "--max_steps", "3", "--per_device_train_batch_size", "4"]
        + ["--gradient_accumulation_steps", "2", "--loss_chunk_size", "3", "--output_dir", str(accumulated)]
    )
    assert (
        "gradient accumulation: full_batch, 2 micro-batches of 4: one loss over the 8 samples"
        in capsys.readouterr().out
    )
    assert losses(accumulated) == pytest.approx(losses(reference), rel=0, abs=1e-5)
    settings = json.loads((accumulated / "training_args.json").read_text())
    assert settings["gradient_accumulation_mode"] == "full_batch"


def test_the_accumulation_default_and_the_named_modes():
    assert TrainArguments(gradient_accumulation_steps=4).gradient_accumulation_mode == "full_batch"
    assert TrainArguments(gradient_accumulation_steps=1).gradient_accumulation_mode == "micro_batch"
    named = TrainArguments(gradient_accumulation_steps=4, gradient_accumulation_mode="micro_batch")
    assert named.gradient_accumulation_mode == "micro_batch"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"patch_dropout": 1.0}, "patch_dropout must be a share of patches in \\[0, 1\\), got 1.0"),
        ({"patch_dropout": -0.1}, "patch_dropout must be a share"),
        ({"loss_chunk_size": -1}, "loss_chunk_size must be 0 \\(dense\\) or a positive number"),
        ({"patch_dropout": 0.5, "model_config": {"patch_dropout": 0.5}}, "patch_dropout given both"),
    ],
)
def test_bad_training_time_settings_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ModelArguments(**kwargs)


def test_the_training_time_settings_reach_the_model_config():
    arguments = ModelArguments(objective="siglip", patch_dropout=0.5, loss_chunk_size=0)
    assert arguments.config_kwargs == {**OBJECTIVE_PRESETS["siglip"], "patch_dropout": 0.5, "loss_chunk_size": 0}
    assert ModelArguments().config_overrides == {}  # not given: the model config's own values


def test_final_unmasked_steps_need_patch_dropout_and_masked_steps():
    with pytest.raises(ConfigError, match="patch_dropout_final_steps must be 0 or a number of final steps below"):
        TrainArguments(max_steps=10, patch_dropout_final_steps=10)


def test_final_unmasked_steps_without_patch_dropout_are_refused(tmp_path, shapes):
    config = tiny_config(tmp_path, shapes, "unicl")
    with pytest.raises(ValueError, match="this model's patch_dropout is 0: give --patch_dropout"):
        train_script.main(
            ["--config", str(config), "--max_steps", "3", "--patch_dropout_final_steps", "1"]
            + ["--output_dir", str(tmp_path / "run")]
        )


def test_patch_dropout_switches_off_for_the_final_steps(tmp_path, shapes):
    """Same seed, patch dropout 0.5: with one final unmasked step, steps 1-2 are the same and step 3 differs; the
    saved config keeps the share the run trained with."""
    config = deterministic_config(tmp_path, shapes)
    runs = {}
    for final in ("0", "1"):
        out = tmp_path / f"final-{final}"
        train_script.main(
            ["--config", str(config), "--max_steps", "3", "--patch_dropout", "0.5"]
            + ["--patch_dropout_final_steps", final, "--output_dir", str(out)]
        )
        runs[final] = losses(out)
        assert saved_config(out)["patch_dropout"] == 0.5
    assert runs["1"][:2] == runs["0"][:2] and runs["1"][2] != runs["0"][2]


def test_patch_dropout_resumes_exactly_under_full_batch_accumulation(tmp_path, shapes):
    """Patch dropout 0.5, its last step unmasked, full_batch accumulation (GradCache re-runs each micro-batch from
    its random state), random crops: stopping at step 2 and resuming gives the uninterrupted run's losses and
    weights exactly."""
    config = write_config(tmp_path, shapes, num_workers=1, crop_scale_min=0.6, do_eval=False, save_steps=2)
    flags = ["--config", str(config), "--max_steps", "4", "--per_device_train_batch_size", "4"]
    flags += ["--gradient_accumulation_steps", "2", "--patch_dropout", "0.5", "--patch_dropout_final_steps", "1"]
    assert_resumes_exactly(tmp_path, flags, stop_at_step=2)


def test_the_native_clip_export_refuses_a_sigmoid_model_naming_its_bias():
    """CLIPModel's logits have no bias: a SigLIP-initialised model (t = 10, offset 1: b = -10) is refused, and the
    reason names the sigmoid loss's bias."""
    from tiny_models import tiny_model

    from hf_unified.hub.export import export_problems

    problems = export_problems(tiny_model("unicl", **OBJECTIVE_PRESETS["siglip"]))
    assert any("this is the sigmoid loss's bias b = -10: CLIPModel has no bias" in p for p in problems), problems


def test_the_training_time_settings_apply_to_a_saved_model(tmp_path):
    """`--model_name_or_path` keeps the saved objective; `--patch_dropout` and `--loss_chunk_size` still apply, and
    without them the saved values stay."""
    from tiny_models import tiny_model

    from hf_unified.training.builders import build_model

    tiny_model("unicl").save_pretrained(tmp_path / "saved")
    arguments = ModelArguments(model_name_or_path=str(tmp_path / "saved"), patch_dropout=0.5, loss_chunk_size=4)
    model = build_model(arguments, tokenizer=None, image_size=32)
    assert (model.config.patch_dropout, model.config.loss_chunk_size) == (0.5, 4)
    assert build_model(ModelArguments(model_name_or_path=str(tmp_path / "saved")), None, 32).config.patch_dropout == 0


def test_the_zero_shot_pipeline_scores_a_sigmoid_model_by_a_softmax_of_its_logits(tmp_path):
    """What the card says of a sigmoid model: the pipeline's scores are a softmax over the candidate labels of its
    logits (bias included), so they rank the labels as the per-pair sigmoid does."""
    from PIL import Image
    from tiny_models import IMAGE_SIZE, tiny_model
    from transformers import pipeline

    from hf_unified.processing_unicl import UniCLProcessor, unicl_image_processor
    from hf_unified.tokenization import train_caption_tokenizer

    tokenizer = train_caption_tokenizer(["a photo of a cat", "a dog", "the ocean"] * 10, vocab_size=64)
    processor = UniCLProcessor(unicl_image_processor(IMAGE_SIZE), tokenizer)
    model = tiny_model("unicl", **OBJECTIVE_PRESETS["siglip"])
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    image, labels = Image.new("RGB", (40, 40), "red"), ["cat", "dog", "ocean"]
    result = pipeline("zero-shot-image-classification", model=str(tmp_path))(image, candidate_labels=labels)
    scores = {row["label"]: row["score"] for row in result}
    inputs = processor(text=[f"This is a photo of {label}." for label in labels], images=[image], padding=True)
    with torch.no_grad():
        logits = model(**inputs.convert_to_tensors("pt")).logits_per_image[0]
    assert [scores[label] for label in labels] == pytest.approx(logits.softmax(-1).tolist(), abs=1e-5)
    assert max(scores, key=scores.get) == labels[int(logits.sigmoid().argmax())]
