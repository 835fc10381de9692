"""Multi-view image augmentation that reports what it did, for UniCLIP's augmentation-aware embedding.

UniCLIP conditions each image view's embedding on the augmentation that produced the view, so the augmentation
must hand back a parameter vector together with every view.

Parameter vector layout (`AUGMENTATION_PARAM_NAMES`, `P = AUGMENTATION_PARAM_DIM = 11` floats):

| slot | name         | meaning                                                              | identity |
|------|--------------|----------------------------------------------------------------------|----------|
| 0    | `crop_left`  | left edge of the crop box / image width, in [0, 1)                   | 0        |
| 1    | `crop_top`   | top edge of the crop box / image height, in [0, 1)                   | 0        |
| 2    | `crop_width` | crop box width / image width, in (0, 1]                              | 1        |
| 3    | `crop_height`| crop box height / image height, in (0, 1]                            | 1        |
| 4    | `flip`       | 1 if the view was flipped horizontally (after cropping), else 0      | 0        |
| 5    | `brightness` | brightness factor (1 = unchanged)                                    | 1        |
| 6    | `contrast`   | contrast factor (1 = unchanged)                                      | 1        |
| 7    | `saturation` | saturation factor (1 = unchanged)                                    | 1        |
| 8    | `hue`        | hue shift in [-0.5, 0.5] (0 = unchanged)                             | 0        |
| 9    | `grayscale`  | 1 if converted to (3-channel) grayscale, else 0                      | 0        |
| 10   | `blur_sigma` | Gaussian blur standard deviation in pixels of the output (0 = none)  | 0        |

The crop box is relative to the original image, whatever resizing happened before the views were made. When colour
jitter is not applied to a view (probability `1 - jitter_p`) its slots hold the identity factors, so the vector
always describes the view exactly. The jitter is applied in the fixed order brightness, contrast, saturation, hue
(torchvision's `ColorJitter` shuffles the order, which the vector could not record).

The pipeline per view: random resized crop -> horizontal flip -> colour jitter -> grayscale -> Gaussian blur ->
float in [0, 1] -> normalisation with `image_mean` / `image_std`.

How strong the views are is a `ViewRecipe` (`view_recipe.py`: the presets `"simclr"` and `"small"`, and `"auto"`,
which picks one by the view size); both presets flip with probability 0.5.

Two implementations share the recipe and the sampler (`sample_view_params`), so their views follow one
distribution and one parameter layout:

- `MultiViewAugmentation` (here): one image at a time with `torchvision.transforms.v2.functional`; for users who
  augment images themselves, and the reference the batched path is tested against;
- `BatchMultiViewAugmentation` (`batch_augmentation.py`): a whole uint8 batch at once on the training device, what
  the trainer uses (DataLoader workers then only decode).

Usage:

```python
>>> aug = MultiViewAugmentation(num_views=2, size=224)  # "auto" -> "simclr" at 224 px
>>> views, params = aug(pil_image)  # [2, 3, 224, 224], [2, 11]
```
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ...configuration_uniclip import AUGMENTATION_PARAM_DIM, AUGMENTATION_PARAM_NAMES, IDENTITY_PARAMS
from ...image_processing import to_rgb
from .view_recipe import ViewRecipe, resolve_view_preset, size_pair, view_recipe

# CLIP's normalisation (transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD), the default of UniCLIPProcessor too.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# torchvision's RandomResizedCrop draws up to this many boxes before falling back to a centred crop.
CROP_ATTEMPTS = 10


def identity_params(batch_shape: Sequence[int] = (), dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The identity parameter vector, broadcast to `[*batch_shape, P]`."""
    vector = torch.tensor(IDENTITY_PARAMS, dtype=dtype, device=device)
    return vector.expand(*batch_shape, AUGMENTATION_PARAM_DIM).clone()


def sample_crop_boxes(
    image_sizes: torch.Tensor,
    scale: Sequence[float],
    ratio: Sequence[float],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random resized crop boxes, vectorised: `torchvision.transforms.v2.RandomResizedCrop.make_params`'s
    distribution for many images at once.

    Each row draws `CROP_ATTEMPTS` (area fraction, log aspect ratio) pairs and keeps the first box that fits the
    image; a row where none fits takes torchvision's fallback, the largest centred box within the ratio range.

    Args:
        image_sizes (`torch.LongTensor` of shape `(num_boxes, 2)`): (height, width) of each image, in pixels.
        scale, ratio: as in `ViewRecipe`.
        generator: the random source (torch's global generator when `None`).

    Returns:
        `torch.LongTensor` of shape `(num_boxes, 4)`: (top, left, height, width) in pixels of the image.
    """
    sizes = image_sizes.to(torch.float64)
    height, width = sizes[:, :1], sizes[:, 1:]
    draws = (sizes.shape[0], CROP_ATTEMPTS)
    target_area = height * width * torch.empty(draws, dtype=torch.float64).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(draws, dtype=torch.float64).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator
    )
    aspect = log_ratio.exp()
    box_w, box_h = (target_area * aspect).sqrt().round(), (target_area / aspect).sqrt().round()
    fits = (box_w > 0) & (box_w <= width) & (box_h > 0) & (box_h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first attempt that fits
    found = fits.any(dim=1)
    box_w, box_h = box_w.gather(1, first)[:, 0], box_h.gather(1, first)[:, 0]
    height, width = height[:, 0], width[:, 0]
    # No attempt fitted: torchvision's central crop, as wide as the ratio range allows.
    image_ratio = width / height
    too_tall, too_wide = image_ratio < ratio[0], image_ratio > ratio[1]
    fallback_w = torch.where(too_wide, (height * ratio[1]).round(), width)
    fallback_h = torch.where(too_tall, (width / ratio[0]).round(), height)
    box_w, box_h = torch.where(found, box_w, fallback_w), torch.where(found, box_h, fallback_h)
    corner = torch.rand((sizes.shape[0], 2), dtype=torch.float64, generator=generator)
    top = torch.where(found, (corner[:, 0] * (height - box_h + 1)).floor(), ((height - box_h) / 2).floor())
    left = torch.where(found, (corner[:, 1] * (width - box_w + 1)).floor(), ((width - box_w) / 2).floor())
    return torch.stack([top, left, box_h, box_w], dim=1).long()


def sample_view_params(
    recipe: ViewRecipe, image_sizes: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draws one view's parameter vector per row of `image_sizes`, vectorised (the module docstring's layout).

    Args:
        recipe: the view distribution.
        image_sizes (`torch.LongTensor` of shape `(num_views, 2)`): (height, width) of the original image of each
            view, in pixels; the crop box is drawn in those pixels and recorded relative to them.
        generator: the random source (torch's global generator when `None`, so `torch.manual_seed` and DataLoader
            worker seeding make it reproducible).

    Returns:
        `torch.FloatTensor` of shape `(num_views, P)`.
    """
    image_sizes = torch.as_tensor(image_sizes).reshape(-1, 2).cpu()
    boxes = sample_crop_boxes(image_sizes, recipe.scale, recipe.ratio, generator).to(torch.float64)
    sizes = image_sizes.to(torch.float64)
    params = identity_params((image_sizes.shape[0],), dtype=torch.float64)
    params[:, 0], params[:, 1] = boxes[:, 1] / sizes[:, 1], boxes[:, 0] / sizes[:, 0]
    params[:, 2], params[:, 3] = boxes[:, 3] / sizes[:, 1], boxes[:, 2] / sizes[:, 0]
    draws = torch.rand((image_sizes.shape[0], 9), dtype=torch.float64, generator=generator)
    params[:, 4] = (draws[:, 0] < recipe.flip_p).double()
    jitter = draws[:, 1] < recipe.jitter_p
    low = torch.tensor([1 - recipe.brightness, 1 - recipe.contrast, 1 - recipe.saturation, -recipe.hue])
    high = torch.tensor([1 + recipe.brightness, 1 + recipe.contrast, 1 + recipe.saturation, recipe.hue])
    factors = low + draws[:, 2:6] * (high - low)
    params[:, 5:9] = torch.where(jitter[:, None], factors, params[:, 5:9])
    params[:, 9] = (draws[:, 6] < recipe.grayscale_p).double()
    sigma = recipe.blur_sigma[0] + draws[:, 8] * (recipe.blur_sigma[1] - recipe.blur_sigma[0])
    params[:, 10] = torch.where(draws[:, 7] < recipe.blur_p, sigma, 0.0)
    return params.float()


class ViewAugmentation:
    """What both multi-view augmentations share: the number and size of the views, their recipe, normalisation.

    Args:
        num_views (`int`, defaults to 2): views per image (`UniCLIPConfig.num_views`).
        size (`int` or `(height, width)`, defaults to 224): output size of every view.
        preset (`str`, defaults to `"auto"`): `"simclr"`, `"small"` or `"auto"` (module docstring).
        image_mean, image_std (`3 floats`, default CLIP's): normalisation; `None` for both leaves values in [0, 1].
        interpolation (`InterpolationMode`, defaults to bicubic): resampling of the crop (antialiased).
        **recipe: any `ViewRecipe` field (`scale`, `ratio`, `flip_p`, `jitter_p`, `brightness`, `contrast`,
            `saturation`, `hue`, `grayscale_p`, `blur_p`, `blur_sigma`, `blur_kernel_fraction`), overriding the
            preset.
    """

    def __init__(
        self,
        num_views: int = 2,
        size: int | Sequence[int] = 224,
        preset: str = "auto",
        image_mean: Sequence[float] | None = CLIP_MEAN,
        image_std: Sequence[float] | None = CLIP_STD,
        interpolation: v2.InterpolationMode = v2.InterpolationMode.BICUBIC,
        **recipe,
    ):
        if num_views < 1:
            raise ValueError(f"num_views must be at least 1, got {num_views}")
        self.num_views = int(num_views)
        self.size = size_pair(size)
        self.preset = resolve_view_preset(preset, self.size)
        self.recipe = view_recipe(self.preset, self.size, **recipe)
        self.blur_kernel_size = self.recipe.blur_kernel_size(self.size)
        if (image_mean is None) != (image_std is None):
            raise ValueError("give both image_mean and image_std, or neither")
        self.image_mean = None if image_mean is None else [float(m) for m in image_mean]
        self.image_std = None if image_std is None else [float(s) for s in image_std]
        self.interpolation = interpolation

    def _arguments(self) -> str:
        return (
            f"num_views={self.num_views}, size={self.size}, preset={self.preset!r}, recipe={self.recipe}, "
            f"interpolation={self.interpolation.value}"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._arguments()})"


class MultiViewAugmentation(ViewAugmentation):
    """Makes `num_views` independently augmented views of one image and returns their parameter vectors, with
    `torchvision.transforms.v2.functional`, one image at a time (arguments: `ViewAugmentation`).

    Calling it on a PIL image, a `[C, H, W]` tensor (uint8 or float in [0, 1]) or a numpy `[H, W, C]` array returns
    `(views [V, 3, H', W'] float32, params [V, P] float32)`. PIL images of any mode are converted with
    `image_processing.to_rgb`.
    Parameters are drawn with torch's global generator, so `torch.manual_seed` and DataLoader worker seeding make
    the views reproducible.
    """

    @staticmethod
    def to_image_tensor(image) -> torch.Tensor:
        """PIL image / tensor / array -> `[3, H, W]` float32 in [0, 1]."""
        if isinstance(image, torch.Tensor):
            tensor = image
        else:
            if isinstance(image, Image.Image):
                image = to_rgb(image)  # the one conversion: 16-bit scaled, alpha composited (`image_processing`)
            if hasattr(image, "flags") and not image.flags.writeable:  # a numpy view of a PIL image
                image = image.copy()
            tensor = TF.to_image(image)
        if tensor.ndim != 3:
            raise ValueError(f"expected one image [C, H, W], got shape {tuple(tensor.shape)}")
        if tensor.shape[0] == 1:
            tensor = tensor.expand(3, -1, -1)
        elif tensor.shape[0] == 4:
            tensor = tensor[:3]
        elif tensor.shape[0] != 3:
            raise ValueError(f"expected 1, 3 or 4 channels, got {tensor.shape[0]}")
        # A plain tensor (not a tv_tensors.Image) so that every functional op below takes the plain-tensor path.
        return TF.to_dtype(tensor.as_subclass(torch.Tensor), torch.float32, scale=True)

    def sample_params(self, height: int, width: int) -> torch.Tensor:
        """Draws one view's parameter vector `[P]` for an image of `height x width` pixels."""
        return sample_view_params(self.recipe, torch.tensor([[height, width]]))[0]

    def apply(self, image: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Applies one parameter vector to a `[3, H, W]` float image in [0, 1]; returns the normalised view."""
        if params.shape != (AUGMENTATION_PARAM_DIM,):
            raise ValueError(f"params must have shape [{AUGMENTATION_PARAM_DIM}], got {tuple(params.shape)}")
        height, width = image.shape[-2:]
        left, top, crop_w, crop_h, flip, bright, contrast, sat, hue, gray, sigma = params.tolist()
        view = TF.resized_crop(
            image,
            top=int(round(top * height)),
            left=int(round(left * width)),
            height=max(1, int(round(crop_h * height))),
            width=max(1, int(round(crop_w * width))),
            size=self.size,
            interpolation=self.interpolation,
            antialias=True,
        )
        view = view.clamp(0, 1)  # bicubic resampling overshoots
        if flip:
            view = TF.horizontal_flip(view)
        if bright != 1:
            view = TF.adjust_brightness(view, bright)
        if contrast != 1:
            view = TF.adjust_contrast(view, contrast)
        if sat != 1:
            view = TF.adjust_saturation(view, sat)
        if hue != 0:
            view = TF.adjust_hue(view, hue)
        if gray:
            view = TF.rgb_to_grayscale(view, num_output_channels=3)
        if sigma > 0:
            view = TF.gaussian_blur(view, [self.blur_kernel_size] * 2, [sigma, sigma])
        if self.image_mean is not None:
            view = TF.normalize(view, self.image_mean, self.image_std)
        return view

    def __call__(self, image) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns `(views [V, 3, H', W'], params [V, P])` for one image."""
        tensor = self.to_image_tensor(image)
        sizes = torch.tensor([list(tensor.shape[-2:])] * self.num_views)
        params = sample_view_params(self.recipe, sizes)
        views = torch.stack([self.apply(tensor, p) for p in params])
        return views, params


__all__ = [
    "AUGMENTATION_PARAM_DIM",
    "AUGMENTATION_PARAM_NAMES",
    "CLIP_MEAN",
    "CLIP_STD",
    "IDENTITY_PARAMS",
    "MultiViewAugmentation",
    "ViewAugmentation",
    "identity_params",
    "sample_crop_boxes",
    "sample_view_params",
]
