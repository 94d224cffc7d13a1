"""The ``serve`` command: the query page and JSON API over one trained model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from moaspace.cli._common import handle_errors, logger, state
from moaspace.errors import MoaspaceError


@handle_errors
def serve(
    model_dir: Annotated[Path, typer.Argument(help="Trained model directory.")],
    host: Annotated[str, typer.Option(
        help="Address to bind; anything but loopback needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(
        help="Worker processes (each loads the model).", min=1, max=64)] = 1,
    token: Annotated[str | None, typer.Option(
        envvar="MOASPACE_TOKEN", show_envvar=True,
        help="Secret the API and the page then require (Authorization: Bearer TOKEN; "
             "the page: open /?token=TOKEN once).")] = None,
    max_upload_mb: Annotated[float, typer.Option(
        help="Largest upload in MiB (413 above it); it may decompress to 4x that.",
        min=0.001)] = 64.0,
    explain: Annotated[Path | None, typer.Option(
        help="Output of `moaspace explain` (default: explain/ in or beside MODEL_DIR).")] = None,
) -> None:
    """Serve a page and a JSON API that call MoAs for uploaded signatures.

    The page (/) takes a GCT, GCTX, TSV, CSV or .h5ad file, or a pasted matrix, and
    shows per-signature or per-compound calls, the nearest reference compounds, a map of
    the reference space and the called MoAs' top genes and pathways; /docs lists the API
    (POST /api/predict, GET /api/moas, /api/moas/{moa}, /api/compounds/{id}/neighbors,
    /healthz). The model is loaded once; see docs/serve.md for the guarantees.

    Example:

        moaspace serve demo_out/model --port 8000
    """
    import uvicorn

    from moaspace.serve import check_bind, create_app

    check_bind(host, token)
    if not (model_dir / "config.json").is_file():
        raise MoaspaceError(f"{model_dir}: config.json is missing; not a saved moaspace model")
    max_upload = int(max_upload_mb * 2**20)
    log_level = "debug" if state["verbose"] else "warning" if state["quiet"] else "info"
    shown = host if ":" not in host else f"[{host}]"
    logger.info("moaspace serve: http://%s:%d/%s", shown, port,
                "?token=<your token>" if token else "")
    if workers == 1:
        app = create_app(model_dir, token=token, max_upload_bytes=max_upload,
                         explain_dir=explain)
        uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False)
        return
    # several processes: each builds the app from these settings (uvicorn's factory)
    os.environ.update({"MOASPACE_SERVE_MODEL_DIR": str(model_dir),
                       "MOASPACE_SERVE_MAX_UPLOAD": str(max_upload),
                       "MOASPACE_SERVE_EXPLAIN_DIR": str(explain or "")})
    if token:
        os.environ["MOASPACE_SERVE_TOKEN"] = token
    uvicorn.run("moaspace.serve:app_from_env", factory=True, host=host, port=port,
                workers=workers, log_level=log_level, server_header=False)
