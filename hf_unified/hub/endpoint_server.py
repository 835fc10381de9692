"""The HTTP server of a custom Inference Endpoints container for hf-unified folders (`endpoint/Dockerfile`).

The endpoints' default container (huggingface-inference-toolkit) cannot start with transformers 5, which every
hf-unified folder needs: it imports `transformers.file_utils.is_tf_available`, removed in transformers 5, and its image
pins torch 2.5. A custom container with this server serves the same repositories the same way:

- a folder with a `handler.py` (every pushed custom-code folder) is served by its `EndpointHandler(model_dir)`,
  imported with the folder on `sys.path`, as the toolkit imports it;
- a folder without one (the native CLIP export) is served by the pipeline the toolkit would build: task `HF_TASK`
  (default `zero-shot-image-classification`), `trust_remote_code` from `HF_TRUST_REMOTE_CODE`.

Routes: `GET /health` (and `GET /`) answer 200 once the model is loaded. `POST /` (or `/predict`) takes the endpoint
request, `{"inputs": <base64 image>, "parameters": {"candidate_labels": [...]}}` as JSON, or the image bytes as the
body with `candidate_labels` (comma-separated) and `hypothesis_template` in the query string, and answers the
handler's JSON. A request that cannot be served gets a 4xx status with `{"error": ...}`: 400 a malformed body or an
`{"error"}` answer of the handler (or of the pipeline), 404 an unknown route, 411 no length, 413 a body over
`--max_body_bytes`, 415 an unsupported content type; 500 only when the handler itself raises.

    python endpoint_server.py --model_dir /repository --port 8080   # in the container (HF_MODEL_DIR, PORT)
    python -m hf_unified.hub.endpoint_server --model_dir FOLDER --host 127.0.0.1 --port 8080   # locally

It imports only the standard library until it loads the folder (transformers, torch, Pillow then), never
`hf_unified`, so the container needs this one file besides its requirements.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

logger = logging.getLogger("endpoint_server")

HANDLER_FILE = "handler.py"
DEFAULT_TASK = "zero-shot-image-classification"
DEFAULT_MODEL_DIR = "/repository"  # where Inference Endpoints mount the repository in a custom container
DEFAULT_PORT = 8080  # endpoint/Dockerfile's; the server runs as a user that cannot bind 80
MAX_BODY_BYTES = 32 * 1024 * 1024  # a few large images as base64; the handler bounds the image itself
PREDICT_PATHS = ("/", "/predict")
HEALTH_PATHS = ("/", "/health")
TRUE_VALUES = ("1", "true", "yes", "on")


class RequestError(ValueError):
    """A request this server refuses before the handler sees it; `status` is the HTTP status to answer."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def env_flag(environ, name: str) -> bool:
    """A boolean environment variable as the toolkit reads it (`HF_TRUST_REMOTE_CODE=1` / `true`)."""
    return str(environ.get(name, "0")).strip().lower() in TRUE_VALUES


def toolkit_pipeline(model_dir: str | Path, task: str, trust_remote_code: bool):
    """The pipeline the default toolkit builds for a folder without `handler.py` (its `get_pipeline` on a CPU: for
    image tasks the folder is also passed as the feature extractor), called as its `HuggingFaceHandler` calls it."""
    from transformers import pipeline

    kwargs = {"feature_extractor": str(model_dir)} if task == DEFAULT_TASK else {"tokenizer": str(model_dir)}
    classifier = pipeline(task=task, model=str(model_dir), device=-1, trust_remote_code=trust_remote_code, **kwargs)

    def answer(data: dict[str, Any]) -> Any:
        """The pipeline's answer, or `{"error"}` for a request it cannot serve (the toolkit answers those 400)."""
        inputs, parameters = data.get("inputs", data), data.get("parameters")
        try:
            if isinstance(inputs, (bytes, bytearray)):
                inputs = _decode_image(inputs)
            if parameters is not None and not isinstance(parameters, dict):
                raise ValueError(f"parameters must be an object, got {type(parameters).__name__}")
            return classifier(inputs, **parameters) if parameters else classifier(inputs)
        except Exception as error:  # noqa: BLE001 - a bad image, a missing field: the request's fault
            return {"error": f"{type(error).__name__}: {' '.join(str(error).split())}"}

    return answer


def _decode_image(data: bytes):
    import io

    from PIL import Image

    return Image.open(io.BytesIO(data))


def load_handler(model_dir: str | Path, environ=os.environ):
    """The callable serving `model_dir`: its `handler.py`'s `EndpointHandler`, else the toolkit's pipeline."""
    model_dir = Path(model_dir).resolve()
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} holds no model (no config.json): mount the repository there")
    handler_file = model_dir / HANDLER_FILE
    if not handler_file.is_file():
        return toolkit_pipeline(
            model_dir, environ.get("HF_TASK", DEFAULT_TASK), env_flag(environ, "HF_TRUST_REMOTE_CODE")
        )
    sys.path.insert(0, str(model_dir))  # the handler imports the folder's own modules (image_processing.py)
    spec = importlib.util.spec_from_file_location("handler", handler_file)
    module = importlib.util.module_from_spec(spec)
    sys.modules["handler"] = module
    spec.loader.exec_module(module)
    return module.EndpointHandler(str(model_dir))


def read_request(content_type: str, body: bytes, query: str) -> dict[str, Any]:
    """The endpoint request of an HTTP body: JSON as it is, or image bytes with the parameters in the query string.

    Raises:
        RequestError: the body is not a JSON object or an image, or its content type is neither.
    """
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind in ("application/json", ""):
        try:
            data = json.loads(body or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"the body is not valid JSON ({error})") from None
        if not isinstance(data, dict):
            raise RequestError(
                HTTPStatus.BAD_REQUEST, f"the body must be a JSON object with 'inputs', got {type(data).__name__}"
            )
        return data
    if kind.startswith("image/") or kind == "application/octet-stream":
        parameters = {name: values[-1] for name, values in parse_qs(query).items()}
        if "candidate_labels" in parameters:  # a query string has no lists: "cat,dog"
            parameters["candidate_labels"] = [label.strip() for label in parameters["candidate_labels"].split(",")]
        return {"inputs": body, "parameters": parameters}
    raise RequestError(
        HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
        f"content type {kind!r} is not served: send application/json or the image bytes (image/*)",
    )


def build_server(handler, host: str, port: int, max_body_bytes: int = MAX_BODY_BYTES) -> ThreadingHTTPServer:
    """A threaded HTTP server answering with `handler` (one prediction at a time; health checks meanwhile)."""
    lock = threading.Lock()

    class Routes(BaseHTTPRequestHandler):
        server_version = "hf-unified-endpoint"

        def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
            logger.info("%s %s", self.address_string(), format % args)

        def _send(self, status: HTTPStatus, payload: Any) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802 - http.server's naming
            if urlsplit(self.path).path in HEALTH_PATHS:
                self._send(HTTPStatus.OK, {"status": "ok"})
            else:
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}: GET /health or POST /"})

        def do_POST(self):  # noqa: N802
            url = urlsplit(self.path)
            try:
                if url.path not in PREDICT_PATHS:
                    raise RequestError(HTTPStatus.NOT_FOUND, f"no route {url.path}: POST / with the request")
                data = read_request(self.headers.get("Content-Type", ""), self._body(), url.query)
            except RequestError as error:
                self.close_connection = True  # an unread body must not be taken for the next request
                self._send(error.status, {"error": str(error)})
                return
            try:
                with lock:
                    answer = handler(data)
            except Exception as error:  # noqa: BLE001 - the server goes on serving
                logger.exception("the handler failed")
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(error).__name__}: {error}"})
                return
            if isinstance(answer, dict) and "error" in answer:
                self._send(HTTPStatus.BAD_REQUEST, answer)
            else:
                self._send(HTTPStatus.OK, answer)

        def _body(self) -> bytes:
            length = self.headers.get("Content-Length")
            if length is None:
                raise RequestError(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length")
            if not length.isdigit():
                raise RequestError(HTTPStatus.BAD_REQUEST, f"Content-Length {length!r} is not a number of bytes")
            if int(length) > max_body_bytes:
                raise RequestError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"the body is {int(length):,} bytes; this endpoint reads at most {max_body_bytes:,}",
                )
            return self.rfile.read(int(length))

    return ThreadingHTTPServer((host, port), Routes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="endpoint_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", default=os.environ.get("HF_MODEL_DIR", DEFAULT_MODEL_DIR))
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", DEFAULT_PORT)))
    parser.add_argument("--max_body_bytes", type=int, default=MAX_BODY_BYTES)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        handler = load_handler(args.model_dir)
    except (FileNotFoundError, ImportError, OSError, ValueError) as error:
        print(f"endpoint_server: cannot serve {Path(args.model_dir).resolve()}: {error}", file=sys.stderr)
        return 1
    server = build_server(handler, args.host, args.port, args.max_body_bytes)
    print(f"endpoint_server: serving {Path(args.model_dir).resolve()} on http://{args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
