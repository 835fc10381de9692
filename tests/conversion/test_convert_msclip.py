"""The MS-CLIP converter reproduces the official outputs stored in ../shared/fixtures/msclip-*/ (made with
Hxyou/MSCLIP)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_unified.conversion.common import ConversionError
from hf_unified.conversion.msclip import CONVERTER, SHARED_TENSORS, convert_msclip_checkpoint, main

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"
MSCLIP_FIXTURES = sorted(p.name for p in FIXTURES.glob("msclip-*") if (p / "checkpoint.pth").is_file())
EMBEDDING_TOLERANCE = 1e-5
LOGIT_TOLERANCE = 1e-4


def _auto_model_class():
    """AutoModel, with MS-CLIP registered the way `hf_unified/__init__.py` registers each method."""
    from transformers import AutoConfig, AutoModel, AutoProcessor

    import hf_unified  # noqa: F401
    from hf_unified.configuration_msclip import MSCLIPConfig
    from hf_unified.modeling_msclip import MSCLIPModel
    from hf_unified.processing_msclip import MSCLIPProcessor

    AutoConfig.register("msclip", MSCLIPConfig, exist_ok=True)
    AutoModel.register(MSCLIPConfig, MSCLIPModel, exist_ok=True)
    AutoProcessor.register(MSCLIPConfig, MSCLIPProcessor, exist_ok=True)
    return AutoModel, AutoProcessor


@pytest.fixture(scope="module")
def converted(shared_dir, tmp_path_factory) -> dict[str, Path]:
    """Each fixture converted once through the CLI entry point with `--config <fixture>/config.json`."""
    folders = {}
    for name in MSCLIP_FIXTURES:
        fixture = shared_dir / "fixtures" / name
        output = tmp_path_factory.mktemp(name)
        exit_code = main(
            [
                "--checkpoint",
                str(fixture / "checkpoint.pth"),
                "--output",
                str(output),
                "--config",
                str(fixture / "config.json"),
                "--tokenizer",
                str(shared_dir / "fixtures" / "tokenizer-tiny-clip-bpe"),
            ]
        )
        assert exit_code == 0
        folders[name] = output
    return folders


def _max_diff(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    return (actual - expected).abs().max().item()


def test_fixtures_present(shared_dir):
    assert len(MSCLIP_FIXTURES) >= 2, f"expected msclip-tiny-a and -b under {FIXTURES}"


@pytest.mark.parametrize("name", MSCLIP_FIXTURES)
def test_converted_model_matches_official_outputs(name, converted, shared_dir):
    auto_model, _ = _auto_model_class()
    fixture = shared_dir / "fixtures" / name
    inputs = load_file(fixture / "inputs.safetensors")
    expected = load_file(fixture / "outputs.safetensors")
    model = auto_model.from_pretrained(converted[name]).eval()
    assert type(model).__name__ == "MSCLIPModel"

    with torch.no_grad():
        outputs = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values=inputs["pixel_values"]
        )
        image = model.get_image_features(pixel_values=inputs["pixel_values"])
        # The official text blocks ignore attention_mask (causal only): the states at padding positions match a run
        # without the mask; the pooled end-of-text token is the same either way.
        text = model.get_text_features(input_ids=inputs["input_ids"])
        image_pooled = model.vision_post_layernorm(image.last_hidden_state[:, 0])
        eos = inputs["input_ids"].argmax(dim=-1)
        text_pooled = text.last_hidden_state[torch.arange(len(eos)), eos]

    actual = {
        "image_embeds": outputs.image_embeds,
        "text_embeds": outputs.text_embeds,
        "image_features_unnormalized": image.pooler_output,
        "text_features_unnormalized": text.pooler_output,
        "image_pooled_output": image_pooled,
        "image_last_hidden_state": image.last_hidden_state,
        "text_pooled_output": text_pooled,
        "text_last_hidden_state": text.last_hidden_state,
    }
    diffs = {key: _max_diff(value, expected[key]) for key, value in actual.items()}
    assert all(d <= EMBEDDING_TOLERANCE for d in diffs.values()), diffs
    assert _max_diff(outputs.logits_per_image, expected["logits_per_image"]) <= LOGIT_TOLERANCE
    assert _max_diff(outputs.logits_per_text, expected["logits_per_text"]) <= LOGIT_TOLERANCE
    assert torch.equal(model.logit_scale.detach().reshape(expected["logit_scale"].shape), expected["logit_scale"])


@pytest.mark.parametrize("name", MSCLIP_FIXTURES)
def test_shared_tensors_stored_once(name, converted, shared_dir):
    """The official file's duplicated shared tensors become one tensor each; the head counts stay per modality."""
    config = json.loads((shared_dir / "fixtures" / name / "config.json").read_text())
    shared = config["architecture"]["sharing"]["shared_block_indices"]
    saved_config = json.loads((converted[name] / "config.json").read_text())
    heads = config["architecture"]["sharing"]["heads_per_modality"]
    assert saved_config["vision_num_attention_heads"] == heads["vision"]
    assert saved_config["text_num_attention_heads"] == heads["text"]

    official = torch.load(shared_dir / "fixtures" / name / "checkpoint.pth", map_location="cpu", weights_only=True)
    saved = load_file(converted[name] / "model.safetensors")
    unique = {t.untyped_storage().data_ptr() for t in official.values()}
    assert len(unique) == config["num_unique_tensors"]
    # One saved tensor per unique official tensor, plus the q/k/v split of each fused in_proj weight and bias.
    fused = [k for k in official if k.endswith(("in_proj_weight", "in_proj_bias"))]
    fused_unique = {official[k].untyped_storage().data_ptr() for k in fused}
    assert len(saved) == len(unique) + 2 * len(fused_unique)
    for block in shared:
        assert f"encoder.layers.{block}.attention.q_proj.weight" in saved
        assert f"encoder.layers.{block}.mlp.fc1.weight" in saved
        assert f"encoder.layers.{block}.text.attention.q_proj.weight" not in saved


@pytest.mark.parametrize("name", MSCLIP_FIXTURES)
def test_converted_processor_tokenizes_like_official(name, converted, shared_dir):
    _, auto_processor = _auto_model_class()
    fixture = shared_dir / "fixtures" / name
    config = json.loads((fixture / "config.json").read_text())
    inputs = load_file(fixture / "inputs.safetensors")
    processor = auto_processor.from_pretrained(converted[name])
    # The official SimpleTokenizer: [SOT] + bpe + [EOT], zero padded to 77.
    encoded = processor(text=config["inputs"]["texts"], padding="max_length", max_length=77, return_tensors="pt")
    assert torch.equal(encoded["input_ids"], inputs["input_ids"])
    assert torch.equal(encoded["attention_mask"], inputs["attention_mask"])
    assert processor.tokenizer.pad_token_id == 0

    size = config["preprocessing"]["image_size"]
    image_processor = processor.image_processor
    assert image_processor.size == {"shortest_edge": size}
    assert image_processor.crop_size == {"height": size, "width": size}
    assert list(image_processor.image_mean) == [0.485, 0.456, 0.406]
    assert list(image_processor.image_std) == [0.229, 0.224, 0.225]
    assert int(image_processor.resample) == 3  # bicubic


def test_model_card_names_source_checkpoint(converted):
    card = (converted[MSCLIP_FIXTURES[0]] / "README.md").read_text()
    assert "checkpoint.pth" in card


def _corrupt(shared_dir: Path, tmp_path: Path, edit, name: str = "msclip-tiny-b") -> Path:
    state = torch.load(shared_dir / "fixtures" / name / "checkpoint.pth", map_location="cpu", weights_only=True)
    state = {k: v.clone() for k, v in state.items()}  # break the shared storage so that edits touch one copy
    edit(state)
    path = tmp_path / "corrupted.pth"
    torch.save(state, path)
    return path


def _convert(shared_dir: Path, checkpoint: Path, tmp_path: Path, name: str = "msclip-tiny-b") -> Path:
    return convert_msclip_checkpoint(
        checkpoint,
        tmp_path / "out",
        config_json=shared_dir / "fixtures" / name / "config.json",
        tokenizer_dir=shared_dir / "fixtures" / "tokenizer-tiny-clip-bpe",
    )


def test_missing_key_is_listed(shared_dir, tmp_path):
    removed = [
        "visual.transformer.parallel_branch_v.2.resnet_stage.conv_0.bn2.running_var",
        "transformer.resblocks.0.ln_1.bias",
    ]

    def edit(state):
        for key in removed:
            del state[key]

    with pytest.raises(ConversionError, match="missing") as error:
        _convert(shared_dir, _corrupt(shared_dir, tmp_path, edit), tmp_path)
    assert all(key in str(error.value) for key in removed)


def test_unused_key_is_listed(shared_dir, tmp_path):
    def edit(state):
        state["visual.transformer.resblocks.3.attn.lora_A"] = torch.zeros(4, 64)

    with pytest.raises(ConversionError, match="not used") as error:
        _convert(shared_dir, _corrupt(shared_dir, tmp_path, edit), tmp_path)
    assert "visual.transformer.resblocks.3.attn.lora_A" in str(error.value)


def test_wrong_shape_is_listed(shared_dir, tmp_path):
    def edit(state):
        state["visual.transformer.parallel_lateral_adapter.1.ln_adapt.bias"] = torch.zeros(63)

    with pytest.raises(ConversionError, match="wrong shape") as error:
        _convert(shared_dir, _corrupt(shared_dir, tmp_path, edit), tmp_path)
    assert "visual.transformer.parallel_lateral_adapter.1.ln_adapt.bias: shape (63,)" in str(error.value)


def test_unequal_shared_copies_are_an_error(shared_dir, tmp_path):
    """A block the config declares shared must hold the same tensor under both names."""
    key = f"transformer.resblocks.4.{SHARED_TENSORS[4]}"

    def edit(state):
        state[key] = state[key] + 1e-3

    with pytest.raises(ConversionError, match="shared_blocks|differ"):
        _convert(shared_dir, _corrupt(shared_dir, tmp_path, edit), tmp_path)


def test_preset_is_checked_against_the_shapes(shared_dir, tmp_path):
    fixture = shared_dir / "fixtures" / "msclip-tiny-a"
    with pytest.raises(ConversionError, match="width"):
        convert_msclip_checkpoint(
            fixture / "checkpoint.pth",
            tmp_path / "out",
            preset="b32",
            tokenizer_dir=shared_dir / "fixtures" / "tokenizer-tiny-clip-bpe",
        )


def test_python_dash_m_cli(shared_dir, tmp_path):
    """`python -m hf_unified.conversion.msclip` (what the console script runs) writes a complete folder."""
    fixture = shared_dir / "fixtures" / "msclip-tiny-a"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hf_unified.conversion.msclip",
            "--checkpoint",
            str(fixture / "checkpoint.pth"),
            "--output",
            str(tmp_path / "out"),
            "--config",
            str(fixture / "config.json"),
            "--tokenizer",
            str(shared_dir / "fixtures" / "tokenizer-tiny-clip-bpe"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "README.md"):
        assert (tmp_path / "out" / name).is_file(), name


# What the shapes of a released MS-CLIP-S B/32 checkpoint tell (`MSCLIPConverter.infer_shapes`).
B32_SHAPES = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "max_position_embeddings": 77,
    "num_hidden_layers": 12,
    "intermediate_size": 3072,
    "projection_dim": 512,
    "early_specialization": True,
    "shared_sublayers": ["attention", "mlp"],
    "stem_channels": [48, 96, 192, 384, 768],
    "parallel_branch": True,
    "parallel_channels": [48, 96, 192, 384, 768],
    "parallel_t2b_kernels": [16, 8, 4, 2, 1],
    "checkpoint.grid_size": 7,
    "checkpoint.shared_blocks": list(range(1, 12)),
}


@pytest.mark.parametrize(
    ("grid", "t2b_kernels", "expected"),
    [
        (7, [16, 8, 4, 2, 1], ("b32", 32, [2, 2, 2, 2], [2, 2, 2, 2, 2])),
        (14, [8, 4, 2, 1, 1], ("b16", 16, [2, 2, 2, 1], [2, 2, 2, 2, 1])),
    ],
)
def test_released_layout_is_recognised_from_the_shapes(grid, t2b_kernels, expected):
    """Without --preset or --config, the released B/32 or B/16 layout is chosen by the adapters' kernels."""
    shapes = {**B32_SHAPES, "parallel_t2b_kernels": t2b_kernels, "checkpoint.grid_size": grid}
    fields, recognised = CONVERTER.resolve_fields(shapes)
    config = CONVERTER.build_config(fields)
    preset, patch_size, stem_strides, branch_strides = expected
    assert recognised == preset
    assert (config.image_size, config.patch_size) == (224, patch_size)
    assert config.stem_strides == stem_strides and config.parallel_strides == branch_strides
    assert config.parallel_lateral_layers == [2, 4, 6, 8, 10]
    assert (config.vision_num_attention_heads, config.text_num_attention_heads) == (12, 12)
    assert config.shared_layers == "all" and config.layer_norm_eps == 1e-12


def test_flag_wins_over_config_which_wins_over_preset():
    config_json = {"architecture": {"sharing": {"heads_per_modality": {"text": 6}}}}
    fields, preset = CONVERTER.resolve_fields(B32_SHAPES, {}, config_json, "b32")
    assert (preset, fields["text_num_attention_heads"], fields["image_size"]) == ("b32", 6, 224)
    fields, _ = CONVERTER.resolve_fields(B32_SHAPES, {"text_num_attention_heads": 8}, config_json, "b32")
    assert fields["text_num_attention_heads"] == 8
    assert fields["layer_norm_eps"] == 1e-12  # the default, which nothing overrode


def test_every_contradiction_with_the_shapes_is_listed():
    tiny = {**B32_SHAPES, "hidden_size": 64, "num_hidden_layers": 6, "checkpoint.shared_blocks": [1, 2, 3, 4, 5]}
    with pytest.raises(ConversionError) as error:
        CONVERTER.resolve_fields(tiny, {}, {}, "b32")
    message = str(error.value)
    assert "hidden_size: 64 in the checkpoint, but --preset b32 says 768" in message
    assert "num_hidden_layers: 6 in the checkpoint, but --preset b32 says 12" in message


def test_missing_settings_name_their_flags():
    shapes = {**B32_SHAPES, "parallel_t2b_kernels": [4, 2, 1, 1, 1]}  # no released layout
    with pytest.raises(ConversionError, match="--stem-strides, --branch-strides, --lateral-layers"):
        CONVERTER.resolve_fields(shapes)
