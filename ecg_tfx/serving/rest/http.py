"""The HTTP server in front of `RestApi`: aiohttp, each request run on a worker thread, within `ServerLimits`.

aiohttp is a maintained, production-grade asyncio server whose event loop keeps accepting connections while model
calls run on worker threads, with a built-in request body limit. A request takes one of the `RequestSlots` before
its body is read (429 when none is free) and must send its body within the read timeout (408). With batching,
`GET /monitoring/prometheus/metrics` (TF Serving's monitoring path) gives the batcher's counters.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import threading
from collections.abc import Mapping

from absl import logging
from aiohttp import web

from ecg_tfx.serving.errors import HTTP_STATUS, INTERNAL_MESSAGE, ServingError
from ecg_tfx.serving.limits import RequestSlots, ServerLimits
from ecg_tfx.serving.rest.api import RestApi
from ecg_tfx.serving.servables import Model

METRICS_PATH = "/monitoring/prometheus/metrics"


def _json_response(status: int, payload: dict) -> web.Response:
    return web.Response(status=status, body=json.dumps(payload, allow_nan=True).encode(),
                        content_type="application/json")


def make_app(models: Mapping[str, Model], limits: ServerLimits, slots: RequestSlots,
             num_threads: int = 4) -> web.Application:
    """The aiohttp application: each request holds one of `slots` while its body is read and it runs."""
    api = RestApi(models)
    batchers = list({id(servable.batcher): servable.batcher for model in models.values()
                     for servable in model.servables.values() if servable.batcher is not None}.values())
    pool = concurrent.futures.ThreadPoolExecutor(num_threads, thread_name_prefix="rest")
    application = web.Application(client_max_size=limits.max_request_bytes)

    async def handle(request: web.Request) -> web.Response:
        path = request.rel_url.raw_path
        if path == METRICS_PATH and request.method == "GET":
            return web.Response(text="".join(batcher.prometheus_text() for batcher in batchers),
                                content_type="text/plain")
        if not re.match(r"/v1/", path, re.I):
            return _json_response(404, {"error": f"Not found: {path}; the REST API lives under /v1/models"})
        if not slots.try_acquire():
            return _json_response(HTTP_STATUS["RESOURCE_EXHAUSTED"], {"error": slots.busy_message()})
        try:
            return await _respond(request, path)
        finally:
            slots.release()

    async def _respond(request: web.Request, path: str) -> web.Response:
        too_large = {"error": f"Request body exceeds the limit of {limits.max_request_bytes} bytes "
                              "(--max_request_bytes)"}
        if (request.content_length or 0) > limits.max_request_bytes:
            return _json_response(413, too_large)
        try:
            body = await asyncio.wait_for(request.read(), limits.read_timeout_s)
        except web.HTTPRequestEntityTooLarge:
            return _json_response(413, too_large)
        except asyncio.TimeoutError:
            return _json_response(408, {"error": f"Request body not received within {limits.read_timeout_s:g} s "
                                                 "(--read_timeout_s)"})
        try:
            payload = await asyncio.get_running_loop().run_in_executor(pool, api.handle, request.method, path, body)
        except ServingError as error:
            return _json_response(error.status, {"error": error.message})
        except Exception:  # a bug must cost one request a 500, never the server, and show no internals
            logging.exception("internal error serving %s %s", request.method, path)
            return _json_response(500, {"error": INTERNAL_MESSAGE})
        return _json_response(200, payload)

    async def shutdown(_: web.Application) -> None:
        pool.shutdown(wait=False, cancel_futures=True)

    application.router.add_route("*", "/{tail:.*}", handle)
    application.on_cleanup.append(shutdown)
    return application


class Server:
    """Runs the app on its own event-loop thread: `with Server(models, port=0) as s: ... s.url ...`.

    `slots` may be shared with a gRPC server so that the cap on requests in flight covers both.
    """

    def __init__(self, models: Mapping[str, Model], host: str = "127.0.0.1", port: int = 0,
                 limits: ServerLimits | None = None, num_threads: int = 4, slots: RequestSlots | None = None):
        limits = limits or ServerLimits()
        self.slots = slots or RequestSlots(limits.max_concurrent_requests)
        self.app = make_app(models, limits, self.slots, num_threads)
        self.host = host
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(self.app, access_log=None)
        self._thread = threading.Thread(target=self._loop.run_forever, name="rest-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Server:
        """Binds and starts serving; returns once the port accepts connections."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result()
        return self

    async def _start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # the bound port when 0 was asked for

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
