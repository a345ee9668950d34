"""What training and the PyTorch benchmark do differently on a CUDA GPU, in one place.

- autocast in bf16 where the GPU has it (Ampere and later), else fp16 with a GradScaler;
- channels_last memory layout: cuDNN's tensor-core convolutions want NHWC, so CNN backbones run
  faster under AMP with it (PyTorch's channels_last tutorial); on CPUs the choice is measured
  elsewhere (`features.py`), so it is not forced here;
- pinned host memory for the batches sent to the GPU, so the copy can overlap compute (non_blocking).
"""

from __future__ import annotations

import torch


def cuda_autocast_dtype() -> torch.dtype:
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def place_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move `model` to `device`; channels_last on CUDA."""
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch on `device`: pinned and copied asynchronously to a GPU, channels_last for images."""
    if device.type != "cuda":
        return x.to(device)
    x = x.pin_memory().to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
