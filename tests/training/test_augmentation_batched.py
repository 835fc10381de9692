"""BatchMultiViewAugmentation: its parameter vectors describe its views exactly.

Each view is re-rendered from the original image and its parameter vector by an independent reference: the
per-image path (`MultiViewAugmentation.apply`, torchvision's functionals, one view at a time) and PIL. Crop box,
flip and every jitter slot are checked, on non-square images and views, and after the canvas shrank an image.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from hf_unified.tokenization import train_caption_tokenizer
from hf_unified.training import data as data_lib
from hf_unified.training.data import synthetic_data
from hf_unified.training.data.augmentation import (
    AUGMENTATION_PARAM_NAMES,
    IDENTITY_PARAMS,
    MultiViewAugmentation,
    sample_crop_boxes,
)
from hf_unified.training.data.batch_augmentation import (
    BatchMultiViewAugmentation,
    ImageCanvas,
    adjust_brightness_,
    adjust_contrast_,
    adjust_hue_,
    adjust_saturation_,
    compiled_jitter,
    gaussian_blur_matrices,
    jitter_views_,
)

SLOT = {name: i for i, name in enumerate(AUGMENTATION_PARAM_NAMES)}
BILINEAR, BICUBIC = v2.InterpolationMode.BILINEAR, v2.InterpolationMode.BICUBIC
# Non-square images of several sizes, all fitting a 64 px canvas (no resize before the views).
SIZES = [(40, 56), (56, 40), (64, 64), (23, 31)]


def _random_images(sizes=SIZES, seed=0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)) for h, w in sizes]


def _views(images, augment: BatchMultiViewAugmentation, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    out = augment({**augment.canvas.batch(images), "augmentation_seed": seed})
    return out["pixel_values"], out["augmentation_params"]


@pytest.mark.parametrize("interpolation", [BILINEAR, BICUBIC])
def test_every_view_equals_the_per_image_path_from_its_parameters(interpolation):
    # Every operation drawn often, so that each slot is exercised (asserted below, so this cannot pass vacuously).
    kwargs = dict(
        num_views=3,
        size=(36, 28),
        preset="simclr",
        interpolation=interpolation,
        scale=(0.2, 1.0),
        jitter_p=0.9,
        grayscale_p=0.4,
        blur_p=0.5,
    )
    batched = BatchMultiViewAugmentation(canvas_size=64, **kwargs)
    reference = MultiViewAugmentation(**kwargs)
    images = _random_images()
    views, params = _views(images, batched, seed=11)
    assert views.shape == (4, 3, 3, 36, 28) and params.shape == (4, 3, 11)
    flat = params.reshape(-1, 11)
    for slot, identity in (("flip", 0), ("brightness", 1), ("hue", 0), ("grayscale", 0), ("blur_sigma", 0)):
        values = flat[:, SLOT[slot]]
        assert (values != identity).any() and (values == identity).any(), slot
    for index, image in enumerate(images):
        original = reference.to_image_tensor(image)
        for view in range(3):
            expected = reference.apply(original, params[index, view])
            torch.testing.assert_close(views[index, view], expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("interpolation", [BILINEAR, BICUBIC])
def test_crop_box_and_flip_match_pil(interpolation):
    size = (30, 44)  # (height, width)
    augment = BatchMultiViewAugmentation(
        num_views=4,
        size=size,
        preset="small",
        scale=(0.1, 1.0),
        jitter_p=0.0,  # geometry only: the boxes and flips against PIL's
        canvas_size=64,
        image_mean=None,
        image_std=None,
        interpolation=interpolation,
    )
    # Smooth images away from black and white: PIL rounds and clips to 8 bits between its two resampling passes,
    # which noise that makes the cubic filter overshoot would turn into large differences.
    coarse = _random_images([(5, 7)] * len(SIZES), seed=4)
    images = [
        Image.eval(c, lambda v: 48 + v * 5 // 8).resize((w, h), Image.Resampling.BILINEAR)
        for c, (h, w) in zip(coarse, SIZES)
    ]
    views, params = _views(images, augment, seed=3)
    resample = Image.Resampling.BILINEAR if interpolation == BILINEAR else Image.Resampling.BICUBIC
    flips = 0
    for image, image_views, image_params in zip(images, views, params):
        width, height = image.size
        for view, p in zip(image_views, image_params):
            left, top = round(p[SLOT["crop_left"]].item() * width), round(p[SLOT["crop_top"]].item() * height)
            box_w, box_h = round(p[SLOT["crop_width"]].item() * width), round(p[SLOT["crop_height"]].item() * height)
            expected = image.crop((left, top, left + box_w, top + box_h)).resize(size[::-1], resample)
            if p[SLOT["flip"]]:
                expected, flips = ImageOps.mirror(expected), flips + 1
            expected = TF.pil_to_tensor(expected).float()
            # PIL works in 8 bits (rounded after each pass): at most one level and a half apart.
            assert (view * 255 - expected).abs().max() <= 1.5
    assert 0 < flips < views.shape[0] * views.shape[1]


def _ramp_image(height: int, width: int) -> Image.Image:
    """Red rises linearly with x, green with y (pixel centres): a view's colours say where it sampled."""
    x = (np.arange(width) + 0.5) / width
    y = (np.arange(height) + 0.5) / height
    pixels = np.zeros((height, width, 3), dtype=np.float64)
    pixels[..., 0], pixels[..., 1] = x[None, :], y[:, None]
    return Image.fromarray(np.round(pixels * 255).astype(np.uint8))


def _fit_line(values: torch.Tensor, size: int) -> tuple[float, float]:
    """Least-squares `values[j] = a + b * (j + 0.5) / size` over the inner 60% of the view (the edges of the
    resampling window are where the crop cuts the filter)."""
    inner = slice(int(0.2 * size), int(0.8 * size))
    positions = (torch.arange(size, dtype=torch.float64) + 0.5)[inner] / size
    design = torch.stack([torch.ones_like(positions), positions], dim=1)
    solution = torch.linalg.lstsq(design, values[inner].double()[:, None]).solution[:, 0]
    return float(solution[0]), float(solution[1])


def test_crop_box_is_relative_to_the_original_after_the_canvas_shrinks_it():
    # Images larger than the 40 px canvas (non-square): the workers shrink them; the boxes stay original-relative.
    images = [_ramp_image(150, 90), _ramp_image(72, 200)]
    augment = BatchMultiViewAugmentation(
        num_views=6,
        size=(32, 48),
        preset="small",
        scale=(0.3, 1.0),
        jitter_p=0.0,  # geometry only
        canvas_size=40,
        image_mean=None,
        image_std=None,
    )
    batch = augment.canvas.batch(images)
    assert batch["image_sizes"].tolist() == [[150, 90], [72, 200]]
    assert batch["resized_image_sizes"].tolist() == [[40, 24], [14, 40]]
    views = augment({**batch, "augmentation_seed": 5})
    pixel_values, params = views["pixel_values"], views["augmentation_params"]
    checked_flip = False
    for view, p in zip(pixel_values.reshape(-1, 3, 32, 48), params.reshape(-1, 11)):
        left, top, box_w, box_h, flip = p[:5].tolist()
        # Red along a row is left + x * box_w (x the view position in [0, 1]); mirrored when flipped.
        intercept, slope = _fit_line(view[0].mean(dim=0), 48)
        if flip:
            intercept, slope, checked_flip = intercept + slope, -slope, True
        assert intercept == pytest.approx(left, abs=0.012) and slope == pytest.approx(box_w, abs=0.02)
        intercept, slope = _fit_line(view[1].mean(dim=1), 32)
        assert intercept == pytest.approx(top, abs=0.012) and slope == pytest.approx(box_h, abs=0.02)
    assert checked_flip


def test_jitter_functions_equal_torchvision_per_view():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 9, 13, generator=generator)
    images[0] = images[0].mean(dim=0, keepdim=True)  # grey: hue and saturation leave it alone
    images[1, :, :3] = 0.0
    images[1, :, 3:6] = 1.0  # black and white pixels
    images[2, 0] = images[2, 1]  # ties between the largest channels
    factors = torch.tensor([0.6, 1.4, 1.0, 0.75, 1.2, 0.9])
    shifts = torch.tensor([0.5, -0.5, 0.1, -0.07, 0.33, 0.0])
    for batched, functional, values in (
        (adjust_brightness_, TF.adjust_brightness, factors),
        (adjust_contrast_, TF.adjust_contrast, factors),
        (adjust_saturation_, TF.adjust_saturation, factors),
        (adjust_hue_, TF.adjust_hue, shifts),
    ):
        expected = torch.stack([functional(image, float(v)) for image, v in zip(images, values)])
        adjusted = images.clone()
        assert batched(adjusted, values) is adjusted  # in place
        torch.testing.assert_close(adjusted, expected, atol=2e-6, rtol=0, msg=functional.__name__)


def _jitter_inputs(num_views: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    views = torch.rand(num_views, 3, 12, 10, generator=generator)
    factors = torch.rand(num_views, 4, generator=generator) + 0.5
    factors[:, 3] -= 1.0  # hue shifts in [-0.5, 0.5)
    return views, factors


def test_the_jitter_compiles_as_one_graph_of_any_size():
    # Graph capture only (no C++ compiler needed): a change that breaks the graph (a `.item()`, a Python branch on a
    # tensor) fails here with fullgraph=True, as it would fail `torch_compile` on a GPU.
    captured = torch.compile(jitter_views_, backend="aot_eager", dynamic=True, fullgraph=True)
    for num_views, shift_hue in ((5, True), (3, False), (7, True)):
        views, factors = _jitter_inputs(num_views, seed=num_views)
        expected = jitter_views_(views.clone(), factors, shift_hue)
        torch.testing.assert_close(captured(views, factors, shift_hue), expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(views, expected, atol=1e-6, rtol=0)  # still in place


def _has_cpp_compiler() -> bool:
    from torch._inductor import cpp_builder

    return shutil.which(cpp_builder.get_cpp_compiler()) is not None


@pytest.mark.skipif(not _has_cpp_compiler(), reason="torch.compile (inductor) on a CPU needs a C++ compiler")
def test_compiled_jitter_makes_the_eager_views():
    eager = BatchMultiViewAugmentation(num_views=2, size=(20, 24), preset="simclr")
    compiled = BatchMultiViewAugmentation(num_views=2, size=(20, 24), preset="simclr", torch_compile=True)
    assert "torch_compile=True" in repr(compiled) and "torch_compile" not in repr(eager)
    calls = compiled_jitter.cache_info().hits + compiled_jitter.cache_info().misses
    for seed, sizes in ((0, SIZES), (1, SIZES + SIZES[:3])):  # two batch sizes, one graph (dynamic shapes)
        images = _random_images(sizes, seed)
        expected, params = _views(images, eager, seed)
        views, compiled_params = _views(images, compiled, seed)
        assert torch.equal(compiled_params, params)
        jittered = params[..., SLOT["brightness"]] != 1
        assert jittered.sum() >= 2 and not jittered.all()  # jittered views and views left alone, in one batch
        torch.testing.assert_close(views, expected, atol=1e-5, rtol=0)
    assert compiled_jitter.cache_info().hits + compiled_jitter.cache_info().misses == calls + 2


def test_blur_matrices_equal_torchvision_gaussian_blur():
    images = torch.rand(3, 3, 11, 17, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.3, 1.0, 2.5])
    kernel = 5
    rows, cols = gaussian_blur_matrices(sigma, kernel, 11), gaussian_blur_matrices(sigma, kernel, 17)
    blurred = rows[:, None] @ images @ cols[:, None].transpose(-1, -2)
    expected = torch.stack([TF.gaussian_blur(x, [kernel, kernel], [float(s)] * 2) for x, s in zip(images, sigma)])
    torch.testing.assert_close(blurred, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "size, scale",
    [((40, 56), (0.08, 1.0)), ((8, 8), (0.85, 1.0)), ((224, 160), (0.3, 0.9))],
)
def test_crop_sampler_follows_torchvision_random_resized_crop(size, scale):
    ratio = (3 / 4, 4 / 3)
    count = 4000
    torch.manual_seed(0)
    crop = v2.RandomResizedCrop(size, scale=scale, ratio=ratio)
    boxes = [crop.make_params([torch.empty(3, *size)]) for _ in range(count)]
    reference = torch.tensor([[b["top"], b["left"], b["height"], b["width"]] for b in boxes], dtype=torch.float64)
    boxes = sample_crop_boxes(torch.tensor([size] * count), scale, ratio, torch.Generator().manual_seed(0)).double()
    height, width = size
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 0] + boxes[:, 2] <= height).all() and (boxes[:, 1] + boxes[:, 3] <= width).all()
    # Same distribution: (top, left, height, width) relative to the image, equal in mean and spread.
    normalised = torch.tensor([height, width, height, width], dtype=torch.float64)
    ours, theirs = boxes / normalised, reference / normalised
    standard_error = (ours.var(dim=0) / count + theirs.var(dim=0) / count).sqrt()
    assert ((ours.mean(dim=0) - theirs.mean(dim=0)).abs() <= 4 * standard_error + 1e-9).all()
    assert ((ours.std(dim=0) - theirs.std(dim=0)).abs() <= 0.1 * theirs.std(dim=0) + 1e-3).all()


def test_crop_sampler_falls_back_to_torchvision_centre_crop():
    # No box of area >= 8% with a ratio in [3/4, 4/3] fits a 10 x 200 strip: torchvision's central fallback.
    crop = v2.RandomResizedCrop(10)
    expected = crop.make_params([torch.empty(3, 10, 200)])
    boxes = sample_crop_boxes(torch.tensor([[10, 200]] * 3), (0.08, 1.0), (3 / 4, 4 / 3))
    assert boxes.tolist() == [[expected["top"], expected["left"], expected["height"], expected["width"]]] * 3


def test_presets_set_the_view_strength_and_auto_picks_by_size():
    assert BatchMultiViewAugmentation(size=64).preset == "small"
    assert BatchMultiViewAugmentation(size=(224, 48)).preset == "small"  # the shorter side decides
    assert BatchMultiViewAugmentation(size=96).preset == "simclr"
    assert MultiViewAugmentation(size=32, preset="simclr").recipe.scale == (0.08, 1.0)
    small = BatchMultiViewAugmentation(num_views=4, size=32, preset="auto")
    assert small.recipe.scale == (0.3, 1.0) and small.recipe.jitter_p == 0.8 and small.recipe.blur_p == 0
    _, params = _views(_random_images(), small, seed=2)
    flat = params.reshape(-1, 11)
    area = flat[:, SLOT["crop_width"]] * flat[:, SLOT["crop_height"]]
    assert (area >= 0.25).all()  # 0.3 of the area, up to the rounding of the box to whole pixels
    untouched = [SLOT[name] for name in ("grayscale", "blur_sigma")]
    assert (flat[:, untouched] == torch.tensor(IDENTITY_PARAMS)[untouched]).all()
    assert (flat[:, SLOT["brightness"]] != 1).any()  # colour jitter, most of the time
    # A recipe field overrides its preset.
    assert BatchMultiViewAugmentation(size=32, jitter_p=0.5).recipe.jitter_p == 0.5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"preset": "big"}, "view preset must be one of"),
        ({"scales": (0.5, 1.0)}, r"unknown augmentation field\(s\) \['scales'\]"),
        ({"scale": (0.9, 0.2)}, "scale must be"),
        ({"interpolation": v2.InterpolationMode.NEAREST}, "interpolation must be one of"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchMultiViewAugmentation(**kwargs)


def test_bad_batches_say_how_to_build_them():
    augment = BatchMultiViewAugmentation(size=16)
    with pytest.raises(KeyError, match=r"DecodeConfig\(image_transform=views.canvas\)"):
        augment({"pixel_values": torch.rand(2, 3, 16, 16)})
    with pytest.raises(ValueError, match="lost every sample to damaged data"):
        augment({"num_skipped": 4, "skipped": {"corrupt_image": 4}, "augmentation_seed": 1})
    batch = augment.canvas.batch(_random_images(SIZES[:2]))
    with pytest.raises(ValueError, match="images must be a uint8 tensor"):
        augment({**batch, "images": batch["images"].float()})
    with pytest.raises(ValueError, match="params must have shape"):
        augment.render(batch["images"], batch["resized_image_sizes"], torch.zeros(2, 3, 11))


def test_seeded_batches_are_reproducible():
    augment = BatchMultiViewAugmentation(size=24, preset="simclr")
    batch = augment.canvas.batch(_random_images())
    first, again = augment({**batch, "augmentation_seed": 7}), augment({**batch, "augmentation_seed": 7})
    other = augment({**batch, "augmentation_seed": 8})
    assert torch.equal(first["pixel_values"], again["pixel_values"])
    assert torch.equal(first["augmentation_params"], again["augmentation_params"])
    assert not torch.equal(first["augmentation_params"], other["augmentation_params"])
    torch.manual_seed(1)
    unseeded = augment(batch)  # no augmentation_seed: torch's global generator
    torch.manual_seed(1)
    assert torch.equal(augment(batch)["pixel_values"], unseeded["pixel_values"])


def test_canvas_keeps_the_image_at_its_corner_and_never_enlarges_it():
    canvas = ImageCanvas((20, 30))
    small, wide = _random_images([(12, 9), (10, 90)])
    fields = canvas(small)
    assert fields["images"].dtype == torch.uint8 and fields["images"].shape == (3, 20, 30)
    assert fields["image_sizes"].tolist() == [12, 9] and fields["resized_image_sizes"].tolist() == [12, 9]
    assert torch.equal(fields["images"][:, :12, :9], TF.pil_to_tensor(small))
    assert fields["images"][:, 12:].eq(0).all() and fields["images"][:, :, 9:].eq(0).all()
    fields = canvas(wide)  # 10 x 90 -> 30 wide keeps the aspect: 3 x 30 (rounded)
    assert fields["image_sizes"].tolist() == [10, 90] and fields["resized_image_sizes"].tolist() == [3, 30]


def test_stream_of_canvases_gives_the_same_views_with_workers_and_after_resume(tmp_path):
    shapes = synthetic_data.generate(tmp_path / "shapes", num_train=24, num_eval=4, num_train_shards=2, image_size=16)
    spec = data_lib.SourceSpec(f"{shapes}/train-*.tar")
    tokenizer = train_caption_tokenizer(["a red square.", "a blue circle."] * 5, vocab_size=300)
    augment = BatchMultiViewAugmentation(size=16, preset="simclr")

    def views(num_workers: int, start: int, count: int) -> list[dict]:
        stream = data_lib.build_stream([spec], seed=1, rank=0, world_size=1, shuffle_buffer_size=8)
        decode = data_lib.DecodeConfig(augment.canvas, with_labels=False)
        train = data_lib.TrainStream(stream, decode, tokenizer, 16, batch_size=4, seed=1, rank=0)
        train.load_state_dict({"batches_consumed": start, "batch_size": 4, "rank": 0})
        loader = torch.utils.data.DataLoader(train, batch_size=None, num_workers=num_workers)
        batches = [batch for _, batch in zip(range(count), loader)]
        assert all(
            batch["images"].dtype == torch.uint8 and batch["images"].shape == (4, 3, 16, 16) for batch in batches
        )
        return [augment(batch) for batch in batches]

    reference = views(0, 0, 5)
    for got, expected in zip(views(2, 2, 3), reference[2:]):  # resumed after 2 batches, two workers
        assert torch.equal(got["pixel_values"], expected["pixel_values"])
        assert torch.equal(got["augmentation_params"], expected["augmentation_params"])
    assert not torch.equal(reference[0]["augmentation_params"], reference[1]["augmentation_params"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("torch_compile", [False, True])
def test_views_on_the_gpu_equal_the_cpu_views(torch_compile):
    augment = BatchMultiViewAugmentation(num_views=2, size=(36, 28), preset="simclr", canvas_size=64)
    on_device = BatchMultiViewAugmentation(
        num_views=2, size=(36, 28), preset="simclr", canvas_size=64, torch_compile=torch_compile
    )
    batch = {**augment.canvas.batch(_random_images()), "augmentation_seed": 4}
    on_cpu, on_gpu = augment(batch), on_device(batch, device="cuda")
    assert on_gpu["pixel_values"].device.type == "cuda"
    torch.testing.assert_close(on_gpu["augmentation_params"].cpu(), on_cpu["augmentation_params"], atol=0, rtol=0)
    torch.testing.assert_close(on_gpu["pixel_values"].cpu(), on_cpu["pixel_values"], atol=1e-4, rtol=0)
