"""`full_batch` accumulation (GradCache): one loss over the whole accumulated batch, exact, in one micro-batch's
memory; in one process and across two (gloo, DDP through accelerate)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from accelerate import Accelerator
from scale_models import KINDS, build_model, concatenate, gradients, init_gloo, micro_batches

from hf_unified.losses import text_identity_keys
from hf_unified.training.engine.grad_cache import FullBatchStep, RandomState

MICRO_BATCHES, MICRO_BATCH_SIZE, SEED = 3, 4, 5


@pytest.fixture(scope="module")
def accelerator():
    return Accelerator(cpu=True)


def model_inputs(batch: dict) -> dict:
    return {key: value for key, value in batch.items() if key != "labels"}


def kept_graph_step(model, batches: list[dict]) -> torch.Tensor:
    """The reference: every micro-batch's forward pass kept in memory, one loss over all of them, one backward."""
    outputs = [model(**model_inputs(batch)) for batch in batches]
    labels = torch.cat([b["labels"] for b in batches]) if "labels" in batches[0] else None
    keys = None
    if model.config.mask_duplicate_texts:
        keys = torch.cat([text_identity_keys(b["input_ids"], b["attention_mask"]) for b in batches])
    loss = model.contrastive_loss(
        torch.cat([o.image_view_embeds for o in outputs]), torch.cat([o.text_embeds for o in outputs]), labels, keys
    )
    loss.backward()
    return loss.detach()


def relative_errors(got: dict, expected: dict, floor: float = 0.0) -> dict[str, float]:
    """Per parameter: max |got - expected| / max |expected| (the difference itself where both are 0).

    `floor`: the denominator is at least `floor` times the model's largest gradient entry. In float32, gradients
    that vanish in exact arithmetic (attention key biases: softmax ignores a shift) are rounding noise, which is
    measured against the model's gradient scale instead of against itself.
    """
    largest = max(reference.abs().max().item() for reference in expected.values())
    errors = {}
    for name, reference in expected.items():
        scale = max(reference.abs().max().item(), floor * largest)
        difference = (got[name] - reference).abs().max().item()
        errors[name] = difference / scale if scale > 0 else difference
    return errors


@pytest.mark.parametrize("kind", KINDS)
def test_full_batch_equals_one_loss_over_kept_graphs_float64_with_dropout(kind, accelerator):
    reference, model = (build_model(kind, dropout=0.2).double() for _ in range(2))
    batches = micro_batches(reference.config, MICRO_BATCHES, MICRO_BATCH_SIZE, dtype=torch.float64)

    torch.manual_seed(SEED)
    expected_loss = kept_graph_step(reference, batches)
    expected_rng = torch.get_rng_state()
    torch.manual_seed(SEED)
    loss, _ = FullBatchStep()(model, batches, accelerator)

    assert abs(loss.item() - expected_loss.item()) <= 1e-12 * abs(expected_loss.item())
    expected = gradients(reference)
    assert sum(bool(g.abs().max() > 0) for g in expected.values()) >= len(expected) - 2  # (BERT's unused pooler)
    errors = relative_errors(gradients(model), expected)
    assert max(errors.values()) < 1e-10, sorted(errors.items(), key=lambda item: -item[1])[:3]
    # The random stream goes on as after one pass, and the running statistics (BatchNorm) were updated once.
    assert torch.equal(torch.get_rng_state(), expected_rng)
    for (name, got), want in zip(model.named_buffers(), reference.buffers()):
        assert torch.equal(got, want), name


def test_dropout_is_on_in_the_exactness_test():
    """Guards the test above: with another seed the same step gives another loss (dropout and drop-path draw)."""
    model = build_model("unicl", dropout=0.2).double()
    batches = micro_batches(model.config, MICRO_BATCHES, MICRO_BATCH_SIZE, dtype=torch.float64)
    losses = []
    for seed in (SEED, SEED + 1):
        torch.manual_seed(seed)
        with torch.no_grad():
            losses.append(model(**concatenate(batches), return_loss=True).loss.item())
    assert losses[0] != losses[1]


@pytest.mark.parametrize("kind", ["unicl", "uniclip", "msclip-shared"])
def test_full_batch_equals_one_big_batch_float32(kind, accelerator):
    """Without dropout, and for models whose layers do not mix samples (no BatchNorm), the step is one forward
    pass over the whole batch."""
    big, model = build_model(kind), build_model(kind)
    batches = micro_batches(big.config, MICRO_BATCHES, MICRO_BATCH_SIZE)
    expected_loss = big(**concatenate(batches), return_loss=True).loss
    expected_loss.backward()
    loss, _ = FullBatchStep()(model, batches, accelerator)

    assert abs(loss.item() - expected_loss.item()) <= 1e-5 * abs(expected_loss.item())
    errors = relative_errors(gradients(model), gradients(big), floor=1e-3)
    assert max(errors.values()) < 1e-5, sorted(errors.items(), key=lambda item: -item[1])[:3]


def test_full_batch_contrasts_across_micro_batches(accelerator):
    """Plain accumulation's loss (the mean of the micro-batch losses) is not the full-batch loss: the step really
    scores every sample against the negatives of the other micro-batches."""
    model = build_model("uniclip")
    batches = micro_batches(model.config, MICRO_BATCHES, MICRO_BATCH_SIZE)
    with torch.no_grad():
        per_micro_batch = np.mean([model(**batch, return_loss=True).loss.item() for batch in batches])
        whole = model(**concatenate(batches), return_loss=True).loss.item()
    loss = FullBatchStep()(model, batches, accelerator)[0].item()
    assert loss == pytest.approx(whole, rel=1e-5)
    assert abs(loss - per_micro_batch) > 0.1


def test_bad_steps_are_refused_with_a_clear_error(accelerator):
    model = build_model("unicl", clip_towers=True)
    batches = micro_batches(model.config, 2, 2)
    with pytest.raises(ValueError, match="at least one micro-batch"):
        FullBatchStep()(model, [], accelerator)
    del batches[1]["labels"]
    with pytest.raises(ValueError, match="every micro-batch of a step must carry labels"):
        FullBatchStep()(model, batches, accelerator)

    class Accumulating:
        gradient_accumulation_steps = 4

    with pytest.raises(ValueError, match="gradient_accumulation_steps=4"):
        FullBatchStep()(model, batches, Accumulating())


def test_random_state_round_trip():
    state = RandomState.capture("cpu")
    first = torch.rand(3)
    state.restore()
    assert torch.equal(torch.rand(3), first)


# ----------------------------------------------------------------------------------------------------------------
# Two processes: DDP (prepared by accelerate, gloo) against one process holding the whole global batch. UniCL runs
# with CLIP towers here: BERT's pooler is unused under "cls" pooling, which DDP without find_unused_parameters
# refuses in any accumulation mode.

WORLD_SIZE = 2


def ddp_model(kind: str, dropout: float = 0.0) -> torch.nn.Module:
    return build_model(kind, dropout=dropout, clip_towers=True).double()


def _ddp_accelerator(rank: int) -> Accelerator:
    """accelerate's MULTI_CPU state on the process group `init_gloo` opened (accelerate only reads the env)."""
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), LOCAL_RANK=str(rank))
    os.environ.update(LOCAL_WORLD_SIZE=str(WORLD_SIZE), MASTER_ADDR="127.0.0.1", MASTER_PORT="0")
    return Accelerator(cpu=True)


def _two_process_worker(rank: int, folder: str) -> None:
    import torch.distributed as dist

    init_gloo(rank, WORLD_SIZE, folder)
    try:
        accelerator = _ddp_accelerator(rank)
        results = {}
        for kind in KINDS:
            config = ddp_model(kind).config
            # This rank's micro-batches are its share of the global batch the parent process trains on alone.
            batches = micro_batches(config, MICRO_BATCHES * WORLD_SIZE, MICRO_BATCH_SIZE, dtype=torch.float64)
            mine = batches[rank * MICRO_BATCHES : (rank + 1) * MICRO_BATCHES]
            model = accelerator.prepare(ddp_model(kind))
            loss, _ = FullBatchStep()(model, mine, accelerator)
            dist.all_reduce(loss)
            grads = gradients(accelerator.unwrap_model(model))
            np.savez(f"{folder}/{kind}-rank{rank}.npz", **{k: v.numpy() for k, v in grads.items()})
            results[kind] = {"loss": loss.item() / WORLD_SIZE}

            # With dropout: against the same rank-local forward passes kept in memory and an explicit all-reduce.
            reference, model = ddp_model(kind, dropout=0.2), ddp_model(kind, dropout=0.2)
            torch.manual_seed(SEED + rank)
            kept_graph_step(reference, mine)
            for parameter in reference.parameters():
                if parameter.grad is not None:
                    dist.all_reduce(parameter.grad)
                    parameter.grad /= WORLD_SIZE
            model = accelerator.prepare(model)
            torch.manual_seed(SEED + rank)
            FullBatchStep()(model, mine, accelerator)
            errors = relative_errors(gradients(accelerator.unwrap_model(model)), gradients(reference), floor=1e-3)
            results[kind]["dropout_max_relative_error"] = max(errors.values())
        with open(f"{folder}/results-rank{rank}.json", "w") as handle:
            json.dump(results, handle)
    finally:
        dist.destroy_process_group()


def test_two_processes_ddp_equal_one_process_holding_the_global_batch(tmp_path):
    mp.spawn(_two_process_worker, args=(str(tmp_path),), nprocs=WORLD_SIZE, join=True)
    for kind in KINDS:
        model = ddp_model(kind)
        batches = micro_batches(model.config, MICRO_BATCHES * WORLD_SIZE, MICRO_BATCH_SIZE, dtype=torch.float64)
        expected_loss = kept_graph_step(model, batches).item()
        expected = gradients(model)
        for rank in range(WORLD_SIZE):
            results = json.loads((tmp_path / f"results-rank{rank}.json").read_text())[kind]
            assert abs(results["loss"] - expected_loss) <= 1e-10 * abs(expected_loss), kind
            with np.load(tmp_path / f"{kind}-rank{rank}.npz") as saved:
                got = {name: torch.from_numpy(saved[name]) for name in saved.files}
            errors = relative_errors(got, expected, floor=1e-3)
            # The temperatures are reduced exactly once (not at all would leave each rank its own gradient).
            assert errors["logit_scale"] < 1e-10, (kind, rank)
            assert max(errors.values()) < 1e-10, (kind, rank, sorted(errors.items(), key=lambda item: -item[1])[:3])
            assert results["dropout_max_relative_error"] < 1e-10, (kind, rank)
