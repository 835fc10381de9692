"""benchmarks/throughput.py's patch-dropout group runs on its smallest setting: a row per model type and share, each
read against the same model at 0, and the activations shrink with the share (a count, not a timing)."""

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_patch_dropout_rows_for_every_model_type_and_share():
    import throughput

    results = throughput.main(["--smoke", "--threads", "1", "--groups", "patch-dropout"])["patch-dropout"]
    models = {row["model"] for row in results}
    assert len(models) == 3 and any(name.startswith("MS-CLIP") for name in models)
    assert len(results) == 3 * len(throughput.PATCH_DROPOUT_SHARES)
    for model in models:
        rows = {row["patch_dropout"]: row for row in results if row["model"] == model}
        assert set(rows) == set(throughput.PATCH_DROPOUT_SHARES)
        assert rows[0.0]["memory_ratio"] == 1.0 and rows[0.0]["ratios"] == [1.0]
        assert rows[0.75]["memory_mib"] < rows[0.5]["memory_mib"] < rows[0.0]["memory_mib"]
        assert all(math.isfinite(rate) and rate > 0 for row in rows.values() for rate in row["rates"])
