"""The query service (``moaspace serve``): a page and a JSON API over one trained model.

:func:`create_app` loads the model directory once and returns a FastAPI application; the
page (``/``) uploads or pastes signatures and shows the calls, the nearest reference
compounds, a map of the reference space and the called MoAs' explanations; the API
(``/api/...``, described at ``/docs`` and ``/openapi.json``) answers the same in JSON.
Safety rails (upload cap, token, temporary files, one-line errors) are described in
``docs/serve.md``.
"""

from moaspace.serve._app import MAX_UPLOAD_BYTES, app_from_env, create_app
from moaspace.serve._guard import check_bind, is_loopback
from moaspace.serve._results import prediction_entry, prediction_tables
from moaspace.serve._state import ServiceState

__all__ = ["MAX_UPLOAD_BYTES", "ServiceState", "app_from_env", "check_bind", "create_app",
           "is_loopback", "prediction_entry", "prediction_tables"]
