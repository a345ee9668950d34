"""What both INT8 benchmarks (bench_quantize.py, bench_int8_matrix.py) set up alike: the two cases on
the shared data, split the same way with the same seed; NNCF's by-hand baseline; and interleaved
batch-1 latency.

- imagenet: the pretrained efficientnet_lite0 (`edgetl export --backbone efficientnet_lite0`) on
  ../shared/data/imagenet-dev: a seeded CALIBRATE photos calibrate, the next MEASURE measure.
- digits: a short fine-tuned run on ../shared/data/sign-digits (64 px, 2 frozen + 1 unfreeze epoch);
  a seeded CALIBRATE of its train split calibrate, its val split measures.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
IMAGENET, DIGITS = DATA / "imagenet-dev", DATA / "sign-digits"
CALIBRATE, MEASURE, SEED = 300, 450, 0
WARMUP_RUNS = 5


def present_cases(names: str) -> list[str]:
    """The cases of the comma-separated `names` whose data is here; a line names each one skipped."""
    data = {"imagenet": IMAGENET, "digits": DIGITS}
    for name in (n for n in names.split(",") if not data[n].is_dir()):
        print(f"skipping {name}: {data[name]} is absent (see ../shared/data/README)")
    return [n for n in names.split(",") if data[n].is_dir()]


def edgetl(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "edgetl", *args], check=True, stdout=subprocess.DEVNULL)


@dataclass(frozen=True)
class ImagenetCase:
    fp32: Path
    calibration: Path  # an ImageFolder of links to the calibration photos, no more
    x_cal: np.ndarray
    x: np.ndarray
    y: np.ndarray  # the measured photos' class indices into the model's labels


def imagenet_case(work: Path, fp32: Path | None = None) -> ImagenetCase:
    """efficientnet_lite0 (exported here, or `fp32` reused) and the seeded split of the photos."""
    from edgetl.quantizer import map_eval_classes
    from edgetl_runtime.modelfile import read_model_info
    from edgetl_runtime.preprocess import list_images, preprocess_image

    model = work / "lite0.onnx"
    if fp32 is not None:
        model.symlink_to(fp32.resolve())
    else:
        edgetl("export", "--backbone", "efficientnet_lite0", "--out", str(model))
    info = read_model_info(model)
    images = sorted(list_images(IMAGENET))
    random.Random(SEED).shuffle(images)
    calib, measure = images[:CALIBRATE], images[CALIBRATE : CALIBRATE + MEASURE]
    folder = work / "calibration-images"  # not "calibration": the default manifest folder
    for p in calib:
        (folder / p.parent.name).mkdir(parents=True, exist_ok=True)
        os.symlink(p, folder / p.parent.name / p.name)
    synsets = sorted({p.parent.name for p in images})
    index = dict(zip(synsets, map_eval_classes(synsets, info.labels), strict=True))
    x_cal = np.stack([preprocess_image(p, info.preprocess) for p in calib])
    x = np.stack([preprocess_image(p, info.preprocess) for p in measure])
    y = np.asarray([index[p.parent.name] for p in measure])
    return ImagenetCase(model, folder, x_cal, x, y)


def fine_tuned_digits(work: Path) -> tuple[Path, Path, np.ndarray, np.ndarray, np.ndarray]:
    """A short fine-tuned sign-digits run, exported: (run, FP32 model, a seeded CALIBRATE of its train
    split to calibrate, its val split and labels to measure)."""
    from edgetl.runfolder.splits import Splits
    from edgetl_runtime.modelfile import read_model_info
    from edgetl_runtime.preprocess import preprocess_image

    run = work / "digits-run"
    data = work / "sign-digits"
    (data / "train").mkdir(parents=True)
    for folder in sorted(p for p in DIGITS.iterdir() if p.is_dir()):
        os.symlink(folder.resolve(), data / "train" / folder.name)  # an ImageFolder without val/
    edgetl(
        "train", "--data", str(data), "--out", str(run), "--no-hflip", "--image-size", "64",
        "--frozen-epochs", "2", "--epochs", "1", "--seed", str(SEED),
    )  # fmt: skip
    edgetl("export", str(run))
    fp32 = run / "model.onnx"
    info = read_model_info(fp32)
    splits = Splits.load(run)
    train = list(splits.train)
    random.Random(SEED).shuffle(train)
    x_cal = np.stack([preprocess_image(p, info.preprocess) for p, _ in train[:CALIBRATE]])
    x = np.stack([preprocess_image(p, info.preprocess) for p, _ in splits.val])
    y = np.asarray([label for _, label in splits.val])
    return run, fp32, x_cal, x, y


def by_hand_nncf(fp32: Path, x: np.ndarray, out: Path) -> Path:
    """NNCF's own nncf.quantize on the ONNX model, its defaults, every calibration image."""
    import nncf
    import onnx

    proto = onnx.load(str(fp32))
    name = proto.graph.input[0].name
    onnx.save(
        nncf.quantize(proto, nncf.Dataset(list(x), lambda a: {name: a[None]}), subset_size=len(x)), str(out)
    )
    return out


def interleaved_ms(
    calls: dict[str, Callable[[np.ndarray], object]], x: np.ndarray, runs: int
) -> dict[str, float]:
    """Median batch-1 latency per call, the calls interleaved so a busy neighbour hits all alike, the
    inputs cycled so no figure comes from one cached tensor."""
    times: dict[str, list[float]] = {k: [] for k in calls}
    for i in range(runs + WARMUP_RUNS):
        one = x[i % len(x) : i % len(x) + 1]
        for k, call in calls.items():
            t = time.perf_counter()
            call(one)
            if i >= WARMUP_RUNS:
                times[k].append(time.perf_counter() - t)
    return {k: 1000 * float(np.median(v)) for k, v in times.items()}


def onnxruntime_ms(paths: dict[str, Path], x: np.ndarray, *, threads: int, runs: int) -> dict[str, float]:
    """interleaved_ms of ONNX models on onnxruntime's CPU provider with `threads` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    sessions = {
        k: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for k, p in paths.items()
    }
    calls = {k: lambda a, s=s: s.run(None, {s.get_inputs()[0].name: a}) for k, s in sessions.items()}
    return interleaved_ms(calls, x, runs)
