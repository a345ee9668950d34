"""Pretrained backbones: the registry, checkpoints."""
