"""Quantization-aware fine-tuning of a run's trained model, the last rung of the ladder.

BatchNorm is folded into the convolutions first (its statistics frozen, as onnxruntime folds it
anyway); every convolution and linear layer then sees its weights through a per-channel symmetric
int8 fake-quantizer and its input through a per-tensor uint8 one (torch.ao's FakeQuantize, the
straight-through estimator), the layout onnxruntime's QDQ recipe deploys. A few epochs on the train
split distil the FP32 model (KL of the softmax) into the fake-quantized one; its weights, now
adapted to int8 rounding, are exported to ONNX and quantized to QDQ by onnxruntime, and the INT8
model's predictions are checked against the fake-quantized torch model's (parity).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl.console import log, quiet_third_party, warn
from edgetl.data.images import preprocess_readable
from edgetl.errors import EdgetlError
from edgetl.quantizer import ort
from edgetl.quantizer.evaluation import run_model
from edgetl_runtime.modelinfo import ModelInfo

QAT_EPOCHS = 2
QAT_LR = 2e-5
QAT_BATCH = 32
QAT_MAX_IMAGES = 800  # of the train split, seeded: enough to adapt, small enough for a CPU
PARITY_IMAGES = 64
FOLD_TOLERANCE = 1e-3  # folding BN must not change the FP32 logits


def _fold_batchnorm(model) -> None:
    """Fold each BatchNorm into the convolution registered just before it, in place.

    timm's BatchNormAct2d carries its activation: it is replaced by that activation. Whether the
    pairing was right is checked by the caller on real images, not assumed.
    """
    import torch
    from torch import nn

    last_conv: dict[str, nn.Conv2d] = {}
    pairs = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            last_conv["conv"] = module
        elif isinstance(module, nn.BatchNorm2d) and "conv" in last_conv:
            conv = last_conv.pop("conv")
            if conv.out_channels == module.num_features:
                pairs.append((name, conv, module))
    with torch.no_grad():
        for name, conv, bn in pairs:
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)
            replacement = nn.Sequential(getattr(bn, "drop", nn.Identity()), getattr(bn, "act", nn.Identity()))
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(parent, name.rpartition(".")[2], replacement)


def _insert_fake_quant(model) -> list:
    """Fake-quantize weights (parametrization) and inputs (pre-hook) of every conv and linear layer."""
    import torch
    from torch import nn
    from torch.ao.quantization import (
        FakeQuantize,
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
    )
    from torch.nn.utils import parametrize

    class WeightFakeQuant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fq = FakeQuantize(
                observer=MovingAveragePerChannelMinMaxObserver,
                quant_min=-127,
                quant_max=127,
                dtype=torch.qint8,
                qscheme=torch.per_channel_symmetric,
                ch_axis=0,
            )

        def forward(self, w):
            return self.fq(w)

    hooks = []
    for module in list(model.modules()):
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            parametrize.register_parametrization(module, "weight", WeightFakeQuant())
            module.input_fq = FakeQuantize(
                observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8
            )
            hooks.append(module.register_forward_pre_hook(lambda m, args: (m.input_fq(args[0]), *args[1:])))
    return hooks


def _strip_fake_quant(model, hooks: list) -> None:
    from torch import nn
    from torch.nn.utils import parametrize

    for hook in hooks:
        hook.remove()
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and parametrize.is_parametrized(module, "weight"):
            # the int8-rounded weights: onnxruntime's per-channel quantization keeps them exactly
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            del module.input_fq


def _train_images(run: Path, info: ModelInfo, seed: int) -> np.ndarray:
    from edgetl.runfolder.splits import Splits

    items = list(Splits.load(run).train)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(items))[:QAT_MAX_IMAGES]
    arrays, _, _ = preprocess_readable([items[i][0] for i in order], info.preprocess, "QAT")
    if not arrays:
        raise EdgetlError(f"{run}: no readable training image to fine-tune on")
    return np.stack(arrays)


def _logits(model, x: np.ndarray, batch: int = 64) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.concatenate(
            [model(torch.from_numpy(x[i : i + batch])).numpy() for i in range(0, len(x), batch)]
        )


def _export(model, example, info: ModelInfo, fp32_onnx: Path, out: Path) -> Path:
    import onnx
    import torch

    batch = torch.export.Dim("batch", min=1)
    with quiet_third_party():
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            dynamic_shapes=({0: batch},),
            opset_version=onnx.load(str(fp32_onnx), load_external_data=False).opset_import[0].version,
            input_names=[info.input_name],
            output_names=[info.output_name],
            verbose=False,
        )
    program.save(str(out))
    return out


def finetune_qat(run: Path, fp32_onnx: Path, info: ModelInfo, work: Path, *, seed: int) -> tuple[Path, dict]:
    """The run's model fine-tuned with fake quantization, then quantized to QDQ ONNX."""
    import torch
    import torch.nn.functional as F

    from edgetl.backbones.checkpoint import load_checkpoint
    from edgetl.runfolder.folder import find_checkpoint

    torch.manual_seed(seed)
    teacher, _ = load_checkpoint(find_checkpoint(run))
    student, _ = load_checkpoint(find_checkpoint(run))
    teacher.eval()
    student.eval()
    images = _train_images(run, info, seed)
    reference = _logits(teacher, images[:PARITY_IMAGES])
    _fold_batchnorm(student)
    folded = np.abs(_logits(student, images[:PARITY_IMAGES]) - reference).max()
    if folded > FOLD_TOLERANCE * max(1.0, float(np.abs(reference).max())):
        raise EdgetlError(
            f"QAT: folding BatchNorm changed {info.backbone}'s logits by {folded:.3g}; not supported"
        )
    hooks = _insert_fake_quant(student)
    optimizer = torch.optim.AdamW(
        [p for p in student.parameters() if p.requires_grad], lr=QAT_LR, weight_decay=0
    )
    rng = np.random.default_rng(seed)
    log(f"QAT: {QAT_EPOCHS} epochs on {len(images)} train images, distilling the FP32 model")
    for epoch in range(QAT_EPOCHS):
        student.train()
        if epoch == QAT_EPOCHS - 1:
            # ranges settle before the last epoch, so that it trains against fixed quantizers
            student.apply(torch.ao.quantization.disable_observer)
        total = 0.0
        order = rng.permutation(len(images))
        for start in range(0, len(images), QAT_BATCH):
            x = torch.from_numpy(images[order[start : start + QAT_BATCH]])
            with torch.no_grad():
                target = F.log_softmax(teacher(x), dim=1)
            loss = F.kl_div(F.log_softmax(student(x), dim=1), target, log_target=True, reduction="batchmean")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(x)
        log(f"  QAT epoch {epoch + 1}/{QAT_EPOCHS}: distillation loss {total / len(images):.5f}")
    student.eval()
    student.apply(torch.ao.quantization.disable_observer)
    simulated = _logits(student, images[:PARITY_IMAGES])
    _strip_fake_quant(student, hooks)
    float_onnx = _export(student, torch.from_numpy(images[:1]), info, fp32_onnx, work / "qat-float.onnx")
    pre = ort.preprocess_for_quantization(float_onnx, work / "qat-pre.onnx")
    ranges = ort.calibrate_ranges(pre, images[:300], ort.Method.MINMAX)
    out = ort.quantize_with_ranges(pre, ort.Method.MINMAX, ranges, work / "qat-int8.onnx")
    deployed = run_model(out, images[:PARITY_IMAGES])
    parity = float(np.mean(deployed.argmax(1) == simulated.argmax(1)))
    diff = float(np.abs(deployed - simulated).max())
    log(
        f"QAT parity, onnxruntime INT8 vs the fake-quantized torch model: top-1 agreement {100 * parity:.1f}%, max |diff| {diff:.3g}"
    )
    if parity < 0.9:
        warn(
            f"QAT: onnxruntime's INT8 agrees with the fake-quantized model on only {100 * parity:.1f}% of images"
        )
    settings = {
        "backend": "onnxruntime",
        **ort.ORT_SETTINGS,
        "calibrator": ort.CALIBRATORS[ort.Method.MINMAX][1],
        "qat": {
            "epochs": QAT_EPOCHS,
            "lr": QAT_LR,
            "images": len(images),
            "loss": "kl(fp32 || int8)",
            "parity_top1": parity,
            "parity_max_abs_diff": diff,
        },
    }
    return out, settings
