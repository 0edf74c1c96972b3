import os
import sys
import warnings

import numpy as np
import pytest

from dimlearn.images import load_images

try:
    from PIL import Image
except ImportError:  # only test_missing_pillow_is_a_clear_error runs
    Image = None

needs_pillow = pytest.mark.skipif(Image is None, reason="needs Pillow (dimlearn[images])")

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def save(img, path, **kwargs):
    img.save(path, **kwargs)
    return str(path)


def load_one(path, size, **kwargs):
    images, paths = load_images([path], size, **kwargs)
    assert images.dtype == np.uint8 and paths == [str(path)]
    return images[0]


@needs_pillow
def test_grey_rgb_and_one_bit_images(tmp_path):
    grey = np.array([[0, 100], [200, 255]], dtype=np.uint8)
    got = load_one(save(Image.fromarray(grey), tmp_path / "grey.png"), 2, mode="L")
    assert got.shape == (2, 2, 1) and (got[..., 0] == grey).all()
    assert (load_one(tmp_path / "grey.png", 2)[..., 1] == grey).all()  # grey -> RGB repeats

    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[0, 0], rgb[1, 2] = RED, BLUE
    got = load_one(save(Image.fromarray(rgb), tmp_path / "rgb.png"), (2, 3))
    assert got.shape == (2, 3, 3) and (got == rgb).all()
    grey_red = load_one(tmp_path / "rgb.png", (2, 3), mode="L")[0, 0, 0]
    assert grey_red == 76  # ITU-R 601-2 luma of pure red

    one_bit = Image.new("1", (3, 2), 0)
    one_bit.putpixel((1, 0), 1)
    got = load_one(save(one_bit, tmp_path / "bits.png"), (2, 3), mode="L")[..., 0]
    assert got.tolist() == [[0, 255, 0], [0, 0, 0]]


@needs_pillow
def test_transparency_is_composited_onto_white(tmp_path):
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (0, 0, 0, 0)  # transparent
    rgba[0, 2] = (0, 0, 0, 128)  # half-transparent black
    got = load_one(save(Image.fromarray(rgba), tmp_path / "rgba.png"), (1, 3))
    assert got[0, 0].tolist() == list(RED) and got[0, 1].tolist() == list(WHITE)
    assert 120 <= got[0, 2, 0] <= 135 and got[0, 2, 0] == got[0, 2, 2]

    palette = Image.new("P", (2, 1))
    palette.putpalette([*RED, *BLUE])
    palette.putpixel((1, 0), 1)
    path = save(palette, tmp_path / "p.png", transparency=1)
    with Image.open(path) as img:
        assert img.mode == "P" and "transparency" in img.info
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Pillow warning about palette transparency either
        got = load_one(path, (1, 2))
    assert got[0].tolist() == [list(RED), list(WHITE)]


@needs_pillow
def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    path = save(Image.fromarray(values), tmp_path / "deep.png")
    with Image.open(path) as img:
        assert img.mode in ("I;16", "I")
    got = load_one(path, (1, 4), mode="L")[..., 0]
    assert got.tolist() == [[0, 1, 128, 255]]
    deep32 = Image.fromarray(values.astype(np.int32))  # mode "I"
    assert deep32.mode == "I"
    got = load_one(save(deep32, tmp_path / "deep32.tiff"), (1, 4))
    assert got[0, :, 0].tolist() == [0, 1, 128, 255] and (got[..., 0] == got[..., 2]).all()


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
@needs_pillow
def test_exif_orientation_is_applied(tmp_path, suffix):
    # Stored 128 wide, 64 tall: left half red, right half blue. Orientation 6 means "rotate 90
    # degrees clockwise to display": upright, it is 64 wide, 128 tall, red on top. (A JPEG is
    # also decoded at 1/4 scale: Pillow's draft mode must be asked for the turned size.)
    stored = np.zeros((64, 128, 3), dtype=np.uint8)
    stored[:, :64], stored[:, 64:] = RED, BLUE
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6
    path = save(img, tmp_path / f"turned{suffix}", exif=exif)
    got = load_one(path, (32, 16), fit="resize").astype(int)
    assert got.shape == (32, 16, 3)
    assert np.abs(got[4:12] - RED).max() < 30 and np.abs(got[20:28] - BLUE).max() < 30


@needs_pillow
def test_fit_modes(tmp_path):
    wide = np.zeros((2, 4), dtype=np.uint8)
    wide[:, 1:3] = 255  # white centre columns, black left and right
    path = save(Image.fromarray(wide), tmp_path / "wide.png")
    crop = load_one(path, 2, mode="L")[..., 0]  # default "crop": the centre, unscaled
    assert (crop == 255).all()
    pad = load_one(path, 4, fit="pad", mode="L", pad_value=7)[..., 0]
    assert pad[[0, 3]].tolist() == [[7] * 4] * 2 and pad[1:3].tolist() == wide.tolist()
    stretch = load_one(path, (2, 8), fit="resize", mode="L")[..., 0]
    assert stretch[:, 0].max() < 60 and stretch[:, 3:5].min() > 200

    big = Image.new("RGB", (40, 30), RED)
    path = save(big, tmp_path / "big.png")
    for fit in ("crop", "pad", "resize"):
        got = load_one(path, (5, 7), fit=fit)
        assert got.shape == (5, 7, 3)
        assert (got[2, 3] == RED).all()
    padded = load_one(path, (20, 8), fit="pad")  # 40x30 fitted into 8x6, 7 rows each side
    assert (padded[:7] == 0).all() and (padded[-7:] == 0).all() and (padded[7:13] == RED).all()


@needs_pillow
def test_folder_order_suffixes_hidden_files_and_recursion(tmp_path):
    for name in ["b.png", "a.PNG", "c.jpg", ".hidden.png", "sub/d.png", ".dot/e.png"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        save(Image.new("L", (4, 4), 50), tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "report.pdf").write_bytes(b"%PDF-1.4")  # Pillow writes PDF but cannot read it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images, paths = load_images(tmp_path, 4)
    names = [os.path.relpath(p, tmp_path) for p in paths]
    assert names == ["a.PNG", "b.png", "c.jpg"] and paths == sorted(paths)
    assert images.shape == (3, 4, 4, 3) and all(isinstance(p, str) for p in paths)
    _, paths = load_images(str(tmp_path), 4, recursive=True)
    names = [os.path.relpath(p, tmp_path) for p in paths]
    assert names == ["a.PNG", "b.png", "c.jpg", os.path.join("sub", "d.png")]


@needs_pillow
def test_list_of_paths_keeps_its_order(tmp_path):
    paths = [save(Image.new("L", (3, 3), v), tmp_path / f"{v}.png") for v in (30, 10, 20)]
    images, got = load_images([tmp_path / "30.png", paths[1], paths[2]], 3, mode="L")
    assert got == paths and images[:, 0, 0, 0].tolist() == [30, 10, 20]
    images, got = load_images(paths[1], 3, mode="L")  # a single file
    assert got == [paths[1]] and images.shape == (1, 3, 3, 1)


def corrupt_files(folder, n_random=1):
    noise = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    whole = save(Image.fromarray(noise), folder / "whole.png")
    data = (folder / "whole.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) * 2 // 3])
    for i in range(n_random):
        (folder / f"random{i:02d}.png").write_bytes(os.urandom(200))
    return whole


@needs_pillow
def test_unreadable_files_are_skipped_with_one_warning(tmp_path):
    whole = corrupt_files(tmp_path)
    with pytest.warns(UserWarning, match="skipped 2 unreadable") as record:
        images, paths = load_images(tmp_path, 8)
    assert len(record) == 1 and paths == [whole] and images.shape == (1, 8, 8, 3)
    message = str(record[0].message)
    assert "random00.png" in message and "truncated.png" in message


@needs_pillow
def test_many_unreadable_files_are_counted_and_none_readable_is_an_error(tmp_path):
    corrupt_files(tmp_path, n_random=12)
    with pytest.warns(UserWarning, match="skipped 13 unreadable.* and 3 more"):
        load_images(tmp_path, 8)
    os.remove(tmp_path / "whole.png")
    with pytest.raises(ValueError, match="None of the 13 image file"):
        load_images(tmp_path, 8)


@needs_pillow
def test_unreadable_files_are_refused_with_errors_raise(tmp_path):
    corrupt_files(tmp_path)
    with pytest.raises(ValueError, match=r"Cannot read image file .*random00\.png"):
        load_images(tmp_path, 8, errors="raise")
    with pytest.raises(ValueError, match=r"Cannot read image file .*truncated\.png.*truncated"):
        load_images([tmp_path / "truncated.png"], 8, errors="raise")


@needs_pillow
def test_missing_and_empty_inputs_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="No image files in folder"):
        load_images(tmp_path, 8)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="No image files in folder"):
        load_images(tmp_path, 8)
    with pytest.raises(ValueError, match="empty list"):
        load_images([], 8)
    with pytest.raises(FileNotFoundError, match="No such folder"):
        load_images(tmp_path / "nowhere", 8)
    with pytest.raises(FileNotFoundError, match="gone.png"):
        load_images([tmp_path / "gone.png"], 8)


@needs_pillow
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": 0}, "size must be"),
        ({"size": (8, 8, 3)}, "size must be"),
        ({"size": 8, "fit": "fill"}, "fit must be"),
        ({"size": 8, "mode": "RGBA"}, "mode must be"),
        ({"size": 8, "errors": "ignore"}, "errors must be"),
        ({"size": 8, "pad_value": 256}, "pad_value must be"),
    ],
)
def test_invalid_arguments(tmp_path, kwargs, match):
    save(Image.new("L", (4, 4)), tmp_path / "a.png")
    with pytest.raises(ValueError, match=match):
        load_images(tmp_path, **kwargs)


@needs_pillow
def test_out_writes_a_read_only_memory_mapped_npy(tmp_path, monkeypatch):
    monkeypatch.setattr("dimlearn.images._COPY_BYTES", 1)  # compact the file image by image
    folder = tmp_path / "images"
    folder.mkdir()
    corrupt_files(folder)
    for v in (0, 90, 180):
        save(Image.new("RGB", (6, 4), (v, 255 - v, 7)), folder / f"img{v}.png")
    with pytest.warns(UserWarning, match="skipped 2"):
        expected, expected_paths = load_images(folder, (4, 5), verbose=True)
        images, paths = load_images(folder, (4, 5), out=tmp_path / "all.npy")
    assert isinstance(images, np.memmap) and not images.flags.writeable
    assert images.dtype == np.uint8 and images.shape == (4, 4, 5, 3)
    assert np.array_equal(images, expected) and paths == expected_paths
    assert (tmp_path / "all.paths.txt").read_text("utf-8").splitlines() == paths
    assert sorted(os.listdir(tmp_path)) == ["all.npy", "all.paths.txt", "images"]  # no temps
    with pytest.raises(ValueError, match="None of the"):
        load_images([folder / "truncated.png"], 4, out=tmp_path / "bad.npy")
    assert sorted(os.listdir(tmp_path)) == ["all.npy", "all.paths.txt", "images"]


def test_missing_pillow_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"needs Pillow: pip install 'dimlearn\[images\]'"):
        load_images(tmp_path, 8)
