"""The UniCL converter reproduces the official outputs stored in ../shared/fixtures/unicl-*/ (made with
microsoft/UniCL)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
import types
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_unified.conversion.common import ConversionError
from hf_unified.conversion.unicl import CONVERTER, convert_unicl_checkpoint, main

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"
UNICL_FIXTURES = sorted(p.name for p in FIXTURES.glob("unicl-*") if (p / "checkpoint.pth").is_file())
EMBEDDING_TOLERANCE = 1e-5
LOGIT_TOLERANCE = 1e-4


def _cli_args(shared_dir: Path, name: str, output: Path, *extra: str) -> list[str]:
    """The command line that converts fixture `name` with `--config <fixture>/config.json`."""
    fixture = shared_dir / "fixtures" / name
    return [
        "--checkpoint",
        str(fixture / "checkpoint.pth"),
        "--output",
        str(output),
        "--config",
        str(fixture / "config.json"),
        "--tokenizer",
        str(shared_dir / "fixtures" / "tokenizer-tiny-clip-bpe"),
        *extra,
    ]


@pytest.fixture(scope="module")
def converted(shared_dir, tmp_path_factory) -> dict[str, Path]:
    """Each fixture converted once through the CLI entry point with `--config <fixture>/config.json`."""
    folders = {}
    for name in UNICL_FIXTURES:
        output = tmp_path_factory.mktemp(name)
        exit_code = main(_cli_args(shared_dir, name, output))
        assert exit_code == 0
        folders[name] = output
    return folders


def _max_diff(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    return (actual - expected).abs().max().item()


def test_fixtures_present(shared_dir):
    assert len(UNICL_FIXTURES) >= 2, f"expected unicl-tiny-a and -b under {FIXTURES}"


@pytest.mark.parametrize("name", UNICL_FIXTURES)
def test_converted_model_matches_official_outputs(name, converted, shared_dir):
    from transformers import AutoModel

    import hf_unified  # noqa: F401  (registers UniCL with the Auto classes)

    fixture = shared_dir / "fixtures" / name
    inputs = load_file(fixture / "inputs.safetensors")
    expected = load_file(fixture / "outputs.safetensors")
    model = AutoModel.from_pretrained(converted[name]).eval()
    assert type(model).__name__ == "UniCLModel"

    with torch.no_grad():
        outputs = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values=inputs["pixel_values"]
        )
        image_features = model.get_image_features(pixel_values=inputs["pixel_values"])
        text_features = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        vision = model.vision_model(pixel_values=inputs["pixel_values"])
        # The official text encoder ignores attention_mask (causal only); its hidden states at padding positions
        # therefore match a run without the mask.
        text = model.text_model(input_ids=inputs["input_ids"])

    actual = {
        "image_embeds": outputs.image_embeds,
        "text_embeds": outputs.text_embeds,
        "image_features_unnormalized": image_features.pooler_output,
        "text_features_unnormalized": text_features.pooler_output,
        "image_pooled_output": vision.pooler_output,
        "image_last_hidden_state": vision.last_hidden_state,
        "text_pooled_output": text.pooler_output,
        "text_last_hidden_state": text.last_hidden_state,
    }
    diffs = {key: _max_diff(value, expected[key]) for key, value in actual.items()}
    assert all(d <= EMBEDDING_TOLERANCE for d in diffs.values()), diffs
    assert _max_diff(outputs.logits_per_image, expected["logits_per_image"]) <= LOGIT_TOLERANCE
    assert _max_diff(outputs.logits_per_text, expected["logits_per_text"]) <= LOGIT_TOLERANCE
    assert torch.equal(model.logit_scale.detach().reshape(expected["logit_scale"].shape), expected["logit_scale"])


@pytest.mark.parametrize("name", UNICL_FIXTURES)
def test_converted_processor_tokenizes_like_official(name, converted, shared_dir):
    from transformers import AutoProcessor

    import hf_unified  # noqa: F401

    fixture = shared_dir / "fixtures" / name
    config = json.loads((fixture / "config.json").read_text())
    inputs = load_file(fixture / "inputs.safetensors")
    processor = AutoProcessor.from_pretrained(converted[name])
    # The official call: tokenizer(texts, padding='max_length', truncation=True, max_length=77), padded with EOT.
    encoded = processor(
        text=config["inputs"]["texts"], padding="max_length", truncation=True, max_length=77, return_tensors="pt"
    )
    assert torch.equal(encoded["input_ids"], inputs["input_ids"])
    assert torch.equal(encoded["attention_mask"], inputs["attention_mask"])
    assert processor.tokenizer.pad_token_id == processor.tokenizer.eos_token_id == 599

    image_processor = processor.image_processor
    assert image_processor.size == {"shortest_edge": 256}
    assert image_processor.crop_size == {"height": 224, "width": 224}
    assert list(image_processor.image_mean) == [0.485, 0.456, 0.406]
    assert list(image_processor.image_std) == [0.229, 0.224, 0.225]
    assert int(image_processor.resample) == 3  # bicubic


def test_model_card_names_source_checkpoint(converted):
    card = (converted[UNICL_FIXTURES[0]] / "README.md").read_text()
    assert "checkpoint.pth" in card


def _corrupt(shared_dir: Path, tmp_path: Path, edit) -> Path:
    fixture = shared_dir / "fixtures" / "unicl-tiny-a"
    checkpoint = torch.load(fixture / "checkpoint.pth", map_location="cpu", weights_only=True)
    edit(checkpoint["model"])
    path = tmp_path / "corrupted.pth"
    torch.save(checkpoint, path)
    return path


def _convert(shared_dir: Path, checkpoint: Path, tmp_path: Path, **kwargs) -> Path:
    fixture = shared_dir / "fixtures" / "unicl-tiny-a"
    return convert_unicl_checkpoint(
        checkpoint,
        tmp_path / "out",
        config_json=fixture / "config.json",
        tokenizer_dir=shared_dir / "fixtures" / "tokenizer-tiny-clip-bpe",
        **kwargs,
    )


def test_missing_key_is_listed(shared_dir, tmp_path):
    removed = ["image_encoder.layers.2.blocks.1.attn.proj.bias", "text_encoder.resblocks.1.ln_2.weight"]

    def edit(state):
        for key in removed:
            del state[key]

    with pytest.raises(ConversionError, match="missing") as error:
        _convert(shared_dir, _corrupt(shared_dir, tmp_path, edit), tmp_path)
    assert all(key in str(error.value) for key in removed)


def test_unused_key_is_listed(shared_dir, tmp_path):
    def edit(state):
        state["image_encoder.head.weight"] = torch.zeros(10, 96)

    with pytest.raises(ConversionError, match="not used") as error:
        _convert(shared_dir, _corrupt(shared_dir, tmp_path, edit), tmp_path)
    assert "image_encoder.head.weight" in str(error.value)


def test_wrong_shape_is_listed(shared_dir, tmp_path):
    def edit(state):
        state["text_encoder.resblocks.0.mlp.c_fc.bias"] = torch.zeros(127)

    with pytest.raises(ConversionError, match="wrong shape") as error:
        _convert(shared_dir, _corrupt(shared_dir, tmp_path, edit), tmp_path)
    assert "text_encoder.resblocks.0.mlp.c_fc.bias: shape (127,)" in str(error.value)


def test_cli_reports_errors_without_traceback(shared_dir, tmp_path, capsys):
    def edit(state):
        del state["logit_scale"]

    checkpoint = _corrupt(shared_dir, tmp_path, edit)
    exit_code = main(
        [
            "--checkpoint",
            str(checkpoint),
            "--output",
            str(tmp_path / "out"),
            "--tokenizer",
            str(shared_dir / "fixtures" / "tokenizer-tiny-clip-bpe"),
            "--text-heads",
            "2",
        ]
    )
    assert exit_code == 1
    assert "logit_scale" in capsys.readouterr().err


def test_preset_contradicting_the_shapes_is_an_error(shared_dir, tmp_path):
    fixture = shared_dir / "fixtures" / "unicl-tiny-a"
    with pytest.raises(ConversionError, match="embed_dim"):
        convert_unicl_checkpoint(fixture / "checkpoint.pth", tmp_path / "out", preset="swin-tiny")


def test_buffers_are_checked_against_swin(shared_dir, tmp_path):
    """A shifted-window mask that does not fit the inferred configuration is reported, not silently dropped."""

    def edit(state):
        state["image_encoder.layers.2.blocks.1.attn_mask"] = state["image_encoder.layers.2.blocks.1.attn_mask"].flip(0)

    with pytest.raises(ConversionError, match="attn_mask"):
        _convert(shared_dir, _corrupt(shared_dir, tmp_path, edit), tmp_path)


def test_klite_raw_layout_converts_to_the_same_weights(shared_dir, tmp_path, converted):
    """K-LITE's UniCL files are raw state dicts keyed visual. / text. / vision_projection."""
    fixture = shared_dir / "fixtures" / "unicl-tiny-a"
    state = torch.load(fixture / "checkpoint.pth", map_location="cpu", weights_only=True)["model"]
    renamed = {}
    for key, tensor in state.items():
        key = key.replace("image_encoder.", "visual.", 1).replace("text_encoder.", "text.", 1)
        renamed["vision_projection" if key == "image_projection" else key] = tensor
    torch.save(renamed, tmp_path / "klite.pth")
    folder = _convert(shared_dir, tmp_path / "klite.pth", tmp_path)
    ours = load_file(folder / "model.safetensors")
    reference = load_file(converted["unicl-tiny-a"] / "model.safetensors")
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in ours)


def _yacs_cfg_node_class(monkeypatch) -> type:
    """A class that pickles as `yacs.config.CfgNode` (dict items plus yacs' attribute state), like the training config
    released UniCL files keep under 'config'. yacs is not installed: the converter must not need it."""
    module = types.ModuleType("yacs.config")

    class CfgNode(dict):
        def __init__(self, init=None):
            super().__init__(init or {})
            vars(self).update(
                __immutable__=True, __deprecated_keys__=set(), __renamed_keys__={}, __new_allowed__=False
            )

    CfgNode.__module__, CfgNode.__qualname__ = module.__name__, "CfgNode"
    module.CfgNode = CfgNode
    monkeypatch.setitem(sys.modules, "yacs", types.ModuleType("yacs"))
    monkeypatch.setitem(sys.modules, "yacs.config", module)
    return CfgNode


def test_extra_pickled_entries_are_ignored(shared_dir, tmp_path, converted, monkeypatch):
    """Released files carry optimizer state, epoch, the best accuracy (numpy) and the yacs training config next to
    'model'; the converter's allowlist reads them without importing yacs, and they do not reach the model."""
    import numpy as np

    cfg_node = _yacs_cfg_node_class(monkeypatch)
    fixture = shared_dir / "fixtures" / "unicl-tiny-a"
    checkpoint = torch.load(fixture / "checkpoint.pth", map_location="cpu", weights_only=True)
    config = cfg_node({"MODEL": cfg_node({"NAME": "unicl", "DEPTHS": [1, 1, 2, 1]}), "TRAIN": cfg_node({"LR": 5e-4})})
    checkpoint.update(
        epoch=np.int64(31),
        max_accuracy=np.float64(81.1),
        accuracies=np.array([79.5, 81.1], dtype=np.float32),
        optimizer=OrderedDict(state={}, param_groups=[{"lr": 5e-4, "betas": (0.9, 0.999)}]),
        config=config,
    )
    torch.save(checkpoint, tmp_path / "released.pth")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "released.pth", map_location="cpu", weights_only=True)  # the plain call refuses it
    folder = _convert(shared_dir, tmp_path / "released.pth", tmp_path)
    ours = load_file(folder / "model.safetensors")
    reference = load_file(converted["unicl-tiny-a"] / "model.safetensors")
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in ours)


def test_released_shapes_recognise_their_preset():
    """Without --preset or --config, a Swin-T / Swin-B release gets its released values (text heads, drop path)."""
    for name, embed_dim, depths, heads in (
        ("swin-tiny", 96, [2, 2, 6, 2], [3, 6, 12, 24]),
        ("swin-base", 128, [2, 2, 18, 2], [4, 8, 16, 32]),
    ):
        shapes = {
            "vision_config": {"patch_size": 4, "embed_dim": embed_dim, "depths": depths, "num_heads": heads},
            "text_config": {"vocab_size": 49408, "hidden_size": 512, "num_hidden_layers": 12},
            "projection_dim": 512,
        }
        fields, preset = CONVERTER.resolve_fields(shapes)
        assert preset == name
        assert fields["text_config.num_attention_heads"] == 8
        assert fields["vision_config.drop_path_rate"] == {"swin-tiny": 0.2, "swin-base": 0.5}[name]


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.endswith(".partial"))


def test_non_empty_output_is_refused_without_overwrite(shared_dir, tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    assert main(_cli_args(shared_dir, "unicl-tiny-a", output)) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in output.iterdir()) == ["keep.txt"]
    assert _leftovers(tmp_path) == []


def test_overwrite_replaces_the_folder(shared_dir, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("old")
    assert main(_cli_args(shared_dir, "unicl-tiny-a", output, "--overwrite")) == 0
    names = {p.name for p in output.iterdir()}
    assert "keep.txt" not in names and {"config.json", "model.safetensors", "README.md"} <= names
    assert _leftovers(tmp_path) == []


def test_overwrite_never_replaces_the_folder_of_the_checkpoint_it_converts(shared_dir, tmp_path, capsys):
    """Before, `--output` at the downloaded checkpoint's folder with `--overwrite` converted it and replaced that
    folder: the official checkpoint was deleted, exit 0."""
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    fixture = shared_dir / "fixtures" / "unicl-tiny-a"
    checkpoint = downloads / "checkpoint.pth"
    checkpoint.write_bytes((fixture / "checkpoint.pth").read_bytes())
    argv = _cli_args(shared_dir, "unicl-tiny-a", downloads, "--overwrite")
    argv[argv.index("--checkpoint") + 1] = str(checkpoint)
    assert main(argv) == 1
    assert "which this conversion reads: writing the model there would delete it" in capsys.readouterr().err
    assert checkpoint.read_bytes() == (fixture / "checkpoint.pth").read_bytes()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["downloads"]


@pytest.mark.parametrize("existing", [False, True])
def test_failed_write_leaves_the_output_as_it_was(shared_dir, tmp_path, monkeypatch, existing):
    from hf_unified.conversion import converter

    output = tmp_path / "out"
    if existing:
        output.mkdir()
        (output / "keep.txt").write_text("old")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(converter, "write_model_card", fail)
    assert main(_cli_args(shared_dir, "unicl-tiny-a", output, "--overwrite")) == 1
    if existing:
        assert sorted(p.name for p in output.iterdir()) == ["keep.txt"]
    else:
        assert not output.exists()
    assert _leftovers(tmp_path) == []


def test_killed_conversion_leaves_no_output(shared_dir, tmp_path):
    """A process killed while writing (after the weights, before the card) leaves no `--output` folder at all."""
    output = tmp_path / "out"
    code = textwrap.dedent(
        f"""
        import os, sys
        from hf_unified.conversion import converter, unicl
        converter.write_model_card = lambda *args, **kwargs: os._exit(137)
        sys.exit(unicl.main({_cli_args(shared_dir, "unicl-tiny-a", output)!r}))
        """
    )
    repo_root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 137, result.stderr
    assert not output.exists()
    partial = [tmp_path / name for name in _leftovers(tmp_path)]
    assert len(partial) == 1 and (partial[0] / "out" / "model.safetensors").is_file()  # the weights were written
