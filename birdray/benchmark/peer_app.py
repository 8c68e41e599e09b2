"""The Serve peer: a plain FastAPI + uvicorn app around the same ``Predictor``, in one process.

What a user would write instead of birdray's Serve app (``python -m birdray.benchmark.peer_app
PACKAGE PORT THREADS``): one route, uploads decoded by ``decode_image``, the model called from
FastAPI's thread pool, top-k JSON back. The benchmark hits it with the same load client.
"""

from __future__ import annotations

import sys
from typing import Any

from fastapi import FastAPI, File, HTTPException, UploadFile

from birdray.images import ImageError, decode_image
from birdray.model.inference import Predictor


def create_app(package: str, threads: int) -> FastAPI:
    predictor = Predictor(package, device="cpu", num_threads=threads)
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"ok": True, "model_version": predictor.version}

    @app.post("/v1/predict")
    def predict(files: list[UploadFile] = File(...), top_k: int = 5) -> dict[str, Any]:
        try:
            images = [decode_image(f.file.read()).image for f in files]
        except ImageError as exc:
            raise HTTPException(415, str(exc)) from exc
        preds = predictor.predict_images(images, top_k)
        return {
            "model": {"version": predictor.version},
            "results": [
                {
                    "file": f.filename,
                    "ok": True,
                    "prediction": {
                        "label": p.label,
                        "species": p.species,
                        "confidence": p.confidence,
                    },
                    "top_k": p.top_k,
                }
                for f, p in zip(files, preds, strict=True)
            ],
        }

    return app


if __name__ == "__main__":
    import uvicorn

    package, port, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    uvicorn.run(create_app(package, threads), host="127.0.0.1", port=port, log_level="warning")
