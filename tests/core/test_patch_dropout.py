"""FLIP's patch dropout in the models: the exact number of patches kept, eval mode untouched, the same indices for
MS-CLIP's stack and parallel branch, random draws under control (seeding, GradCache's capture and restore, the exact
`full_batch` step), towers that cannot drop patches refused."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from accelerate import Accelerator
from scale_models import gradients, micro_batches
from tiny_models import batch, tiny_config, tiny_model, tiny_vision

from hf_unified import MSCLIPConfig, UniCLConfig, UniCLIPConfig, UniCLModel
from hf_unified.losses import text_identity_keys
from hf_unified.patch_dropout import keep_tokens, num_kept_patches
from hf_unified.training.engine.grad_cache import FullBatchStep, RandomState

# Model kinds: (model_type, config overrides, MS-CLIP preset). Tower models run at patch 4: 64 patches per image;
# MS-CLIP's tiny stack has 16.
KINDS = {
    "unicl-clip": ("unicl", {}, None),
    "unicl-vit": ("unicl", dict(vision_config=tiny_vision("vit"), vision_pooling="cls"), None),
    "uniclip": ("uniclip", {}, None),
    "uniclip-mlp": ("uniclip", {"augmentation_fusion": "mlp"}, None),  # the head after pooling: unaffected
    "msclip-s": ("msclip", {}, "ms-clip-s"),
    "msclip-shared": ("msclip", {}, "shared"),
}


def build(kind: str, patch_dropout: float, seed: int = 0, **overrides):
    model_type, kwargs, preset = KINDS[kind]
    if model_type != "msclip":
        vision = copy.deepcopy(kwargs.get("vision_config", tiny_vision("clip")))
        vision.patch_size = 4  # 64 patches: enough for the counts to mean something
        kwargs = {**kwargs, "vision_config": vision}
    return tiny_model(model_type, seed, preset, patch_dropout=patch_dropout, **kwargs, **overrides)


def inputs_for(model, size: int = 3, seed: int = 0) -> dict:
    return batch(size, views=2 if model.config.num_views > 1 else 0, seed=seed)


def num_patches(model) -> int:
    vision = model.config.vision_config
    return (vision.image_size // vision.patch_size) ** 2


def stack_input_module(model) -> torch.nn.Module:
    """The module whose output is the token stream entering the image transformer's first block."""
    if model.config.model_type == "msclip":
        return model.vision_pre_layernorm
    tower = model.vision_model
    return getattr(tower, "pre_layrnorm", None) or tower.embeddings  # CLIP's pre-norm; ViT's embeddings


def first_block(model) -> torch.nn.Module:
    if model.config.model_type == "msclip":
        return next(layer for layer in model.encoder.layers if "vision" in layer.runs)
    return next(module for name, module in model.vision_model.named_modules() if name.endswith("layers.0"))


def image_stack_inputs(model, inputs: dict) -> tuple[torch.Tensor, tuple[int, ...]]:
    """One forward pass: the tokens entering the image stack and the shape of the first image block's input."""
    seen = {}

    def stack(module, args, output):
        seen["stack"] = output.detach().clone()

    def block(module, args):
        if model.config.model_type != "msclip" or args[1] == "vision":
            seen.setdefault("block", tuple(args[0].shape))

    handles = [
        stack_input_module(model).register_forward_hook(stack),
        first_block(model).register_forward_pre_hook(block),
    ]
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return seen["stack"], seen["block"]


def kept_indices(dropped: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """`(B, K)` grid indices of the patches in `dropped` `(B, 1 + K, W)`, found among `full` `(B, 1 + N, W)`; asserts
    the class token comes first and every kept token is one of the image's own patches."""
    torch.testing.assert_close(dropped[:, 0], full[:, 0], rtol=0, atol=1e-6)
    distances = torch.cdist(dropped[:, 1:].double(), full[:, 1:].double())  # (B, K, N)
    nearest = distances.min(dim=-1)
    assert nearest.values.max() < 1e-5, "a kept token is none of the image's patches"
    return nearest.indices


# ------------------------------------------------------------------------------------------------------ the count


@pytest.mark.parametrize(
    "patches, share, kept",
    [
        (196, 0.5, 98),  # ViT-B/16 at 224 px
        (196, 0.75, 49),
        (49, 0.5, 24),  # ViT-B/32: 24.5, a half, rounds down
        (49, 0.75, 12),  # 12.25
        (64, 0.3, 45),  # 44.8
        (9, 0.5, 4),
        (16, 0.97, 1),  # 0.48 rounds to 0: at least one patch
        (4, 0.1, 4),  # 3.6 rounds to 4: nothing dropped
        (5, 0.7, 1),  # exactly 1.5, a half: 1 (float arithmetic says 1.5000000000000002)
        (20, 0.9, 2),  # exactly 2 (float arithmetic says 1.9999999999999996)
    ],
)
def test_number_of_kept_patches_is_exact(patches, share, kept):
    assert num_kept_patches(patches, share) == kept


def test_the_count_does_not_depend_on_binary_rounding():
    """Guards the decimal arithmetic: the same rule in floats gets the halves wrong."""
    assert math.ceil((1 - 0.7) * 5 - 0.5) == 2 and num_kept_patches(5, 0.7) == 1


# ------------------------------------------------------------------------------------------------- the config


@pytest.mark.parametrize("config_class", [UniCLConfig, UniCLIPConfig, MSCLIPConfig])
def test_every_config_has_the_field(config_class, tmp_path):
    assert config_class().patch_dropout == 0.0
    config = tiny_config({UniCLConfig: "unicl", UniCLIPConfig: "uniclip", MSCLIPConfig: "msclip"}[config_class])
    config.patch_dropout = 0.75
    config.save_pretrained(tmp_path)
    assert config_class.from_pretrained(tmp_path).patch_dropout == 0.75


@pytest.mark.parametrize("model_type", ["unicl", "uniclip", "msclip"])
@pytest.mark.parametrize("value", [1.0, 1.5, -0.1, float("nan"), float("inf"), True])
def test_bad_shares_are_refused_in_one_line(model_type, value):
    with pytest.raises(ValueError, match=r"^patch_dropout must be a finite number in \[0.0, 1.0\), got") as error:
        tiny_config(model_type, patch_dropout=value)
    assert "\n" not in str(error.value) and "FLIP" in str(error.value)


def test_swin_towers_are_refused():
    with pytest.raises(
        ValueError, match="patch_dropout=0.5 needs an image tower .* 'swin': Swin attends within windows"
    ):
        UniCLConfig(patch_dropout=0.5)  # UniCL's default Swin-T
    model = UniCLModel(tiny_config("unicl", vision_config=tiny_vision("swin"))).train()
    inputs = batch(2)
    model(**inputs)  # patch_dropout 0: runs
    model.config.patch_dropout = 0.5  # set in place after the checks: the forward pass refuses it
    with pytest.raises(ValueError, match="needs an image tower that can leave patches out"):
        model(**inputs)
    model.eval()(**inputs)  # nothing is dropped in eval mode, so nothing to refuse


# ------------------------------------------------------------------------------------------------- eval mode


@pytest.mark.parametrize("kind", list(KINDS))
def test_eval_mode_is_untouched(kind):
    """The same weights with and without patch dropout: identical eval outputs and identical parameters and
    buffers (the module adds none), so saved models, pipelines and exports do not change."""
    plain, dropping = build(kind, 0.0), build(kind, 0.75)
    assert plain.state_dict().keys() == dropping.state_dict().keys()
    assert all(torch.equal(value, dropping.state_dict()[name]) for name, value in plain.state_dict().items())
    inputs = inputs_for(plain)
    with torch.no_grad():
        expected, got = plain(**inputs, output_hidden_states=True), dropping(**inputs, output_hidden_states=True)
    for name in ("logits_per_image", "image_view_embeds", "text_embeds"):
        assert torch.equal(getattr(expected, name), getattr(got, name)), name
    hidden_expected, hidden_got = expected.vision_model_output.hidden_states, got.vision_model_output.hidden_states
    assert all(torch.equal(a, b) for a, b in zip(hidden_expected, hidden_got, strict=True))
    # In training mode the same inputs give other image embeddings (no other randomness in these models).
    plain.train(), dropping.train()
    with torch.no_grad():
        differ = (plain(**inputs).image_view_embeds - dropping(**inputs).image_view_embeds).abs().max()
    assert differ > 1e-3


def test_native_clip_export_is_untouched():
    from hf_unified.hub.export import to_clip_model

    plain, dropping = to_clip_model(build("unicl-clip", 0.0)), to_clip_model(build("unicl-clip", 0.75))
    assert all(torch.equal(value, dropping.state_dict()[name]) for name, value in plain.state_dict().items())
    assert not hasattr(dropping.config, "patch_dropout") or dropping.config.patch_dropout == 0.0


# ---------------------------------------------------------------------------------------------- training mode


@pytest.mark.parametrize("kind, share", [(kind, 0.5) for kind in KINDS] + [("unicl-clip", 0.7), ("msclip-s", 0.7)])
def test_training_keeps_exactly_the_stated_number_of_tokens(kind, share):
    model = build(kind, share).train()
    inputs = inputs_for(model)
    images = 3 * model.config.num_views
    kept = num_kept_patches(num_patches(model), share)

    torch.manual_seed(0)
    dropped, block_shape = image_stack_inputs(model, inputs)
    assert block_shape == (images, 1 + kept, model.config.vision_config.hidden_size)
    model.config.patch_dropout = 0.0  # the share is read at every call: an unmasked phase
    full, full_block_shape = image_stack_inputs(model, inputs)
    assert full_block_shape == (images, 1 + num_patches(model), model.config.vision_config.hidden_size)

    indices = kept_indices(dropped, full)  # the class token first, then patches of the same image
    assert all(len(set(row)) == kept for row in indices.tolist())  # distinct
    assert torch.equal(indices, indices.sort(dim=1).values)  # in grid order
    assert len({tuple(row) for row in indices.tolist()}) == images  # each image (and view) draws its own


def test_vision_only_model_drops_patches_too(tmp_path):
    from hf_unified import UniCLVisionModelWithProjection

    build("unicl-clip", 0.5).save_pretrained(tmp_path)
    model = UniCLVisionModelWithProjection.from_pretrained(tmp_path).train()
    assert model.config.patch_dropout == 0.5
    seen = []
    first_block(model).register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    model(pixel_values=batch(2)["pixel_values"])
    assert seen == [1 + num_kept_patches(64, 0.5)]


# --------------------------------------------------------------------------------------------- MS-CLIP's branch


def test_msclip_branch_tokens_are_taken_at_the_stack_indices():
    model = build("msclip-s", 0.5).train()
    inputs = inputs_for(model)
    adapter_kept = []
    for adapter in model.vision_parallel_branch.adapters:
        adapter.register_forward_pre_hook(lambda module, args: adapter_kept.append(args[2]))
    torch.manual_seed(0)
    dropped, _ = image_stack_inputs(model, inputs)
    model.config.patch_dropout = 0.0
    full, _ = image_stack_inputs(model, inputs)
    indices = kept_indices(dropped, full)
    assert len(adapter_kept) == 2 * len(model.config.parallel_lateral_layers)  # the dropped pass, then the full one
    for kept in adapter_kept[: len(model.config.parallel_lateral_layers)]:
        assert torch.equal(kept, indices)
    assert all(kept is None for kept in adapter_kept[len(model.config.parallel_lateral_layers) :])


def test_msclip_adapter_selects_branch_tokens_and_keeps_everything_when_nothing_is_dropped():
    model = build("msclip-s", 0.5).train()
    adapter, width, side = model.vision_parallel_branch.adapters[0], model.config.hidden_size, model.config.grid_size
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(3, 1 + side * side, width, generator=generator)
    channels, kernel = model.config.parallel_channels[0], model.config.parallel_t2b_kernels[0]
    branch = torch.randn(3, channels, side * kernel, side * kernel, generator=generator)
    kept = torch.stack([torch.randperm(side * side, generator=generator)[:5].sort().values for _ in range(3)])

    with torch.no_grad():
        # Every patch kept: the patch-dropout path is the plain one.
        everything = torch.arange(side * side).expand(3, -1)
        torch.testing.assert_close(adapter(tokens, branch, everything), adapter(tokens, branch), rtol=1e-5, atol=1e-5)
        # With the token path silenced, the output is the branch's alone: the full output at the kept indices.
        adapter.token_depthwise.conv.weight.zero_()
        full = adapter(tokens, branch)
        got = adapter(keep_tokens(tokens, kept), branch, kept)
    assert got.shape == (3, 6, width)
    torch.testing.assert_close(got, keep_tokens(full, kept))


# ------------------------------------------------------------------------------------------------ random draws


@pytest.mark.parametrize("kind", ["unicl-clip", "msclip-s"])
def test_draws_follow_the_global_generator(kind):
    model = build(kind, 0.5).train()
    inputs = inputs_for(model)
    runs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        runs.append(image_stack_inputs(model, inputs)[0])
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])

    # GradCache's capture and restore: the re-run draws the same patches, whatever was drawn in between.
    state = RandomState.capture("cpu")
    first = image_stack_inputs(model, inputs)[0]
    assert not torch.equal(image_stack_inputs(model, inputs)[0], first)
    state.restore()
    assert torch.equal(image_stack_inputs(model, inputs)[0], first)


def kept_graph_step(model, batches: list[dict]) -> torch.Tensor:
    """Every micro-batch's forward pass kept in memory, in order, one loss over all of them, one backward."""
    outputs = [model(**{k: v for k, v in b.items() if k != "labels"}) for b in batches]
    labels = torch.cat([b["labels"] for b in batches]) if "labels" in batches[0] else None
    keys = None
    if model.config.mask_duplicate_texts:
        keys = torch.cat([text_identity_keys(b["input_ids"], b["attention_mask"]) for b in batches])
    loss = model.contrastive_loss(
        torch.cat([o.image_view_embeds for o in outputs]), torch.cat([o.text_embeds for o in outputs]), labels, keys
    )
    loss.backward()
    return loss.detach()


@pytest.mark.parametrize("kind", ["unicl-clip", "uniclip", "msclip-s"])
def test_full_batch_step_is_exact_with_patch_dropout(kind):
    """What holds by construction: the `full_batch` step equals one loss over the k micro-batches' forward passes run
    in order from the step's random state, each drawing its own patches (GradCache's re-run restores the state each
    micro-batch started from, so it drops the patches the cached pass dropped), and it leaves the generator where
    that pass does.

    What does not: equality with one forward pass over the concatenated batch. That pass draws one `(k * b, N)` score
    matrix where the micro-batches draw k `(b, N)` ones, with the towers' other random layers (dropout, drop-path)
    drawing in between. The two agree only when nothing else draws and the generator's stream does not depend on how
    it is split: on CPU that is when `b * N` is a multiple of 16 (torch's normal sampler fills blocks of 16), as in
    this test's models, not for ViT-B/32's 49 patches at odd batch sizes, and not on CUDA (Philox offsets advance per
    call). So the step is exact for the batch it draws, as with dropout, and no split-invariance is claimed."""
    reference, model = (build(kind, 0.5).train().double() for _ in range(2))
    batches = micro_batches(reference.config, 3, 2, dtype=torch.float64)

    torch.manual_seed(5)
    expected_loss = kept_graph_step(reference, batches)
    expected_rng = torch.get_rng_state()
    torch.manual_seed(5)
    loss, _ = FullBatchStep()(model, batches, Accelerator(cpu=True))

    assert abs(loss.item() - expected_loss.item()) <= 1e-12 * abs(expected_loss.item())
    expected = gradients(reference)
    largest = max(g.abs().max().item() for g in expected.values())
    for name, got in gradients(model).items():
        assert (got - expected[name]).abs().max().item() <= 1e-10 * largest, name
    assert torch.equal(torch.get_rng_state(), expected_rng)


def test_the_exactness_test_drops_patches():
    """Guards the test above: the same micro-batches from another seed keep other patches, so another loss."""
    model = build("unicl-clip", 0.5).train().double()
    batches = micro_batches(model.config, 3, 2, dtype=torch.float64)
    losses = []
    for seed in (5, 6):
        torch.manual_seed(seed)
        with torch.no_grad():
            losses.append(model(**batches[0], return_loss=True).loss.item())
    assert abs(losses[0] - losses[1]) > 1e-6


def test_image_tower_compiles_in_one_graph():
    """`torch.compile` traces the dropping (count, draw, gather) in one graph, and retraces for a new share."""
    from torch._dynamo.testing import CompileCounter

    model = build("unicl-clip", 0.5).train()
    pixel_values = batch(2)["pixel_values"]
    torch._dynamo.reset()
    graphs = CompileCounter()
    compiled = torch.compile(model.vision_model, backend=graphs)
    assert compiled(pixel_values=pixel_values).last_hidden_state.shape[1] == 1 + num_kept_patches(64, 0.5)
    assert graphs.frame_count == 1  # one graph: no break
    model.config.patch_dropout = 0.0
    assert compiled(pixel_values=pixel_values).last_hidden_state.shape[1] == 1 + 64
    assert graphs.frame_count == 2  # the share is guarded: a new trace, not a stale count
    torch._dynamo.reset()


def test_patch_dropout_survives_copies_and_loading(tmp_path):
    model = build("uniclip", 0.75)
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    for candidate in (loaded, copy.deepcopy(model)):
        _, block_shape = image_stack_inputs(candidate.train(), inputs_for(candidate))
        assert block_shape[1] == 1 + num_kept_patches(64, 0.75)
