"""The FastAPI application: the page, its assets and the JSON API over one loaded model."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from importlib import resources
from pathlib import Path

import anyio.to_thread
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from moaspace._version import __version__
from moaspace.errors import InputError
from moaspace.io.query import GZIP_MAGIC, HDF5_MAGIC, query_from_matrix, read_query, sniff_format
from moaspace.serve._guard import (
    TOKEN_COOKIE,
    BodyLimit,
    install_error_handlers,
    one_line,
    security_headers,
    supplied_token,
    token_ok,
)
from moaspace.serve._results import answer, answer_csv, answer_h5ad
from moaspace.serve._state import ServiceState

logger = logging.getLogger(__name__)

#: default cap on a request body (an upload), and on what it may decompress to
MAX_UPLOAD_BYTES = 64 * 2**20
EXPAND_FACTOR = 4
#: the page's assets: a fixed list (no request path ever reaches the file system)
ASSETS = {"app.js": "text/javascript", "style.css": "text/css", "docs.js": "text/javascript"}
#: file name endings an upload may have (else its first bytes decide)
UPLOAD_SUFFIXES = (".h5ad", ".gctx", ".h5", ".gct.gz", ".tsv.gz", ".txt.gz", ".csv.gz",
                   ".gct", ".tsv", ".txt", ".csv")
PREDICT_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary",
                 "description": "GCT, GCTX, TSV, CSV or .h5ad (text also .gz)"},
        "group_by": {"type": "string", "description": "obs column: per-compound answers"}}}},
    "application/json": {"schema": {"type": "object", "required": ["genes", "values"],
                                     "properties": {
        "genes": {"type": "array", "items": {"type": "string"},
                  "description": "Entrez ids (or landmark probe ids), one per column"},
        "values": {"type": "array", "items": {"type": "array", "items": {"type": "number"}},
                   "description": "z-scores, one row per signature"},
        "signatures": {"type": "array", "items": {"type": "string"}},
        "obs": {"type": "object", "description": "metadata columns, one value per row"},
        "group_by": {"type": "string"}}}}}}}


def _asset(name: str) -> bytes:
    return (resources.files("moaspace.serve") / "static" / name).read_bytes()


def create_app(model_dir, *, token: str | None = None, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               max_expanded_bytes: int | None = None, explain_dir=None,
               tmp_dir=None, threads: int | None = None) -> FastAPI:
    """The service over one model directory (loaded here, once).

    Parameters
    ----------
    model_dir : str or os.PathLike
        A saved model (``moaspace train``).
    token : str, optional
        When set, the API and the page need it (``Authorization: Bearer``, the
        ``X-Moaspace-Token`` header, or the page's cookie set by ``/?token=...``).
    max_upload_bytes : int, default 64 MiB
        Largest request body; a larger one is answered 413.
    max_expanded_bytes : int, optional
        Most bytes an upload may decompress to (gzip text, HDF5 datasets); default
        4 x ``max_upload_bytes``.
    explain_dir : str or os.PathLike, optional
        ``moaspace explain`` output (default: ``explain/`` in or beside the model directory).
    tmp_dir : str or os.PathLike, optional
        Where uploads are spooled (each in its own folder, removed after the request).
    threads : int, optional
        Worker threads that parse uploads and run inference (which holds one lock);
        default ``2 x`` the CPUs, at most 8: more threads on CPU-bound work only add memory.

    Returns
    -------
    fastapi.FastAPI
        The application (run it with uvicorn).
    """
    state = ServiceState(model_dir, explain_dir)
    limits = {"expanded": max_expanded_bytes or EXPAND_FACTOR * max_upload_bytes,
              "tmp": None if tmp_dir is None else str(tmp_dir)}
    n_threads = threads or min(8, 2 * len(os.sched_getaffinity(0)))

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        anyio.to_thread.current_default_thread_limiter().total_tokens = n_threads
        yield

    app = FastAPI(title="moaspace", version=__version__, docs_url=None, redoc_url=None,
                  lifespan=lifespan, description="MoA calls, nearest reference compounds and a map of the "
                              "reference space for LINCS L1000 signatures.")
    app.state.moaspace = state
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=max_upload_bytes)

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        response = await call_next(request)
        security_headers(response)
        return response

    def auth(request: Request) -> None:
        if not token_ok(token, supplied_token(request)):
            raise HTTPException(401, "a token is needed: Authorization: Bearer <token>")

    _page_routes(app, token, auth)
    _api_routes(app, state, auth, limits)
    return app


def _page_routes(app: FastAPI, token: str | None, auth) -> None:
    @app.get("/", include_in_schema=False)
    def page(request: Request, token_param: str | None = Query(None, alias="token")):
        if token_param is not None and token_ok(token, token_param):
            response = RedirectResponse("./", status_code=303)
            response.set_cookie(TOKEN_COOKIE, token_param, httponly=True, samesite="strict")
            return response
        if not token_ok(token, supplied_token(request)):
            return HTMLResponse(_asset("login.html"), status_code=401)
        return HTMLResponse(_asset("index.html"))

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(auth)])
    def docs():
        return HTMLResponse(_asset("docs.html"))

    @app.get("/static/{name}", include_in_schema=False)
    def asset(name: str):  # the package's own code and style: no data, no token needed
        if name not in ASSETS:
            raise HTTPException(404, "no such asset")
        return Response(_asset(name), media_type=ASSETS[name])

    @app.get("/healthz", summary="Liveness: the model is loaded")
    def healthz():
        return {"status": "ok"}


def _api_routes(app: FastAPI, state: ServiceState, auth, limits: dict) -> None:
    guarded = [Depends(auth)]

    @app.get("/api/info", dependencies=guarded, summary="The model: MoAs, compounds, genes")
    def info():
        return state.info()

    @app.get("/api/map", dependencies=guarded,
             summary="The 2-D map of the reference space (PCA of the atlas embeddings)")
    def reference_map():
        return {"classes": state.classes, "points": state.map_points,
                "centres": state.map_centres}

    @app.get("/api/moas", dependencies=guarded, summary="Every MoA of the model")
    def moas():
        return state.moa_summary()

    @app.get("/api/moas/{moa:path}", dependencies=guarded,
             summary="One MoA: members, prototype, map position, top genes and pathways")
    def moa(moa: str):
        try:
            return state.moa_detail(moa)
        except KeyError:
            raise HTTPException(404, f"no MoA {one_line(moa, 100)!r} in this model") from None

    @app.get("/api/compounds/{compound:path}/neighbors", dependencies=guarded,
             summary="Reference compounds nearest to a reference compound")
    def neighbors(compound: str, k: int = Query(10, ge=1, le=100)):
        try:
            return {"compound": compound, "moa": state.compound_moa[compound],
                    "neighbors": state.neighbors(compound, k)}
        except KeyError:
            raise HTTPException(404, f"no reference compound {one_line(compound, 100)!r}"
                                ) from None

    @app.post("/api/predict", dependencies=guarded, openapi_extra=PREDICT_BODY,
              summary="MoA calls for uploaded signatures (a file or a JSON matrix)")
    async def predict(request: Request,
                      fmt: str = Query("json", alias="format", pattern="^(json|csv|h5ad)$"),
                      group_by: str | None = Query(None, max_length=200)):
        """Answers per signature, or per group of ``group_by`` (an obs column such as
        ``pert_id``). ``format=csv`` or ``h5ad`` returns the same answer as a file."""
        adata, form_group = await _read_request(request, state, limits)
        group_by = group_by or form_group or None
        result = await run_in_threadpool(state.predict, adata, group_by)
        if fmt == "h5ad":
            body = await run_in_threadpool(answer_h5ad, result)
            return Response(body, media_type="application/x-hdf5", headers={
                "Content-Disposition": 'attachment; filename="moaspace_predictions.h5ad"'})
        payload = await run_in_threadpool(answer, result, state, group_by)
        if fmt == "csv":
            return Response(answer_csv(payload), media_type="text/csv", headers={
                "Content-Disposition": 'attachment; filename="moaspace_predictions.csv"'})
        return JSONResponse(payload)


async def _read_request(request: Request, state: ServiceState, limits: dict):
    """The request's query as AnnData (and the form's ``group_by``), by content type."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        return await _read_upload(request, state, limits)
    if ctype == "application/json":
        try:
            data = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"the body is not valid JSON ({one_line(exc, 120)})") from None
        if not isinstance(data, dict) or "values" not in data or "genes" not in data:
            raise InputError("the JSON body must be an object with 'genes' and 'values' "
                             "(and optionally 'signatures', 'obs', 'group_by')")
        adata = await run_in_threadpool(
            query_from_matrix, data["values"], data["genes"], data.get("signatures"),
            data.get("obs"), source="the JSON matrix")
        return adata, data.get("group_by")
    raise HTTPException(415, "send a file as multipart/form-data (field 'file') or a JSON "
                             f"matrix as application/json, not {one_line(ctype, 80) or 'no type'}")


def _display_name(filename: str | None) -> str:
    """The client's file name for messages only: its last part, printable, short."""
    name = re.split(r"[\\/]", filename or "")[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()[:100]
    return name or "the upload"


def _upload_suffix(filename: str | None, head: bytes) -> str:
    """The suffix the temporary file gets: the client's, when it is one of ours and the
    first bytes agree with it; else told from the first bytes."""
    name = (filename or "").lower()
    suffix = next((s for s in UPLOAD_SUFFIXES if name.endswith(s)), None)
    if suffix is None:
        return sniff_format(head)
    if not head:
        raise InputError("the file is empty")
    binary = head.startswith(HDF5_MAGIC)
    if suffix in (".h5ad", ".gctx", ".h5") and not binary:
        raise InputError(f"named {suffix} but not an HDF5 file")
    if suffix.endswith(".gz") != head.startswith(GZIP_MAGIC) or (binary and suffix not in (
            ".h5ad", ".gctx", ".h5")):
        raise InputError(f"named {suffix} but its content is {sniff_format(head)} data")
    return suffix


async def _read_upload(request: Request, state: ServiceState, limits: dict):
    async with request.form(max_files=1, max_fields=10) as form:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise InputError("no file in the form: send it in the field 'file'")
        group_by = form.get("group_by")
        name = _display_name(upload.filename)
        with tempfile.TemporaryDirectory(prefix="moaspace-upload-", dir=limits["tmp"]) as tmp:
            head = await upload.read(4096)
            try:
                suffix = _upload_suffix(upload.filename, head)
            except InputError as exc:
                raise InputError(f"{name}: {exc}") from None
            path = Path(tmp) / f"query{suffix}"
            with open(path, "wb") as fh:
                fh.write(head)
                while chunk := await upload.read(1 << 20):
                    fh.write(chunk)
            try:
                adata = await run_in_threadpool(read_query, path, gene_ids=state.model.genes,
                                                max_bytes=limits["expanded"])
            except InputError as exc:
                raise InputError(str(exc).replace(str(path), name)) from None
            except Exception as exc:  # a reader's unexpected failure on a hostile file
                raise InputError(f"{name}: cannot read ({type(exc).__name__}: "
                                 f"{one_line(exc, 200)})".replace(str(path), name)) from None
    return adata, group_by if isinstance(group_by, str) else None


def app_from_env() -> FastAPI:
    """The app for ``uvicorn --factory`` (``moaspace serve --workers N``): settings from the
    ``MOASPACE_SERVE_*`` environment variables the command sets."""
    env = os.environ
    return create_app(env["MOASPACE_SERVE_MODEL_DIR"], token=env.get("MOASPACE_SERVE_TOKEN"),
                      max_upload_bytes=int(env.get("MOASPACE_SERVE_MAX_UPLOAD",
                                                   MAX_UPLOAD_BYTES)),
                      explain_dir=env.get("MOASPACE_SERVE_EXPLAIN_DIR") or None)
