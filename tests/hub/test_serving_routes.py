"""The routes other people's clients take to a folder this project wrote (issue 26): the native export through
transformers' image- and text-embedding classes and the feature-extraction pipeline, its tokenizer on transformers
4.57, the export's refusal of a folder without its processor, and saved files readable like any saved model's."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_hub_models import TINY_TEXT, TINY_VISION
from transformers import (
    AutoTokenizer,
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    pipeline,
)

from hf_unified import UniCLConfig, UniCLModel
from hf_unified.hub.export import PROCESSOR_FILES, export_clip, main
from hf_unified.processing_unicl import UniCLProcessor, unicl_image_processor
from hf_unified.tokenization import train_caption_tokenizer

CAPTIONS = ["a red circle", "a blue square on white", "a photo of a dog", "two green triangles"]
TEXTS = ["A red circle", "a photo of two dogs", "blue"]


@pytest.fixture(scope="module")
def caption_tokenizer():
    """The trained caption tokenizer (what training from scratch saves: `TokenizersBackend` in transformers 5)."""
    return train_caption_tokenizer(CAPTIONS * 10, vocab_size=300)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, caption_tokenizer):
    """A trained-like UniCL model with the caption tokenizer (eos id 3), saved, and its native export."""
    torch.manual_seed(0)
    text = {**TINY_TEXT, "vocab_size": 300, "bos_token_id": 1, "eos_token_id": 3, "pad_token_id": 0}
    config = UniCLConfig(
        vision_config=CLIPVisionConfig(**TINY_VISION, patch_size=8),
        text_config=CLIPTextConfig(**text),
        projection_dim=16,
    )
    model = UniCLModel(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():  # off the initial values, as training would move them
            parameter.add_(0.05 * torch.randn_like(parameter))
    root = tmp_path_factory.mktemp("export")
    processor = UniCLProcessor(unicl_image_processor(32), caption_tokenizer)
    model.save_pretrained(root / "unicl")
    processor.save_pretrained(root / "unicl")
    export_clip(root / "unicl", root / "clip")
    return {"model": model, "processor": processor, "source": root / "unicl", "folder": root / "clip"}


def _image() -> Image.Image:
    generator = torch.Generator().manual_seed(3)
    return Image.fromarray((torch.rand(40, 36, 3, generator=generator) * 255).to(torch.uint8).numpy())


def test_export_loads_in_the_with_projection_models_with_the_packages_embeddings(exported):
    """Issue 26, the image-embedding route (retrieval, diffusers, vector databases): CLIPVisionModelWithProjection and
    CLIPTextModelWithProjection load the export (projection_dim in both tower configs) and give the source model's
    embeddings; `pipeline("image-feature-extraction")` with the vision model gives the projected image embedding."""
    folder, model, processor = exported["folder"], exported["model"], exported["processor"]
    config = json.loads((folder / "config.json").read_text())
    assert config["projection_dim"] == config["vision_config"]["projection_dim"] == 16
    assert config["text_config"]["projection_dim"] == 16
    vision = CLIPVisionModelWithProjection.from_pretrained(folder).eval()
    text = CLIPTextModelWithProjection.from_pretrained(folder).eval()
    inputs = processor(text=TEXTS, images=_image(), padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**inputs)
        image_embeds = vision(pixel_values=inputs["pixel_values"]).image_embeds
        text_embeds = text(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).text_embeds
    normalize = torch.nn.functional.normalize
    torch.testing.assert_close(normalize(image_embeds, dim=-1), expected.image_embeds, rtol=0, atol=1e-5)
    torch.testing.assert_close(normalize(text_embeds, dim=-1), expected.text_embeds, rtol=0, atol=1e-5)

    extractor = pipeline("image-feature-extraction", model=vision, image_processor=str(folder))
    features = torch.tensor(extractor(_image()))
    torch.testing.assert_close(normalize(features, dim=-1), expected.image_embeds, rtol=0, atol=1e-5)


def test_export_tokenizer_is_declared_for_transformers_4_57_with_the_same_ids(exported, caption_tokenizer):
    """transformers 5 saves the trained tokenizer as `TokenizersBackend`, a class 4.57 lacks; the export declares
    `PreTrainedTokenizerFast` with the byte-level `add_prefix_space` (without it 4.57 drops the prefix space and every
    first word gets another id), and the ids on this transformers stay those of the source tokenizer."""
    folder = exported["folder"]
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tokenizer_config["add_prefix_space"] is True
    reloaded = AutoTokenizer.from_pretrained(folder)
    assert reloaded(TEXTS)["input_ids"] == caption_tokenizer(TEXTS)["input_ids"]


def test_export_points_at_no_code_it_does_not_hold(exported):
    """The source's processor files carry `auto_map` to its `processing_unicl.py`; the export holds no code, so no
    file of it may point at any."""
    folder = exported["folder"]
    assert "auto_map" in json.loads((exported["source"] / "tokenizer_config.json").read_text())
    assert not list(folder.glob("*.py"))
    for name in ("config.json", *PROCESSOR_FILES):
        if (folder / name).is_file():
            assert "auto_map" not in json.loads((folder / name).read_text()), name


@pytest.mark.skipif(
    not os.environ.get("HF_UNIFIED_TRANSFORMERS4_PYTHON"),
    reason="set HF_UNIFIED_TRANSFORMERS4_PYTHON to a Python with transformers 4.57 and pillow to run the export there",
)
def test_export_tokenizer_and_processor_load_on_transformers_4_57(exported, caption_tokenizer):
    """Run where a transformers 4.57 environment exists (a serving image): same ids, CLIPProcessor loads."""
    code = (
        "import json, sys, transformers\n"
        "from transformers import AutoProcessor, AutoTokenizer\n"
        "assert transformers.__version__.startswith('4.'), transformers.__version__\n"
        f"tokenizer = AutoTokenizer.from_pretrained({str(exported['folder'])!r})\n"
        f"processor = AutoProcessor.from_pretrained({str(exported['folder'])!r})\n"
        f"print(json.dumps([type(processor).__name__, tokenizer({TEXTS!r})['input_ids']]))\n"
    )
    done = subprocess.run(
        [os.environ["HF_UNIFIED_TRANSFORMERS4_PYTHON"], "-c", code], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    processor_class, ids = json.loads(done.stdout.strip().splitlines()[-1])
    assert processor_class == "CLIPProcessor" and ids == caption_tokenizer(TEXTS)["input_ids"]


def test_export_of_a_folder_without_its_tokenizer_names_the_missing_part(exported, tmp_path, capsys):
    """Issue 26: a folder saved without its processor used to fail deep inside `tokenizers` ("sentencepiece or
    tiktoken"); the command names what is missing, in one line."""
    model_only = tmp_path / "model-only"
    exported["model"].save_pretrained(model_only)
    capsys.readouterr()  # the save's progress bar
    assert main([str(model_only), str(tmp_path / "clip")]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "has no the tokenizer" not in error and "no tokenizer (tokenizer.json)" in error, error
    assert "image processor" in error and str(model_only.resolve()) in error
    assert not (tmp_path / "clip").exists()


def _modes(folder: Path) -> dict[str, int]:
    return {str(path.relative_to(folder)): stat.S_IMODE(path.stat().st_mode) for path in [folder, *folder.rglob("*")]}


def test_export_files_and_folders_are_readable_like_any_saved_model(exported, tmp_path):
    """Issue 26: safetensors writes its file 0600, so a serving container running as another user could not read the
    weights; everything the atomic writer publishes gets the umask's permissions (0644 files, 0755 folders here)."""
    previous = os.umask(0o022)
    try:
        export_clip(exported["source"], tmp_path / "clip")
    finally:
        os.umask(previous)
    modes = _modes(tmp_path / "clip")
    assert "model.safetensors" in modes
    for name, mode in modes.items():
        expected = 0o755 if (tmp_path / "clip" / name).is_dir() else 0o644
        assert mode == expected, f"{name}: {oct(mode)}"


def test_staged_folders_publish_library_files_with_the_umask(tmp_path):
    """Every saved folder (trained model, checkpoint, conversion, export) goes through `StagedFolder`: a file a library
    wrote 0600 inside it is published with the umask's permissions, a file made executable keeps its bit."""
    from safetensors.torch import save_file

    from hf_unified.files import StagedFolder

    previous = os.umask(0o027)
    try:
        with StagedFolder(tmp_path / "model") as staging:
            save_file({"weight": torch.zeros(2)}, staging / "model.safetensors")
            (staging / "nested").mkdir(mode=0o700)
            (staging / "run.sh").write_text("#!/bin/sh\n")
            os.chmod(staging / "run.sh", 0o700)
    finally:
        os.umask(previous)
    modes = _modes(tmp_path / "model")
    assert modes == {".": 0o750, "model.safetensors": 0o640, "nested": 0o750, "run.sh": 0o740}, modes


def test_space_has_a_local_command(exported, tmp_path, capsys):
    """`python -m hf_unified.hub.space MODEL_FOLDER --local FOLDER` writes the app for a local folder (nothing pushed;
    the app itself is tested in test_space.py) and says how to run it; a non-empty FOLDER is refused."""
    from hf_unified.hub.space import main as space_main
    from hf_unified.hub.space import space_files

    source = exported["source"]
    assert space_main([str(source), "--local", str(tmp_path / "space")]) == 0
    assert f"cd {tmp_path / 'space'} && python app.py" in capsys.readouterr().out
    expected = space_files(str(source.absolute()), trust_remote_code=True)
    written = {path.name: path.read_bytes() for path in (tmp_path / "space").iterdir()}
    assert written == expected
    config = json.loads(written["space_config.json"])
    assert config["model_id"] == str(source.absolute()) and config["trust_remote_code"] is True
    assert space_main([str(source), "--local", str(tmp_path / "space")]) == 1
    assert "is not an empty folder" in capsys.readouterr().err
