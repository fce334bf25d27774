"""The training loop on HF accelerate: epochs over the data loader, gradient accumulation, checkpoints that resume
exactly, logging, and the export of the finished adapter.

Distribution, mixed precision and DeepSpeed all come from accelerate (`accelerate launch`, `accelerate config`);
nothing here depends on how many processes there are.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .checkpoints import ADAPTER_FILE, Progress, checkpoint_dir, prune, write_progress
from .config import TrainConfig
from .export import write_adapter
from .progress import Meter, ProgressBar
from .setup import Run, output_name, prepare_run
from .step import step_loss

log = logging.getLogger(__name__)

TRACKER_PROJECT = "ip_adapter"


def _metadata(run: Run, step: int) -> dict[str, str]:
    config = run.config
    return {"ip_adapter.kind": config.kind, "ip_adapter.base_model": config.pretrained_model.name,
            "ip_adapter.image_encoder": config.image_encoder.name, "ip_adapter.steps": str(step),
            "ip_adapter.trainer": "python -m ip_adapter.train"}


def save_checkpoint(run: Run, progress: Progress) -> Path:
    """accelerate's state, then the ready-to-use adapter, then progress.json (which marks the folder finished)."""
    accelerator, config = run.accelerator, run.config
    folder = checkpoint_dir(config.output_dir, progress.step)
    if accelerator.is_main_process or accelerator.distributed_type == "DEEPSPEED":
        accelerator.save_state(str(folder))
    if accelerator.is_main_process:
        write_adapter(run.adapter.official_state_dict(), folder / ADAPTER_FILE, config.export_dtype,
                      _metadata(run, progress.step))
        write_progress(folder, progress, config)
        prune(config.output_dir, config.keep_checkpoints)
        log.info("checkpoint %s", folder)
    accelerator.wait_for_everyone()
    return folder


def _max_steps(run: Run) -> int | None:
    config = run.config
    if config.max_steps is not None:
        return config.max_steps
    return None if run.steps_per_epoch is None else config.num_epochs * run.steps_per_epoch


def _report(run: Run, meter: Meter, step: int) -> None:
    values = meter.report()
    values["lr"] = run.optimizer.param_groups[0]["lr"]
    log.info("step %d: loss %.5f, %.1f images/s", step, values["loss"], values["images_per_s"])
    if run.config.tensorboard:
        run.accelerator.log(values, step=step)


def _epoch(run: Run, progress: Progress, max_steps: int | None, bar: ProgressBar, meter: Meter) -> Progress:
    """Run the rest of `progress.epoch`; returns where it stopped (at max_steps, or the epoch's end)."""
    accelerator, config = run.accelerator, run.config
    run.loader.set_epoch(progress.epoch)
    batches = accelerator.skip_first_batches(run.loader, progress.batches) if progress.batches else run.loader
    step, consumed, micro_losses = progress.step, progress.batches, []
    for batch in batches:
        with accelerator.accumulate(run.module):
            loss = step_loss(run.module, batch, run.ctx, accelerator.device)
            accelerator.backward(loss)
            run.optimizer.step()
            run.optimizer.zero_grad()
        consumed += 1
        micro_losses.append(accelerator.reduce(loss.detach(), reduction="mean").item())
        if not accelerator.sync_gradients:
            continue
        step += 1
        meter.add(sum(micro_losses) / len(micro_losses))
        bar.update(meter.last_loss, meter.images_per_s)
        micro_losses = []
        if step % config.log_every == 0:
            _report(run, meter, step)
        here = Progress(step, progress.epoch, consumed)
        done = max_steps is not None and step >= max_steps
        if step % config.checkpoint_every == 0 or done:
            save_checkpoint(run, here)
        if done:
            return here
    return Progress(step, progress.epoch + 1, 0)


def run_training(run: Run) -> Progress:
    """Train from `run.start` until max_steps or num_epochs; returns the final progress."""
    config, accelerator = run.config, run.accelerator
    max_steps = _max_steps(run)
    global_batch = config.batch_size * accelerator.num_processes * config.gradient_accumulation_steps
    log.info("training a %s adapter: %d processes, global batch %d, %s steps", config.kind,
             accelerator.num_processes, global_batch, max_steps if max_steps is not None else "epoch-bound")
    bar = ProgressBar(max_steps, run.start.step, config.progress_bar and accelerator.is_main_process)
    meter, progress = Meter(global_batch), run.start
    try:
        while (max_steps is None or progress.step < max_steps) and progress.epoch < config.num_epochs:
            progress = _epoch(run, progress, max_steps, bar, meter)
    finally:
        bar.close()
    return progress


def train(config: TrainConfig) -> Path:
    """Check everything, train, export. Returns the exported adapter file (on every process)."""
    run = prepare_run(config)
    if run.config.tensorboard:
        run.accelerator.init_trackers(TRACKER_PROJECT, config={"kind": config.kind, "lr": config.learning_rate})
    path = output_name(run.config, run.ctx.base)
    try:
        progress = run_training(run)
        if run.accelerator.is_main_process:
            write_adapter(run.adapter.official_state_dict(), path, config.export_dtype, _metadata(run, progress.step))
        run.accelerator.wait_for_everyone()
    finally:
        run.accelerator.end_training()  # also ends the process group: no collective call may follow
    return path
