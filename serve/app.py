"""Ray Serve app: a FastAPI ingress and an autoscaled, batching generator deployment.

    serve run serve/config.yaml                      # locally
    curl -F image=@face.png -F audio=@speech.wav http://127.0.0.1:8000/v1/generate -o out.mp4

The ingress validates every request (size, type, duration, parameters, bearer token) before any
model work and never returns a stack trace. The generator deployment loads a checkpoint (local or
S3) at start-up, warms up, and renders requests chunk by chunk; each chunk waits in a
`@serve.batch` queue so that chunks of concurrent requests are denoised as one batch. Settings
come from the deployment arguments in serve/config.yaml; ONESTEP_API_TOKEN, when set, turns on
bearer-token auth.
"""

import asyncio
import logging
import os
import time
import uuid
from pathlib import Path

import numpy as np
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.util import metrics
from starlette.datastructures import UploadFile

from onestep.generate import ChunkJob
from onestep.serving.service import AvatarService
from onestep.serving.validation import GenerationRequest, Limits, RequestError, validate

log = logging.getLogger("onestep.serve")
app = FastAPI(title="onestep", description="Portrait + voice in, lip-synced MP4 out.")
LATENCY_BUCKETS = [0.1, 0.3, 1, 3, 10, 30, 100]


def _error(status: int, field: str, message: str, request_id: str) -> JSONResponse:
    return JSONResponse(status_code=status, headers={"X-Request-ID": request_id},
                        content={"error": {"field": field, "message": message},
                                 "request_id": request_id})


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=8,
                  health_check_period_s=10, graceful_shutdown_timeout_s=30)
class Generator:
    def __init__(self, checkpoint: str, s3_endpoint_url: str = "", device: str = "cpu",
                 max_batch_size: int = 4, batch_wait_timeout_s: float = 0.02):
        self.service = AvatarService(checkpoint, s3_endpoint_url, device)
        self._denoise.set_max_batch_size(max_batch_size)
        self._denoise.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.batch_size = metrics.Histogram("onestep_batch_size", "chunks denoised per batch",
                                            boundaries=[1, 2, 4, 8, 16, 32])
        # Ray 2.60 exports a histogram's _sum wrong across export intervals (its buckets and
        # _count are right): a counter carries the total for the mean batch size.
        self.chunks = metrics.Counter("onestep_chunks", "chunks denoised")
        self.in_flight = 0
        self.in_flight_gauge = metrics.Gauge("onestep_generator_requests",
                                             "requests being generated on this replica")

    def describe(self) -> dict:
        return self.service.describe()

    def model_settings(self) -> dict:
        cfg = self.service.cfg
        return {"resolution": cfg.resolution, "fps": cfg.synth.fps,
                "sample_rate": cfg.audio.sample_rate}

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.02)
    async def _denoise(self, jobs: list[ChunkJob]) -> list:
        """The next chunk of each waiting request, as one batch (any mix of chunk indices)."""
        self.batch_size.observe(len(jobs))
        self.chunks.inc(len(jobs))
        return await asyncio.to_thread(self.service.generator.denoise, jobs)

    async def _chunks(self, req: GenerationRequest):
        """A request's frames, chunk by chunk; chunk k waits for k−1 (its motion frames)."""
        self.in_flight += 1
        self.in_flight_gauge.set(self.in_flight)
        try:
            render = await asyncio.to_thread(self.service.start, req)
            while not render.done:
                yield render.accept(await self._denoise(render.next_job()))
        finally:
            self.in_flight -= 1
            self.in_flight_gauge.set(self.in_flight)

    async def render(self, req: GenerationRequest) -> tuple[bytes, dict]:
        t0 = time.perf_counter()
        frames = np.concatenate([f async for f in self._chunks(req)])
        video = await asyncio.to_thread(self.service.mp4, frames, req)
        return video, {"frames": len(frames), "generation_s": time.perf_counter() - t0}

    async def stream(self, req: GenerationRequest):
        """MPEG-TS pieces, one per generated chunk (the last one also closes the stream)."""
        out = self.service.ts_stream(req)
        async for frames in self._chunks(req):
            piece = await asyncio.to_thread(out.write, frames)
            if piece:
                yield piece
        yield await asyncio.to_thread(out.close)


@serve.deployment(max_ongoing_requests=32)
@serve.ingress(app)
class AvatarAPI:
    def __init__(self, generator, limits: dict | None = None, api_token: str = ""):
        self.generator = generator
        self.limits = Limits(**(limits or {}))
        self.token = api_token
        self.settings: dict | None = None
        self.pending = 0
        self.pending_gauge = metrics.Gauge("onestep_pending_requests",
                                           "generation requests accepted and not yet answered")
        self.requests = metrics.Counter("onestep_requests", "generation requests by status",
                                        tag_keys=("route", "status"))
        self.errors = metrics.Counter("onestep_request_errors", "failed requests by field",
                                      tag_keys=("route", "field"))
        self.latency = metrics.Histogram("onestep_latency_s", "time to the whole response (s)",
                                         boundaries=LATENCY_BUCKETS, tag_keys=("route",))
        self.first_chunk = metrics.Histogram("onestep_first_chunk_s",
                                             "streaming: time to the first video piece (s)",
                                             boundaries=LATENCY_BUCKETS)

    def _authorised(self, request: Request) -> bool:
        return not self.token or request.headers.get("authorization") == f"Bearer {self.token}"

    async def _model_settings(self) -> dict:
        if self.settings is None:
            self.settings = await self.generator.model_settings.remote()
        return self.settings

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(self, request: Request):
        if not self._authorised(request):
            return _error(401, "authorization", "missing or wrong bearer token", "-")
        return {"models": [await self.generator.describe.remote()]}

    @app.post("/v1/generate")
    async def generate(self, request: Request):
        """The whole MP4 (H.264 + AAC) in one response."""
        async def respond(req: GenerationRequest, request_id: str, t0: float):
            video, info = await self.generator.render.remote(req)
            log.info("request %s: %d frames in %.2f s (%.2f s in the generator, batch waits "
                     "included)", request_id, info["frames"], time.perf_counter() - t0,
                     info["generation_s"])
            return Response(video, media_type="video/mp4", headers={"X-Request-ID": request_id})

        return await self._serve(request, "generate", respond)

    @app.post("/v1/generate/stream")
    async def generate_stream(self, request: Request):
        """MPEG-TS, one piece per generated chunk: playback can start after the first."""
        async def respond(req: GenerationRequest, request_id: str, t0: float):
            pieces = self.generator.options(stream=True).stream.remote(req)
            return StreamingResponse(self._relay(pieces, request_id, t0),
                                     media_type="video/mp2t",
                                     headers={"X-Request-ID": request_id})

        return await self._serve(request, "stream", respond, finishes_later=True)

    async def _relay(self, pieces, request_id: str, t0: float):
        """Pass the generator's pieces on. The status line is out already, so a failure here
        can only end the stream early; the log says why, under the request id."""
        count = 0
        try:
            async for piece in pieces:
                if count == 0:
                    self.first_chunk.observe(time.perf_counter() - t0)
                count += 1
                yield piece
            self.requests.inc(tags={"route": "stream", "status": "200"})
            log.info("request %s: streamed %d pieces in %.2f s", request_id, count,
                     time.perf_counter() - t0)
        except Exception:
            self.requests.inc(tags={"route": "stream", "status": "500"})
            self.errors.inc(tags={"route": "stream", "field": "server"})
            log.exception("request %s failed after %d pieces", request_id, count)
        finally:
            self.latency.observe(time.perf_counter() - t0, tags={"route": "stream"})
            self._done()

    def _done(self) -> None:
        self.pending -= 1
        self.pending_gauge.set(self.pending)

    async def _serve(self, request: Request, route: str, respond, finishes_later: bool = False):
        """Auth, validation and error handling shared by both routes: nothing reaches the model
        before the request is known to be good, and no stack trace reaches the client."""
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex[:12]
        t0 = time.perf_counter()
        self.pending += 1
        self.pending_gauge.set(self.pending)
        status, handed_over = 500, False
        try:
            if not self._authorised(request):
                raise RequestError(401, "authorization", "missing or wrong bearer token")
            req = await self._parse(request)
            response = await respond(req, request_id, t0)
            status, handed_over = 200, finishes_later
            return response
        except RequestError as e:
            status = e.status
            self.errors.inc(tags={"route": route, "field": e.field})
            log.info("request %s rejected: %s", request_id, e)
            return _error(e.status, e.field, e.message, request_id)
        except Exception:  # a failing request must never take the replica down or leak a trace
            self.errors.inc(tags={"route": route, "field": "server"})
            log.exception("request %s failed", request_id)
            return _error(500, "server", "generation failed; see the server log for request id",
                          request_id)
        finally:
            if not handed_over:  # a stream is counted when its last piece has gone
                self.requests.inc(tags={"route": route, "status": str(status)})
                self.latency.observe(time.perf_counter() - t0, tags={"route": route})
                self._done()

    async def _parse(self, request: Request) -> GenerationRequest:
        limit = (self.limits.max_image_mb + self.limits.max_audio_mb + 1) * 2 ** 20
        if int(request.headers.get("content-length") or 0) > limit:
            raise RequestError(413, "body", f"request is over {limit / 2 ** 20:.0f} MB")
        form = await request.form()
        files = {k: v for k, v in form.items() if isinstance(v, UploadFile)}
        for field in ("image", "audio"):
            if field not in files:
                raise RequestError(422, field, "missing multipart file field")
        params = {k: v for k, v in form.items() if k not in files}
        image, audio = await files["image"].read(), await files["audio"].read()
        s = await self._model_settings()
        # Decoding is CPU work; keep the ingress event loop free for other requests.
        return await asyncio.to_thread(validate, image, audio, params, self.limits,
                                       s["resolution"], s["fps"], s["sample_rate"])


def build(args: dict) -> serve.Application:
    """Application builder for `serve run serve/config.yaml` (args from the config file; Serve
    applies the config's deployment options itself).

    Bearer-token auth is on when ONESTEP_API_TOKEN is set where the app is built (the shell of
    `serve run`, or `runtime_env.env_vars` of the application for `serve deploy`).
    """
    return _wire(args, {})


def from_config(path: str | Path, **args) -> serve.Application:
    """The application as `serve run <path>` builds it, its args updated with `args`: the same
    autoscaling, batching and limits for Python callers (the load benchmark)."""
    spec = yaml.safe_load(Path(path).read_text())["applications"][0]
    options = {d["name"]: {k: v for k, v in d.items() if k != "name"}
               for d in spec.get("deployments", [])}
    return _wire({**spec["args"], **args}, options)


def _wire(args: dict, options: dict) -> serve.Application:
    """The ingress bound to the generator; `options` maps a deployment name to its options."""
    batching = args.get("batching") or {}
    generator = Generator.options(**options.get("Generator", {})).bind(
        args["checkpoint"], args.get("s3_endpoint_url", ""), args.get("device", "cpu"),
        **batching)
    return AvatarAPI.options(**options.get("AvatarAPI", {})).bind(
        generator, args.get("limits"), os.environ.get("ONESTEP_API_TOKEN", ""))
