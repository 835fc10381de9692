"""Smoke tests of the large-batch and FSDP-memory benchmarks: each runs on its smallest setting and its figures
say what the full runs show (equal losses and gradients, memory by micro-batch, sharded state smaller by W)."""

import math

import pytest
from test_benchmarks_smoke import _restore_torch_threads  # noqa: F401  (autouse; also puts benchmarks/ on sys.path)


def test_large_batch_smoke_full_batch_is_one_batch_in_less_memory():
    import large_batch

    results = large_batch.main(["--smoke"])  # 4 x 16 against 1 x 64
    one, full, accum, micro = (results[m] for m in ("one batch", "full_batch", "accum_freq", "micro_batch"))
    assert full["loss"] == pytest.approx(one["loss"], rel=1e-5) == accum["loss"]
    assert abs(micro["loss"] - one["loss"]) > 0.1  # plain accumulation is another loss
    assert full["gradient_error"] < 1e-4 and accum["gradient_error"] < 1e-4
    assert full["temperature_gradient_ratio"] == pytest.approx(1.0, abs=1e-4)
    # open_clip's scheme back-propagates the loss once per micro-batch: the temperature's gradient 4 times over.
    assert accum["temperature_gradient_ratio"] == pytest.approx(4.0, abs=1e-3)
    for mode in results.values():
        assert all(math.isfinite(v) and v > 0 for v in mode["samples_per_second"])
        assert all(math.isfinite(v) for v in mode["peak_mib"])


def test_fsdp_memory_smoke_shards_state_by_world_size():
    import fsdp_memory

    results = fsdp_memory.main(["--smoke", "--world-sizes", "4"])
    assert [r["config"] for r in results] == list(fsdp_memory.BASE_CONFIGS)
    for result in results:
        ddp, fsdp, count = result["ddp"], result["fsdp"], result["parameter_count"]
        assert ddp["parameters"] == ddp["gradients"] == 4 * count  # float32, whole on every rank
        assert ddp["optimizer"] >= 2 * ddp["parameters"]  # AdamW: two moments (and a step count) per parameter
        for key in ("parameters", "gradients", "optimizer"):
            # Rank 0's shards: a quarter of every parameter (dim-0 chunks round up, so a little more).
            assert ddp[key] / 4 <= fsdp[key] < ddp[key] / 2, (result["config"], key)
        assert result["units"] > 3
        assert 0 < result["largest_unit"][1] < ddp["parameters"]
