from __future__ import annotations

import sys
from pathlib import Path

import click

from edgetl import options as opt
from edgetl.cli.common import FiniteFloat, handle_errors, json_option, path_option, seed_option


@click.command()
@path_option(
    "--data",
    required=True,
    help="ImageFolder: DATA/train/<class>/*, optional DATA/val/<class>/*; for text also DATA/<class>/*.txt or a .csv/.tsv/.jsonl with text,label.",
)
@path_option("--out", required=True, help="Run folder for checkpoints and metrics.")
@click.option(
    "--backbone",
    default=None,
    help="Registered backbone (image or text, see `edgetl backbones`) or timm model name [default: the recipe's, efficientnet_lite0].",
)
@click.option(
    "--recipe", default=None, help="Recipe TOML file or a name in models/ [default: models/<backbone>.toml]."
)
@click.option(
    "--weights",
    default=None,
    help="Pretrained weights: default, none, or a local state_dict file (text: a Hugging Face BERT-family folder).",
)
@click.option(
    "--frozen-epochs",
    type=click.IntRange(min=0),
    default=None,
    help="Epochs of the frozen (cached-feature) stages; 0 skips them.",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=0),
    default=None,
    help="Epochs of the unfreezing stages; 0 skips them.",
)
@click.option(
    "--unfreeze",
    type=click.IntRange(min=1),
    default=None,
    help="How many last backbone stages the first unfreezing stage trains.",
)
@click.option(
    "--lr", type=FiniteFloat(min=0, min_open=True), default=None, help="Head learning rate (all stages)."
)
@click.option(
    "--lr-backbone",
    type=FiniteFloat(min=0, min_open=True),
    default=None,
    help="Learning rate of the last unfrozen stage.",
)
@click.option(
    "--lr-decay",
    type=FiniteFloat(0, 1, min_open=True),
    default=None,
    help="Per-stage learning-rate factor toward the input.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--label-smoothing", type=FiniteFloat(0, 1, max_open=True), default=None)
@click.option(
    "--patience", type=click.IntRange(min=1), default=None, help="Early-stopping patience in epochs."
)
@click.option(
    "--balance", type=click.Choice(opt.choices(opt.Balance)), default=None, help="Class-imbalance handling."
)
@click.option("--hflip/--no-hflip", default=None, help="Random horizontal flips (off for digits or text).")
@click.option(
    "--image-size",
    type=click.IntRange(min=16),
    default=None,
    help="Input size instead of the backbone's (keeps its crop fraction).",
)
@click.option(
    "--val-fraction",
    type=FiniteFloat(0, 1, min_open=True, max_open=True),
    default=None,
    help="Validation share when DATA has no val/.",
)
@click.option("--device", type=click.Choice(opt.choices(opt.Device)), default=opt.Device.AUTO.value)
@click.option(
    "--devices",
    default=None,
    help="Train in N processes (torchrun, one per GPU with --device cuda) or on GPU ids 0,1,...",
)
@seed_option
@click.option(
    "--resume", is_flag=True, help="Continue an interrupted run from RUN/last.safetensors (same --data)."
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the run in --out: its checkpoints, models and records are removed first.",
)
@json_option
@handle_errors
def train(data: Path, out: Path, as_json: bool, devices: str | None, **options) -> None:
    """Fine-tune a pretrained backbone: frozen head training on cached features, then partial unfreeze.

    \b
    edgetl train --data DATA --out runs/a
    edgetl train --data DATA --out runs/a --backbone mobilenet_v3_large --weights mnv3l.pth
    edgetl train --data DATA --out runs/a --frozen-epochs 20 --epochs 3 --unfreeze 3 --no-hflip
    edgetl train --data DATA --out runs/a --resume
    edgetl train --data TEXTS --out runs/t --backbone all-minilm-l6-v2   # .txt per class, or .csv/.tsv/.jsonl
    edgetl train --data DATA --out runs/a --overwrite --seed 1
    edgetl train --data DATA --out runs/a --devices 2            # torchrun, 2 processes
    torchrun --nproc-per-node 2 -m edgetl train --data DATA --out runs/a
    """
    from edgetl.api import train as run_training
    from edgetl.console import print_json
    from edgetl.trainer.distributed import launched_rank

    if devices is not None:
        _relaunch(devices, as_json)
        return
    result = run_training(data, out, **options)
    if launched_rank() != 0:
        return  # the result is rank 0's to print
    if as_json:
        print_json(result.to_dict())
    else:
        click.echo(
            f"best val accuracy {result.best_val_accuracy:.3f} in {result.train_seconds:.1f}s -> {result.checkpoint}"
        )


def _relaunch(devices: str, as_json: bool) -> None:
    """The same command under torchrun; rank 0's stdout (the JSON object or the result line) is ours."""
    from edgetl.errors import EdgetlError
    from edgetl.trainer.distributed import relaunch

    done = relaunch(devices, sys.argv[1:])
    sys.stdout.write(done.stdout)
    if done.returncode and not done.stdout.strip():
        raise EdgetlError(
            f"--devices {devices}: the training processes failed (torchrun exit {done.returncode}); see above"
        )
    if done.returncode:
        sys.exit(done.returncode)
