"""Ray Serve app: a FastAPI ingress and an autoscaled generator deployment.

    serve run serve/config.yaml                      # locally
    curl -F image=@face.png -F audio=@speech.wav http://127.0.0.1:8000/v1/generate -o out.mp4

The ingress validates every request (size, type, duration, parameters, bearer token) before any
model work and never returns a stack trace; the generator deployment loads a checkpoint (local or
S3) at start-up, warms up, and renders MP4s. Settings come from the deployment arguments in
serve/config.yaml; ONESTEP_API_TOKEN, when set, turns on bearer-token auth.
"""


import asyncio
import logging
import os
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.util import metrics
from starlette.datastructures import UploadFile

from onestep.serving.service import AvatarService
from onestep.serving.validation import Limits, RequestError, validate

log = logging.getLogger("onestep.serve")
app = FastAPI(title="onestep", description="Portrait + voice in, lip-synced MP4 out.")


def _error(status: int, field: str, message: str, request_id: str) -> JSONResponse:
    return JSONResponse(status_code=status, headers={"X-Request-ID": request_id},
                        content={"error": {"field": field, "message": message},
                                 "request_id": request_id})


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=2,
                  health_check_period_s=10, graceful_shutdown_timeout_s=30)
class Generator:
    def __init__(self, checkpoint: str, s3_endpoint_url: str = "", device: str = "cpu"):
        self.service = AvatarService(checkpoint, s3_endpoint_url, device)

    def describe(self) -> dict:
        return self.service.describe()

    def model_settings(self) -> dict:
        cfg = self.service.cfg
        return {"resolution": cfg.resolution, "fps": cfg.synth.fps,
                "sample_rate": cfg.audio.sample_rate}

    def render(self, req) -> tuple[bytes, dict]:
        video, stats = self.service.render(req)
        return video, {"frames": stats.frames, "compute_s": stats.seconds}


@serve.deployment(max_ongoing_requests=32)
@serve.ingress(app)
class AvatarAPI:
    def __init__(self, generator, limits: dict | None = None, api_token: str = ""):
        self.generator = generator
        self.limits = Limits(**(limits or {}))
        self.token = api_token
        self.settings: dict | None = None
        self.requests = metrics.Counter("onestep_requests", "generation requests",
                                        tag_keys=("status",))
        self.latency = metrics.Histogram("onestep_latency_s", "generation latency (s)",
                                         boundaries=[0.1, 0.3, 1, 3, 10, 30, 100])

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
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex[:12]
        t0 = time.perf_counter()
        status = 500
        try:
            if not self._authorised(request):
                status = 401
                return _error(401, "authorization", "missing or wrong bearer token", request_id)
            req = await self._parse(request)
            video, info = await self.generator.render.remote(req)
            status = 200
            log.info("request %s: %d frames in %.2f s (compute %.2f s)", request_id,
                     info["frames"], time.perf_counter() - t0, info["compute_s"])
            return Response(video, media_type="video/mp4", headers={"X-Request-ID": request_id})
        except RequestError as e:
            status = e.status
            log.info("request %s rejected: %s", request_id, e)
            return _error(e.status, e.field, e.message, request_id)
        except Exception:  # a failing request must never take the replica down or leak a trace
            log.exception("request %s failed", request_id)
            return _error(500, "server", "generation failed; see the server log for request id",
                          request_id)
        finally:
            self.requests.inc(tags={"status": str(status)})
            self.latency.observe(time.perf_counter() - t0)

    async def _parse(self, request: Request):
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
    """Application builder for `serve run serve/config.yaml` (args from the config file).

    Bearer-token auth is on when ONESTEP_API_TOKEN is set where the app is built (the shell of
    `serve run`, or `runtime_env.env_vars` of the application for `serve deploy`).
    """
    generator = Generator.bind(args["checkpoint"], args.get("s3_endpoint_url", ""),
                               args.get("device", "cpu"))
    return AvatarAPI.bind(generator, args.get("limits"), os.environ.get("ONESTEP_API_TOKEN", ""))
