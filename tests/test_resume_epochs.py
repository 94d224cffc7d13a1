"""`train --resume` with a --max-epochs below the epochs the checkpoint already trained: one
line that says what to do (it used to end in Lightning's MisconfigurationException
traceback)."""

from __future__ import annotations

import pytest
import torch

from _cli import assert_clean_failure, cli
from _synthetic import make_synthetic
from moaspace.errors import MoaspaceError
from moaspace.model import MoaModel
from moaspace.pp import split, write_h5ad

torch.set_num_threads(1)
TINY = {"hidden_dims": (32, 16), "embedding_dim": 8, "input_whitening": "off"}
TRAIN = {"batch_size": 64, "progress_bar": False, "accelerator": "cpu", "seed": 0}


@pytest.fixture(scope="module")
def adata():
    return split(make_synthetic(n_moas=4, compounds_per_moa=6, n_genes=32, seed=1),
                 "compound", seed=0)


def test_resume_below_the_checkpoint_epoch_says_what_to_do(adata, tmp_path):
    first = MoaModel(adata, **TINY)
    first.train(max_epochs=4, model_dir=tmp_path, **TRAIN)
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    for max_epochs in (1, 3):
        with pytest.raises(MoaspaceError) as info:
            MoaModel(adata, **TINY).train(max_epochs=max_epochs, model_dir=tmp_path,
                                          resume=True, **TRAIN)
        message = str(info.value)
        assert "\n" not in message
        assert f"has already trained 4 epochs, more than max_epochs={max_epochs}" in message
        assert "resume with --max-epochs 4 or more" in message and "last.ckpt" in message
    # as many epochs as trained: the run is complete and reloads as it was
    again = MoaModel(adata, **TINY)
    again.train(max_epochs=4, model_dir=tmp_path, resume=True, **TRAIN)
    assert again.history == first.history


def test_cli_resume_below_the_checkpoint_epoch_is_one_line(adata, tmp_path):
    data = tmp_path / "data.h5ad"
    write_h5ad(adata, data)
    model = tmp_path / "model"
    common = ["--input-whitening", "off", "--accelerator", "cpu", "--batch-size", "64"]
    res = cli("--quiet", "train", data, "--out", model, "--max-epochs", "3", *common)
    assert res.code == 0, res.stderr[-2000:]
    res = cli("train", data, "--out", model, "--resume", "--max-epochs", "2", *common)
    assert_clean_failure(res, "has already trained 3 epochs, more than max_epochs=2",
                         "resume with --max-epochs 3 or more")
    assert "MisconfigurationException" not in res.stderr
