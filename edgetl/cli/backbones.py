from __future__ import annotations

import click

from edgetl.cli.common import handle_errors, json_option


@click.command()
@click.argument("pattern", default="*")
@json_option
@handle_errors
def backbones(pattern: str, as_json: bool) -> None:
    """List the registered backbones, image and text (any timm model name also works with --backbone).

    MACs are per image at the backbone's input size (counted from its ONNX graph); latency is
    relative to efficientnet_lite0 (FP32 ONNX, onnxruntime CPU, batch 1) on the machine and date
    given in the JSON's `latency_measured`; top-1 is the published ImageNet figure.

    \b
    edgetl backbones
    edgetl backbones 'mobilenet*' --json
    """
    import fnmatch

    from rich.table import Table

    from edgetl.backbones import registry as bb
    from edgetl.backbones.text import TEXT_BACKBONES
    from edgetl.console import out, print_json

    measured = bb.zoo_measurements()
    latency = measured.get("latency", {})
    rows = []
    for s in bb.list_backbones(pattern):
        top1, source = bb.published_top1(s)
        rows.append(
            {
                "name": s.name,
                "modality": "image",
                "source": s.source.value,
                "arch": s.arch,
                "parameters": bb.count_parameters(s.name),
                "input_size": s.preprocess.crop,
                "macs": measured.get("macs", {}).get(s.name),
                "published_top1": top1,
                "published_top1_source": source,
                "offline_weights": s.offline,
                "install": bb.install_hint(s),
                "latency_vs_lite0": latency.get("relative", {}).get(s.name),
            }
        )
    for t in TEXT_BACKBONES.values():
        if fnmatch.fnmatch(t.name, pattern):
            rows.append(
                {
                    "name": t.name, "modality": "text", "source": "embedded", "arch": "BertModel",
                    "parameters": t.parameters, "input_size": None, "macs": None, "published_top1": None,
                    "published_top1_source": None, "offline_weights": t.offline,
                    "install": None if t.offline else t.install, "latency_vs_lite0": None,
                }
            )  # fmt: skip
    when = (
        {k: latency.get(k) for k in ("machine", "measured", "backend", "batch", "method", "note")}
        if latency
        else None
    )
    if as_json:
        print_json({"backbones": rows, "default": bb.DEFAULT_BACKBONE, "latency_measured": when})
        return
    table = Table(
        "name", "modality", "source", "params (M)", "input", "GMACs", "top-1 %", "latency", "weights offline"
    )
    for r in rows:
        table.add_row(
            r["name"],
            r["modality"],
            r["source"],
            f"{r['parameters'] / 1e6:.2f}",
            str(r["input_size"] or "tokens"),
            f"{r['macs'] / 1e9:.2f}" if r["macs"] else "-",
            f"{r['published_top1']:.1f}" if r["published_top1"] else "-",
            f"{r['latency_vs_lite0']:.2f}x" if r["latency_vs_lite0"] else "not measured",
            "yes" if r["offline_weights"] else r["install"] if r["source"] == "embedded" else "download",
        )
    out.print(table)
    if when:
        out.print(
            f"latency: x efficientnet_lite0, {when['backend']} batch {when['batch']}, {when['machine']}, {when['measured']}"
        )
