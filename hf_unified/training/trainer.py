"""The `Trainer`: one training loop for every method, on any data that comes as a resumable batch stream.

    trainer = Trainer(model, processor, train_args, TrainingData(stream, evaluation=...))
    result = trainer.train()   # {"eval_results": {...}, "counters": {...}, "output_dir": "..."}

Per optimizer step: `gradient_accumulation_steps` micro-batches are taken from the stream (for a method that trains on
views made on the device, `TrainingData.views` renders each micro-batch's views there first), go through the step
strategy (`steps.py`: the exact `full_batch`, the default with several micro-batches, or `micro_batch`), the gradient
is clipped, the step is applied unless its loss or gradient norm is not finite (then it is skipped, counted, logged;
`max_consecutive_nonfinite_steps` in a row stop the run with the last checkpoint intact), the schedule advances
and the temperatures are clamped. A model with UniCLIP's domain-dependent similarity that starts from scratch has
its logit offsets calibrated on the first batch (`calibrate_logit_offsets`). Around the loop: the engine check
and FSDP2 sharding (`sharding.py`), fine-tuning controls (`finetuning.py`) or LoRA adapters (`lora.py`: the final
save writes the merged model and `adapter/`), AdamW groups (`optim.py`), checkpoints
and exact resume without pickle (`checkpoint.py`, sharded per rank under FSDP2), evaluation
(`outputs/evaluation.py`, with an `on_evaluate` hook for metrics of one's own), the log (`logs.py`), and at the end
an atomic save of the model (gathered from its shards), processor, `eval_results.json` and model card into
`output_dir` (`outputs/model_folder.py`), then the optional Hub push and CLIP export (`outputs/publish.py`, checked
before training). The run holds `output_dir` (`runs.py`: its lock, its own checkpoints, the settings a resume must
keep) and stops at a step boundary, checkpointed, on SIGTERM or SIGUSR1 (`preemption.py`).

`training/train.py` builds a `Trainer` from its command line (`builders.build_trainer`, which composes the public
builders of `builders.py`); the benchmarks' studies compose the same builders on in-memory data.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list, gather_object
from safetensors import SafetensorError

from ..losses import DOMAIN_PAIRS, intra_domain_flags
from . import lora, runs
from .data.health import DataHealth
from .engine import checkpoint as checkpoints
from .engine import sharding
from .engine.grad_cache import RandomState, restored_buffers
from .engine.launch import build_accelerator, check_engine
from .engine.preemption import RunStopped, StopRequest, ignore_stop_signals
from .engine.steps import StepStrategy, build_step, describe_step
from .finetuning import describe_roles, example_inputs, freeze_parameters, frozen_subtrees, trace_parameter_roles
from .logs import LOG_NAME, Progress, TrainingLog, finite_or_none
from .methods import model_inputs
from .optim import base_learning_rate, build_optimizer, build_scheduler, clamp_logit_scale
from .outputs import publish
from .outputs.evaluation import evaluate_model
from .outputs.model_folder import CardExamples, SaveError, one_line, save_model_folder


class NonFiniteLossError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient norm."""


@dataclass
class EvaluationData:
    """What `Trainer.evaluate` runs on.

    Args:
        loader: returns a fresh pass over this rank's evaluation batches (`data.collate` outputs).
        class_names: per class its names (the first one builds the prompts), or None for retrieval only.
        templates: zero-shot prompt templates.
        retrieval: also compute image-text retrieval (needs real captions).
    """

    loader: Callable[[], Iterable[dict]]
    class_names: list[list[str]] | None
    templates: Sequence[str]
    retrieval: bool = True


@dataclass
class TrainingData:
    """The training side of a run.

    Args:
        stream: this rank's endless batch stream (`data.TrainStream`: `state_dict`, `load_state_dict`,
            `batches_consumed`).
        num_workers: DataLoader workers decoding it.
        evaluation: evaluation data, or None.
        max_skipped_fraction: stop when a larger share of the samples read was skipped as damaged.
        skipped_check_after: samples read over all ranks before that check applies.
        views: for a stream whose workers decode to uint8 canvases (`batch_augmentation.ImageCanvas`): the
            `BatchMultiViewAugmentation` that makes each batch's views and their parameter vectors on the training
            device, seeded by the batch's `augmentation_seed` (so a resumed run makes the same views).
    """

    stream: torch.utils.data.IterableDataset
    num_workers: int = 0
    evaluation: EvaluationData | None = None
    max_skipped_fraction: float = 1.0
    skipped_check_after: int = 1000
    views: Callable[..., dict] | None = None


class Trainer:
    """Trains a dual encoder (see the module docstring).

    Args:
        model: any model of the package (`model(**inputs, return_loss=True).loss`), not yet prepared. The trainer
            shards it when accelerate runs FSDP2; a model already sharded with `sharding.shard_model` (a device mesh
            of one's own, or a gloo CPU mesh) is trained as it is sharded.
        processor: its processor (saved with the model; its tokenizer builds the zero-shot classifier).
        args: `TrainArguments`.
        data: `TrainingData`.
        accelerator: an `Accelerator` to share between trainers (default: one built from `args`).
        step: the gradient-accumulation strategy (default: `args.gradient_accumulation_mode`).
        run_arguments: every setting of the run, written to `training_args.json` and the model card.
        base_model: the checkpoint the run started from, for the card's `base_model`.
        pretrained: the model starts from pretrained weights (a saved model, a CLIP checkpoint, pretrained towers):
            `calibrate_logit_offsets: auto` then keeps its offsets.
        run_folder: `output_dir` already claimed for this run (`runs.claim_output_dir`, as `builders.build_trainer`
            does before it writes anything there); claimed by `train` otherwise. Released when `train` ends.
        card_examples: the evaluation split whose images the model card shows (`model_folder.CardExamples`), or
            None for a card without widget examples.
        on_evaluate: called after every evaluation as `on_evaluate(model, step, results)`, on every rank (a sharded
            model's collectives need them all), with the unwrapped model in eval mode and the trainer's results;
            the metrics it returns (a dict, or None) join the results: logged, printed, returned by `evaluate`, and
            for the final evaluation saved in `eval_results.json`. The model is put back in training mode after.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processor,
        args,
        data: TrainingData,
        *,
        accelerator=None,
        step: StepStrategy | None = None,
        run_arguments: dict | None = None,
        base_model: str | None = None,
        pretrained: bool = False,
        run_folder: runs.RunFolder | None = None,
        card_examples: CardExamples | None = None,
        on_evaluate: Callable[[torch.nn.Module, int, dict], dict | None] | None = None,
    ):
        self.model, self.processor, self.args, self.data = model, processor, args, data
        self.accelerator = accelerator or build_accelerator(args)
        self.step_strategy = step or build_step(args.gradient_accumulation_mode)
        self.run_arguments = dict(run_arguments or {})
        self.base_model = base_model
        self.pretrained = pretrained
        self.card_examples = card_examples
        self.on_evaluate = on_evaluate
        self._calibrate_on_first_step = False
        self._first_step_notes: dict = {}  # added to the first logged step's record (the calibrated offsets)
        self.output_dir = Path(args.output_dir)
        self.health = DataHealth("training")  # this rank's samples used and skipped (by kind), damaged shards
        self.nonfinite_steps = 0
        self._nonfinite_in_a_row = 0
        self._frozen_modules: list[torch.nn.Module] = []
        self.log = TrainingLog(self.output_dir, self.accelerator.is_main_process)
        self.run_folder = run_folder
        self.run = runs.RunIdentity()  # a resumed run takes its checkpoint's id
        self._stop = StopRequest()
        self._last_checkpoint: Path | None = None

    # ------------------------------------------------------------------------------------------------------------
    # Setup

    def _on_main_then_everywhere(self, check: Callable[[], str | None]) -> None:
        """Runs `check` on the main process; the problem it reports stops every rank (no rank waits alone)."""
        message = [check() if self.accelerator.is_main_process else None]
        if self.accelerator.num_processes > 1:
            message = broadcast_object_list(message)
        if message[0]:
            raise ValueError(message[0])

    def _preflight(self) -> None:
        """What would fail after training is checked before it (`publish.preflight`: the Hub target, whether the
        model exports as a `CLIPModel`; the export folder was checked when `output_dir` was claimed)."""
        self._on_main_then_everywhere(lambda: publish.preflight(self.args, self.model))

    def _setup_parameters(self) -> dict | None:
        """Applies the fine-tuning controls (or wraps the model in LoRA adapters, `lora.py`); returns the parameter
        roles when a control needs them."""
        if self.args.lora_rank:
            self.model = lora.apply_lora(self.model, self.args, self.base_model, self.accelerator.distributed_type)
            # As under LiT, what is wholly frozen runs in eval mode: normalisation statistics (MS-CLIP's stem) stay
            # the base's, so that the adapter on the base gives the merged model.
            self._frozen_modules = frozen_subtrees(self.model)
            self.accelerator.print(lora.describe_trainable(self.model))
            trainable, total = self.model.get_nb_trainable_parameters()
            self._first_step_notes.update(trainable_parameters=trainable, trainable_share=round(trainable / total, 6))
            return None
        if not self.args.needs_parameter_roles:
            return None
        roles = trace_parameter_roles(self.model, example_inputs(self.processor))
        frozen = freeze_parameters(self.model, roles, self.args)
        self._frozen_modules = frozen_subtrees(self.model)
        self.accelerator.print(describe_roles(roles, frozen))
        return roles

    def _train_mode(self) -> None:
        self.model.train()
        for module in self._frozen_modules:
            module.eval()

    def _resume(self) -> int:
        """Restores a checkpoint when asked, after checking that it continues this run's trajectory (`runs.py`);
        returns the step to continue after."""
        spec = self.args.resume_from_checkpoint
        if not spec:
            return 0
        folder = checkpoints.find_checkpoint(self.output_dir, spec)
        if folder is None:
            self.accelerator.print(f"no checkpoint in {self.output_dir}: starting from scratch")
            return 0
        acc = self.accelerator
        state = checkpoints.read_checkpoint(folder, acc.process_index, acc.num_processes, self.sharded)
        saved = runs.RunIdentity.from_checkpoint(state.trainer_state)
        changes = runs.check_resume(folder, saved, self.run, self.args.allow_setting_changes)
        fresh = runs.optimizer_hyperparameters(self.optimizer)
        checkpoints.restore(
            state, accelerator=acc, model=self.unwrapped, optimizer=self.optimizer, scheduler=self.scheduler
        )
        if changes:
            runs.apply_new_hyperparameters(self.optimizer, self.scheduler, fresh)
            acc.print(
                f"resuming with changed settings (applied from step {state.step}): {runs.describe_changes(changes)}"
            )
        if saved is None:
            acc.print(f"{folder} was written before checkpoints recorded their run: its settings are not checked")
        else:
            self.run = runs.RunIdentity(saved.id, saved.started, self.run.settings)
        self._last_checkpoint = folder
        self.data.stream.load_state_dict(state.rank_state["stream"])
        self.health.load_state_dict(state.rank_state["data_health"])
        self.nonfinite_steps = int(state.trainer_state.get("nonfinite_steps", 0))
        acc.print(f"resumed {self.run.describe()} from {folder} at step {state.step}")
        return state.step

    # ------------------------------------------------------------------------------------------------------------
    # Steps

    def _next_inputs(self) -> dict:
        """The next batch's model inputs on the device, views made there when `TrainingData.views` makes them; a
        batch that lost every sample to damage is passed over (counted)."""
        device = self.accelerator.device
        while True:
            batch = next(self._batches)
            self.data.stream.batches_consumed += 1
            self.health.update(batch)
            if "input_ids" not in batch:  # every sample of the batch was skipped
                continue
            self._window_samples += batch["input_ids"].shape[0]
            inputs = model_inputs(batch, device)
            if self.data.views is not None:
                inputs.update(self.data.views(batch, device=device))
            if "pixel_values" not in inputs:
                raise ValueError(
                    f"the training batches hold no pixel_values (they hold {sorted(batch)}): a stream whose workers "
                    "decode to uint8 canvases needs TrainingData(views=BatchMultiViewAugmentation(...)) to make "
                    "its views in the step"
                )
            return inputs

    def _calibration_due(self, start: int) -> bool:
        """Whether `calibrate_logit_offsets` applies to this run (see `TrainArguments`); a setting the model cannot
        honour is refused before training."""
        setting = self.args.calibrate_logit_offsets
        # Per-domain-pair offsets only: SigLIP's single offset (similarity_offset) starts at its own init (b = -10).
        has_offsets = bool(getattr(self.unwrapped.config, "domain_similarity", False))
        if setting == "true" and not has_offsets:
            raise ValueError(
                f"calibrate_logit_offsets: true needs a model with per-domain-pair logit offsets "
                f"(domain_similarity=True); this {type(self.unwrapped).__name__} has none: use auto or false"
            )
        if start > 0 or setting == "false" or not has_offsets:
            return False  # a resumed run has its offsets from the checkpoint
        return setting == "true" or not self.pretrained

    def _calibrate_logit_offsets(self, inputs: dict) -> None:
        """Sets each domain pair's offset to the mean cosine of different items of this (first) micro-batch, over
        all ranks (`calibrate_logit_offsets` of the model). The look-ahead forward pass leaves no trace: the random
        state and the buffers are put back, so the run trains as it would have from these offsets."""
        acc = self.accelerator
        random_state = RandomState.capture(acc.device)
        with torch.no_grad(), restored_buffers(self.unwrapped):
            outputs = self.model(**{name: value for name, value in inputs.items() if name != "labels"})
        random_state.restore()
        with sharding.replicated_writes(self.unwrapped):
            values = self.unwrapped.calibrate_logit_offsets(outputs.image_view_embeds, outputs.text_embeds)
        calibrated = {pair: round(value, 6) for pair, value in zip(DOMAIN_PAIRS, values)}
        self._first_step_notes["calibrated_logit_offsets"] = calibrated
        acc.print(
            "logit offsets calibrated on the first batch (mean cosine of different items): "
            + ", ".join(f"{pair} {value:.4f}" for pair, value in calibrated.items())
        )

    def _all_finite(self, loss: torch.Tensor, grad_norm) -> bool:
        values = [loss.detach().float().reshape(1)]
        if torch.is_tensor(grad_norm):
            values.append(grad_norm.detach().float().reshape(1).to(loss.device))
        finite = torch.cat(values).isfinite().all().reshape(1).int()
        if self.accelerator.num_processes > 1:  # every rank takes the same decision
            finite = self.accelerator.gather(finite).min()
        return bool(finite)

    def _skip_step(self, step: int, loss: torch.Tensor, grad_norm) -> None:
        acc = self.accelerator
        self.nonfinite_steps += 1
        self._nonfinite_in_a_row += 1
        if acc.scaler is not None:  # fp16: the scaler saw the unscaled gradients and backs off its scale
            acc.scaler.update()
        norm = float(grad_norm) if torch.is_tensor(grad_norm) else float("nan")
        self.log.append(
            {
                "step": step,
                "loss": finite_or_none(float(loss)),
                "grad_norm": finite_or_none(norm),
                "skipped": "non-finite loss or gradient norm",
                "nonfinite_steps": self.nonfinite_steps,
            }
        )
        acc.print(
            f"step {step}: non-finite loss ({float(loss)}) or gradient norm ({norm}): update skipped "
            f"({self._nonfinite_in_a_row} in a row, {self.nonfinite_steps} in all)"
        )
        if self._nonfinite_in_a_row >= self.args.max_consecutive_nonfinite_steps:
            last = self._last_checkpoint
            raise NonFiniteLossError(
                f"{self._nonfinite_in_a_row} steps in a row, up to step {step}, had a non-finite loss or gradient "
                f"norm: stopping (max_consecutive_nonfinite_steps {self.args.max_consecutive_nonfinite_steps}). "
                + (f"The last checkpoint, {last}, is intact. " if last else "No checkpoint was written. ")
                + "Check the data for NaN/inf images, lower the learning rate, or use bf16 instead of fp16."
            )

    def _data_totals(self) -> DataHealth:
        """The data counts summed over the ranks (collective)."""
        if self.accelerator.num_processes == 1:
            return self.health
        return DataHealth.merge(gather_object([self.health.state_dict()]))

    def _similarity_values(self) -> dict:
        """The mean learnt logit scale `exp(logit_scale)` (UniCLIP has one per domain pair) and, with a
        domain-dependent similarity, the three offsets (collectives for a sharded model)."""
        values = {}
        logit_scale = getattr(self.unwrapped, "logit_scale", None)
        if logit_scale is not None:
            values["logit_scale"] = float(sharding.full_tensor(logit_scale.detach()).float().exp().mean())
        logit_offset = getattr(self.unwrapped, "logit_offset", None)
        if logit_offset is not None:
            values["logit_offset"] = [round(v, 6) for v in sharding.full_tensor(logit_offset.detach()).tolist()]
        return values

    def _loss_terms_record(self, term_values: list[float]) -> dict:
        """`loss_image_image`, `loss_image_text`, `loss_text_text`: the loss split by the domain pair of each term's
        anchor and candidate (`ContrastiveOutput.loss_terms`), summing to `loss`.

        Only the pairs the objective has: an objective without intra-domain pairs (CLIP, UniCL, SigLIP) never meets
        an image-image or text-text pair, so its record holds `loss_image_text` (equal to `loss`) alone. Zeros for the
        other two would read, in the log and in a tracker's plot, as a loss measured to be 0 (pairs told apart
        perfectly) where no such pair exists; so a reader who sees the three keys knows the objective has the three
        pairs. One that has them may still log a 0: UniCLIP's MP-NCE without labels scores texts against each other
        only as negatives, whose weight is in the terms of the texts' positives (image-text).
        """
        image_image, text_text = intra_domain_flags(self.unwrapped.config.intra_domain_pairs)
        present = (image_image, True, text_text)  # in the order of DOMAIN_PAIRS
        return {
            f"loss_{pair.replace('-', '_')}": value
            for pair, value, has_pair in zip(DOMAIN_PAIRS, term_values, present)
            if has_pair
        }

    def _log_step(self, step: int, loss: torch.Tensor, loss_terms: torch.Tensor, grad_norm) -> dict:
        acc = self.accelerator
        samples = torch.tensor(self._window_samples, device=acc.device)
        totals = self._data_totals()
        # The loss and its terms by domain pair, averaged over the ranks in one collective (each rank holds its share
        # of the global mean: `losses.global_mean`).
        loss_value, *term_values = acc.reduce(
            torch.cat([loss.reshape(1), loss_terms.to(loss.dtype)]), reduction="mean"
        ).tolist()
        record = {
            "step": step,
            "loss": loss_value,
            **self._loss_terms_record(term_values),
            "lr": base_learning_rate(self.optimizer),
            "grad_norm": float(grad_norm) if torch.is_tensor(grad_norm) else None,
            **self._similarity_values(),
            "samples_per_second": acc.reduce(samples, "sum").item()
            / max(time.perf_counter() - self._window_start, 1e-9),
            "samples_skipped": totals.samples_skipped,
            "captions_mapped_to_labels": totals.captions_mapped_to_labels,
        }
        record.update(self._first_step_notes)
        self._first_step_notes = {}
        if totals.skipped:
            record["skipped"] = dict(sorted(totals.skipped.items()))
        if totals.damaged_shards:
            record["damaged_shards"] = len(totals.damaged_shards)
        if self.nonfinite_steps:
            record["nonfinite_steps"] = self.nonfinite_steps
        numbers = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        acc.log({f"train/{k}": v for k, v in numbers.items()}, step=step)
        self.log.append(record)
        self._window_start, self._window_samples = time.perf_counter(), 0
        totals.check(self.data.max_skipped_fraction, self.data.skipped_check_after)
        return record

    # ------------------------------------------------------------------------------------------------------------
    # Evaluation and saving

    def evaluate(self, step: int) -> dict:
        """Zero-shot and retrieval metrics over the whole evaluation set (all ranks take part), with what
        `on_evaluate` adds."""
        evaluation = self.data.evaluation
        results = evaluate_model(
            self.unwrapped,
            evaluation.loader(),
            self.processor.tokenizer,
            evaluation.class_names,
            evaluation.templates,
            self.accelerator,
            retrieval=evaluation.retrieval,
        )
        if self.on_evaluate is not None:
            self.unwrapped.eval()  # BatchNorm (MS-CLIP's stem) must not update on evaluation images
            results.update(self.on_evaluate(self.unwrapped, step, dict(results)) or {})
        self._train_mode()
        self.accelerator.log({f"eval/{k}": v for k, v in results.items() if isinstance(v, (int, float))}, step=step)
        summary = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in results.items())
        self.accelerator.print(f"[eval step {step}] {summary}")
        return results

    def save_checkpoint(self, step: int) -> Path:
        """Writes `checkpoint-<step>` of this run (collective); a failed write leaves none and says so in one line."""
        rank_state = {"stream": self.data.stream.state_dict(), "data_health": self.health.state_dict()}
        try:
            self._last_checkpoint = checkpoints.write_checkpoint(
                self.output_dir,
                step,
                accelerator=self.accelerator,
                model=self.unwrapped,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                trainer_state={"nonfinite_steps": self.nonfinite_steps, "run": self.run.state_dict()},
                rank_state=rank_state,
                keep=self.args.save_total_limit,
                trainable_only=lora.is_lora_model(self.unwrapped),  # LoRA: the frozen base comes from the start
            )
        except (OSError, SafetensorError) as error:
            last = f"the last one is {self._last_checkpoint}" if self._last_checkpoint else "no earlier one exists"
            raise SaveError(
                f"could not write checkpoint-{step} in {self.output_dir} ({one_line(error)}); nothing of it was left "
                f"behind, {last}"
            ) from error
        return self._last_checkpoint

    def save_final(self, eval_results: dict) -> None:
        """Writes the model folder beside `output_dir` and swaps it in (`model_folder.save_model_folder`): a kill at
        any moment leaves the previous output whole. A sharded model is gathered whole on the main process first
        (every rank takes part)."""
        adapter = self.unwrapped if lora.is_lora_model(self.unwrapped) else None  # merged in the save
        state_dict = None if adapter else sharding.full_state_dict(self.unwrapped)
        if self.args.patch_dropout_final_steps:  # the saved config states the share the run trained with
            self.unwrapped.config.patch_dropout = self._patch_dropout
        if self.accelerator.is_main_process:
            save_model_folder(
                self.output_dir,
                self.unwrapped,
                state_dict,
                self.processor,
                eval_results,
                self.run_arguments,
                base_model=self.base_model,
                card_examples=self.card_examples,
                step=self.args.max_steps,
                run_id=self.run.id,
                adapter=adapter,
            )
        self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------------------------------------------------
    # The run

    def _setup(self) -> int:
        """Output folder, engine, preflight checks, fine-tuning controls, optimizer and schedule, resume, trackers;
        returns the step to continue after."""
        args, acc = self.args, self.accelerator
        if self.run_folder is None:
            self.run_folder = runs.claim_output_dir(args, acc)
        acc.wait_for_everyone()
        self.run.settings = runs.trajectory_settings(self.run_arguments, args, self.model.config)
        acc.print(f"engine: {check_engine(acc, self.step_strategy, model=self.model)}")
        per_device = args.per_device_train_batch_size
        acc.print(describe_step(self.step_strategy, args.gradient_accumulation_steps, per_device, acc.num_processes))
        self._check_patch_dropout_phase()
        self._preflight()
        roles = self._setup_parameters()
        if args.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.model = sharding.shard_for_engine(self.model, acc)  # FSDP2: before the optimizer sees the parameters
        self.sharded = sharding.is_fsdp2(self.model)
        self.optimizer = build_optimizer(self.model, args, roles, device=acc.device)
        self.scheduler = build_scheduler(self.optimizer, args)
        self.model, self.optimizer = sharding.prepare_for_engine(acc, self.model, self.optimizer)
        self.unwrapped = acc.unwrap_model(self.model, keep_torch_compile=False)
        if self.data.views is not None:
            acc.print(f"views made on {acc.device}: {self.data.views}")
        start = self._resume()
        self._calibrate_on_first_step = self._calibration_due(start)
        unreadable = self.log.truncate_after(start)  # a resumed run logs the steps after its checkpoint again
        if unreadable:
            self._first_step_notes["log_lines_dropped"] = unreadable
            acc.print(f"{self.log.path}: dropped {unreadable} unreadable line(s) (a line cut by a kill while written)")
        if args.report_to:
            config = {k: v for k, v in self.run_arguments.items() if isinstance(v, (int, float, str, bool))}
            acc.init_trackers(args.project_name, config=config)
        return start

    def _check_patch_dropout_phase(self) -> None:
        """`patch_dropout_final_steps` needs patch dropout to switch off; the share the run trains with is kept for
        the masked steps and for the saved config."""
        self._patch_dropout = getattr(self.model.config, "patch_dropout", 0.0)
        final = self.args.patch_dropout_final_steps
        if final and not self._patch_dropout:
            raise ValueError(
                f"patch_dropout_final_steps {final} turns patch dropout off for the last steps, but this model's "
                "patch_dropout is 0: give --patch_dropout (e.g. 0.5), or leave patch_dropout_final_steps out"
            )
        if final:
            self.accelerator.print(
                f"patch dropout {self._patch_dropout} up to step {self.args.max_steps - final}, then off for the last "
                f"{final} steps (FLIP's unmasked tuning)"
            )

    def _set_patch_dropout_phase(self, step: int) -> None:
        """FLIP's unmasked tuning: the model's share up to `max_steps - patch_dropout_final_steps`, 0 after. A pure
        function of the step, so a resumed run is in the same phase as the run it continues."""
        final = self.args.patch_dropout_final_steps
        if final:
            masked = step <= self.args.max_steps - final
            self.unwrapped.config.patch_dropout = self._patch_dropout if masked else 0.0

    def _optimizer_step(self, step: int) -> tuple[torch.Tensor, torch.Tensor, object, bool]:
        """One optimizer step; returns its loss, the loss's terms by domain pair, the gradient norm and whether the
        step was applied (loss and norm finite)."""
        args, acc = self.args, self.accelerator
        self._set_patch_dropout_phase(step)
        micro_batches = [self._next_inputs() for _ in range(args.gradient_accumulation_steps)]
        if self._calibrate_on_first_step:
            self._calibrate_logit_offsets(micro_batches[0])
            self._calibrate_on_first_step = False
        loss, loss_terms = self.step_strategy(self.model, micro_batches, acc)
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), args.max_grad_norm or math.inf)
        if torch.is_tensor(grad_norm):
            grad_norm = sharding.full_tensor(grad_norm)  # of sharded gradients: a DTensor
        applied = self._all_finite(loss, grad_norm)
        if applied:
            self.optimizer.step()
            self._nonfinite_in_a_row = 0
        else:
            self._skip_step(step, loss, grad_norm)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()  # the schedule follows the step count, applied or skipped
        clamp_logit_scale(self.unwrapped, args.max_logit_scale)
        return loss, loss_terms, grad_norm, applied

    def _run_steps(self, start: int, last: int) -> None:
        args = self.args
        loader = torch.utils.data.DataLoader(
            self.data.stream,
            batch_size=None,
            num_workers=self.data.num_workers,
            worker_init_fn=ignore_stop_signals if self.data.num_workers else None,
            # Starting the loader draws its workers' base seed: from a generator of its own, not torch's global one,
            # whose draws (dropout, patch dropout) must be those of the uninterrupted run after a resume.
            generator=torch.Generator().manual_seed(args.seed),
        )
        self._batches = iter(loader)
        bar = False if args.disable_tqdm else None  # None: a bar only on a terminal
        model_type = self.unwrapped.config.model_type
        progress = Progress(args.max_steps, start, model_type, self.accelerator.is_main_process, bar=bar)
        self._window_start, self._window_samples = time.perf_counter(), 0
        self._train_mode()
        try:
            for step in range(start + 1, last + 1):
                loss, loss_terms, grad_norm, applied = self._optimizer_step(step)
                record = None
                if applied and (step % args.logging_steps == 0 or step in (args.max_steps, start + 1)):
                    record = self._log_step(step, loss, loss_terms, grad_norm)
                progress.update(step, record)
                saved = bool(args.save_steps and step % args.save_steps == 0 and step < args.max_steps)
                if saved:
                    self.save_checkpoint(step)
                stop_signal = self._stop.agreed(self.accelerator)
                if stop_signal:
                    checkpoint = self._last_checkpoint if saved else self.save_checkpoint(step)
                    raise RunStopped(stop_signal, step, args.max_steps, checkpoint)
                if self.data.evaluation and args.eval_steps and step % args.eval_steps == 0 and step < args.max_steps:
                    evaluation_start = time.perf_counter()
                    self.evaluate(step)
                    # The logged samples/s is training throughput: the evaluation's time is not the window's.
                    self._window_start += time.perf_counter() - evaluation_start
        finally:
            progress.close()
            del self._batches, loader  # stops the workers

    def _finish(self, totals: DataHealth) -> dict:
        """Final evaluation, atomic save, Hub push and CLIP export; returns the evaluation results."""
        acc = self.accelerator
        acc.print(totals.summary())
        if totals.captions_mapped_to_labels:
            acc.print(f"captions mapped to a class label: {totals.captions_mapped_to_labels}")
        if self.nonfinite_steps:
            acc.print(f"steps skipped for a non-finite loss or gradient: {self.nonfinite_steps}")
        eval_results = self.evaluate(self.args.max_steps) if self.data.evaluation else {}
        payload = {
            "step": self.args.max_steps,
            "train_samples_skipped": totals.samples_skipped,
            "train_data": totals.as_dict(),
            "nonfinite_steps_skipped": self.nonfinite_steps,
            **eval_results,
        }
        self.save_final(payload)
        if "zero_shot_top1_accuracy" in eval_results:
            acc.print(
                f"zero-shot top-1 accuracy: {100 * eval_results['zero_shot_top1_accuracy']:.1f}% "
                f"(chance {100 * eval_results['zero_shot_chance']:.1f}%) on {eval_results['num_examples']} images"
            )
        acc.print(f"model, processor and eval_results.json saved to {self.output_dir} ({LOG_NAME}: the log)")
        if acc.is_main_process:
            for done in publish.publish(self.output_dir, self.args):
                acc.print(done)
        acc.wait_for_everyone()
        return eval_results

    def train(self) -> dict:
        """Trains to `max_steps` (or `stop_at_step`, checkpointed), evaluates, saves; returns the evaluation
        results, the data counters (summed over ranks) and the output folder.

        Raises:
            RunStopped: SIGTERM or SIGUSR1 arrived; the run stopped at the next step boundary, checkpointed.
        """
        try:
            with self._stop.catching():
                return self._train()
        finally:
            if self.run_folder is not None:
                self.run_folder.release()
                self.run_folder = None

    def _train(self) -> dict:
        args = self.args
        start = self._setup()
        last = min(args.max_steps, args.stop_at_step or args.max_steps)
        self._run_steps(start, last)
        if (args.save_steps and last > start) or last < args.max_steps:
            self.save_checkpoint(last)
        totals = self._data_totals()
        if last < args.max_steps:
            self.accelerator.print(
                f"stopped at step {last} of {args.max_steps}; resume with --resume_from_checkpoint latest"
            )
            eval_results = {}
        else:
            eval_results = self._finish(totals)
        self.accelerator.end_training()  # last: it also ends the process group
        return {"eval_results": eval_results, "counters": totals.as_dict(), "output_dir": str(self.output_dir)}


__all__ = ["EvaluationData", "NonFiniteLossError", "RunStopped", "SaveError", "Trainer", "TrainingData"]
