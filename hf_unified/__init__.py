"""hf-unified: UniCL, UniCLIP and MS-CLIP as Hugging Face transformers models.

Importing the package registers every model with the Auto classes, so that `AutoConfig`, `AutoModel`,
`AutoModelForZeroShotImageClassification`, `AutoProcessor`, `AutoImageProcessor` and the zero-shot pipeline resolve its
folders without `trust_remote_code`. As with transformers' CLIP, a config type maps to its dual encoder; the image and
text models with projection (`*VisionModelWithProjection`, `*TextModelWithProjection`, what the feature-extraction
pipelines want) load from the same folder by their class, or, from the folder's custom code, through
`pipeline("image-feature-extraction" | "feature-extraction", model=folder, trust_remote_code=True)`.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
)

from .configuration_msclip import MSCLIP_PRESETS, MSCLIPConfig
from .configuration_unicl import UniCLConfig
from .configuration_uniclip import AUGMENTATION_PARAM_DIM, AUGMENTATION_PARAM_NAMES, UniCLIPConfig
from .image_processing import DualEncoderImageProcessor
from .losses import clip_loss, gather_with_grad, global_mean, multi_positive_loss, unicl_loss
from .modeling_msclip import (
    MSCLIPModel,
    MSCLIPOutput,
    MSCLIPPreTrainedModel,
    MSCLIPTextModelWithProjection,
    MSCLIPVisionModelWithProjection,
)
from .modeling_unicl import (
    UniCLModel,
    UniCLOutput,
    UniCLPreTrainedModel,
    UniCLTextModelWithProjection,
    UniCLVisionModelWithProjection,
)
from .modeling_uniclip import (
    UniCLIPModel,
    UniCLIPOutput,
    UniCLIPPreTrainedModel,
    UniCLIPTextModelWithProjection,
    UniCLIPVisionModelWithProjection,
)
from .processing_msclip import MSCLIPProcessor, msclip_image_processor
from .processing_unicl import UniCLProcessor
from .processing_uniclip import UniCLIPProcessor
from .prompts import OPENAI_IMAGENET_TEMPLATES, UNICL_TEMPLATES, build_zero_shot_classifier
from .tokenization import clip_tokenizer_from_bpe_gz, clip_tokenizer_from_files, train_caption_tokenizer

__version__ = "0.1.0"


def _register(config_class, model_class, processor_class) -> None:
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModel.register(config_class, model_class, exist_ok=True)
    AutoModelForZeroShotImageClassification.register(config_class, model_class, exist_ok=True)
    AutoProcessor.register(config_class, processor_class, exist_ok=True)
    # One class for both backends: without torchvision it is built on CLIP's PIL backend (`image_processing.py`).
    backends = {"torchvision": DualEncoderImageProcessor, "pil": DualEncoderImageProcessor}
    AutoImageProcessor.register(config_class, image_processor_classes=backends, exist_ok=True)


_register(UniCLConfig, UniCLModel, UniCLProcessor)
_register(UniCLIPConfig, UniCLIPModel, UniCLIPProcessor)
_register(MSCLIPConfig, MSCLIPModel, MSCLIPProcessor)

__all__ = [
    "AUGMENTATION_PARAM_DIM",
    "MSCLIP_PRESETS",
    "MSCLIPConfig",
    "MSCLIPModel",
    "MSCLIPOutput",
    "MSCLIPPreTrainedModel",
    "MSCLIPProcessor",
    "MSCLIPTextModelWithProjection",
    "MSCLIPVisionModelWithProjection",
    "AUGMENTATION_PARAM_NAMES",
    "DualEncoderImageProcessor",
    "OPENAI_IMAGENET_TEMPLATES",
    "UNICL_TEMPLATES",
    "UniCLConfig",
    "UniCLModel",
    "UniCLOutput",
    "UniCLPreTrainedModel",
    "UniCLProcessor",
    "UniCLTextModelWithProjection",
    "UniCLVisionModelWithProjection",
    "UniCLIPConfig",
    "UniCLIPModel",
    "UniCLIPOutput",
    "UniCLIPPreTrainedModel",
    "UniCLIPProcessor",
    "UniCLIPTextModelWithProjection",
    "UniCLIPVisionModelWithProjection",
    "build_zero_shot_classifier",
    "clip_loss",
    "clip_tokenizer_from_bpe_gz",
    "clip_tokenizer_from_files",
    "gather_with_grad",
    "msclip_image_processor",
    "global_mean",
    "multi_positive_loss",
    "train_caption_tokenizer",
    "unicl_loss",
]
