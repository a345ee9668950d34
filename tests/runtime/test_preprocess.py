"""The runtime's PIL + numpy preprocessing equals torchvision's eval transform on real photos."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from edgetl_runtime.preprocess import PreprocessSpec, preprocess_batch, preprocess_image

# real photographs cut to odd sizes: landscape, portrait, nearly square, and smaller than the resize
PHOTOS = {
    "chelsea-landscape": (skimage.data.chelsea, (0, 0, 451, 299)),
    "astronaut-portrait": (skimage.data.astronaut, (37, 5, 240, 510)),
    "coffee-odd": (skimage.data.coffee, (11, 3, 334, 330)),
    "coffee-tiny": (skimage.data.coffee, (100, 100, 161, 147)),
}
SPECS = [
    PreprocessSpec(crop=224, resize=256, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3),
    PreprocessSpec(crop=224, resize=256, interpolation="bilinear"),
    PreprocessSpec(crop=61, resize=67, interpolation="bilinear"),
    PreprocessSpec(crop=33, resize=41, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3),
]


def torchvision_eval(spec: PreprocessSpec) -> transforms.Compose:
    return transforms.Compose(
        [
            transforms.Resize(spec.resize, interpolation=InterpolationMode(spec.interpolation.value)),
            transforms.CenterCrop(spec.crop),
            transforms.ToTensor(),
            transforms.Normalize(spec.mean, spec.std),
        ]
    )


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {name: Image.fromarray(load()).crop(box) for name, (load, box) in PHOTOS.items()}


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.crop}-{s.resize}-{s.interpolation.value}")
def test_matches_torchvision_eval_transform(spec, photos):
    expected_t = torchvision_eval(spec)
    for name, image in photos.items():
        expected = expected_t(image).numpy()
        got = preprocess_image(image, spec)
        assert got.dtype == np.float32 and got.shape == expected.shape == (3, spec.crop, spec.crop), name
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, err_msg=name)


def test_paths_arrays_and_pil_agree(photos, tmp_path):
    spec = SPECS[0]
    image = photos["astronaut-portrait"]
    image.save(tmp_path / "a.png")
    batch = preprocess_batch([tmp_path / "a.png", image, np.asarray(image)], spec)
    assert batch.shape == (3, 3, 224, 224)
    np.testing.assert_array_equal(batch[0], batch[1])
    np.testing.assert_array_equal(batch[0], batch[2])
    assert image.size == (203, 505)  # portrait, odd sides


def test_preprocess_readable_skips_counts_and_stops_at_the_limit(digits_dir, tmp_path):
    from badfiles import write_corrupt_image

    from edgetl.data.images import preprocess_readable
    from edgetl_runtime.preprocess import list_images

    spec = PreprocessSpec().with_size(32)
    good = list_images(digits_dir / "train")[:5]
    bad = write_corrupt_image(tmp_path / "bad.png")
    sources = [good[0], bad, *good[1:]]
    arrays, kept, skipped = preprocess_readable(sources, spec, "test")
    assert (len(arrays), kept, skipped) == (5, [0, 2, 3, 4, 5], 1)
    assert np.array_equal(arrays[1], preprocess_image(good[1], spec))
    arrays, kept, skipped = preprocess_readable(sources, spec, "test", limit=2)
    assert (len(arrays), kept, skipped) == (2, [0, 2], 1)
