"""The bare baseline: FastAPI on uvicorn (uvloop, httptools), ONNX Runtime inline.

No batching, no metrics, no validation beyond what the model needs: the least a Python
server can do to serve the same models with the same JSON contract as the service. Each
uvicorn worker process builds its own app (and ONNX Runtime sessions) with ``create_app``,
configured by environment variables: ``BASELINE_STORE`` (the model store) and
``BASELINE_THREADS`` (ONNX Runtime intra-op threads per session, default 1). The benchmark
runs it as

    BASELINE_STORE=model_store python -m uvicorn bench.baseline_app:create_app --factory \\
        --workers N --loop uvloop --http httptools --no-access-log --host 127.0.0.1 --port PORT
"""

import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from store_format import load_verified


def load_models(store: str, threads: int) -> dict[str, tuple]:
    """name -> (session, input names, output name) for the classifier and the forecaster."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    models = {}
    for name in ("classifier", "forecaster"):
        manifest, path = load_verified(store, name)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        models[name] = (session, [t.name for t in manifest.inputs], manifest.outputs[0].name)
    return models


def create_app() -> FastAPI:
    """One worker's app: its own sessions over ``BASELINE_STORE``."""
    models = load_models(os.environ["BASELINE_STORE"], int(os.environ.get("BASELINE_THREADS", "1")))
    app = FastAPI()

    @app.get("/readyz")
    async def readyz() -> dict:
        return {"ready": True}

    @app.post("/classify")
    async def classify(request: Request) -> JSONResponse:
        session, [images], output = models["classifier"]
        batch = np.asarray((await request.json())["images"], dtype=np.float32).reshape(-1, 1, 8, 8)
        [probabilities] = session.run([output], {images: batch})
        return JSONResponse(
            {"labels": probabilities.argmax(1).tolist(), "probabilities": probabilities.tolist()}
        )

    @app.post("/forecast")
    async def forecast(request: Request) -> JSONResponse:
        session, [history, lengths], output = models["forecaster"]
        forecasts = []
        for row in (await request.json())["series"]:  # one call per row: nothing is padded
            feeds = {history: np.asarray([row], dtype=np.float32), lengths: np.array([len(row)], np.int64)}
            forecasts.append(session.run([output], feeds)[0][0].tolist())
        return JSONResponse({"forecasts": forecasts})

    return app
