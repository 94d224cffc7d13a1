"""MoaModel: training, early stopping, persistence, gene alignment, resume, DDP, hierarchy."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from sklearn.metrics import silhouette_score

from _synthetic import make_synthetic
from moaspace import __version__
from moaspace.errors import InputError, MoaspaceError
from moaspace.model import MoaModel, macro_f1
from moaspace.model._predict import predict
from moaspace.pp._split import split

torch.set_num_threads(1)  # tiny models: threads only add overhead on a shared 2-core box

TINY = {"hidden_dims": (128, 64), "embedding_dim": 32}
# CPU explicitly: the determinism/resume checks are exact, which CUDA kernels are not
TRAIN = {"batch_size": 64, "progress_bar": False, "accelerator": "cpu"}
HERE = Path(__file__).resolve().parent


def _data(seed: int = 0):
    a = make_synthetic(n_moas=6, compounds_per_moa=8, n_genes=64, seed=seed)
    return split(a, "compound", seed=0)


def _state(model: MoaModel) -> dict:
    return {k: v.clone() for k, v in model.net.state_dict().items()}


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.fixture(scope="module")
def adata():
    return _data()


@pytest.fixture(scope="module")
def trained(adata):
    model = MoaModel(adata, **TINY)
    model.train(max_epochs=8, seed=0, **TRAIN)
    return model


def _val_f1(model: MoaModel, adata) -> float:
    """Recompute the validation macro-F1 of the model's predictor from the public API:
    what `predict` calls is what early stopping scored."""
    code = {m: i for i, m in enumerate(model.moas)}
    val = adata[adata.obs["split"] == "val"]
    pred = predict(model, val, compound_key=None, open_set=False)
    assert pred.uns["moa"]["params"]["predictor"] == model.config.predictor
    assert list(pred.uns["moa"]["classes"]) == model.moas
    return macro_f1(val.obs["moa"].astype(str).map(code).values,
                    pred.obsm["moa_scores"].argmax(1))


def _top_epochs(history: list[dict], k: int) -> list[int]:
    """The k epochs with the best validation F1 (ties: the earlier epoch), sorted."""
    return sorted(sorted(range(len(history)), key=lambda e: (-history[e]["val_f1"], e))[:k])


def test_training_keeps_averaged_best_weights_and_reference(trained, adata):
    h = trained.history
    assert len(h) == 8 and [e["epoch"] for e in h] == list(range(8))
    assert trained.best_val_f1 == max(e["val_f1"] for e in h)
    assert h[trained.best_epoch]["val_f1"] == trained.best_val_f1
    assert trained.best_val_f1 > 0.5  # 6 MoAs: chance is ~0.17
    # default: the weights kept are the mean of the 5 best epochs, scored once more
    assert trained.config.average_best == 5
    assert trained.train_info["averaged_epochs"] == _top_epochs(h, 5)
    assert trained.train_info["final_val_f1"] > 0.5
    # the network kept is the input candidate whose prototype predictor validated best
    scores = trained.train_info["input_candidates"]
    assert set(scores) == {"off", "on"}
    assert scores[trained.train_info["input_whitening"]] == max(scores.values())
    assert trained.config.input_whitening == trained.train_info["input_whitening"]
    ref = trained.atlas
    assert ref.n_obs == int((adata.obs["split"] == "train").sum())
    assert set(ref.obs["pert_id"]) == set(trained.compounds)
    np.testing.assert_allclose(np.linalg.norm(ref.X, axis=1), 1.0, atol=1e-5)
    assert {"moa", "pert_id", "cell_iname"} <= set(ref.obs.columns)


def test_predict_scores_what_the_candidate_choice_scored(adata):
    """With the prototypes left on the training rows, `predict` on the validation rows
    reproduces the validation macro-F1 that chose the kept network; with the default
    refit on train + val the validation rows are in the prototypes (in-sample)."""
    model = MoaModel(adata, **TINY, refit_prototypes=False)
    model.train(max_epochs=4, seed=0, **TRAIN)
    kept = model.train_info["input_candidates"][model.train_info["input_whitening"]]
    assert _val_f1(model, adata) == pytest.approx(kept, abs=1e-9)
    assert "prototype_rows" not in model.train_info
    refit = MoaModel(adata, **TINY)
    refit.train(max_epochs=4, seed=0, **TRAIN)
    assert refit.train_info["prototype_rows"] == "train+val"
    assert not np.allclose(refit.hidden_prototypes, model.hidden_prototypes)


def test_hidden_layer_only_prototypes_train_with_both_input_candidates(adata, tmp_path):
    """linear_view_weight=0 with input_whitening="auto": the raw-input candidate holds no
    whitening map (it crashed setting one), the whitened one does; the kept model predicts
    the same after save/load."""
    model = MoaModel(adata, **TINY, linear_view_weight=0.0)
    model.train(max_epochs=2, seed=0, **TRAIN)
    assert set(model.train_info["input_candidates"]) == {"off", "on"}
    kept = model.train_info["input_whitening"]
    assert (model.net.encoder.whiten is None) == (kept == "off")
    query = adata[(adata.obs["split"] == "val").to_numpy()].copy()
    before = predict(model, query).obsm["moa_scores"]
    model.save(tmp_path / "m")
    after = predict(MoaModel.load(tmp_path / "m"), query).obsm["moa_scores"]
    np.testing.assert_allclose(after, before, atol=1e-6)


class _EveryEpochState(L.Callback):
    """The net's weights after each epoch (after the module's own epoch-end hook)."""

    def __init__(self):
        self.states: list[dict] = []

    def on_train_epoch_end(self, trainer, module):
        self.states.append({k: v.detach().clone() for k, v in module.net.state_dict().items()})


@pytest.mark.parametrize("average_best", [1, 3])
def test_final_weights_are_the_mean_of_the_best_epochs(adata, average_best):
    """average_best=k: the final weights are the element-wise mean of the weights of the k
    epochs with the best validation F1 (integer buffers from the best one); k=1 restores
    the best epoch itself, not the last."""
    every = _EveryEpochState()
    # one network (raw input, hidden-layer prototypes): the callback sees one run
    model = MoaModel(adata, **TINY, average_best=average_best, input_whitening="off",
                     linear_view_weight=0.0, refit_prototypes=False)
    out = model.train(max_epochs=6, seed=0, callbacks=[every], **TRAIN)
    assert len(every.states) == 6
    epochs = _top_epochs(model.history, average_best)
    best = model.best_epoch
    got = _state(model)
    for key, value in got.items():
        if value.is_floating_point():
            want = torch.stack([every.states[e][key] for e in epochs]).mean(0)
            torch.testing.assert_close(value, want, rtol=0, atol=1e-6, msg=key)
        else:
            torch.testing.assert_close(value, every.states[best][key], rtol=0, atol=0, msg=key)
    if average_best == 1:
        assert out["averaged_epochs"] == [] and epochs == [best]
        assert out["final_val_f1"] == pytest.approx(model.best_val_f1, abs=1e-9)
    else:
        assert out["averaged_epochs"] == epochs and best in epochs
        # the average is a different net from each epoch it came from
        assert not torch.equal(got["encoder.head.weight"], every.states[best]["encoder.head.weight"])
    assert _val_f1(model, adata) == pytest.approx(out["final_val_f1"], abs=1e-9)
    with pytest.raises(MoaspaceError, match="average_best must be >= 1"):
        MoaModel(adata, average_best=0)


@pytest.mark.parametrize("predictor", ["knn", "prototype"])
def test_early_stopping_scores_the_predictor_predict_uses(adata, predictor):
    """Each predictor's validation score during training is what `predict` then gives with
    it (the default, hidden_prototype, is checked by the `trained` fixture's tests)."""
    model = MoaModel(adata, **TINY, predictor=predictor)
    model.train(max_epochs=3, seed=0, **TRAIN)
    assert _val_f1(model, adata) == pytest.approx(model.train_info["final_val_f1"], abs=1e-9)
    with pytest.raises(MoaspaceError, match="predictor must be one of"):
        MoaModel(adata, predictor="svm")


def test_early_stopping_on_val_f1(adata):
    # nothing learns (no BN running statistics either): F1 never improves
    model = MoaModel(adata, **TINY, lr=0.0, batch_norm=False)
    out = model.train(max_epochs=10, seed=0, patience=2, **TRAIN)
    assert out["epochs"] == 3 and out["best_epoch"] == 0
    assert model.train_info["stopped_early"]


def test_resume_of_an_early_stopped_run_does_not_train_on(adata, tmp_path):
    hp = {**TINY, "lr": 0.0, "batch_norm": False}
    first = MoaModel(adata, **hp)
    first.train(max_epochs=10, seed=0, patience=2, model_dir=tmp_path, **TRAIN)
    again = MoaModel(adata, **hp)
    out = again.train(max_epochs=10, seed=0, patience=2, model_dir=tmp_path, resume=True,
                      **TRAIN)
    assert out["epochs"] == 3 and again.history == first.history
    _assert_same_state(_state(again), _state(first))


def test_save_load_round_trip(trained, adata, tmp_path):
    trained.save(tmp_path / "m")
    with pytest.raises(MoaspaceError, match="overwrite"):
        trained.save(tmp_path / "m")
    trained.save(tmp_path / "m", overwrite=True)
    loaded = MoaModel.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.embed(adata), trained.embed(adata))
    np.testing.assert_array_equal(loaded.atlas.X, trained.atlas.X)
    assert list(loaded.atlas.obs_names) == list(trained.atlas.obs_names)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["genes"] == list(adata.var_names)
    assert config["moas"] == trained.moas and config["compounds"] == trained.compounds
    assert config["moaspace_version"] == __version__
    assert config["best_val_f1"] == trained.best_val_f1 and len(config["history"]) == 8
    assert config["data_fingerprint"] == trained.fingerprint
    state = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    assert "encoder.head.weight" in state
    assert config["model"]["predictor"] == loaded.config.predictor == "hidden_prototype"
    # a config.json written before `predictor` existed: the model was early-stopped on, and
    # predicts by, the kNN vote (such a config.json had no checksum of its own either)
    del config["config_sha1"]
    del config["model"]["predictor"]
    del config["model"]["average_best"]  # nor `average_best`: the best epoch was kept
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    old = MoaModel.load(tmp_path / "m")
    assert old.config.predictor == "knn" and old.config.average_best == 1
    assert predict(old, adata[:20], compound_key=None).uns["moa"]["params"]["predictor"] == "knn"


def test_gene_order_does_not_matter(trained, adata):
    perm = np.random.default_rng(1).permutation(adata.n_vars)
    shuffled = adata[:, perm].copy()
    np.testing.assert_allclose(trained.embed(shuffled), trained.embed(adata), atol=1e-6)


def test_missing_genes(trained, adata, caplog):
    drop = list(adata.var_names[:3])  # 3 of 64 < 10%
    fewer = adata[:, ~adata.var_names.isin(drop)].copy()
    zeroed = adata.copy()
    zeroed.X[:, :3] = 0.0
    with caplog.at_level(logging.WARNING, logger="moaspace.model.model"):
        emb = trained.embed(fewer)
    assert "filled with 0" in caplog.text and drop[0] in caplog.text
    np.testing.assert_allclose(emb, trained.embed(zeroed), atol=1e-6)
    too_few = adata[:, 10:].copy()  # 10 of 64 missing
    with pytest.raises(InputError, match=str(adata.var_names[0])):
        trained.embed(too_few)
    with pytest.raises(InputError, match="missing"):
        trained.embed(fewer, max_missing_fraction=0.01)


def test_gene_symbols_hint(trained, adata):
    by_symbol = adata.copy()
    by_symbol.var_names = by_symbol.var["gene_symbol"].astype(str).values
    with pytest.raises(InputError, match="gene symbols"):
        trained.embed(by_symbol)


def test_load_errors(trained, tmp_path):
    with pytest.raises(MoaspaceError, match="not found"):
        MoaModel.load(tmp_path / "nothing")
    d = trained.save(tmp_path / "m")
    (d / "atlas.h5ad").rename(d / "atlas.bak")
    with pytest.raises(MoaspaceError, match="atlas.h5ad is missing"):
        MoaModel.load(d)
    (d / "atlas.bak").rename(d / "atlas.h5ad")
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(MoaspaceError, match="format 99"):
        MoaModel.load(d)
    (d / "config.json").write_text(json.dumps(config))
    torch.save({"x": torch.zeros(1)}, d / "model.pt")  # a half-finished save
    with pytest.raises(MoaspaceError, match=r"model\.pt does not match"):
        MoaModel.load(d)


def test_bad_arguments(adata):
    with pytest.raises(MoaspaceError, match="unknown model hyper-parameters"):
        MoaModel(adata, hidden=3)
    with pytest.raises(MoaspaceError, match="radians"):
        MoaModel(adata, moa_margin=30)
    with pytest.raises(MoaspaceError, match="not trained"):
        MoaModel(adata).embed(adata)
    with pytest.raises(MoaspaceError, match="model_dir"):
        MoaModel(adata).train(resume=True)
    no_moa = adata.copy()
    del no_moa.obs["moa"]
    with pytest.raises(InputError, match="moa"):
        MoaModel(no_moa)


def test_same_seed_same_weights(adata):
    states = []
    for seed in (3, 3, 4):
        model = MoaModel(adata, **TINY, input_noise=0.2, sampling="compound")
        model.train(max_epochs=3, seed=seed, **TRAIN)
        states.append(_state(model))
    _assert_same_state(states[0], states[1])
    assert not torch.equal(states[0]["encoder.head.weight"], states[2]["encoder.head.weight"])


class _Interrupt(L.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 2:
            raise KeyboardInterrupt


def test_resume_after_interruption_matches_uninterrupted(adata, tmp_path):
    full = MoaModel(adata, **TINY)
    full.train(max_epochs=4, seed=0, **TRAIN)

    first = MoaModel(adata, **TINY)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        first.train(max_epochs=4, seed=0, model_dir=tmp_path, callbacks=[_Interrupt()], **TRAIN)
    # Lightning ignores Ctrl-C for its shutdown and its teardown restores the handler: were
    # it left ignored, a notebook could not be interrupted again
    assert signal.getsignal(signal.SIGINT) is handler
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    resumed = MoaModel(adata, **TINY)
    resumed.train(max_epochs=4, seed=0, model_dir=tmp_path, resume=True, **TRAIN)
    assert resumed.history == full.history
    _assert_same_state(_state(resumed), _state(full))


_KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
import lightning as L
from test_model import TINY, TRAIN, _data
from moaspace.model import MoaModel

class Kill(L.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 3:
            os.kill(os.getpid(), signal.SIGKILL)

MoaModel(_data(), **TINY).train(max_epochs=5, seed=0, model_dir={model_dir!r},
                                callbacks=[Kill()], **TRAIN)
"""


def test_resume_after_sigkill(adata, tmp_path):
    script = _KILLED_RUN.format(tests=str(HERE), model_dir=str(tmp_path))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))
    resumed = MoaModel(adata, **TINY)
    resumed.train(max_epochs=5, seed=0, model_dir=tmp_path, resume=True, **TRAIN)
    full = MoaModel(adata, **TINY)
    full.train(max_epochs=5, seed=0, **TRAIN)
    assert resumed.history == full.history
    _assert_same_state(_state(resumed), _state(full))


def test_resume_refuses_other_data(adata, tmp_path):
    MoaModel(adata, **TINY).train(max_epochs=1, seed=0, model_dir=tmp_path, **TRAIN)
    other = _data(seed=5)
    other.obs_names = [f"X{i}" for i in range(other.n_obs)]
    with pytest.raises(MoaspaceError, match="different data"):
        MoaModel(other, **TINY).train(max_epochs=2, seed=0, model_dir=tmp_path, resume=True,
                                      **TRAIN)
    with pytest.raises(MoaspaceError, match="hyper-parameters"):
        MoaModel(adata, **{**TINY, "dropout": 0.1}).train(
            max_epochs=2, seed=0, model_dir=tmp_path, resume=True, **TRAIN)


@pytest.mark.parametrize(
    "hp",
    [
        {"loss": "softmax"},
        {"loss": "supcon", "sampling": "moa"},
        {"loss": "arcface_moa", "margin_mode": "count", "sub_centers": 2},
        {"loss": "dual_arcface", "input_noise": 0.3, "batch_norm": False, "dropout": 0.0},
    ],
    ids=lambda hp: hp["loss"],
)
def test_loss_ablations_train_and_reload(adata, hp, tmp_path):
    model = MoaModel(adata, **TINY, **hp)
    out = model.train(max_epochs=3, seed=0, **TRAIN)
    assert out["best_val_f1"] > 0.3
    emb = model.embed(adata)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    model.save(tmp_path)
    np.testing.assert_array_equal(MoaModel.load(tmp_path).embed(adata), emb)


def test_all_genes_width():
    a = split(make_synthetic(n_moas=3, compounds_per_moa=4, n_genes=12328,
                             sigs_per_compound_cell=1), "compound", seed=0)
    model = MoaModel(a, hidden_dims=(64,), embedding_dim=16)
    model.train(max_epochs=1, seed=0, **TRAIN)
    assert model.embed(a).shape == (a.n_obs, 16)


def test_without_split_column_a_val_set_is_carved(caplog):
    a = make_synthetic(n_moas=4, compounds_per_moa=6, n_genes=32, sigs_per_compound_cell=1)
    with caplog.at_level(logging.WARNING, logger="moaspace.model.model"):
        model = MoaModel(a, **TINY)
    assert "carving" in caplog.text
    out = model.train(max_epochs=2, seed=0, **TRAIN)
    assert model.train_info["n_val"] > 0 and out["best_val_f1"] is not None


@pytest.mark.parametrize(
    "strategy",
    [pytest.param("ddp_fork", marks=[
        pytest.mark.timeout(60),
        # a forked worker cannot use CUDA once the parent touched it (Lightning seeds it)
        pytest.mark.skipif(torch.cuda.is_available(), reason="fork + CUDA machine")]),
     # spawn re-imports torch/lightning in each worker: ~20-45 s on a loaded 2-core box
     pytest.param("ddp_spawn", marks=[pytest.mark.timeout(120), pytest.mark.slow])],
)
def test_ddp_two_cpu_processes(adata, strategy):
    """DDP on 2 CPU processes (gloo): the run completes, ranks agree, the result is comparable.

    Rank 0 scores validation and broadcasts, so both ranks stop together; the
    weights returned to the main process are rank 0's (the mean of its best epochs).
    """
    single = MoaModel(adata, **TINY)
    single.train(max_epochs=6, seed=0, **TRAIN)
    ddp = MoaModel(adata, **TINY, refit_prototypes=False)
    out = ddp.train(max_epochs=6, seed=0, devices=2, strategy=strategy,
                    **{**TRAIN, "batch_size": 32})  # 2 x 32 = the single run's 64
    assert ddp.train_info["world_size"] == 2
    assert out["epochs"] == 6 and len(ddp.history) == 6
    # the weights that came back are those kept (the mean of the best epochs, averaged
    # in the workers): recomputing the score agrees
    assert ddp.train_info["averaged_epochs"] == _top_epochs(ddp.history, 5)
    kept = ddp.train_info["input_candidates"][ddp.train_info["input_whitening"]]
    assert _val_f1(ddp, adata) == pytest.approx(kept, abs=1e-9)
    assert ddp.best_val_f1 > 0.5
    assert abs(ddp.best_val_f1 - single.best_val_f1) < 0.2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_mixed_precision(adata, tmp_path):
    model = MoaModel(adata, **TINY, refit_prototypes=False)
    out = model.train(max_epochs=6, seed=0, batch_size=64, progress_bar=False,
                      accelerator="gpu", devices=1, model_dir=tmp_path)
    assert model.train_info["precision"] == "16-mixed"
    assert out["best_val_f1"] > 0.5
    # weights come back to the CPU; the fp32 CPU score matches the GPU-time score
    kept = model.train_info["input_candidates"][model.train_info["input_whitening"]]
    assert _val_f1(model, adata) == pytest.approx(kept, abs=0.03)
    model.save(tmp_path)
    np.testing.assert_array_equal(MoaModel.load(tmp_path).embed(adata), model.embed(adata))


# --------------------------------------------------------------------------- hierarchy
def _planted_hierarchy():
    """A small simulation (planted MoAs, compounds, cell lines), labelled rows only."""
    from moaspace.datasets._simulate import SimulationConfig, simulate_adata

    # named MoAs (two strong, three medium, one weak) so the difficulty does not hinge on
    # which classes a seed happens to draw
    moas = ("HDAC inhibitor", "MEK inhibitor", "EGFR inhibitor",
            "glucocorticoid receptor agonist", "HMGCR inhibitor", "PPAR receptor agonist")
    a, _ = simulate_adata(SimulationConfig(seed=3, n_compounds=160, moas=moas, n_cells=6,
                                           sigs_per_compound=(8, 30), frac_unlabeled=0.0))
    return a[a.obs["moa"].astype(str) != ""].copy()


def _hierarchy_data():
    """The project simulator when present (planted hierarchy), else the local generator."""
    try:
        a = _planted_hierarchy()
    except ImportError:
        a = make_synthetic(n_moas=6, compounds_per_moa=10, n_genes=128, compound_scale=1.0,
                           noise=1.5, seed=2)
    return split(a, "compound", seed=0)


def test_hierarchy_compound_then_moa():
    a = _hierarchy_data()
    model = MoaModel(a, hidden_dims=(256, 128), embedding_dim=64)
    model.train(max_epochs=25, batch_size=128, seed=0, progress_bar=False, accelerator="cpu")
    test = a[a.obs["split"] == "test"]
    emb = model.embed(test)
    raw = np.asarray(test.X, dtype=np.float32)
    raw = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    moa = test.obs["moa"].astype(str).to_numpy()
    cpd = test.obs["pert_id"].astype(str).to_numpy()
    same_cpd = cpd[:, None] == cpd[None, :]
    same_moa = (moa[:, None] == moa[None, :]) & ~same_cpd
    other = moa[:, None] != moa[None, :]
    np.fill_diagonal(same_cpd, False)

    sims = emb @ emb.T
    # mean similarity is ordered: same compound > same MoA (other compound) > other MoA
    levels = [sims[m].mean() for m in (same_cpd, same_moa, other)]
    assert levels[0] > levels[1] > levels[2], levels
    # nearest neighbours: mostly the same compound, then the same MoA, then the rest
    np.fill_diagonal(sims, -np.inf)
    nn = np.argsort(-sims, axis=1)[:, :5]
    rows = np.arange(len(nn))[:, None]
    fractions = np.array([m[rows, nn].mean() for m in (same_cpd, same_moa, other)])
    chance = np.array([m.sum(1).mean() / (len(m) - 1) for m in (same_cpd, same_moa, other)])
    enrichment = fractions / chance
    # the same compound is the single most frequent kind of neighbour, and relative to
    # chance same-compound >> same-MoA > 1 > other MoA (other MoAs are many, so their raw
    # fraction is no measure)
    assert fractions[0] == fractions.max(), (fractions, chance)
    assert fractions[0] > fractions[1], (fractions, chance)
    assert enrichment[0] > enrichment[1] > 1.3 > 1 > enrichment[2], (fractions, chance)
    # MoA structure of unseen compounds is clearly better than in raw signatures
    sil_model = silhouette_score(emb, moa, metric="cosine")
    sil_raw = silhouette_score(raw, moa, metric="cosine")
    assert sil_model > sil_raw + 0.05, (sil_model, sil_raw)


def test_compound_loss_builds_the_compound_level():
    """What the compound loss is for: a known compound's signatures in an unseen cell line
    find each other, and their own training compound, more often than without it.

    Same data, split, seed and network; the MoA-only ablation differs in the loss alone. On
    the README's benchmark data this is same-compound mAP 0.416 vs 0.352 and own-compound
    top-1 0.37 vs 0.19 (``benchmarks/bench_predictors.py``, cell split, 3 of 3 seeds).
    """
    from moaspace._core.neighbors import prototypes
    from moaspace.tl._metrics import retrieval_map

    a = _planted_hierarchy()
    cells = a.obs["cell_iname"].astype(str).value_counts()
    a = split(a, "cell", holdout_cells=[cells.index[0]], seed=0)
    test = a[a.obs["split"] == "test"]
    train = a[a.obs["split"] == "train"]
    cpd_test = test.obs["pert_id"].astype(str).to_numpy()
    cpd_train = train.obs["pert_id"].astype(str).to_numpy()
    names = np.unique(cpd_train)
    assert np.isin(cpd_test, names).all()  # the cell split keeps the compounds

    found = {}
    for loss in ("dual_arcface", "arcface_moa"):
        model = MoaModel(a, hidden_dims=(256, 128), embedding_dim=64, loss=loss)
        model.train(max_epochs=20, batch_size=128, seed=0, progress_bar=False,
                    accelerator="cpu")
        z_test, z_train = model.embed(test), model.embed(train)
        centres, _ = prototypes(z_train, cpd_train, names)  # one unit centre per compound
        nearest = names[np.argmax(z_test @ centres.T, axis=1)]
        found[loss] = (retrieval_map(z_test, cpd_test, seed=0), float((nearest == cpd_test).mean()))
    (map_dual, own_dual), (map_moa, own_moa) = found["dual_arcface"], found["arcface_moa"]
    assert map_dual > map_moa + 0.02, found
    assert own_dual > own_moa + 0.05, found


def test_one_signature_per_compound_switches_the_compound_loss_off(tmp_path, caplog):
    """Consensus-like data: the compound loss could only tell each training signature
    from all others, so it is off (with a log line), and config.json says so."""
    adata = make_synthetic(n_moas=5, compounds_per_moa=12, cells=("A549",),
                           sigs_per_compound_cell=1, seed=3)
    adata = split(adata, "compound", seed=0)
    assert adata.obs["pert_id"].value_counts().max() == 1
    model = MoaModel(adata, **TINY)
    with caplog.at_level(logging.INFO, logger="moaspace"):
        model.train(max_epochs=3, seed=0, **TRAIN)
    assert "compound loss has nothing to learn" in caplog.text
    assert model.config.loss == "arcface_moa" and model.net.compound_head is None
    model.save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model"]["loss"] == "arcface_moa"
    assert config["train"]["compound_loss"].startswith("off")
    assert set(config["train"]["input_candidates"]) == {"off", "on"}
    loaded = MoaModel.load(tmp_path)
    np.testing.assert_array_equal(loaded.embed(adata), model.embed(adata))
    # several signatures per compound: the compound loss stays on
    multi = MoaModel(_data(), **TINY)
    multi.train(max_epochs=1, seed=0, **TRAIN)
    assert multi.config.loss == "dual_arcface" and "compound_loss" not in multi.train_info
