"""kerasformer-serve: a development stand-in for TensorFlow Serving's REST API.

Serves the SavedModels under `--model-base-path` (`BASE/NAME/VERSION/`) with the routes and
JSON formats of TensorFlow Serving's REST API (https://www.tensorflow.org/tfx/serving/api_rest):

    GET  /v1/models/NAME[/versions/N]             -> {"model_version_status": [...]}
    GET  /v1/models/NAME[/versions/N]/metadata    -> {"model_spec": ..., "metadata": ...}
    POST /v1/models/NAME[/versions/N]:predict     -> {"predictions": ...} or {"outputs": ...}

Every error is `{"error": "message"}` with TF Serving's HTTP status: 400 for a bad request,
404 for an unknown model or version, 413 for a body over `--max-request-bytes`, and the status of
TensorFlow's error code for an error raised inside the graph (INVALID_ARGUMENT -> 400,
INTERNAL/UNKNOWN/DATA_LOSS -> 500). Version labels (`/labels/L`) are not supported (400).

Two paths outside TF Serving's API: `GET /kerasformer/stats` counts requests and graph calls
(to see batching merge requests), and `GET /kerasformer/openapi.json` answers the OpenAPI 3.1
description of all of the above (`export/serving/openapi.py`).

A model name in a path only selects among the models loaded; nothing is read from disk for it.
`--model-name` takes plain folder names only (`export.serving.model_repository.check_model_name`).

Usage:
    kerasformer-serve --model-base-path saved_models [--model-name NAME ...] [--port 8501]
        [--enable-batching [--batching-parameters-file FILE]]
"""

import argparse
import asyncio
import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.routing import Route

from export.serving.batching import Batcher, BatchingParameters, parse_batching_parameters
from export.serving.model_repository import ModelRepository, check_model_name
from export.serving.openapi import openapi_description
from export.serving.rest_codec import format_predict_response, parse_predict_request
from export.serving.status import StatusError, invalid_argument

log = logging.getLogger("kerasformer.serve")

MODEL_PATH = re.compile(
    r"^(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<suffix>/metadata|:[A-Za-z]+)?$"
)


def error_response(status, message, headers=None):
    # A message may quote the request, and JSON may carry a lone surrogate ("\ud800") that UTF-8
    # cannot encode: such characters are written as their escape.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class ServingApp:
    """The HTTP side: routes requests to the repository (and the batcher, when batching)."""

    def __init__(self, repository, max_request_bytes=1 << 20, batcher=None):
        self.repository = repository
        self.max_request_bytes = max_request_bytes
        self.batcher = batcher
        self.predict_requests = 0
        self._executor = ThreadPoolExecutor(thread_name_prefix="predict")

    def starlette(self):
        async def on_http_error(request, error):
            if error.status_code == 404:
                return error_response(404, f"Malformed request: {request.method} {request.url.path}")
            # error.headers: `Allow` on a 405, as RFC 9110 requires.
            return error_response(error.status_code, f"{error.detail}: {request.method} {request.url.path}",
                                  error.headers)

        async def on_unexpected_error(request, error):
            log.exception("unexpected error answering %s %s", request.method, request.url.path)
            return error_response(500, f"{type(error).__name__}: {error}")

        return Starlette(
            routes=[
                Route("/v1/models/{path:path}", self.models, methods=["GET", "POST"]),
                Route("/kerasformer/stats", self.stats, methods=["GET"]),
                Route("/kerasformer/openapi.json", self.openapi, methods=["GET"]),
            ],
            exception_handlers={HTTPException: on_http_error, Exception: on_unexpected_error},
        )

    async def models(self, request):
        try:
            return await self._models(request)
        except StatusError as error:
            return error_response(error.http_status, error.message)

    async def _models(self, request):
        match = MODEL_PATH.match(request.path_params["path"])
        if match is None:
            raise invalid_argument(f"Malformed request: {request.method} {request.url.path}")
        name, version, label, suffix = match.group("name", "version", "label", "suffix")
        if label is not None:
            raise invalid_argument(f"model version labels are not supported by kerasformer-serve (got label {label!r}); "
                                   f"use /versions/N or the latest version")
        if version is not None:
            if not (version.isascii() and version.isdigit()):  # isdigit() alone takes "²" and "١"
                raise invalid_argument(f"Malformed request: {request.method} {request.url.path} (version {version!r} "
                                     f"is not a number)")
            version = int(version)
        if request.method == "GET" and suffix is None:
            return JSONResponse({"model_version_status": self.repository.status(name, version)})
        if request.method == "GET" and suffix == "/metadata":
            model = self.repository.get(name, version)
            return JSONResponse({
                "model_spec": {"name": name, "signature_name": "", "version": str(model.version)},
                "metadata": model.metadata(),
            })
        if request.method == "POST" and suffix == ":predict":
            return await self.predict(request, name, version)
        if request.method == "POST" and suffix in (":classify", ":regress"):
            raise invalid_argument(f"{suffix[1:]} is not supported by kerasformer-serve; use :predict")
        raise invalid_argument(f"Malformed request: {request.method} {request.url.path}")

    async def read_json(self, request):
        """The body as JSON; 413 past max_request_bytes (read in chunks, never all buffered)."""
        declared = request.headers.get("content-length")
        chunks, size = [], 0
        too_large = declared is not None and declared.isdigit() and int(declared) > self.max_request_bytes
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_request_bytes:
                too_large = True
            if too_large:
                chunks = []  # keep reading (and dropping) so the client gets to read the answer
                if size > 64 * self.max_request_bytes:
                    break
            else:
                chunks.append(chunk)
        if too_large:
            raise StatusError("RESOURCE_EXHAUSTED", f"request body of {declared or size} bytes exceeds --max-request-bytes="
                                                     f"{self.max_request_bytes}", http_status=413)
        try:
            text = b"".join(chunks).decode("utf-8")
        except UnicodeDecodeError as error:
            raise invalid_argument(f"the request body is not valid UTF-8: {error}") from None
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise invalid_argument(f"JSON Parse error: {error.msg} at offset {error.pos}") from None
        except RecursionError:
            raise invalid_argument("JSON Parse error: arrays or objects nested too deeply") from None

    async def predict(self, request, name, version):
        body = await self.read_json(request)
        model = self.repository.get(name, version)
        signature, inputs, row_format = parse_predict_request(body, model.signatures)
        self.predict_requests += 1
        if self.batcher is not None:
            outputs = await self.batcher.run(model, signature, inputs)
        else:
            loop = asyncio.get_running_loop()
            outputs = await loop.run_in_executor(self._executor, model.run, signature.name, inputs)
        return JSONResponse(format_predict_response(outputs, row_format))

    async def stats(self, request):
        return JSONResponse({
            "predict_requests": self.predict_requests,
            "graph_calls": sum(m.graph_calls for m in self.repository.loaded_models().values()),
            "batching": None if self.batcher is None else {
                "batched_requests": self.batcher.requests,
                "batches": self.batcher.batches,
                "parameters": vars(self.batcher.parameters),
            },
            "models": {n: m.version for n, m in self.repository.loaded_models().items()},
        })

    async def openapi(self, request):
        return JSONResponse(openapi_description())


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="kerasformer-serve", description="Serve SavedModels with TensorFlow Serving's REST API."
    )
    parser.add_argument("--model-base-path", default="saved_models",
                        help="folder of models: BASE/NAME/VERSION/saved_model.pb (default: saved_models)")
    parser.add_argument("--model-name", action="append", dest="model_names", metavar="NAME",
                        help="a model to serve (repeatable; default: every model folder under the base path)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8501, help="REST port (default: 8501, as TF Serving)")
    parser.add_argument("--poll-seconds", type=float, default=2.0,
                        help="how often to look for new versions (TF Serving's --file_system_poll_wait_seconds)")
    parser.add_argument("--max-request-bytes", type=int, default=1 << 20,
                        help="larger request bodies get 413 (default: 1 MiB)")
    parser.add_argument("--enable-batching", action="store_true",
                        help="merge concurrent predict requests into one graph call")
    parser.add_argument("--batching-parameters-file", metavar="FILE",
                        help="TF Serving's text-proto batching parameters (max_batch_size { value: 32 } ...)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    for name in args.model_names or []:
        try:
            check_model_name(name)
        except ValueError as error:
            parser.error(f"--model-name: {error}")
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    batcher = None
    if args.enable_batching:
        parameters = BatchingParameters()
        if args.batching_parameters_file:
            try:
                with open(args.batching_parameters_file, encoding="utf-8") as file:
                    parameters = parse_batching_parameters(file.read(), args.batching_parameters_file)
            except (OSError, ValueError) as error:
                raise SystemExit(f"kerasformer-serve: --batching-parameters-file: {error}") from None
        batcher = Batcher(parameters)
        log.info("batching enabled: %s", parameters)
    elif args.batching_parameters_file:
        raise SystemExit("kerasformer-serve: --batching-parameters-file needs --enable-batching")
    repository = ModelRepository(args.model_base_path, args.model_names, args.poll_seconds)
    repository.poll()
    if not repository.loaded_models():
        log.warning("no model version loaded yet from %s; polling every %ss", args.model_base_path, args.poll_seconds)
    repository.start_polling()
    app = ServingApp(repository, args.max_request_bytes, batcher).starlette()
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    finally:
        repository.stop()
        if batcher is not None:
            batcher.shutdown()


if __name__ == "__main__":
    main()
