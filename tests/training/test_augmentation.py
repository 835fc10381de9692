"""MultiViewAugmentation: every slot of the parameter vector describes what was done to the view."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from hf_unified.training.data.augmentation import (
    AUGMENTATION_PARAM_DIM,
    AUGMENTATION_PARAM_NAMES,
    CLIP_MEAN,
    CLIP_STD,
    IDENTITY_PARAMS,
    MultiViewAugmentation,
    identity_params,
)

SLOT = {name: i for i, name in enumerate(AUGMENTATION_PARAM_NAMES)}


def _random_image(height=40, width=56, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def _raw(**kwargs) -> MultiViewAugmentation:
    """Augmentation without normalisation, so views can be compared with the [0, 1] input."""
    return MultiViewAugmentation(image_mean=None, image_std=None, **kwargs)


def _params(**slots) -> torch.Tensor:
    vector = identity_params()
    for name, value in slots.items():
        vector[SLOT[name]] = value
    return vector


def test_layout_and_identity():
    assert AUGMENTATION_PARAM_DIM == len(IDENTITY_PARAMS) == 11
    assert identity_params().tolist() == list(IDENTITY_PARAMS)
    assert identity_params((2, 3)).shape == (2, 3, AUGMENTATION_PARAM_DIM)
    assert _params(crop_width=1.0, crop_height=1.0).tolist() == list(IDENTITY_PARAMS)


def test_call_returns_views_and_params_in_documented_ranges():
    torch.manual_seed(0)
    aug = MultiViewAugmentation(num_views=3, size=24, preset="simclr")
    for seed in range(4):
        views, params = aug(_random_image(seed=seed))
        assert views.shape == (3, 3, 24, 24) and views.dtype == torch.float32
        assert params.shape == (3, AUGMENTATION_PARAM_DIM) and params.dtype == torch.float32
        left, top, width, height = params[:, 0], params[:, 1], params[:, 2], params[:, 3]
        assert (left >= 0).all() and (top >= 0).all() and (left + width <= 1 + 1e-6).all()
        assert (top + height <= 1 + 1e-6).all() and (width > 0).all() and (height > 0).all()
        assert set(params[:, SLOT["flip"]].tolist()) <= {0.0, 1.0}
        assert set(params[:, SLOT["grayscale"]].tolist()) <= {0.0, 1.0}
        for name in ("brightness", "contrast", "saturation"):
            assert ((params[:, SLOT[name]] >= 0.6 - 1e-6) & (params[:, SLOT[name]] <= 1.4 + 1e-6)).all()
        assert (params[:, SLOT["hue"]].abs() <= 0.1 + 1e-6).all()
        sigma = params[:, SLOT["blur_sigma"]]
        assert ((sigma == 0) | ((sigma >= 0.1) & (sigma <= 2.0))).all()
    # Views of one image are independent draws.
    assert not torch.equal(params[0], params[1])


def test_seeded_runs_are_reproducible():
    aug = MultiViewAugmentation(num_views=2, size=16)
    image = _random_image()
    torch.manual_seed(3)
    first = aug(image)
    torch.manual_seed(3)
    second = aug(image)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_no_augmentation_gives_identity_params_and_a_plain_resize():
    aug = _raw(num_views=2, size=20, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0, jitter_p=0, grayscale_p=0, blur_p=0)
    image = _random_image(height=30, width=30)
    views, params = aug(image)
    assert params.tolist() == [list(IDENTITY_PARAMS)] * 2
    expected = TF.resize(
        TF.to_dtype(TF.to_image(image), torch.float32, scale=True),
        [20, 20],
        antialias=True,
        interpolation=aug.interpolation,
    ).clamp(0, 1)
    torch.testing.assert_close(views[0], expected.as_subclass(torch.Tensor))


def test_normalisation_uses_clip_mean_and_std():
    raw, normalised = _raw(size=16), MultiViewAugmentation(size=16)
    image = raw.to_image_tensor(_random_image())
    params = _params(brightness=1.2, blur_sigma=0.5)
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    torch.testing.assert_close(normalised.apply(image, params), (raw.apply(image, params) - mean) / std)


def test_crop_box_is_normalised_to_the_image():
    # Left half red, right half blue: a crop of the left half is pure red, of the right half pure blue.
    image = torch.zeros(3, 20, 40)
    image[0, :, :20] = 1.0
    image[2, :, 20:] = 1.0
    aug = _raw(size=8, interpolation=TF.InterpolationMode.BILINEAR)
    left = aug.apply(image, _params(crop_left=0.0, crop_width=0.5))
    right = aug.apply(image, _params(crop_left=0.5, crop_width=0.5))
    assert torch.allclose(left[0], torch.ones(8, 8)) and torch.allclose(left[2], torch.zeros(8, 8))
    assert torch.allclose(right[2], torch.ones(8, 8)) and torch.allclose(right[0], torch.zeros(8, 8))
    # The bottom-right quarter of a 4x4 checkerboard of quarters.
    quarters = torch.zeros(3, 20, 40)
    quarters[1, 10:, 20:] = 1.0
    corner = aug.apply(quarters, _params(crop_left=0.5, crop_top=0.5, crop_width=0.5, crop_height=0.5))
    assert torch.allclose(corner[1], torch.ones(8, 8))


def test_flip_slot_mirrors_the_view():
    image = torch.linspace(0, 1, 16).expand(3, 16, 16).clone()
    aug = _raw(size=16)
    plain, flipped = aug.apply(image, identity_params()), aug.apply(image, _params(flip=1.0))
    torch.testing.assert_close(flipped, plain.flip(-1))


def test_jitter_grayscale_and_blur_slots():
    aug = _raw(size=16)
    image = aug.to_image_tensor(_random_image(height=16, width=16)) * 0.8
    plain = aug.apply(image, identity_params())
    torch.testing.assert_close(aug.apply(image, _params(brightness=0.5)), plain * 0.5)
    gray = aug.apply(image, _params(grayscale=1.0))
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2]) and not torch.equal(gray, plain)
    blurred = aug.apply(image, _params(blur_sigma=1.5))
    assert blurred.var() < 0.5 * plain.var()
    for name, value in (("contrast", 1.3), ("saturation", 0.7), ("hue", 0.05)):
        assert not torch.allclose(aug.apply(image, _params(**{name: value})), plain), name


def test_input_kinds():
    aug = MultiViewAugmentation(size=12)
    gray_pil = _random_image().convert("L")
    rgba_pil = _random_image().convert("RGBA")
    uint8_tensor = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    array = np.asarray(_random_image())
    for image in (gray_pil, rgba_pil, uint8_tensor, array):
        views, params = aug(image)
        assert views.shape == (2, 3, 12, 12) and params.shape == (2, AUGMENTATION_PARAM_DIM)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_views": 0}, "num_views"),
        ({"flip_p": 1.5}, "flip_p"),
        ({"scale": (0.9, 0.1)}, "scale"),
        ({"brightness": 1.0}, "brightness"),
        ({"hue": 0.7}, "hue"),
        ({"image_mean": None}, "image_mean"),
        ({"size": (4, 4, 4)}, "size"),
        ({"preset": "strong"}, "view preset must be one of"),
        ({"crop_scale": (0.5, 1.0)}, "unknown augmentation field"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultiViewAugmentation(**kwargs)


def test_presets_and_overrides():
    # "auto" follows the view size: crops of at least 30% with colour jitter but no grayscale or blur for small
    # images, SimCLR-style views for photos.
    small, photos = MultiViewAugmentation(size=32), MultiViewAugmentation(size=224)
    assert (small.preset, photos.preset) == ("small", "simclr")
    assert small.recipe.scale == (0.3, 1.0) and small.recipe.jitter_p == 0.8
    assert small.recipe.grayscale_p == small.recipe.blur_p == 0
    assert photos.recipe.scale == (0.08, 1.0) and photos.recipe.jitter_p == 0.8 and photos.recipe.blur_p == 0.5
    torch.manual_seed(0)
    _, params = small(_random_image())
    never = [SLOT[n] for n in ("grayscale", "blur_sigma")]
    assert params[:, never].tolist() == [[IDENTITY_PARAMS[i] for i in never]] * 2
    # Fields given explicitly override the preset (what training YAMLs' augmentation_kwargs do).
    custom = MultiViewAugmentation(size=32, preset="simclr", scale=(0.5, 1.0), flip_p=0.0)
    assert custom.recipe.scale == (0.5, 1.0) and custom.recipe.flip_p == 0.0 and custom.recipe.jitter_p == 0.8


def test_bad_params_shape_raises():
    aug = MultiViewAugmentation(size=8)
    with pytest.raises(ValueError, match="params must have shape"):
        aug.apply(torch.rand(3, 8, 8), torch.zeros(5))
    with pytest.raises(ValueError, match="channels"):
        aug(torch.rand(2, 8, 8))
