"""How strong UniCLIP's augmented views are: a `ViewRecipe`, its named presets, and `"auto"`.

How strong the views are is a `ViewRecipe`; `VIEW_PRESETS` names two, and `"auto"` picks one by the view size:

- `"simclr"`: the SimCLR-style views this package used so far, meant for photos at about 224 px: crop area 0.08-1
  (SimCLR), colour jitter with probability 0.8 and strengths 0.4 / 0.4 / 0.4 / 0.1, grayscale 0.2, Gaussian blur
  with probability 0.5, sigma 0.1-2 px and a kernel of 10% of the side (MoCo v2's jitter and blur). UniCLIP's paper
  does not give its recipe (see `shared/reference/uniclip.md` section 2); this is our reading.
- `"small"`: for small images (digits, icons, 32-64 px thumbnails): crop area 0.3-1 and SimCLR's colour jitter
  (probability 0.8, strengths 0.4 / 0.4 / 0.4 / 0.1), no grayscale, no blur (at 32 px a blur kernel is most of the
  object). Chosen on the validation splits of `benchmarks/comparison.py` (the `uniclip-choices` study, 3 seeds, 600
  steps, zero-shot top-1 at the end): against the earlier `small` (area 0.85-1, no jitter: near-duplicate views, whose
  image-image term is trivially easy) it lifted UniCLIP on shapes from 40.8 to 54.9 (61.3 with the offsets at the
  towers' rate) and left the saturated digits level (96.3 -> 95.8, within a seed's spread). One measurement on two
  small synthetic data sets, not a general law.
- `"auto"` (the default): `"small"` when the shorter side of the views is at most `AUTO_SMALL_MAX_SIDE` (64) px,
  else `"simclr"`. The boundary is a judgement between the two measured regimes (32 px digits, 224 px photos).

Both presets flip with probability 0.5; a trainer whose captions say "left" or "right" passes `flip_p=0`. Any
recipe field given to an augmentation overrides its preset.

This module imports only the standard library: the trainer's settings (`arguments.py`) take their choices from
`VIEW_PRESET_CHOICES` before torch is imported, and `augmentation.py` / `batch_augmentation.py` draw from the recipe.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

# "auto" picks the "small" preset for views whose shorter side is at most this many pixels.
AUTO_SMALL_MAX_SIDE = 64


def _check_range(name: str, bounds, low: float, high: float) -> tuple[float, float]:
    if len(bounds) != 2 or not (low <= bounds[0] <= bounds[1] <= high):
        raise ValueError(
            f"{name} must be (min, max) with {low} <= min <= max <= {high}, got {tuple(bounds)}: give two numbers "
            "in that range, smaller first"
        )
    return float(bounds[0]), float(bounds[1])


def _check_probability(name: str, p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    return float(p)


@dataclasses.dataclass(frozen=True)
class ViewRecipe:
    """The distribution of one augmented view; every field is checked when the recipe is made.

    Args:
        scale (`(float, float)`, defaults to `(0.08, 1.0)`): crop area range as a fraction of the image area.
        ratio (`(float, float)`, defaults to `(3/4, 4/3)`): crop aspect-ratio (width / height) range.
        flip_p (`float`, defaults to 0.5): probability of a horizontal flip.
        jitter_p (`float`, defaults to 0.8): probability of applying colour jitter.
        brightness, contrast, saturation (`float`, default 0.4, 0.4, 0.4): factors drawn from `[1 - x, 1 + x]`.
        hue (`float`, defaults to 0.1): shift drawn from `[-hue, hue]`, at most 0.5.
        grayscale_p (`float`, defaults to 0.2): probability of a grayscale conversion.
        blur_p (`float`, defaults to 0.5): probability of a Gaussian blur.
        blur_sigma (`(float, float)`, defaults to `(0.1, 2.0)`): blur sigma range, in output pixels.
        blur_kernel_fraction (`float`, defaults to 0.1): kernel size as a fraction of the view side (SimCLR), made
            odd, at least 3.

    The defaults are the `"simclr"` preset.
    """

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_fraction: float = 0.1

    def __post_init__(self):
        checked = {
            "scale": _check_range("scale", self.scale, 0.0, 1.0),
            "ratio": _check_range("ratio", self.ratio, 1e-6, math.inf),
            "blur_sigma": _check_range("blur_sigma", self.blur_sigma, 1e-6, math.inf),
        }
        if checked["scale"][1] <= 0:
            raise ValueError(f"scale must allow a non-empty crop, got {tuple(self.scale)}: make its maximum above 0")
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p"):
            checked[name] = _check_probability(name, getattr(self, name))
        for name in ("brightness", "contrast", "saturation"):
            strength = getattr(self, name)
            if not 0.0 <= strength < 1.0:
                raise ValueError(f"{name} strength must be in [0, 1) (factor range [1 - x, 1 + x]), got {strength}")
            checked[name] = float(strength)
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")
        if not 0.0 <= self.blur_kernel_fraction <= 1.0:
            raise ValueError(f"blur_kernel_fraction must be in [0, 1], got {self.blur_kernel_fraction}")
        checked["hue"], checked["blur_kernel_fraction"] = float(self.hue), float(self.blur_kernel_fraction)
        for name, value in checked.items():  # frozen: normalised once, here (tuples of floats, floats)
            object.__setattr__(self, name, value)

    def blur_kernel_size(self, size: Sequence[int]) -> int:
        """The Gaussian kernel side for views of `size = (height, width)`: odd, at least 3."""
        kernel = max(3, int(self.blur_kernel_fraction * min(size)))
        return kernel if kernel % 2 == 1 else kernel + 1


VIEW_PRESETS: dict[str, ViewRecipe] = {
    "simclr": ViewRecipe(),
    "small": ViewRecipe(scale=(0.3, 1.0), grayscale_p=0.0, blur_p=0.0),
}
RECIPE_FIELDS = tuple(field.name for field in dataclasses.fields(ViewRecipe))
# What a `preset` argument (and the trainer's `view_preset` setting) may be.
VIEW_PRESET_CHOICES = ("auto", *VIEW_PRESETS)


def resolve_view_preset(preset: str, size: Sequence[int]) -> str:
    """The preset a name stands for at views of `size = (height, width)`: `"auto"` becomes `"small"` or
    `"simclr"`, a preset name stays itself."""
    if preset not in VIEW_PRESET_CHOICES:
        raise ValueError(
            f"view preset must be one of {VIEW_PRESET_CHOICES}, got {preset!r}: pick one, or give the recipe fields "
            f"({', '.join(RECIPE_FIELDS)}) on top of a preset"
        )
    if preset == "auto":
        return "small" if min(size) <= AUTO_SMALL_MAX_SIDE else "simclr"
    return preset


def view_recipe(preset: str = "auto", size: int | Sequence[int] = 224, **overrides) -> ViewRecipe:
    """The recipe of `preset` at views of `size`, with `overrides` (any `ViewRecipe` field) applied on top."""
    unknown = sorted(set(overrides) - set(RECIPE_FIELDS))
    if unknown:
        raise ValueError(f"unknown augmentation field(s) {unknown}: the fields are {list(RECIPE_FIELDS)}")
    return dataclasses.replace(VIEW_PRESETS[resolve_view_preset(preset, size_pair(size))], **overrides)


def size_pair(size: int | Sequence[int]) -> list[int]:
    pair = [int(size), int(size)] if isinstance(size, int) else [int(s) for s in size]
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"size must be a positive int or (height, width), got {size}")
    return pair


__all__ = [
    "AUTO_SMALL_MAX_SIDE",
    "RECIPE_FIELDS",
    "VIEW_PRESETS",
    "VIEW_PRESET_CHOICES",
    "ViewRecipe",
    "resolve_view_preset",
    "size_pair",
    "view_recipe",
]
