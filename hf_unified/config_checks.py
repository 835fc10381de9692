"""Config values checked before anything is allocated, each refused in one line naming the field, the value
expected, the value given and the fix.

A config is the first thing a model folder hands over (`config.json`, perhaps a stranger's), so absurd values stop
there: zero heads (a ZeroDivisionError deep inside transformers), a negative layer count (a model without layers that
runs), a million layers (hours of allocation), an unknown activation (a KeyError at build), a patch size that does not
divide the image (pixels silently cropped), NaN epsilons. The model configs call these checks when they are built, so
`from_pretrained` of a folder runs them too, and again when a model is built from a config, which catches sizes
changed in place since.

The bounds are far above any released image-text model and far below what would take minutes to allocate:

- `MAX_LAYERS = 1024` blocks per tower or stack (each block is a Python module, so construction time grows with the
  count; ViT-22B has 48 blocks);
- `MAX_IMAGE_TOKENS = 2**20` patches per image (a position table and attention of that length; ViT-H/14 at 1024
  pixels has 5,329);
- `MAX_PARAMETERS = 10**11` parameters by the estimate of [`transformer_parameters`] (400 GB in float32; the
  largest released image-text towers, ViT-22B and EVA-CLIP-18B, hold about 2 x 10**10).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral, Real

MAX_LAYERS = 1024
MAX_IMAGE_TOKENS = 2**20
MAX_PARAMETERS = 10**11
DEPTH_FIX = f"{MAX_LAYERS} blocks is this package's bound on absurd depths (ViT-22B has 48); check for a typo"


def refuse(name: str, expected: str, given, fix: str) -> ValueError:
    """The one-line error: `name must be expected, got given: fix` (`given` as Python writes it)."""
    return ValueError(f"{name} must be {expected}, got {given!r}: {fix}")


def is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def check_int(name: str, value, minimum: int = 1, maximum: int | None = None, fix: str = "") -> int:
    """`value` is an integer in `[minimum, maximum]`; returns it."""
    expected = f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"
    if not is_int(value) or value < minimum or (maximum is not None and value > maximum):
        raise refuse(name, expected, value, fix or f"give {expected}")
    return int(value)


def check_float(
    name: str,
    value,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive: tuple[bool, bool] = (False, False),
    fix: str = "",
) -> float:
    """`value` is a finite real number within the bounds (`exclusive`: whether each bound is itself refused)."""
    low = "" if minimum is None else ("(" if exclusive[0] else "[") + f"{minimum}"
    high = "" if maximum is None else f"{maximum}" + (")" if exclusive[1] else "]")
    expected = "a finite number" + (f" in {low or '(-inf'}, {high or 'inf)'}" if low or high else "")
    ok = is_real(value) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if exclusive[0] else value >= minimum
    if ok and maximum is not None:
        ok = value < maximum if exclusive[1] else value <= maximum
    if not ok:
        raise refuse(name, expected, value, fix or f"give {expected}")
    return float(value)


def check_finite(name: str, value, depth: int = 3) -> None:
    """Every real number in `value` (a number, or lists and dicts of them, `depth` levels deep) is finite."""
    if is_real(value):
        if not math.isfinite(value):
            raise refuse(name, "a finite number", value, "NaN and infinity are not valid settings")
    elif depth > 0 and isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_finite(f"{name}[{index}]", item, depth - 1)
    elif depth > 0 and isinstance(value, Mapping):
        for key, item in value.items():
            check_finite(f"{name}.{key}", item, depth - 1)


def check_activation(name: str, value) -> None:
    """`value` names an activation transformers knows (`transformers.activations.ACT2FN`)."""
    from transformers.activations import ACT2FN

    if not isinstance(value, str) or value not in ACT2FN:
        raise refuse(
            name, "an activation name of transformers.activations.ACT2FN", value, f"use one of {sorted(ACT2FN)}"
        )


def check_rate(name: str, value) -> None:
    """A dropout or drop-path probability: `[0, 1)` (1 would drop everything), or None (off)."""
    if value is not None:
        check_float(name, value, 0.0, 1.0, exclusive=(False, True), fix="give a probability below 1 (0 turns it off)")


def check_patch_grid(prefix: str, image_size, patch_size) -> int:
    """`image_size` and `patch_size` (each an int or a `(height, width)` pair) give a whole grid of at most
    `MAX_IMAGE_TOKENS` patches; returns the patch count."""
    sizes = {}
    for name, value in (("image_size", image_size), ("patch_size", patch_size)):
        pair = list(value) if isinstance(value, (list, tuple)) else [value, value]
        if len(pair) != 2:
            raise refuse(f"{prefix}{name}", "an integer or a [height, width] pair", value, "give one side length")
        sizes[name] = [check_int(f"{prefix}{name}", side) for side in pair]
    tokens = 1
    for image_side, patch_side in zip(sizes["image_size"], sizes["patch_size"]):
        if image_side % patch_side:
            below = image_side - image_side % patch_side
            raise ValueError(
                f"{prefix}image_size {image_size} is not divisible by {prefix}patch_size {patch_size}: the last "
                f"{image_side % patch_side} pixels of each side would be cropped silently; use an image size of "
                f"{below or patch_side} or {below + patch_side}, or another patch size"
            )
        tokens *= image_side // patch_side
    if tokens > MAX_IMAGE_TOKENS:
        raise refuse(
            f"{prefix}image_size",
            f"at most {MAX_IMAGE_TOKENS} patches of patch_size {patch_size}",
            image_size,
            f"that is {tokens} patches per image; use a smaller image or a larger patch",
        )
    return tokens


def transformer_parameters(layers: int, width: int, intermediate: int) -> int:
    """Parameters of `layers` pre-LN transformer blocks (attention `4 w^2`, MLP `2 w i`; biases and norms left out)."""
    return layers * (4 * width * width + 2 * width * intermediate)


def check_parameter_count(name: str, estimate: int, fix: str) -> None:
    """`estimate` (parameters) is at most `MAX_PARAMETERS`."""
    if estimate > MAX_PARAMETERS:
        raise ValueError(
            f"{name} must give a model of at most {MAX_PARAMETERS:.0e} parameters, got about {estimate:.1e}: {fix}"
        )


__all__ = [
    "DEPTH_FIX",
    "MAX_IMAGE_TOKENS",
    "MAX_LAYERS",
    "MAX_PARAMETERS",
    "check_activation",
    "check_finite",
    "check_float",
    "check_int",
    "check_parameter_count",
    "check_patch_grid",
    "check_rate",
    "is_int",
    "is_real",
    "refuse",
    "transformer_parameters",
]
