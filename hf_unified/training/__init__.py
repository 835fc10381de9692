"""Training-side code that Hub users never load: data streams, augmentation, the embedded data, evaluation and
tokenizer building. The model files never import this subpackage.

Import the modules you need (`from hf_unified.training import data`); importing the subpackage itself pulls in
nothing heavy, so `hf_unified.training.tokenization` works on the core install.
"""
