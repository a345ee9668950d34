"""What kind of input a model classifies. Model files and bundles written before text existed carry
no modality: they are images."""

from __future__ import annotations

from enum import Enum


class Modality(str, Enum):
    IMAGE = "image"
    TEXT = "text"
