"""Sharing on the Hub: pushing a saved model folder and rendering its model card.

Nothing here is Hub custom code: the model files never import this subpackage, so `save_pretrained` does not copy it.
"""

from .model_card import render_model_card, write_model_card
from .push import HubPushError, IncompleteModelFolderError, PushResult, check_model_folder, push_folder

__all__ = [
    "HubPushError",
    "IncompleteModelFolderError",
    "PushResult",
    "check_model_folder",
    "push_folder",
    "render_model_card",
    "write_model_card",
]
