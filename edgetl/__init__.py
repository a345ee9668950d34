"""edgetl: pretrained backbone -> fine-tuned -> ONNX -> INT8 -> benchmarked -> deploy bundle.

The verbs (`train`, `export`, `quantize`, `benchmark`, `package`, `report`, `describe`) live in
`edgetl.api` and are loaded on first use, so `import edgetl` stays light.
"""

from importlib.metadata import version

# The version lives in pyproject.toml only; an installed (or editable) edgetl carries it as metadata.
__version__ = version("edgetl")

VERBS = ("train", "export", "quantize", "benchmark", "package", "report", "describe")

__all__ = ["__version__", *VERBS]


def __getattr__(name: str):
    if name in VERBS:
        from edgetl import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgetl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *VERBS])
