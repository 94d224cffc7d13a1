"""The query service in-process (FastAPI TestClient): the API and the page give what
moaspace.tl.predict gives on the same input, and bad input is answered with a 4xx and one
line, on purpose, case by case."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import re
import tempfile
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

import moaspace
from conftest import landmarks
from moaspace.io import write_gctx
from moaspace.pp import write_h5ad
from moaspace.serve import (
    check_bind,
    create_app,
    is_loopback,
    prediction_entry,
    prediction_tables,
)

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def model(saved_model):
    return saved_model["model"]


@pytest.fixture(scope="module")
def explain_dir(tmp_path_factory, model):
    """A small `moaspace explain`-like folder: two genes and a pathway per MoA."""
    folder = tmp_path_factory.mktemp("explain")
    moas = sorted(set(model.atlas.obs["moa"].astype(str)))
    genes = [{"moa": m, "rank": r, "gene_id": str(1000 + r), "gene_symbol": f"GENE{r}",
              "attribution": 1.0 / r} for m in moas for r in (1, 2)]
    pd.DataFrame(genes).to_csv(folder / "top_genes.csv", index=False)
    enr = [{"moa": m, "pathway": f"PATHWAY OF {m}", "nes": 2.0, "pval": 0.001, "fdr": 0.01}
           for m in moas]
    pd.DataFrame(enr).to_csv(folder / "enrichment.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def uploads(tmp_path_factory):
    return tmp_path_factory.mktemp("uploads")


@pytest.fixture(scope="module")
def client(saved_model, explain_dir, uploads):
    app = create_app(saved_model["model_dir"], explain_dir=explain_dir, tmp_dir=uploads,
                     max_upload_bytes=2_000_000)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def query(saved_model):
    return saved_model["query"]


def _h5ad_bytes(adata, tmp_path, name="q.h5ad") -> bytes:
    write_h5ad(adata, tmp_path / name)
    return (tmp_path / name).read_bytes()


def _post_file(client, name, data, **params):
    return client.post("/api/predict", params=params,
                       files={"file": (name, data, "application/octet-stream")})


def _assert_one_line_error(res, status, *needles):
    assert res.status_code == status, (res.status_code, res.text[:500])
    detail = res.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail
    for needle in needles:
        assert needle in detail, (needle, detail)
    return detail


def _assert_same_as_predict(rows, expected):
    assert [r["id"] for r in rows] == expected.obs_names.tolist()
    assert [r["moa_pred"] for r in rows] == expected.obs["moa_pred"].astype(str).tolist()
    np.testing.assert_allclose([r["score"] for r in rows], expected.obs["moa_pred_score"],
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose([r["unknown_score"] for r in rows],
                               expected.obs["moa_unknown_score"], rtol=0, atol=1e-6)
    assert [r["unknown"] for r in rows] == (expected.obs["moa_pred"] == "unknown").tolist()
    classes = prediction_entry(expected)["classes"]
    best = np.asarray(expected.obsm["moa_scores"]).argmax(axis=1)
    assert [r["top"][0]["moa"] for r in rows] == [classes[i] for i in best]
    near = expected.obs["nearest_compounds"].tolist()
    assert [";".join(f"{n['compound']}:{n['similarity']:.3f}" for n in r["neighbors"])
            for r in rows] == near


# ------------------------------------------------------------------ the same as predict


def test_upload_h5ad_equals_tl_predict(client, model, query, tmp_path):
    res = _post_file(client, "query.h5ad", _h5ad_bytes(query, tmp_path))
    assert res.status_code == 200, res.text[:500]
    payload = res.json()
    expected = moaspace.tl.predict(model, query, compound_key=None)
    assert payload["calibrated"] and payload["compounds"] is None
    assert payload["n_signatures"] == query.n_obs
    _assert_same_as_predict(payload["signatures"], expected)
    assert set(payload["explanations"]) == {r["moa_pred_known"] for r in payload["signatures"]}
    first = next(iter(payload["explanations"].values()))
    assert first["genes"][0]["symbol"] == "GENE1" and first["pathways"][0]["fdr"] == 0.01


def test_json_matrix_and_text_formats_equal_tl_predict(client, model, query, tmp_path):
    x = np.asarray(query.X, dtype=np.float64)
    expected = moaspace.tl.predict(model, query, compound_key=None)
    body = {"genes": query.var_names.tolist(), "values": x.tolist(),
            "signatures": query.obs_names.tolist()}
    res = client.post("/api/predict", json=body)
    assert res.status_code == 200, res.text[:500]
    _assert_same_as_predict(res.json()["signatures"], expected)
    frame = pd.DataFrame(np.asarray(query.X), index=query.obs_names, columns=query.var_names)
    texts = {"q.tsv": frame.to_csv(sep="\t", float_format="%.9g").encode(),
             "q.csv.gz": gzip.compress(frame.T.to_csv(float_format="%.9g").encode()),
             "pasted": frame.to_csv(sep="\t", float_format="%.9g").encode()}  # no name: sniffed
    for name, data in texts.items():
        res = _post_file(client, name, data)
        assert res.status_code == 200, (name, res.text[:500])
        _assert_same_as_predict(res.json()["signatures"], expected)
    gctx = tmp_path / "q.gctx"
    write_gctx(gctx, np.asarray(query.X), query.obs_names, query.var_names)
    res = _post_file(client, "q.gctx", gctx.read_bytes())
    _assert_same_as_predict(res.json()["signatures"], expected)


def test_per_compound_answers_equal_predict_compound_calls(client, model, query, tmp_path):
    res = _post_file(client, "query.h5ad", _h5ad_bytes(query, tmp_path), group_by="pert_id")
    assert res.status_code == 200, res.text[:500]
    payload = res.json()
    expected = moaspace.tl.predict(model, query, compound_key="pert_id")
    _, calls = prediction_tables(expected)
    rows = payload["compounds"]
    assert [r["id"] for r in rows] == calls["compound"].tolist()
    assert [r["moa_pred"] for r in rows] == calls["moa_pred"].astype(str).tolist()
    np.testing.assert_allclose([r["score"] for r in rows], calls["moa_pred_score"], atol=1e-6)
    assert [r["signatures"] for r in rows] == calls["n_signatures"].tolist()
    assert [";".join(t["moa"] for t in r["top"]) for r in rows] == calls["top3"].tolist()
    _assert_same_as_predict(payload["signatures"], expected)
    # the form field works as the query parameter does
    res = client.post("/api/predict", data={"group_by": "pert_id"},
                      files={"file": ("q.h5ad", _h5ad_bytes(query, tmp_path), "x/y")})
    assert [r["id"] for r in res.json()["compounds"]] == calls["compound"].tolist()


def test_csv_and_h5ad_downloads(client, model, query, tmp_path):
    data = _h5ad_bytes(query, tmp_path)
    expected = moaspace.tl.predict(model, query, compound_key=None)
    res = _post_file(client, "q.h5ad", data, format="csv")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/csv")
    table = pd.read_csv(io.StringIO(res.text))
    assert table["id"].tolist() == query.obs_names.tolist()
    assert table["moa_pred"].tolist() == expected.obs["moa_pred"].astype(str).tolist()
    np.testing.assert_allclose(table["score"], expected.obs["moa_pred_score"], atol=1e-6)
    res = _post_file(client, "q.h5ad", data, format="h5ad")
    assert res.status_code == 200 and "attachment" in res.headers["content-disposition"]
    (tmp_path / "pred.h5ad").write_bytes(res.content)
    pred = ad.read_h5ad(tmp_path / "pred.h5ad")
    assert pred.obs["moa_pred"].astype(str).tolist() == expected.obs["moa_pred"].astype(
        str).tolist()
    np.testing.assert_array_equal(pred.obsm["X_moa"], expected.obsm["X_moa"])


# ------------------------------------------------------------------ the reference endpoints


def test_moas_compounds_map_and_health(client, model):
    assert client.get("/healthz").json() == {"status": "ok"}
    moas = client.get("/api/moas").json()
    classes = sorted(set(model.atlas.obs["moa"].astype(str)))
    assert [m["moa"] for m in moas] == classes and all(m["explained"] for m in moas)
    detail = client.get(f"/api/moas/{classes[0]}").json()
    members = model.atlas.obs.loc[model.atlas.obs["moa"] == classes[0], "pert_id"]
    assert {m["compound"] for m in detail["members"]} == set(members.astype(str))
    assert len(detail["prototype"]) == model.atlas.n_vars
    assert abs(np.linalg.norm(detail["prototype"]) - 1) < 1e-4
    assert detail["explanation"]["genes"][0]["symbol"] == "GENE1"
    compound = str(members.iloc[0])
    near = client.get(f"/api/compounds/{compound}/neighbors", params={"k": 3}).json()
    assert near["moa"] == classes[0] and len(near["neighbors"]) == 3
    assert compound not in [n["compound"] for n in near["neighbors"]]
    sims = [n["similarity"] for n in near["neighbors"]]
    assert sims == sorted(sims, reverse=True)
    _assert_one_line_error(client.get("/api/moas/no such MoA"), 404, "no MoA 'no such MoA'")
    _assert_one_line_error(client.get("/api/compounds/BRD-X/neighbors"), 404, "'BRD-X'")
    _assert_one_line_error(client.get(f"/api/compounds/{compound}/neighbors?k=0"), 422, "k")
    points = client.get("/api/map").json()
    assert len(points["points"]["x"]) == model.atlas.n_obs
    assert points["classes"] == classes


def test_page_docs_and_assets_work_offline(client):
    page = client.get("/")
    assert page.status_code == 200 and "results-table" in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    for asset in ("app.js", "style.css", "docs.js"):
        res = client.get(f"/static/{asset}")
        assert res.status_code == 200 and len(res.text) > 100
        # the SVG namespace is a name, not an address
        assert not re.findall(r"https?://(?!www\.w3\.org/2000/svg)", res.text), asset
    assert not re.findall(r"https?://", page.text)
    assert client.get("/static/..%2Fserve%2F_app.py").status_code == 404
    assert client.get("/static/index.html").status_code == 404
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/predict", "/api/moas", "/api/moas/{moa}",
                 "/api/compounds/{compound}/neighbors", "/healthz"):
        assert path in paths, path


# ------------------------------------------------------------------ bad input, on purpose


def test_wrong_genes_are_a_400_naming_them(client, query, tmp_path):
    bad = query.copy()
    bad.var_names = [f"ENSG{i:011d}" for i in range(bad.n_vars)]
    res = _post_file(client, "q.h5ad", _h5ad_bytes(bad, tmp_path))
    _assert_one_line_error(res, 400, "64 of the model's 64 genes", "missing from the query")
    symbols = query.copy()
    symbols.var_names = symbols.var["gene_symbol"].astype(str).to_numpy()
    res = _post_file(client, "q.h5ad", _h5ad_bytes(symbols, tmp_path))
    _assert_one_line_error(res, 400, "look like gene symbols")


def test_nan_is_a_400(client, query, tmp_path):
    bad = query.copy()
    bad.X[3, 5] = np.nan
    _assert_one_line_error(_post_file(client, "q.h5ad", _h5ad_bytes(bad, tmp_path)), 400,
                           "NaN")
    values = np.asarray(query.X, dtype=np.float64)[:2].tolist()
    values[1][7] = float("nan")  # JSON has no NaN; Python's json (and many clients) write it
    res = client.post("/api/predict", content=json.dumps({"genes": query.var_names.tolist(),
                                                          "values": values}),
                      headers={"content-type": "application/json"})
    _assert_one_line_error(res, 400, "NaN")
    text = "sig\t" + "\t".join(query.var_names) + "\nS1" + "\tnan" * query.n_vars + "\n"
    _assert_one_line_error(_post_file(client, "q.tsv", text.encode()), 400, "q.tsv", "NaN")


def test_empty_inputs_are_a_400(client):
    for name in ("q.tsv", "q.h5ad", "pasted"):
        _assert_one_line_error(_post_file(client, name, b""), 400, "empty")
    _assert_one_line_error(client.post("/api/predict", json={"genes": [], "values": []}), 400,
                           "non-empty")
    header_only = b"sig\t1000\t1001\n"
    _assert_one_line_error(_post_file(client, "q.tsv", header_only), 400, "q.tsv")


def test_huge_upload_is_a_413(client):
    big = b"0" * 2_100_000
    res = _post_file(client, "q.tsv", big)
    _assert_one_line_error(res, 413, "larger than the limit of 2,000,000 bytes")

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(30):
            yield b"x" * 100_000

    res = client.post("/api/predict", content=chunks(),
                      headers={"content-type": "application/json"})
    _assert_one_line_error(res, 413, "larger than the limit")


def test_binary_junk_is_a_400(client):
    junk = bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8))
    for name in ("q.gctx", "q.h5ad", "q.tsv", "q.gct", "junk.bin"):
        res = _post_file(client, name, b"\x00\x01" + junk)
        detail = _assert_one_line_error(res, 400)
        assert "/tmp" not in detail and "moaspace-upload" not in detail, detail
    res = _post_file(client, "q.gctx", b"\x89HDF\r\n\x1a\n" + junk)  # an HDF5 signature only
    _assert_one_line_error(res, 400, "q.gctx")


def test_gzip_and_hdf5_bombs_are_refused(client, tmp_path):
    bomb = gzip.compress(b"sig\t1000\n" + b"0" * 30_000_000, 9)
    assert len(bomb) < 100_000
    _assert_one_line_error(_post_file(client, "q.tsv.gz", bomb), 400,
                           "q.tsv.gz", "decompresses to more than the limit")
    _assert_one_line_error(_post_file(client, "pasted", bomb), 400, "decompresses")
    path = tmp_path / "bomb.gctx"
    write_gctx(path, np.zeros((3000, 978), np.float32), [f"s{i}" for i in range(3000)],
               landmarks()["pr_gene_id"], compression="gzip")
    assert path.stat().st_size < 500_000
    _assert_one_line_error(_post_file(client, "q.gctx", path.read_bytes()), 400,
                           "once decompressed, over the limit")


def test_wrong_content_type_and_malformed_requests(client):
    res = client.post("/api/predict", content=b"1,2,3", headers={"content-type": "text/csv"})
    _assert_one_line_error(res, 415, "multipart/form-data", "text/csv")
    res = client.post("/api/predict", content=b"{not json",
                      headers={"content-type": "application/json"})
    _assert_one_line_error(res, 400, "not valid JSON")
    _assert_one_line_error(client.post("/api/predict", json=[1, 2]), 400, "'genes' and 'values'")
    _assert_one_line_error(client.post("/api/predict", json={"genes": ["1"], "values": [[1, 2]]}),
                           400, "values have shape")
    res = client.post("/api/predict", content=b"--xx\r\ngarbage",
                      headers={"content-type": "multipart/form-data; boundary=xx"})
    assert 400 <= res.status_code < 500
    res = client.post("/api/predict", data={"other": "1"},
                      files={"notfile": ("q.tsv", b"a", "text/plain")})
    _assert_one_line_error(res, 400, "field 'file'")
    _assert_one_line_error(client.post("/api/predict?format=xml", json={}), 422, "format")
    _assert_one_line_error(client.get("/api/predict"), 405)


def test_mismatched_names_and_group_column(client, query, tmp_path):
    data = _h5ad_bytes(query, tmp_path)
    _assert_one_line_error(_post_file(client, "q.gct", data), 400, "named .gct but")
    _assert_one_line_error(_post_file(client, "q.h5ad", b"sig\t1\nA\t1\n"), 400,
                           "named .h5ad but not an HDF5 file")
    res = _post_file(client, "q.h5ad", data, group_by="no_such_column")
    _assert_one_line_error(res, 400, "no column 'no_such_column'")


def test_no_user_path_reaches_the_file_system(client, query, tmp_path, uploads):
    before = sorted(uploads.iterdir())
    name = "../../../../tmp/evil_moaspace_" + tmp_path.name + ".h5ad"
    res = _post_file(client, name, _h5ad_bytes(query, tmp_path))
    assert res.status_code == 200
    for folder in (Path(tempfile.gettempdir()), uploads, uploads.parent, tmp_path):
        assert not list(folder.glob("evil_moaspace_*")), folder
    # failures too leave nothing behind in the upload folder
    for data in (b"", b"\x00junk", gzip.compress(b"x" * 10_000_000)):
        _post_file(client, "q.tsv.gz", data)
    assert sorted(uploads.iterdir()) == before == []


def test_h5ad_with_a_pickle_is_never_unpickled(client, query, tmp_path):
    marker = tmp_path / "unpickled"

    class Boom:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "pickle.h5ad"
    write_h5ad(query, path)
    with h5py.File(path, "r+") as handle:
        handle["uns"].create_dataset("evil", data=np.void(pickle.dumps(Boom())))
    res = _post_file(client, "q.h5ad", path.read_bytes())
    assert res.status_code in (200, 400)
    assert not marker.exists()


def test_token_guards_the_api_and_the_page(saved_model):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    with pytest.raises(moaspace.errors.MoaspaceError, match="needs --token"):
        check_bind("0.0.0.0", None)
    with pytest.raises(moaspace.errors.MoaspaceError, match="at least 8"):
        check_bind("0.0.0.0", "short")
    check_bind("0.0.0.0", TOKEN)
    app = create_app(saved_model["model_dir"], token=TOKEN)
    with TestClient(app, raise_server_exceptions=False) as c:
        _assert_one_line_error(c.get("/api/moas"), 401, "token")
        _assert_one_line_error(c.get("/api/moas", headers={"Authorization": "Bearer nope"}), 401)
        assert c.get("/api/moas", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert c.get("/api/moas", headers={"X-Moaspace-Token": TOKEN}).status_code == 200
        body = {"genes": ["1000"], "values": [[0.0]]}
        _assert_one_line_error(c.post("/api/predict", json=body), 401)
        page = c.get("/")
        assert page.status_code == 401 and 'name="token"' in page.text
        assert c.get("/?token=wrong").status_code == 401
        res = c.get(f"/?token={TOKEN}", follow_redirects=False)
        assert res.status_code == 303 and "httponly" in res.headers["set-cookie"].lower()
        assert c.get("/").status_code == 200  # the cookie now
        assert c.get("/api/moas").status_code == 200
        assert c.get("/healthz").status_code == 200


def test_every_error_is_json_with_one_line(client):
    res = client.post("/api/predict", content=json.dumps({"genes": ["1000"] * 2,
                                                          "values": [[1, 2]]}),
                      headers={"content-type": "application/json"})
    _assert_one_line_error(res, 400, "duplicated gene ids")


def test_cli_serve_refuses_before_binding(saved_model, tmp_path):
    from _cli import assert_clean_failure, cli

    res = cli("serve", saved_model["model_dir"], "--host", "0.0.0.0")
    assert_clean_failure(res, "binding to 0.0.0.0", "needs --token")
    res = cli("serve", saved_model["model_dir"], "--host", "0.0.0.0", "--token", "short")
    assert_clean_failure(res, "--token must be at least 8 characters")
    res = cli("serve", tmp_path)
    assert_clean_failure(res, "config.json is missing")
    res = cli("serve", saved_model["model_dir"], "--port", "0")
    assert res.code == 2
