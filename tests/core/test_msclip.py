"""MS-CLIP as a transformers model: parameter counts, one-copy sharing, the sharing spectrum, attention per modality,
pooling, config errors, the convolutions. What every model keeps (save/load, attention backends, pipelines, remote
code, bad inputs) is the model contract, `tests/core/test_model_contract.py`."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from tiny_models import IMAGE_SIZE, MSCLIP_TINY
from transformers import AutoConfig
from transformers.modeling_outputs import BaseModelOutputWithPooling

from hf_unified.configuration_msclip import MSCLIP_PRESETS, MSCLIPConfig
from hf_unified.modeling_msclip import (
    MSCLIPAttention,
    MSCLIPModel,
)
from hf_unified.processing_msclip import MSCLIPProcessor, msclip_image_processor

# A tiny MS-CLIP-S: conv stem 32 -> 16 -> 8 -> 4 (patch 8, 4x4 grid), a 2-stage parallel branch whose stages
# (16x16, 8x8) land on the grid with t2b kernels 4 and 2, adapters before blocks 1 and 2; text 4 heads, vision 2.
TINY = {**MSCLIP_TINY, "max_position_embeddings": 77}


def tiny_config(preset: str = "ms-clip-s", **overrides) -> MSCLIPConfig:
    return MSCLIPConfig.from_preset(preset, **{**TINY, **overrides})


def images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (40 + 3 * i, 48, 3), dtype=np.uint8)) for i in range(n)]


TEXTS = ["a photo of a cat.", "an origami of the big red bus on the street.", "a dog", "itap of the ocean."]


@pytest.fixture(scope="module")
def processor(tiny_clip_tokenizer):
    return MSCLIPProcessor(msclip_image_processor(IMAGE_SIZE), tiny_clip_tokenizer)


@pytest.fixture(scope="module")
def inputs(processor):
    return processor(text=TEXTS, images=images(4), padding=True, return_tensors="pt")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MSCLIPModel(tiny_config()).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, model, processor):
    folder = tmp_path_factory.mktemp("msclip-tiny")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def count_parameters(config: MSCLIPConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in MSCLIPModel(config).parameters())


def shared_parameter_names(model: MSCLIPModel) -> list[str]:
    """Parameters held once for both modalities: under encoder.layers.i but not under .vision / .text."""
    return [
        name
        for name, _ in model.named_parameters()
        if name.startswith("encoder.layers.") and name.split(".")[3] not in ("vision", "text")
    ]


# ------------------------------------------------------------------------------------------------------------------
# Parameter counts and the one-copy layout


def test_default_config_is_released_ms_clip_s_b32():
    config = MSCLIPConfig()
    assert (config.hidden_size, config.num_hidden_layers, config.patch_size, config.projection_dim) == (
        768,
        12,
        32,
        512,
    )
    assert (
        config.hidden_act == "quick_gelu" and config.layer_norm_eps == 1e-12 and config.logit_scale_init_value == 1.0
    )
    assert config.early_specialization and config.parallel_branch
    released = count_parameters(config)
    assert abs(released - 132.41e6) < 0.1e6, released
    # The same widths with nothing shared (a separate text and image transformer) have more parameters.
    unshared = count_parameters(MSCLIPConfig(shared_layers="none"))
    assert unshared > released + 70e6, (unshared, released)
    assert count_parameters(MSCLIPConfig.from_preset("separate")) > released


def test_shared_layout_matches_official_ms_clip_s(model):
    """Blocks 1..L-1 hold attention + MLP once; every LayerNorm per modality; text block 0 is text-only."""
    layers = model.encoder.layers
    assert layers[0].runs == ("text",) and not layers[0].shared_names
    assert set(dict(layers[0].text.named_children())) == {"attention", "mlp", "layer_norm1", "layer_norm2"}
    for layer in layers[1:]:
        assert layer.shared_names == ("attention", "mlp")
        assert set(dict(layer.vision.named_children())) == {"layer_norm1", "layer_norm2"}
        assert set(dict(layer.text.named_children())) == {"layer_norm1", "layer_norm2"}
        assert layer.sublayer("vision", "attention") is layer.sublayer("text", "attention")
        assert layer.sublayer("vision", "layer_norm1") is not layer.sublayer("text", "layer_norm1")
    # No parameter is reachable under two names (no aliasing between towers).
    assert len(list(model.named_parameters(remove_duplicate=False))) == len(list(model.named_parameters()))


ALL_SUBLAYERS = ("attention", "mlp", "layer_norm1", "layer_norm2")


@pytest.mark.parametrize(
    "overrides, shared_per_layer",
    [
        (dict(shared_layers=[2]), [(), (), ("attention", "mlp")]),
        (dict(shared_sublayers=["attention", "mlp", "layernorm"]), [(), ALL_SUBLAYERS, ALL_SUBLAYERS]),
        (dict(shared_layers="none"), [(), (), ()]),
        (dict(early_specialization=False, parallel_branch=False), [("attention", "mlp")] * 3),
    ],
)
def test_sharing_is_configuration(overrides, shared_per_layer):
    model = MSCLIPModel(tiny_config(**overrides))
    assert [layer.shared_names for layer in model.encoder.layers] == shared_per_layer


def test_shared_parameter_gets_gradient_from_each_modality(model, inputs):
    model = copy.deepcopy(model).train()
    shared = model.encoder.layers[1].attention.q_proj.weight
    text_only = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    text_only.pooler_output.sum().backward()
    assert shared.grad is not None and shared.grad.abs().sum() > 0
    assert model.vision_post_layernorm.weight.grad is None  # the image path was not run
    model.zero_grad(set_to_none=True)
    model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output.sum().backward()
    assert shared.grad is not None and shared.grad.abs().sum() > 0
    assert model.text_final_layer_norm.weight.grad is None


# ------------------------------------------------------------------------------------------------------------------
# The sharing spectrum trains


@pytest.mark.parametrize("preset", sorted(MSCLIP_PRESETS) + ["layers-1-2", "no-branch", "no-stem"])
def test_every_point_of_the_spectrum_trains(preset, inputs):
    extra = {
        "layers-1-2": dict(shared_layers=[1, 2]),
        "no-branch": dict(parallel_branch=False),
        "no-stem": dict(early_specialization=False, parallel_lateral_layers=[0, 2]),
    }
    torch.manual_seed(0)
    model = MSCLIPModel(tiny_config(preset if preset in MSCLIP_PRESETS else "ms-clip-s", **extra.get(preset, {})))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss = model(**inputs, return_loss=True).loss
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    missing_grad = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing_grad, missing_grad
    optimizer.step()
    unchanged = [name for name, p in model.named_parameters() if torch.equal(p, before[name])]
    assert not unchanged, unchanged


# ------------------------------------------------------------------------------------------------------------------
# Save / load


def test_save_load_keeps_one_copy_of_each_shared_tensor(model, saved):
    # Exact outputs, state and auto_map after the round trip: the model contract (tests/core/test_model_contract.py).
    with safe_open(str(saved / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    shared = shared_parameter_names(model)
    assert shared and set(shared) <= keys
    for name in shared:  # no second (per-modality) copy of a shared tensor
        layer, rest = name.split(".", 3)[2], name.split(".", 3)[3]
        assert (
            f"encoder.layers.{layer}.vision.{rest}" not in keys and f"encoder.layers.{layer}.text.{rest}" not in keys
        )
    assert len(keys) == len(model.state_dict())
    loaded = MSCLIPModel.from_pretrained(saved)
    assert loaded.encoder.layers[1].sublayer("vision", "mlp") is loaded.encoder.layers[1].sublayer("text", "mlp")
    config = json.loads((saved / "config.json").read_text())
    assert config["model_type"] == "msclip"


def test_from_pretrained_initialises_everything_not_in_the_file(tmp_path):
    """A checkpoint without BN statistics or logit_scale must not leave garbage: _init_weights covers them."""
    torch.manual_seed(0)
    MSCLIPModel(tiny_config(logit_scale_init_value=2.5)).save_pretrained(tmp_path)
    from safetensors.torch import load_file, save_file

    state = load_file(tmp_path / "model.safetensors")
    dropped = [k for k in state if "running_" in k or k == "logit_scale"]
    save_file(
        {k: v for k, v in state.items() if k not in dropped}, tmp_path / "model.safetensors", metadata={"format": "pt"}
    )
    loaded = MSCLIPModel.from_pretrained(tmp_path)
    assert loaded.logit_scale.item() == pytest.approx(2.5)
    for name, buffer in loaded.named_buffers():
        if name.endswith("running_var"):
            assert torch.equal(buffer, torch.ones_like(buffer)), name
        if name.endswith("running_mean"):
            assert torch.equal(buffer, torch.zeros_like(buffer)), name
        if name.endswith("position_ids"):
            assert torch.equal(buffer[0], torch.arange(buffer.shape[1])), name


# ------------------------------------------------------------------------------------------------------------------
# Forward semantics


def test_forward_outputs_follow_clip(model, inputs):
    with torch.no_grad():
        out = model(**inputs, return_loss=True)
    assert out.logits_per_image.shape == (4, 4) and out.image_embeds.shape == (4, 16)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.T)
    torch.testing.assert_close(out.image_embeds.norm(dim=-1), torch.ones(4))
    expected = model.logit_scale.exp() * out.image_embeds @ out.text_embeds.T
    torch.testing.assert_close(out.logits_per_image, expected)
    assert out.vision_model_output.last_hidden_state.shape == (4, 1 + 4 * 4, 32)
    assert out.loss.ndim == 0
    features = model.get_image_features(pixel_values=inputs["pixel_values"])
    assert isinstance(features, BaseModelOutputWithPooling) and features.pooler_output.shape == (4, 16)
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True)
    # Input of every block a modality runs, then the last output (images skip block 0, the conv stem).
    assert len(hidden.text_model_output.hidden_states) == 4 and len(hidden.vision_model_output.hidden_states) == 3
    torch.testing.assert_close(hidden.vision_model_output.hidden_states[-1], out.vision_model_output.last_hidden_state)
    as_tuple = model(**inputs, return_dict=False)
    torch.testing.assert_close(as_tuple[0], out.logits_per_image)


def test_text_pooling_is_robust_to_any_pad_id(model, inputs):
    """The tiny CLIP tokenizer pads with end-of-text, the official one with 0: same pooled text embedding, with or
    without an attention mask."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert (mask == 0).any()
    zero_padded = ids.masked_fill(mask == 0, 0)
    with torch.no_grad():
        a = model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
        b = model.get_text_features(input_ids=zero_padded, attention_mask=mask).pooler_output
        c = model.get_text_features(input_ids=zero_padded).pooler_output
        single = model.get_text_features(input_ids=ids[2:3, : int(mask[2].sum())]).pooler_output
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    torch.testing.assert_close(single[0], a[2], atol=1e-5, rtol=0)


def test_truncated_text_pools_last_attended_token(model, inputs):
    ids = inputs["input_ids"][:1, :4].clone()  # no end-of-text token left
    assert not (ids == 599).any()
    with torch.no_grad():
        out = model.get_text_features(input_ids=ids)
    expected = model.text_projection(out.last_hidden_state[:, -1])
    torch.testing.assert_close(out.pooler_output, expected)


def test_head_count_is_per_modality(model, inputs):
    """Same weights, different text head count -> different text embeddings, identical image embeddings."""
    other = MSCLIPModel(tiny_config(text_num_attention_heads=2)).eval()
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        a, b = model(**inputs), other(**inputs)
    torch.testing.assert_close(a.image_embeds, b.image_embeds)
    assert (a.text_embeds - b.text_embeds).abs().max() > 1e-4


@pytest.mark.parametrize("preset", ["ms-clip-s", "separate"])
def test_eager_attention_weights_count_each_modality_s_heads_and_blocks(preset, inputs):
    # That eager and SDPA agree is the model contract's (tests/core/test_model_contract.py).
    torch.manual_seed(0)
    eager = MSCLIPModel(tiny_config(preset)).eval()
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        a = eager(**inputs, output_attentions=True)
    length = inputs["input_ids"].shape[1]
    assert len(a.text_model_output.attentions) == 3 and a.text_model_output.attentions[0].shape == (
        4,
        4,
        length,
        length,
    )
    # 2 vision heads over 16 tokens + CLS; with the conv stem images run blocks 1 and 2 only.
    assert len(a.vision_model_output.attentions) == (2 if preset == "ms-clip-s" else 3)
    assert a.vision_model_output.attentions[0].shape == (4, 2, 17, 17)


def test_fused_qkv_matches_the_module_path_and_yields_to_hooks(inputs):
    """The fused [3W, W] projection gives what q_proj/k_proj/v_proj give as modules, in values and gradients, and a
    hook on a projection (as PEFT/LoRA wrappers need) makes the layer call the modules again."""
    torch.manual_seed(0)
    fused = MSCLIPModel(tiny_config()).train()
    modular = copy.deepcopy(fused)
    calls = []
    for layer in modular.encoder.layers:
        for attention in [m for m in layer.modules() if isinstance(m, MSCLIPAttention)]:
            attention.q_proj.register_forward_hook(lambda *args: calls.append(1))
            assert not attention._can_fuse_projections()
    fused(**inputs, return_loss=True).loss.backward()
    modular(**inputs, return_loss=True).loss.backward()
    assert len(calls) > 0
    for (name, a), b in zip(fused.named_parameters(), modular.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_sdpa_text_runs_without_a_materialised_mask(model, inputs, monkeypatch):
    """Under SDPA text attention is causal by flag; the mask builder is not called (eager still gets the mask)."""
    import hf_unified.modeling_msclip as modeling

    built = []
    real = modeling.causal_attention_mask
    monkeypatch.setattr(modeling, "causal_attention_mask", lambda *a: built.append(a) or real(*a))
    sdpa = copy.deepcopy(model)
    sdpa.set_attn_implementation("sdpa")
    with torch.no_grad():
        sdpa.get_text_features(input_ids=inputs["input_ids"])
    assert built == []
    sdpa.set_attn_implementation("eager")
    with torch.no_grad():
        sdpa.get_text_features(input_ids=inputs["input_ids"])
    assert len(built) == 1


def test_long_text_names_max_position_embeddings(model):
    # The other bad inputs are the model contract's (tests/core/test_model_contract.py).
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(input_ids=torch.zeros(1, 78, dtype=torch.long))


# ------------------------------------------------------------------------------------------------------------------
# Config


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(hidden_size=33), "hidden_size 33 is not divisible by vision_num_attention_heads 2"),
        (dict(text_num_attention_heads=3), "not divisible by text_num_attention_heads"),
        (dict(shared_sublayers=["attention", "ffn"]), "unknown shared sub-layer"),
        (dict(shared_layers=[1, 5]), r"shared_layers \[5\] out of range"),
        (dict(shared_layers=[0, 1]), "cannot contain 0 with early_specialization"),
        (dict(shared_layers="some"), "shared_layers must be"),
        (dict(parallel_lateral_layers=[1, 3]), "lateral layer 3 out of range"),
        (dict(parallel_lateral_layers=[0, 1]), "lateral layer 0 out of range"),
        (dict(parallel_t2b_kernels=[4, 4]), "does not land on the 4x4 token grid"),
        (dict(parallel_strides=[2]), "one entry per branch stage"),
        (dict(stem_strides=[2, 1]), "total stride"),
        (dict(image_size=36), "not divisible by patch_size"),
    ],
)
def test_bad_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**kwargs)


def test_presets_and_round_trip(tmp_path):
    with pytest.raises(ValueError, match="unknown MS-CLIP preset 'tiny'"):
        MSCLIPConfig.from_preset("tiny")
    separate = tiny_config("separate")
    assert not any(separate.layer_is_shared(i) for i in range(3))
    mlp = tiny_config("mlp-shared")
    assert mlp.shared_sublayers == ["mlp"] and mlp.layer_is_shared(0)
    config = tiny_config(shared_layers=[2, 1])
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(loaded).__name__ == "MSCLIPConfig" and loaded.shared_layers == [1, 2]
    ignore = ("_name_or_path", "auto_map")
    assert {k: v for k, v in loaded.to_dict().items() if k not in ignore} == {
        k: v for k, v in config.to_dict().items() if k not in ignore
    }


# ------------------------------------------------------------------------------------------------------------------
# Convolutions


def test_conv_norm_folds_batch_norm_at_inference_and_trains_unfolded():
    from hf_unified.msclip_convolutions import MSCLIPConvNorm

    torch.manual_seed(0)
    layer = MSCLIPConvNorm(4, 6, 3, stride=2, padding=1, eps=1e-5)
    x = torch.randn(2, 4, 9, 9)
    layer.train()
    layer(x)  # one training step's statistics
    assert layer.norm.num_batches_tracked.item() == 1 and layer.norm.running_var.ne(1).any()
    layer.eval()
    with torch.no_grad():
        reference = layer.norm(layer.conv(x))  # the unfolded pair
        folded = layer(x)
    torch.testing.assert_close(folded, reference, rtol=1e-5, atol=1e-6)
    assert folded.is_contiguous(memory_format=torch.channels_last)


def test_in_place_relus_give_the_out_of_place_loss_and_gradients(monkeypatch):
    import hf_unified.msclip_convolutions as modeling

    torch.manual_seed(0)
    model = MSCLIPModel(tiny_config("ms-clip-s")).train()  # conv stem and parallel branch, BatchNorm training
    input_ids = torch.randint(1, TINY["vocab_size"] - 2, (4, 8))
    input_ids[:, -1] = TINY["eos_token_id"]
    inputs = dict(input_ids=input_ids, pixel_values=torch.randn(4, 3, TINY["image_size"], TINY["image_size"]))
    state = copy.deepcopy(model.state_dict())

    def loss_and_gradients():
        model.load_state_dict(state)  # the running statistics as they were
        model.zero_grad()
        loss = model(**inputs, return_loss=True).loss
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    loss, gradients = loss_and_gradients()
    monkeypatch.setattr(modeling, "relu_", torch.nn.functional.relu)
    expected_loss, expected = loss_and_gradients()
    torch.testing.assert_close(loss, expected_loss, rtol=0, atol=0)
    assert gradients.keys() == expected.keys() and any("stem" in name for name in gradients)
    for name, gradient in expected.items():
        torch.testing.assert_close(gradients[name], gradient, rtol=0, atol=0, msg=name)


def test_strided_pointwise_convolution_equals_conv2d():
    """A narrow strided 1x1 convolution runs on the strided slice (oneDNN's kernel for it writes past its buffer):
    forward and both gradients are those of `nn.Conv2d`, for every stride and odd sizes, as a wide one's are."""
    from hf_unified.msclip_convolutions import conv2d_channels_last

    torch.manual_seed(0)
    for channels, stride, size in ((4, (2, 2), 9), (4, (2, 2), 8), (4, (1, 3), 7), (4, (4, 2), 11), (16, (2, 2), 9)):
        conv = torch.nn.Conv2d(channels, 6, 1, stride, bias=True).double()
        x = torch.randn(2, channels, size, size, dtype=torch.float64, requires_grad=True)
        output = conv2d_channels_last(x, conv)
        expected = conv(x)
        torch.testing.assert_close(output, expected, rtol=0, atol=1e-12)
        upstream = torch.randn_like(expected)
        gradients = torch.autograd.grad(output, (x, conv.weight, conv.bias), upstream)
        expected_gradients = torch.autograd.grad(expected, (x, conv.weight, conv.bias), upstream)
        for name, got, want in zip(("input", "weight", "bias"), gradients, expected_gradients):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-12, msg=f"{name} gradient, stride {stride}")


# Run in a fresh process: oneDNN picks its kernels once per process, by the CPU or by ONEDNN_MAX_CPU_ISA.
_TRAINING_STEP = """
import sys, torch
from hf_unified import MSCLIPModel
from hf_unified.msclip_convolutions import conv2d_channels_last

model = MSCLIPModel.from_pretrained(sys.argv[1]).train()
inputs = torch.load(sys.argv[2])
state = {name: value.clone() for name, value in model.state_dict().items()}


def gradients(model, dtype):
    model.zero_grad()
    loss = model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"].to(dtype), return_loss=True).loss
    loss.backward()
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def check(gradient, reference, what):
    error, scale = (gradient.double() - reference).abs().max().item(), reference.abs().max().item()
    assert error <= 1e-4 * scale + 1e-7, (what, error, scale)


reference = gradients(MSCLIPModel.from_pretrained(sys.argv[1]).train().double(), torch.float64)  # no oneDNN
# A 1x1 stride-2 shortcut on inputs whose overrun outgrows the allocator's slack on AVX-512 too (fewer channels
# than the kernel's 16-float block).
# The weight gradient of sum(conv(x)) is, for every output channel, the sum of the input channel's strided pixels.
torch.manual_seed(0)
pixels = torch.randn(32, 12, 128, 128)
for threads in (1, 2):
    torch.set_num_threads(threads)
    model.load_state_dict(state)
    for name, gradient in gradients(model, torch.float32).items():
        check(gradient, reference[name], (threads, name))
    for channels in (4, 12):
        shortcut = torch.nn.Conv2d(channels, 16, 1, 2, bias=False)
        x = pixels[:, :channels]
        (gradient,) = torch.autograd.grad(conv2d_channels_last(x, shortcut).sum(), shortcut.weight)
        expected = x[:, :, ::2, ::2].double().sum(dim=(0, 2, 3)).view(1, channels, 1, 1).expand(16, -1, -1, -1)
        check(gradient, expected, (threads, channels))
print("ok")
"""


@pytest.mark.parametrize("max_isa", [None, "AVX2"], ids=["this-cpu", "avx2"])
def test_training_step_on_this_cpu_and_with_the_kernels_of_cpus_without_avx512(tmp_path, max_isa):
    """oneDNN's 1x1 weight gradient of a strided channels-last input with fewer channels than its vector block wrote
    past its buffer (glibc abort or SIGSEGV in one thread, wrong gradients in two): on CPUs without AVX-512, as CI's
    may be, already for the tiny stem's 4-channel shortcut; with AVX-512 at larger inputs. A training step, and the
    shortcut alone at 128 px, give the float64 gradients at 1 and 2 threads, with this CPU's kernels and AVX2's."""
    import os
    import subprocess
    import sys

    torch.manual_seed(0)
    MSCLIPModel(tiny_config("ms-clip-s")).save_pretrained(tmp_path / "model")
    input_ids = torch.randint(1, TINY["vocab_size"] - 2, (4, 8))
    input_ids[:, -1] = TINY["eos_token_id"]
    torch.save({"input_ids": input_ids, "pixel_values": torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE)}, tmp_path / "in.pt")
    env = {**os.environ, "MALLOC_CHECK_": "3"}
    if max_isa:
        env.update(ONEDNN_MAX_CPU_ISA=max_isa, ATEN_CPU_CAPABILITY=max_isa.lower())
    result = subprocess.run(
        [sys.executable, "-c", _TRAINING_STEP, str(tmp_path / "model"), str(tmp_path / "in.pt")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", (result.returncode, result.stderr[-3000:])
