"""Native CLIP export: exact where the graph is CLIP's (UniCL, UniCLIP at a representable augmentation term), refused
with the exact reason everywhere else, and loadable with transformers alone."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from huggingface_hub.repocard import metadata_load
from PIL import Image
from test_hub_models import TINY_TEXT, tiny_towers
from transformers import BertConfig, CLIPModel, CLIPTextConfig, SwinConfig

import hf_unified.hub.export as export_module
from hf_unified import UniCLConfig, UniCLIPConfig, UniCLIPModel, UniCLModel
from hf_unified.hub.export import EXPORT_INFO_FILE, NotExportableError, export_clip, export_problems, main
from hf_unified.processing_unicl import UniCLProcessor, unicl_image_processor
from hf_unified.processing_uniclip import UniCLIPProcessor, uniclip_image_processor

TOWERS = tiny_towers()
LABELS = ["a red circle", "a blue square", "a photo of a dog"]


def _unicl(**overrides) -> UniCLModel:
    torch.manual_seed(0)
    return UniCLModel(UniCLConfig(**{**TOWERS, "projection_dim": 16, **overrides})).eval()


def _uniclip(**overrides) -> UniCLIPModel:
    torch.manual_seed(0)
    config = UniCLIPConfig(**{**TOWERS, "projection_dim": 16, "augmentation_hidden_size": 8, **overrides})
    return UniCLIPModel(config).eval()


def _train_like(model: torch.nn.Module) -> None:
    """Moves every parameter off its initial value, as training would (a fresh init has zero biases)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("image") / "shape.png"
    generator = torch.Generator().manual_seed(3)
    pixels = (torch.rand(40, 36, 3, generator=generator) * 255).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(path)
    return path


def _save(model, processor, folder: Path) -> Path:
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _assert_equal_outputs(source, folder: Path, processor, image: Path) -> dict:
    """The export's embeddings and logits equal the source model's within 1e-5 on a real processed image."""
    clip = CLIPModel.from_pretrained(folder).eval()
    inputs = processor(text=LABELS, images=Image.open(image).convert("RGB"), padding=True, return_tensors="pt")
    with torch.no_grad():
        expected, got = source(**inputs), clip(**inputs)
    for name in ("image_embeds", "text_embeds", "logits_per_image"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), rtol=0, atol=1e-5)
    return {"inputs": dict(inputs), "logits": expected.logits_per_image}


def test_unicl_export_matches_and_has_no_custom_code(tmp_path, tiny_clip_tokenizer, image, run_without_package):
    model = _unicl()
    _train_like(model)
    processor = UniCLProcessor(unicl_image_processor(32), tiny_clip_tokenizer)
    source = _save(model, processor, tmp_path / "unicl")
    (source / "eval_results.json").write_text(json.dumps({"zero_shot_top1_accuracy": 0.5, "num_examples": 4}))

    result = export_clip(source, tmp_path / "clip", repo_id="org/unicl-clip", source_repo_id="org/unicl")
    folder = result.output_dir
    assert max(result.max_abs_difference.values()) <= 1e-5
    reference = _assert_equal_outputs(model, folder, processor, image)

    assert not list(folder.rglob("*.py"))
    config = json.loads((folder / "config.json").read_text())
    assert "auto_map" not in config and config["model_type"] == "clip" and config["architectures"] == ["CLIPModel"]
    metadata = metadata_load(folder / "README.md")
    assert metadata["library_name"] == "transformers"
    assert metadata["pipeline_tag"] == "zero-shot-image-classification"
    assert "custom_code" not in metadata["tags"] and {"clip", "unicl"} <= set(metadata["tags"])
    assert metadata["base_model"] == "org/unicl"
    readme = (folder / "README.md").read_text()
    usage = readme.split("```python", 1)[1].split("```", 1)[0]
    assert "trust_remote_code" not in usage and "AutoModel.from_pretrained(model_id)" in usage
    assert 'model_id = "org/unicl-clip"' in readme and "| Top-1 accuracy | 0.5000 |" in readme
    info = json.loads((folder / EXPORT_INFO_FILE).read_text())
    assert info["source_model_type"] == "unicl" and info["max_abs_difference"] == result.max_abs_difference

    # transformers alone, hf_unified blocked: AutoModel gives a CLIPModel with the same logits, and the pipeline runs
    # with the scores the source model gives (softmax of its logits with the pipeline's default template).
    torch.save(reference["inputs"], tmp_path / "inputs.pt")
    with torch.no_grad():
        hypotheses = processor(
            text=[f"This is a photo of {x}." for x in LABELS],
            images=Image.open(image).convert("RGB"),
            padding=True,
            return_tensors="pt",
        )
        scores = model(**hypotheses).logits_per_image.softmax(-1)[0].tolist()
    done = run_without_package(
        f"""
        import torch
        from PIL import Image
        from transformers import AutoModel, pipeline
        model = AutoModel.from_pretrained({str(folder)!r}).eval()
        assert type(model).__name__ == "CLIPModel" and type(model).__module__.startswith("transformers.models.clip")
        with torch.no_grad():
            logits = model(**torch.load({str(tmp_path / "inputs.pt")!r})).logits_per_image
        expected = torch.tensor({reference["logits"].tolist()!r})
        torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
        classifier = pipeline("zero-shot-image-classification", model={str(folder)!r})
        answer = classifier(Image.open({str(image)!r}), candidate_labels={LABELS!r})
        got = {{entry["label"]: entry["score"] for entry in answer}}
        for label, score in zip({LABELS!r}, {scores!r}):
            assert abs(got[label] - score) < 1e-5, (label, got[label], score)
        print("native ok")
        """,
        cwd=tmp_path,
    )
    assert "native ok" in done.stdout


@pytest.mark.parametrize("fusion", ["add", "concat"])
def test_uniclip_exports_when_the_augmentation_term_vanishes(fusion, tmp_path, tiny_clip_tokenizer, image):
    """Trained-like weights everywhere, the identity augmentation code's projection zeroed: exact export; the
    image-image / text-text temperatures are not part of the inference graph."""
    model = _uniclip(augmentation_fusion=fusion, logit_scale_init_value=[2.0, 2.5, 3.0])
    _train_like(model)
    with torch.no_grad():
        model.augmentation_encoder.fc2.weight.zero_()
        model.augmentation_encoder.fc2.bias.zero_()
        model.logit_offset[1] = 0.0  # image-text
    assert model.logit_offset[0] != 0 and model.logit_scale.reshape(-1).unique().numel() == 3
    processor = UniCLIPProcessor(uniclip_image_processor(32), tiny_clip_tokenizer)
    result = export_clip(_save(model, processor, tmp_path / "uniclip"), tmp_path / "clip")
    _assert_equal_outputs(model, result.output_dir, processor, image)
    assert any("training-only" in note for note in result.notes)


def test_uniclip_refusals_name_the_exact_reason():
    model = _uniclip()
    with torch.no_grad():
        model.augmentation_encoder.fc2.bias.fill_(0.3)
        model.logit_offset.fill_(0.2)
    problems = export_problems(model)
    assert len(problems) == 2
    offset, augmentation = problems
    assert "image-text logit offset is 0.2" in offset and "softmax scores would still be equal" in offset
    assert "logits_per_image would not" in offset
    assert "identity augmentation parameters" in augmentation and "visual_projection(c)" in augmentation
    assert "augmentation_fusion='add'" in augmentation and "no bias" in augmentation

    with pytest.raises(NotExportableError, match="cannot export to a native CLIPModel"):
        export_module.to_clip_model(model)


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (
            lambda: _unicl(
                vision_config=SwinConfig(
                    image_size=32, patch_size=4, embed_dim=8, depths=[1], num_heads=[2], window_size=4
                )
            ),
            "the vision_model is SwinModel (swin); CLIPModel's is CLIPVisionModel",
        ),
        (
            lambda: _unicl(
                text_config=BertConfig(
                    vocab_size=600, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64
                ),
                text_pooling="cls",
            ),
            "the text_model is BertModel (bert); CLIPModel's is CLIPTextModel",
        ),
        (lambda: _unicl(text_pooling="mean"), "text_pooling is 'mean'"),
        (lambda: _unicl(vision_pooling="cls"), "vision_pooling is 'cls'"),
        (
            lambda: _unicl(text_config=CLIPTextConfig(**{**TINY_TEXT, "eos_token_id": 2})),
            "text_config.eos_token_id is 2",
        ),
    ],
)
def test_graphs_that_are_not_clip_are_refused(build, reason):
    problems = export_problems(build())
    assert any(reason in problem for problem in problems), problems


def test_the_mlp_image_head_is_refused_in_one_line_naming_the_field_and_the_fix(tmp_path, tiny_clip_tokenizer, capsys):
    """`augmentation_fusion="mlp"`: CLIPModel's visual_projection is one Linear. Refused even where the
    augmentation code vanishes (as `from_clip` starts it); the command says so in one line (the trainer's
    `--export_clip` preflight reads the same `export_problems`)."""
    model = _uniclip(augmentation_fusion="mlp")
    with torch.no_grad():
        model.augmentation_encoder.fc2.weight.zero_()
        model.augmentation_encoder.fc2.bias.zero_()
        model.logit_offset.zero_()
    (problem,) = export_problems(model)
    assert "\n" not in problem and "augmentation_fusion is 'mlp'" in problem and "2-layer MLP" in problem
    assert "hf-unified-export-onnx" in problem and "augmentation_fusion 'add' or 'concat'" in problem
    with pytest.raises(NotExportableError, match="augmentation_fusion is 'mlp'"):
        export_module.to_clip_model(model)
    folder = _save(model, UniCLIPProcessor(uniclip_image_processor(32), tiny_clip_tokenizer), tmp_path / "m")
    capsys.readouterr()
    assert main([str(folder), str(tmp_path / "clip")]) == 1
    err = capsys.readouterr().err
    assert "augmentation_fusion is 'mlp'" in err and "Traceback" not in err and not (tmp_path / "clip").exists()


def test_msclip_is_refused_by_the_command_line(tmp_path, tiny_clip_tokenizer, capsys):
    from hf_unified.configuration_msclip import MSCLIPConfig
    from hf_unified.modeling_msclip import MSCLIPModel
    from hf_unified.processing_msclip import MSCLIPProcessor, msclip_image_processor

    config = MSCLIPConfig.from_preset(
        "ms-clip-s",
        vocab_size=600,
        max_position_embeddings=77,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        vision_num_attention_heads=2,
        text_num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=16,
        early_specialization=False,
        parallel_branch=False,
        bos_token_id=598,
        eos_token_id=599,
        pad_token_id=0,
    )
    folder = _save(
        MSCLIPModel(config), MSCLIPProcessor(msclip_image_processor(32), tiny_clip_tokenizer), tmp_path / "m"
    )
    assert main([str(folder), str(tmp_path / "clip")]) == 1
    err = capsys.readouterr().err
    assert "hf-unified-export-clip: cannot export to a native CLIPModel" in err and "modality-shared" in err
    assert "Traceback" not in err and not (tmp_path / "clip").exists()


def test_export_writes_atomically_and_refuses_to_overwrite(tmp_path, tiny_clip_tokenizer, monkeypatch, capsys):
    processor = UniCLProcessor(unicl_image_processor(32), tiny_clip_tokenizer)
    source = _save(_unicl(), processor, tmp_path / "unicl")
    target = tmp_path / "clip"
    assert main([str(source), str(target)]) == 0
    assert "exported the unicl model" in capsys.readouterr().out
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    assert main([str(source), str(target)]) == 1
    assert "exists: choose a new folder or pass overwrite=True (--overwrite)" in capsys.readouterr().err

    def broken_card(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(export_module, "render_card_files", broken_card)
    with pytest.raises(OSError, match="disk full"):
        export_clip(source, target, overwrite=True)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before  # the old export is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip", "unicl"]  # no staging folder left behind


def test_export_never_replaces_its_source_a_folder_around_it_or_another_run(tmp_path, tiny_clip_tokenizer, capsys):
    """Before the fix `--overwrite` replaced any folder: the source's parent (the model, its checkpoints, every
    sibling run) was deleted, exit 0."""
    processor = UniCLProcessor(unicl_image_processor(32), tiny_clip_tokenizer)
    source = _save(_unicl(), processor, tmp_path / "runs" / "unicl")
    run = tmp_path / "runs" / "other-run"
    (run / "checkpoint-40").mkdir(parents=True)
    (run / "training_log.jsonl").write_text('{"step": 40}\n')
    model = tmp_path / "converted"  # a saved model that is not an export
    model.mkdir()
    (model / "config.json").write_text("{}")
    refusals = {
        source.parent: "contains the source model folder",
        source: "is the source model folder",
        source / "clip": "is inside the source model folder",
        run: "holds training checkpoints",
        model: "holds a saved model that is not an export",
    }
    before = sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*"))
    capsys.readouterr()  # the save's progress bars
    for target, reason in refusals.items():
        assert main([str(source), str(target), "--overwrite"]) == 1, target
        err = capsys.readouterr().err
        assert err.startswith(f"hf-unified-export-clip: export target {target} ") and reason in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*")) == before  # nothing touched

    export_clip(source, tmp_path / "clip")
    export_clip(source, tmp_path / "clip", overwrite=True)  # an earlier export is replaced with the flag
    assert (tmp_path / "clip" / EXPORT_INFO_FILE).exists() and (tmp_path / "clip" / "README.md").exists()
    assert "# clip:" in (tmp_path / "clip" / "README.md").read_text()  # titled by its folder, not a staging name


@pytest.mark.parametrize("atol", ["nan", "inf", "-1e-5"])
def test_a_tolerance_that_is_not_finite_is_refused(tmp_path, capsys, atol):
    """`--atol nan` used to turn the equivalence check off (`difference > nan` is always False)."""
    with pytest.raises(SystemExit) as exited:
        main([str(tmp_path), str(tmp_path / "clip"), f"--atol={atol}"])
    assert exited.value.code == 2 and "atol must be a finite number >= 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="atol must be a finite number >= 0"):
        export_problems(_unicl(), atol=float(atol))


def test_export_check_truncates_its_sample_texts_at_the_text_towers_positions(tmp_path, tiny_clip_tokenizer):
    # The check's longest sample text is 7 tokens with bos and eos; a 5-position tower cannot embed it whole.
    text_config = CLIPTextConfig(**{**TINY_TEXT, "max_position_embeddings": 5})
    processor = UniCLProcessor(unicl_image_processor(32), tiny_clip_tokenizer)
    source = _save(_unicl(text_config=text_config), processor, tmp_path / "unicl")
    export_clip(source, tmp_path / "clip")
    assert CLIPModel.from_pretrained(tmp_path / "clip").config.text_config.max_position_embeddings == 5


def test_model_object_needs_its_processor(tmp_path):
    with pytest.raises(ValueError, match="give its processor too"):
        export_clip(_unicl(), tmp_path / "clip")
    with pytest.raises(ValueError, match="no config.json"):
        export_clip(tmp_path, tmp_path / "clip")


def test_python_dash_m_runs_the_command():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "hf_unified.hub.export", "--help"],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and "hf-unified-export-clip" in done.stdout
