"""The evaluation preprocessing every method here uses: bicubic resize of the shorter side, centre crop, normalise.

The methods differ only in the numbers (resize margin, mean/std), so each processor states those and builds
transformers' own `CLIPImageProcessor` through this one function.
"""

from collections.abc import Sequence

from transformers import CLIPImageProcessor
from transformers.image_utils import PILImageResampling


def center_crop_image_processor(
    crop_size: int, resize_size: int, image_mean: Sequence[float], image_std: Sequence[float]
) -> CLIPImageProcessor:
    """Bicubic resize of the shorter side to `resize_size`, centre crop to `crop_size`, RGB, `(x - mean) / std`."""
    return CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": resize_size},
        resample=PILImageResampling.BICUBIC,
        do_center_crop=True,
        crop_size={"height": crop_size, "width": crop_size},
        do_normalize=True,
        image_mean=list(image_mean),
        image_std=list(image_std),
        do_convert_rgb=True,
    )


__all__ = ["center_crop_image_processor"]
