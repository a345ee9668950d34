import json

from click.testing import CliRunner

from edgetl.cli import main


def test_help_lists_every_stage():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    listed = result.output.split("Commands:")[1].split()
    for name in (
        "train",
        "export",
        "quantize",
        "benchmark",
        "package",
        "report",
        "describe",
        "demo",
        "backbones",
    ):
        assert name in listed, name
    # and each one runs: its own --help exits 0
    for name in ("train", "export", "quantize", "benchmark", "package", "report", "describe", "demo"):
        sub = CliRunner().invoke(main, [name, "--help"])
        assert sub.exit_code == 0 and "--json" in sub.output, (name, sub.output)


def test_backbones_json_is_one_object():
    result = CliRunner().invoke(main, ["backbones", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    names = {row["name"] for row in summary["backbones"]}
    required = {"efficientnet_lite0", "mobilenet_v3_small", "mobilenet_v3_large", "mobilenet_v2", "resnet18"}
    assert required | {"resnet50", "efficientnet_b0"} <= names
    lite0 = next(r for r in summary["backbones"] if r["name"] == "efficientnet_lite0")
    assert lite0["offline_weights"] is True
    assert 4_000_000 < lite0["parameters"] < 5_000_000
    assert lite0["input_size"] == 224


def test_unknown_backbone_is_one_line_error():
    from edgetl.backbones.registry import get_backbone
    from edgetl.errors import WeightsError

    try:
        get_backbone("no_such_net_xyz")
    except WeightsError as e:
        assert "no_such_net_xyz" in str(e) and "\n" not in str(e)
    else:
        raise AssertionError("unknown backbone accepted")
