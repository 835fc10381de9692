"""UniCL processor: UniCL's evaluation preprocessing and any tokenizer."""

from transformers import CLIPImageProcessor
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .image_processing import DualEncoderProcessor, center_crop_image_processor


def unicl_image_processor(image_size: int = 224, resize_size: int | None = None) -> CLIPImageProcessor:
    """UniCL's evaluation preprocessing (`data/build.py`): bicubic resize of the shorter side to 256/224 of the
    crop, centre crop, ImageNet mean/std (not CLIP's)."""
    resize_size = resize_size or int(256 / 224 * image_size)
    return center_crop_image_processor(image_size, resize_size, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)


class UniCLProcessor(DualEncoderProcessor):
    r"""Prepares images and texts for [`UniCLModel`].

    Args:
        image_processor ([`CLIPImageProcessor`] or any image processor, *optional*):
            Defaults to UniCL's preprocessing: bicubic resize to 256, centre crop 224, ImageNet mean/std.
        tokenizer (any tokenizer):
            The text tower's tokenizer (the CLIP BPE for the released models, BERT's WordPiece for a BERT tower, ...).
    """

    @classmethod
    def default_image_processor(cls, image_size: int = 224) -> CLIPImageProcessor:
        return unicl_image_processor(image_size)


UniCLProcessor.register_for_auto_class()

__all__ = ["UniCLProcessor", "unicl_image_processor"]
