"""Sharing on the Hub: pushing a saved model folder, its model card, the Inference Endpoints handler, the native CLIP
export and the demo Space.

Nothing here is Hub custom code: the model files never import this subpackage, so `save_pretrained` does not copy it.
`export` and `space` are imported on use (`hf_unified.hub.export`, `hf_unified.hub.space`).
"""

from .model_card import render_card_files, render_model_card, write_model_card
from .push import (
    HubPushError,
    IncompleteModelFolderError,
    PushResult,
    check_can_push,
    check_model_folder,
    push_folder,
)

__all__ = [
    "HubPushError",
    "IncompleteModelFolderError",
    "PushResult",
    "check_can_push",
    "check_model_folder",
    "push_folder",
    "render_card_files",
    "render_model_card",
    "write_model_card",
]
