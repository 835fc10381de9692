"""What a run gives back: evaluation (`evaluation`), the final model folder with its model card and the card's
examples (`model_folder`), the publishing steps (`publish`: checked before training, pushed and exported after the
final save), and an adapter that runs LAION's CLIP_benchmark on a saved folder (`clip_benchmark`).

Import the modules (`from hf_unified.training.outputs import evaluation`); this file imports nothing.
"""
