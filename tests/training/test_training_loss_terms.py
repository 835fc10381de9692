"""The loss's terms by domain pair in training: both step strategies return those of the step's loss, and the trainer
logs `loss_image_image`, `loss_image_text`, `loss_text_text` (the pairs the objective has) beside `loss`."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from scale_models import build_model, concatenate, micro_batches
from training_helpers import log_records, train_script, write_config

from hf_unified.losses import IMAGE_IMAGE, IMAGE_TEXT, TEXT_TEXT
from hf_unified.training.engine.steps import FullBatchStep, MicroBatchStep

pytest_plugins = ("training_fixtures",)  # shapes, fresh_accelerate_state
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
TERM_KEYS = ("loss_image_image", "loss_image_text", "loss_text_text")


@pytest.mark.parametrize("kind", ["uniclip", "unicl"])
def test_full_batch_terms_are_those_of_one_forward_over_the_whole_batch(kind):
    big, model = build_model(kind), build_model(kind)
    batches = micro_batches(big.config, 3, 4)
    with torch.no_grad():
        expected = big(**concatenate(batches), return_loss=True).loss_terms
    loss, terms = FullBatchStep()(model, batches, Accelerator(cpu=True))
    assert not terms.requires_grad
    torch.testing.assert_close(terms, expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(terms.sum(), loss, rtol=1e-5, atol=0)
    if kind == "unicl":  # no intra-domain pairs: image-text terms only
        assert terms[IMAGE_IMAGE] == 0 and terms[TEXT_TEXT] == 0
    else:  # MP-NCE without labels: a text's positives are its views, so text-text pairs are negatives only
        assert terms[IMAGE_IMAGE] > 0 and terms[IMAGE_TEXT] > 0 and terms[TEXT_TEXT] == 0


def test_micro_batch_terms_are_the_mean_of_the_micro_batches():
    model = build_model("uniclip")
    batches = micro_batches(model.config, 3, 4)
    with torch.no_grad():
        expected = torch.stack([model(**batch, return_loss=True).loss_terms for batch in batches]).mean(dim=0)
    loss, terms = MicroBatchStep()(model, batches, Accelerator(cpu=True))
    torch.testing.assert_close(terms, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(terms.sum(), loss, rtol=1e-6, atol=0)


def test_the_trainer_logs_the_terms_of_the_objective(tmp_path, shapes, monkeypatch):
    tracked = []
    original_log = Accelerator.log

    def log(self, values, step=None, **kwargs):
        tracked.append(values)
        return original_log(self, values, step=step, **kwargs)

    monkeypatch.setattr(Accelerator, "log", log)
    # UniCLIP: one space, so all three pairs; two micro-batches per step, in one loss (full_batch).
    config = write_config(tmp_path, shapes, "uniclip", do_eval=False)
    out = tmp_path / "uniclip"
    flags = ["--max_steps", "2", "--gradient_accumulation_steps", "2", "--output_dir", str(out)]
    train_script.main(["--config", str(config), *flags])
    records = log_records(out)
    assert [record["step"] for record in records] == [1, 2]
    for record in records:
        keys = list(record)
        assert keys[keys.index("loss") + 1 : keys.index("loss") + 4] == list(TERM_KEYS)  # beside the loss
        assert sum(record[key] for key in TERM_KEYS) == pytest.approx(record["loss"], rel=1e-5)
        # MP-NCE without labels scores text-text pairs as negatives only: their weight is in the image-text terms.
        assert record["loss_image_image"] > 0 and record["loss_image_text"] > 0 and record["loss_text_text"] == 0
    assert all(f"train/{key}" in values for values in tracked for key in TERM_KEYS)  # the trackers get them too


def test_an_objective_without_intra_domain_pairs_logs_image_text_alone(tmp_path, shapes):
    config = write_config(tmp_path, shapes, do_eval=False)  # UniCL: labels, image-text pairs only
    out = tmp_path / "unicl"
    train_script.main(["--config", str(config), "--max_steps", "1", "--output_dir", str(out)])
    (record,) = log_records(out)
    assert "loss_image_image" not in record and "loss_text_text" not in record
    assert record["loss_image_text"] == pytest.approx(record["loss"], rel=1e-6)


def test_the_logged_throughput_leaves_out_the_evaluations(tmp_path, shapes, monkeypatch):
    """Evaluations inside a logging window (here two, each made 1.5 s longer) are not training time: the window's
    samples/s stays that of its training steps."""
    import time

    from hf_unified.training.trainer import Trainer

    evaluate = Trainer.evaluate

    def slow_evaluate(self, step):
        time.sleep(1.5)
        return evaluate(self, step)

    monkeypatch.setattr(Trainer, "evaluate", slow_evaluate)
    config = write_config(tmp_path, shapes, logging_steps=3, eval_steps=1)
    out = tmp_path / "unicl"
    train_script.main(["--config", str(config), "--max_steps", "3", "--output_dir", str(out)])
    # Logged at step 1 (always) and 3: the second window holds steps 2 and 3 and the evaluations after steps 1, 2.
    records = {r["step"]: r for r in log_records(out) if "samples_per_second" in r}  # not the evaluations' records
    window_seconds = 2 * 8 / records[3]["samples_per_second"]  # 2 steps of 8 samples
    assert window_seconds < 3.0  # its two evaluations slept 3 s
