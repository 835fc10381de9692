"""Multi-view image augmentation that reports what it did, for UniCLIP's augmentation-aware embedding.

UniCLIP conditions each image view's embedding on the augmentation that produced the view, so the augmentation
must hand back a parameter vector together with every view. This module samples the parameters itself (the crop
box through `torchvision.transforms.v2.RandomResizedCrop.make_params`, the rest with `torch`'s global generator,
so `torch.manual_seed` and DataLoader worker seeding make it reproducible) and applies them with
`torchvision.transforms.v2.functional`.

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

When colour jitter is not applied to a view (probability `1 - jitter_p`) its slots hold the identity factors, so the
vector always describes the view exactly. The jitter is applied in the fixed order brightness, contrast, saturation,
hue (torchvision's `ColorJitter` shuffles the order, which the vector could not record).

The pipeline per view: random resized crop -> horizontal flip -> colour jitter -> grayscale -> Gaussian blur ->
float in [0, 1] -> normalisation with `image_mean` / `image_std`. Defaults follow SimCLR-style views (the reading of
UniCLIP in this package; the paper's exact recipe is unconfirmed) and CLIP's mean/std, the same as
`UniCLIPProcessor`'s default image processor.

Usage in a training data pipeline:

```python
>>> aug = MultiViewAugmentation(num_views=2, size=224)
>>> views, params = aug(pil_image)  # [2, 3, 224, 224], [2, 11]
```
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ..configuration_uniclip import AUGMENTATION_PARAM_DIM, AUGMENTATION_PARAM_NAMES, IDENTITY_PARAMS

# CLIP's normalisation (transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD), the default of UniCLIPProcessor too.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def identity_params(batch_shape: Sequence[int] = (), dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The identity parameter vector, broadcast to `[*batch_shape, P]`."""
    vector = torch.tensor(IDENTITY_PARAMS, dtype=dtype, device=device)
    return vector.expand(*batch_shape, AUGMENTATION_PARAM_DIM).clone()


def _check_range(name: str, bounds: Sequence[float], low: float, high: float) -> tuple[float, float]:
    if len(bounds) != 2 or not (low <= bounds[0] <= bounds[1] <= high):
        raise ValueError(f"{name} must be (min, max) with {low} <= min <= max <= {high}, got {tuple(bounds)}")
    return float(bounds[0]), float(bounds[1])


def _check_probability(name: str, p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    return float(p)


def _uniform(low: float, high: float) -> float:
    return torch.empty(1).uniform_(low, high).item()


def _coin(p: float) -> bool:
    return torch.rand(1).item() < p


class MultiViewAugmentation:
    """Makes `num_views` independently augmented views of one image and returns their parameter vectors.

    Args:
        num_views (`int`, defaults to 2): views per image (`UniCLIPConfig.num_views`).
        size (`int` or `(height, width)`, defaults to 224): output size of every view.
        scale (`(float, float)`, defaults to `(0.08, 1.0)`): crop area range as a fraction of the image area.
        ratio (`(float, float)`, defaults to `(3/4, 4/3)`): crop aspect-ratio range.
        flip_p (`float`, defaults to 0.5): probability of a horizontal flip.
        jitter_p (`float`, defaults to 0.8): probability of applying colour jitter.
        brightness, contrast, saturation (`float`, default 0.4, 0.4, 0.4): factors drawn from `[1 - x, 1 + x]`.
        hue (`float`, defaults to 0.1): shift drawn from `[-hue, hue]`, at most 0.5.
        grayscale_p (`float`, defaults to 0.2): probability of a grayscale conversion.
        blur_p (`float`, defaults to 0.5): probability of a Gaussian blur.
        blur_sigma (`(float, float)`, defaults to `(0.1, 2.0)`): blur sigma range, in output pixels.
        blur_kernel_fraction (`float`, defaults to 0.1): kernel size as a fraction of the view side (SimCLR), made
            odd, at least 3.
        image_mean, image_std (`3 floats`, default CLIP's): normalisation; `None` for both leaves values in [0, 1].
        interpolation (`InterpolationMode`, defaults to bicubic): resampling of the crop.

    Calling it on a PIL image, a `[C, H, W]` tensor (uint8 or float in [0, 1]) or a numpy `[H, W, C]` array returns
    `(views [V, 3, H', W'] float32, params [V, P] float32)`. Grayscale or RGBA inputs are converted to RGB.
    """

    def __init__(
        self,
        num_views: int = 2,
        size: int | Sequence[int] = 224,
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        jitter_p: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        hue: float = 0.1,
        grayscale_p: float = 0.2,
        blur_p: float = 0.5,
        blur_sigma: Sequence[float] = (0.1, 2.0),
        blur_kernel_fraction: float = 0.1,
        image_mean: Sequence[float] | None = CLIP_MEAN,
        image_std: Sequence[float] | None = CLIP_STD,
        interpolation: v2.InterpolationMode = v2.InterpolationMode.BICUBIC,
    ):
        if num_views < 1:
            raise ValueError(f"num_views must be at least 1, got {num_views}")
        self.num_views = int(num_views)
        self.size = [int(size), int(size)] if isinstance(size, int) else [int(s) for s in size]
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size must be a positive int or (height, width), got {size}")
        self.scale = _check_range("scale", scale, 0.0, 1.0)
        if self.scale[1] <= 0:
            raise ValueError(f"scale must allow a non-empty crop, got {tuple(scale)}")
        self.ratio = _check_range("ratio", ratio, 1e-6, math.inf)
        self.flip_p = _check_probability("flip_p", flip_p)
        self.jitter_p = _check_probability("jitter_p", jitter_p)
        for name, strength in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if not 0.0 <= strength < 1.0:
                raise ValueError(f"{name} strength must be in [0, 1) (factor range [1 - x, 1 + x]), got {strength}")
        if not 0.0 <= hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {hue}")
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.grayscale_p = _check_probability("grayscale_p", grayscale_p)
        self.blur_p = _check_probability("blur_p", blur_p)
        self.blur_sigma = _check_range("blur_sigma", blur_sigma, 1e-6, math.inf)
        kernel = max(3, int(blur_kernel_fraction * min(self.size)))
        self.blur_kernel_size = kernel if kernel % 2 == 1 else kernel + 1
        if (image_mean is None) != (image_std is None):
            raise ValueError("give both image_mean and image_std, or neither")
        self.image_mean = None if image_mean is None else [float(m) for m in image_mean]
        self.image_std = None if image_std is None else [float(s) for s in image_std]
        self.interpolation = interpolation
        # Only its `make_params` is used: the crop box, sampled exactly as torchvision samples it.
        self._crop = v2.RandomResizedCrop(self.size, scale=self.scale, ratio=self.ratio, antialias=True)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_views={self.num_views}, size={self.size}, scale={self.scale}, "
            f"ratio={self.ratio}, flip_p={self.flip_p}, jitter_p={self.jitter_p}, grayscale_p={self.grayscale_p}, "
            f"blur_p={self.blur_p}, blur_sigma={self.blur_sigma})"
        )

    @staticmethod
    def to_image_tensor(image) -> torch.Tensor:
        """PIL image / tensor / array -> `[3, H, W]` float32 in [0, 1]."""
        if isinstance(image, torch.Tensor):
            tensor = image
        else:
            if hasattr(image, "mode") and image.mode != "RGB":
                image = image.convert("RGB")
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
        box = self._crop.make_params([torch.empty(3, height, width)])
        params = list(IDENTITY_PARAMS)
        params[0:4] = [box["left"] / width, box["top"] / height, box["width"] / width, box["height"] / height]
        params[4] = float(_coin(self.flip_p))
        if _coin(self.jitter_p):
            params[5] = _uniform(1 - self.brightness, 1 + self.brightness)
            params[6] = _uniform(1 - self.contrast, 1 + self.contrast)
            params[7] = _uniform(1 - self.saturation, 1 + self.saturation)
            params[8] = _uniform(-self.hue, self.hue)
        params[9] = float(_coin(self.grayscale_p))
        if _coin(self.blur_p):
            params[10] = _uniform(*self.blur_sigma)
        return torch.tensor(params, dtype=torch.float32)

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
        height, width = tensor.shape[-2:]
        params = torch.stack([self.sample_params(height, width) for _ in range(self.num_views)])
        views = torch.stack([self.apply(tensor, p) for p in params])
        return views, params


__all__ = [
    "AUGMENTATION_PARAM_DIM",
    "AUGMENTATION_PARAM_NAMES",
    "CLIP_MEAN",
    "CLIP_STD",
    "IDENTITY_PARAMS",
    "MultiViewAugmentation",
    "identity_params",
]
