"""The bare baseline: FastAPI on uvicorn (uvloop, httptools), one worker, ONNX Runtime inline.

No batching, no metrics, no validation beyond what the model needs: the least a Python
server can do to serve the same models with the same JSON contract as the service.
Usage: python bench/baseline_app.py --store STORE --port PORT [--threads N]
"""

import argparse

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from store_format import load_verified

parser = argparse.ArgumentParser()
parser.add_argument("--store", required=True)
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
args = parser.parse_args()

options = ort.SessionOptions()
options.intra_op_num_threads = args.threads
options.add_session_config_entry("session.intra_op.allow_spinning", "0")
models = {}
for name in ("classifier", "forecaster"):
    manifest, path = load_verified(args.store, name)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    models[name] = (session, [t.name for t in manifest.inputs], manifest.outputs[0].name)
app = FastAPI()


@app.get("/readyz")
async def readyz() -> dict:
    return {"ready": True}


@app.post("/classify")
async def classify(request: Request) -> JSONResponse:
    session, [images], output = models["classifier"]
    batch = np.asarray((await request.json())["images"], dtype=np.float32).reshape(-1, 1, 8, 8)
    [probabilities] = session.run([output], {images: batch})
    return JSONResponse({"labels": probabilities.argmax(1).tolist(), "probabilities": probabilities.tolist()})


@app.post("/forecast")
async def forecast(request: Request) -> JSONResponse:
    session, [history, lengths], output = models["forecaster"]
    forecasts = []
    for row in (await request.json())["series"]:  # one call per row: nothing is padded
        feeds = {history: np.asarray([row], dtype=np.float32), lengths: np.array([len(row)], np.int64)}
        forecasts.append(session.run([output], feeds)[0][0].tolist())
    return JSONResponse({"forecasts": forecasts})


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        workers=1,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )
