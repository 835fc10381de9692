"""What a run gives back: evaluation (`evaluation`), and an adapter that runs LAION's CLIP_benchmark on a saved
folder (`clip_benchmark`).

Import the modules (`from hf_unified.training.outputs import evaluation`); this file imports nothing.
"""
