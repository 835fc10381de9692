"""Smoke test of the inference benchmark: every candidate is measured, at identical weights to CLIPModel."""

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


def test_inference_smoke_measures_every_candidate():
    import inference

    threads = torch.get_num_threads()
    try:
        results = inference.main(["--smoke", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    rates = results["rates"]
    assert set(rates) == {inference.CLIP_REFERENCE, "UniCL (from_clip)", "UniCLIP (from_clip)"}
    for name, kinds in rates.items():
        for kind in ("image", "text", "zero_shot"):
            assert len(kinds[kind]) == 2 and all(math.isfinite(v) and v > 0 for v in kinds[kind]), (name, kind)
    assert rates[inference.CLIP_REFERENCE]["pipeline"] and rates["UniCL (from_clip)"]["direct"]
