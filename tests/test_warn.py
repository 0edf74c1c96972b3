"""Every warning dimlearn emits is reported at the user's line (here: this file), not at a
line of scikit-learn, skorch or dimlearn itself."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import dimlearn
from dimlearn import DeepInfomaxTransformer, load_images
from tests.test_faults import send_sigint_at_batch


def test_the_ctrl_c_warning_points_at_the_fit_call(digit_images, monkeypatch, fast):
    X, _ = digit_images
    send_sigint_at_batch(monkeypatch, 1)
    with pytest.warns(UserWarning, match="interrupted") as record:
        DeepInfomaxTransformer(**fast, batch_size=16).fit(X[:64])
    assert record[0].filename == __file__


def test_the_distributed_warning_points_at_the_fit_call(digit_images, monkeypatch, fast):
    X, _ = digit_images
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.warns(UserWarning, match="init_process_group") as record:
        DeepInfomaxTransformer(**fast).fit(X[:40])
    assert record[0].filename == __file__


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_the_device_fallback_warning_points_at_the_transform_call(digit_images, fast):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**fast).fit(X[:40]).set_params(device="cuda")
    with pytest.warns(UserWarning, match="CUDA is not available") as record:
        dim.transform(X[:5])  # through scikit-learn's set_output wrapper
    assert record[0].filename == __file__
    with pytest.warns(UserWarning, match="CUDA is not available") as record:
        dim.score(X[:5])
    assert record[0].filename == __file__


def test_the_continuing_training_warning_points_at_the_fit_call(digit_images, tmp_path, fast):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**fast).fit(X[:40])
    loaded = dimlearn.load(dimlearn.save(dim, tmp_path / "dim.safetensors"))
    with pytest.warns(UserWarning, match="Adam starts afresh") as record:
        loaded.set_params(warm_start=True).fit(X[:40])
    assert record[0].filename == __file__
    with pytest.warns(UserWarning, match="no trained global_critic") as record:
        loaded.set_params(alpha=0.5).partial_fit(X[:40])
    assert record[0].filename == __file__


def test_the_warning_through_a_pipeline_points_at_the_pipeline_call(
    digit_images, monkeypatch, fast
):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    X, y = digit_images
    monkeypatch.setenv("WORLD_SIZE", "2")
    pipe = make_pipeline(DeepInfomaxTransformer(**fast), LogisticRegression())
    with pytest.warns(UserWarning, match="init_process_group") as record:
        pipe.fit(X[:40], y[:40])
    assert record[0].filename == __file__


def test_the_skipped_files_warning_points_at_the_load_images_call(tmp_path):
    Image.new("RGB", (10, 10)).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"not a picture")
    with pytest.warns(UserWarning, match="skipped 1 unreadable") as record:
        images, _ = load_images(tmp_path, 8)
    assert record[0].filename == __file__ and len(images) == 1


def test_no_other_warnings_come_from_a_plain_fit(digit_images, fast):
    X, _ = digit_images
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DeepInfomaxTransformer(**fast).fit(X[:40]).transform(X[:5])
    assert np.isfinite(DeepInfomaxTransformer(**fast).fit(X[:40]).transform(X[:5])).all()
