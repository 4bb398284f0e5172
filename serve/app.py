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
import hmac
import json
import logging
import os
import time
import uuid
from collections import Counter
from importlib.metadata import version
from pathlib import Path

import yaml
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.openapi.utils import get_openapi
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.util import metrics
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from onestep.checkpoint import check_export, resolve_checkpoint
from onestep.generate import ChunkJob, check_precision
from onestep.live.incoming import IncomingSound
from onestep.live.session import AudioMessageError
from onestep.serving import contract, docs_page, isolation
from onestep.serving.service import AvatarService
from onestep.serving.sessions import SessionGone, SessionRouter, SessionsFull, SessionTable
from onestep.serving.validation import (
    FILES,
    PARAMETERS,
    SESSION_PARAMETERS,
    GenerationRequest,
    Limits,
    RequestError,
    SessionRequest,
    validate_isolated,
    validate_session_isolated,
)

log = logging.getLogger("onestep.serve")
DESCRIPTION = ("Portrait + voice in, lip-synced video out. Both generate routes take the same "
               "multipart form; every error has the same JSON body, naming the field at fault.")
# The OpenAPI document depends on the deployment's limits and auth, so the ingress serves it
# itself (see AvatarAPI.openapi); the documentation pages load their assets from this server.
app = FastAPI(title="onestep", version=version("onestep"), description=DESCRIPTION,
              openapi_url=None, docs_url=None, redoc_url=None)
ASSETS = "/docs-assets"
app.mount(ASSETS, StaticFiles(directory=docs_page.ASSETS_DIR), name="docs-assets")
# The live page (GET /): static files, no build step, nothing from elsewhere; it uses only the
# public API (POST /v1/sessions and its WebSocket).
PAGE_DIR = Path(__file__).parent / "static"
app.mount("/live", StaticFiles(directory=PAGE_DIR), name="live")
LATENCY_BUCKETS = [0.1, 0.3, 1, 3, 10, 30, 100]
RETRY_AFTER_S = 5
METRIC_FIELDS = {*FILES, *PARAMETERS, "body", "authorization", "server"}
HEALTH_WAIT_S = 2
SESSION_INBOX = 256  # a session's audio messages read ahead of its chunks (10 s of 40 ms ones)


@app.exception_handler(HTTPException)
async def _routing_error(request: Request, exc: HTTPException) -> JSONResponse:
    """An unknown path or method (404, 405) gets the API's one error body too."""
    return _error(exc.status_code, "path" if exc.status_code == 404 else "method",
                  f"{request.method} {request.url.path}: {exc.detail}",
                  request.headers.get("x-request-id", "-"), exc.headers)
GENERATE_ERRORS = contract.error_responses([400, 401, 413, 415, 422, 429, 500])


def _error(status: int, field: str, message: str, request_id: str,
           headers: dict | None = None) -> JSONResponse:
    body = contract.ErrorBody(error=contract.ErrorDetail(field=field, message=message),
                              request_id=request_id)
    return JSONResponse(status_code=status, headers=headers, content=body.model_dump())


def _capped(request: Request, limit: int, error: RequestError) -> Request:
    """`request` whose body stops at `limit` bytes while it arrives: a body sent without a
    Content-Length (chunked) is refused at the limit, not after it has all been read.

    Defined above the deployments, as everything their methods use must be: `serve.ingress`
    pickles the routes while the class is being defined, with the globals that exist then."""
    received = 0

    async def receive():
        nonlocal received
        message = await request.receive()
        received += len(message.get("body", b""))
        if received > limit:
            raise error
        return message

    return Request(request.scope, receive)


def _control(text: str) -> str | None:
    """The type of a session's JSON control message; None if it is not one."""
    try:
        message = json.loads(text[:1024])
    except ValueError:
        return None
    return message.get("type") if isinstance(message, dict) else None


def _cause(e: Exception) -> str:
    """The message of an exception raised in a replica, without Ray's traceback around it."""
    return str(e.args[0] if e.args else e).strip().splitlines()[-1]


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=8,
                  health_check_period_s=10, graceful_shutdown_timeout_s=30,
                  request_router_config=RequestRouterConfig(request_router_class=SessionRouter,
                                                            request_routing_stats_period_s=2))
class Generator:
    def __init__(self, checkpoint: str, s3_endpoint_url: str = "", device: str = "cpu",
                 precision: str = "fp32", max_batch_size: int = 4,
                 batch_wait_timeout_s: float = 0.02, sessions: dict | None = None):
        self.service = AvatarService(checkpoint, s3_endpoint_url, device, precision)
        self.sessions = SessionTable(serve.get_replica_context().replica_id.unique_id,
                                     **(sessions or {}))
        self._sweeper: asyncio.Task | None = None
        self.sessions_gauge = metrics.Gauge("onestep_sessions", "live sessions on this replica")
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

    def record_routing_stats(self) -> dict:
        """What SessionRouter ranks replicas by for a new session."""
        return self.sessions.stats()

    def record_autoscaling_stats(self) -> dict:
        """What onestep.serving.autoscaling scales on (numbers only)."""
        stats = self.sessions.stats()
        return {k: float(stats[k]) for k in ("sessions", "target_sessions", "started_at")}

    async def session_room(self) -> None:
        """SessionsFull if this replica, the one holding the fewest sessions (SessionRouter),
        has no room: then none has."""
        self.sessions.check_room()

    async def open_session(self, req: SessionRequest) -> dict:
        """A new live session on this replica: its id (which names the replica) and what the
        client needs to play it. SessionsFull at capacity."""
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_idle())
        session_id = self.sessions.reserve()
        try:
            session = await asyncio.to_thread(self.service.open_session, req)
        except BaseException:
            self.sessions.pop(session_id)
            raise
        self.sessions.entries[session_id].session = session
        self.sessions_gauge.set(len(self.sessions.entries))
        return {"session_id": session_id, "fps": session.fps, "sample_rate": req.sample_rate,
                "audio_format": req.audio_format,
                "first_chunk_frames": self.service.cfg.data.frames,
                "chunk_frames": session.chunk_frames, "mime_type": session.mp4.mime_type}

    async def session_init(self, *, session_id: str) -> dict:
        """The session's MP4 init segment (what its socket sends first) and what the ingress
        needs to pass its sound on: its format, rate and chunk lengths, the idle setting."""
        session = self.sessions.get(session_id).session
        return {"init": session.init, "audio_format": session.audio_format,
                "input_rate": session.input_rate, "fps": session.fps,
                "first_chunk_frames": self.service.cfg.data.frames,
                "chunk_frames": session.chunk_frames,
                "idle_video_after_s": self.sessions.idle_video_after_s}

    async def feed_session(self, audio: bytes, arrived: float, *, session_id: str
                           ) -> list[dict]:
        """A piece of the session's sound in (`arrived` at the ingress then, time.time()); every
        chunk it completes out, each as its media segment and what the client is told of it. A
        malformed piece: AudioMessageError."""
        entry = self.sessions.get(session_id)
        if entry.busy:
            raise RuntimeError(f"session {session_id}: a call of it is still running")
        entry.busy = True
        try:
            session = entry.session
            session.feed(audio, arrived)
            chunks = []
            while session.ready:
                latent = await self._denoise(session.next_job())
                chunk = await asyncio.to_thread(session.finish, latent)
                chunks.append({"segment": chunk.segment, "index": chunk.index,
                               "frames": chunk.frames, "latency_s": round(chunk.latency_s, 4)})
            return chunks
        finally:
            entry.busy = False

    async def close_session(self, *, session_id: str) -> bool:
        """Free the session's state; False if it was not running."""
        session = self.sessions.pop(session_id)
        self.sessions_gauge.set(len(self.sessions.entries))
        if session is None:
            return False
        session.close()
        return True

    async def _sweep_idle(self) -> None:
        """Sessions nobody has used for `session_idle_timeout_s` are closed."""
        while True:
            await asyncio.sleep(min(5.0, self.sessions.idle_timeout_s / 2))
            for session_id in self.sessions.idle():
                log.info("session %s idle for over %g s: closed", session_id,
                         self.sessions.idle_timeout_s)
                await self.close_session(session_id=session_id)

    async def render(self, req: GenerationRequest) -> tuple[bytes, dict]:
        """The whole MP4; each chunk is encoded as it comes, so no request holds its frames."""
        t0 = time.perf_counter()
        out = self.service.mp4_stream(req)
        async for frames in self._chunks(req):
            await asyncio.to_thread(out.write, frames)
        video = await asyncio.to_thread(out.close)
        return video, {"frames": out.encoder.frames, "generation_s": time.perf_counter() - t0}

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
    def __init__(self, generator, limits: dict | None = None, api_token: str = "",
                 docs_need_token: bool = False):
        self.generator = generator
        self.limits = Limits(**(limits or {}))
        isolation.warm_up()  # the decoders' fork server, before the first request
        self.token = api_token
        self.docs_need_token = docs_need_token
        self.model_info: dict | None = None
        self.schema: dict | None = None
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
        """RFC 7235: the scheme is case-insensitive; the token is compared in constant time."""
        if not self.token:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(),
                                                                  self.token.encode())

    def _unauthorised(self, request: Request) -> JSONResponse | None:
        if self._authorised(request):
            return None
        return _error(401, "authorization", "missing or wrong bearer token",
                      request.headers.get("x-request-id", "-"))

    def _docs_refused(self, request: Request) -> JSONResponse | None:
        """With `docs_need_token`, the contract and its pages are for token holders only."""
        return self._unauthorised(request) if self.docs_need_token else None

    async def _model_info(self) -> dict:
        if self.model_info is None:
            self.model_info = await self.generator.describe.remote()
        return self.model_info

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request):
        """This deployment's contract: its limits, its model's defaults, its auth."""
        if refused := self._docs_refused(request):
            return refused
        if self.schema is None:
            base = get_openapi(title=app.title, version=app.version, routes=app.routes,
                               description=app.description)
            self.schema = contract.openapi_document(base, self.limits, await self._model_info(),
                                                    auth=bool(self.token))
        return JSONResponse(self.schema)

    def _doc_page(self, request: Request, page) -> Response:
        """A documentation page (`docs_page.swagger_page` or `redoc_page`) under this root."""
        if refused := self._docs_refused(request):
            return refused
        root = request.scope.get("root_path", "")
        return HTMLResponse(page(app.title, f"{root}/openapi.json", f"{root}{ASSETS}"))

    @app.get("/docs", include_in_schema=False)
    async def docs(self, request: Request):
        return self._doc_page(request, docs_page.swagger_page)

    @app.get("/redoc", include_in_schema=False)
    async def redoc(self, request: Request):
        return self._doc_page(request, docs_page.redoc_page)

    @app.get("/", include_in_schema=False)
    async def page(self):
        """The live page: a portrait and a microphone (or an audio file) → the avatar, live."""
        return FileResponse(PAGE_DIR / "index.html")

    @app.get("/healthz", response_model=contract.Health,
             responses={503: {"model": contract.Health, "description": "the model is not "
                                                                       "loaded yet"}},
             summary="Readiness: 200 once the model has loaded (never needs a token)")
    async def healthz(self):
        """Not ready (503) until a generator replica has loaded its checkpoint and answered:
        before that a request would only wait."""
        try:
            await asyncio.wait_for(self._model_info(), timeout=HEALTH_WAIT_S)
        except Exception:  # still starting (or failing to): a probe gets an answer, not a wait
            return JSONResponse(status_code=503, content={"status": "loading"})
        return {"status": "ok"}

    @app.get("/v1/models", response_model=contract.ModelsResponse,
             responses=contract.error_responses([401]), summary="The served model")
    async def models(self, request: Request):
        """Checkpoint, sampling defaults, resolution and cost per chunk of the served model."""
        if refused := self._unauthorised(request):
            return refused
        return {"models": [await self._model_info()]}

    @app.post("/v1/generate", response_class=Response, responses=GENERATE_ERRORS,
              summary="Portrait + audio → MP4")
    async def generate(self, request: Request):
        """The whole MP4 (H.264 + AAC) in one response."""
        async def respond(req: GenerationRequest, request_id: str, t0: float):
            video, info = await self.generator.render.remote(req)
            log.info("request %s: %d frames in %.2f s (%.2f s in the generator, batch waits "
                     "included)", request_id, info["frames"], time.perf_counter() - t0,
                     info["generation_s"])
            return Response(video, media_type="video/mp4")

        return await self._serve(request, "generate", respond)

    @app.post("/v1/generate/stream", response_class=StreamingResponse,
              responses=GENERATE_ERRORS, summary="Portrait + audio → MPEG-TS, streamed")
    async def generate_stream(self, request: Request):
        """MPEG-TS (H.264 + AAC), one piece per generated chunk: playback can start after the
        first. Errors are answered before the first byte, with the same JSON body."""
        async def respond(req: GenerationRequest, request_id: str, t0: float):
            pieces = self.generator.options(stream=True).stream.remote(req)
            return StreamingResponse(self._relay(pieces, request_id, t0),
                                     media_type="video/mp2t")

        return await self._serve(request, "stream", respond, finishes_later=True)

    async def _relay(self, pieces, request_id: str, t0: float):
        """Pass the generator's pieces on. The status line is out already, so a failure here
        (a generator replica lost mid-request) can only cut the stream short, and it must not
        look like a complete one: the error is raised on, so the connection is closed without
        the chunked encoding's final empty chunk and every HTTP client reports a truncated
        body (requests: ChunkedEncodingError; curl: exit 18). The log says why, under the
        request id."""
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
            log.exception("request %s failed after %d pieces; the stream is cut", request_id,
                          count)
            raise
        finally:
            self.latency.observe(time.perf_counter() - t0, tags={"route": "stream"})
            self._done()

    def _done(self) -> None:
        self.pending -= 1
        self.pending_gauge.set(self.pending)

    async def _serve(self, request: Request, route: str, respond, finishes_later: bool = False):
        """Auth, validation and error handling shared by both routes: nothing reaches the model
        before the request is known to be good, and no stack trace reaches the client."""
        # Serve's proxy gives every request an id (the client's X-Request-ID if it sent one) and
        # puts it on the response; the error body and the log lines repeat it.
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex[:12]
        t0 = time.perf_counter()
        self.pending += 1
        self.pending_gauge.set(self.pending)
        status, handed_over = 500, False
        try:
            if not self._authorised(request):
                raise RequestError(401, "authorization", "missing or wrong bearer token")
            if self.pending > self.limits.max_pending_requests:
                raise RequestError(429, "server", f"{self.pending - 1} requests are in progress, "
                                                  "the most this server accepts; retry later")
            req = await self._parse(request)
            response = await respond(req, request_id, t0)
            status, handed_over = 200, finishes_later
            return response
        except RequestError as e:
            status = e.status
            # A field name can be anything a client sends: the metric gets a name from a fixed
            # set (unbounded or non-ASCII tag values would break Ray's metrics) and the log
            # line the repr (no forged lines).
            field = e.field if e.field in METRIC_FIELDS else "other"
            self.errors.inc(tags={"route": route, "field": field})
            log.info("request %s rejected: %r", request_id, str(e))
            retry = {"Retry-After": str(RETRY_AFTER_S)} if e.status == 429 else None
            return _error(e.status, e.field, e.message, request_id, retry)
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

    @app.post("/v1/sessions", response_model=contract.SessionResponse,
              responses=contract.error_responses([400, 401, 413, 415, 422, 429, 500]),
              summary="Portrait → a live session: stream sound in, video out (WebSocket)")
    async def open_session(self, request: Request):
        """Opens a session on one generator replica, which holds its state until the socket
        closes, DELETE, or it is idle for the replica's timeout. Connect to `ws_url` and send
        PCM16 mono at `sample_rate` as binary messages; fragmented MP4 comes back, playable by
        Media Source Extensions: the init segment first, then one segment per chunk."""
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex[:12]
        try:
            if not self._authorised(request):
                raise RequestError(401, "authorization", "missing or wrong bearer token")
            form = await self._form(request, ("image",), SESSION_PARAMETERS,
                                    self.limits.max_image_mb + 1)
            s = await self._model_info()
            try:
                # Full replicas answer before the portrait costs a child process to validate:
                # clients retrying at capacity must not take CPU from the running sessions.
                await self.generator.session_room.remote()
                req = await asyncio.to_thread(validate_session_isolated, form["image"],
                                              form["params"], self.limits, s["resolution"])
                opened = await self.generator.open_session.remote(req)
            except SessionsFull as e:
                raise RequestError(429, "server", _cause(e)) from None
        except RequestError as e:
            retry = {"Retry-After": str(RETRY_AFTER_S)} if e.status == 429 else None
            log.info("session request %s rejected: %r", request_id, str(e))
            return _error(e.status, e.field, e.message, request_id, retry)
        except Exception:
            log.exception("session request %s failed", request_id)
            return _error(500, "server", "the session could not be opened; see the server log "
                                         "for request id", request_id)
        root = request.scope.get("root_path", "")
        log.info("session %s opened (request %s)", opened["session_id"], request_id)
        return {**opened, "ws_url": f"{root}/v1/sessions/{opened['session_id']}"}

    @app.delete("/v1/sessions/{session_id}", status_code=204,
                responses=contract.error_responses([401, 404]), summary="End a live session")
    async def delete_session(self, session_id: str, request: Request):
        if refused := self._unauthorised(request):
            return refused
        if not await self.generator.close_session.remote(session_id=session_id):
            return _error(404, "session_id", f"session {session_id} is not running",
                          request.headers.get("x-request-id", "-"))
        return Response(status_code=204)

    @app.websocket("/v1/sessions/{session_id}")
    async def session_socket(self, socket: WebSocket, session_id: str):
        """The session's stream (see open_session). Control messages are JSON text: `start`,
        `chunk` (after each segment: index, frames, latency_s), `error` (a message was refused,
        the session goes on). Close codes: 4401 no or wrong token, 4404 no such session, 1011
        the replica holding the session was lost."""
        await socket.accept()  # then closed with a code that says why (a refused handshake
        token = socket.query_params.get("token")  # says nothing a browser can read)
        if not (self._authorised(socket) or (self.token and token and hmac.compare_digest(
                token.encode(), self.token.encode()))):
            await socket.close(code=4401, reason="missing or wrong bearer token")
            return
        try:
            stream = await self.generator.session_init.remote(session_id=session_id)
        except SessionGone:
            await socket.close(code=4404, reason=f"session {session_id[:60]} is not running")
            return
        sound = IncomingSound(**{k: v for k, v in stream.items() if k != "init"})
        await socket.send_json({"type": "start", "session_id": session_id})
        await socket.send_bytes(stream["init"])
        limit = self.limits.max_audio_message_kb * 1024

        async def forward(pcm: bytes | None, arrived: float) -> None:
            """A chunk's sound on to the replica; the chunks it makes back to the client."""
            if pcm is None:  # the next chunk's sound is not all in
                return
            chunks = await self.generator.feed_session.remote(pcm, arrived,
                                                              session_id=session_id)
            sound.sent(len(chunks))
            for chunk in chunks:
                await socket.send_bytes(chunk.pop("segment"))
                await socket.send_json({"type": "chunk", **chunk})

        # Messages are read as they arrive, while chunks are generated, so that each is
        # timed on arrival (chunk latency counts queueing here too); the bounded inbox pushes
        # back on a client sending faster than its chunks are made.
        inbox: asyncio.Queue = asyncio.Queue(maxsize=SESSION_INBOX)

        async def read() -> None:
            try:
                while True:
                    message = await socket.receive()
                    await inbox.put((message, time.time()))
                    if message["type"] == "websocket.disconnect":
                        return
            except Exception:  # the connection is gone
                await inbox.put(({"type": "websocket.disconnect"}, time.time()))

        reader = asyncio.create_task(read())
        try:
            while True:
                try:
                    message, arrived = await asyncio.wait_for(inbox.get(), sound.wait_s())
                except TimeoutError:  # the client has gone quiet: silence, so the video goes on
                    await forward(sound.quiet(time.monotonic()), time.time())
                    continue
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("text") is not None:
                    if _control(message["text"]) == "close":
                        await socket.close(code=1000)
                        break
                    await socket.send_json({"type": "error", "message": "a text message is a "
                                            "control message: {\"type\": \"close\"}"})
                    continue
                audio = message.get("bytes") or b""
                if len(audio) > limit:
                    await socket.send_json({"type": "error", "message": f"audio message of "
                                            f"{len(audio)} bytes is over {limit} bytes"})
                    continue
                try:
                    pcm = sound.message(audio, time.monotonic())
                except AudioMessageError as e:
                    await socket.send_json({"type": "error", "message": str(e)})
                    continue
                await forward(pcm, arrived)
        except WebSocketDisconnect:
            pass
        except SessionGone as e:
            await socket.close(code=4404, reason=_cause(e)[:120])
        except Exception:
            log.exception("session %s failed", session_id)
            await socket.close(code=1011, reason="the generator holding this session was lost; "
                                                 "create another")
        finally:
            reader.cancel()
            try:
                await self.generator.close_session.remote(session_id=session_id)
            except Exception:  # its replica is gone: so is its state
                pass

    async def _form(self, request: Request, files: tuple, parameters: tuple, max_mb: float
                    ) -> dict:
        """A multipart form of exactly `files` (bytes) and at most `parameters` (text)."""
        limit = int(max_mb * 2 ** 20)
        too_big = RequestError(413, "body", f"request is over {limit / 2 ** 20:.0f} MB")
        if int(request.headers.get("content-length") or 0) > limit:
            raise too_big
        if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            raise RequestError(400, "body", "expected a multipart/form-data body")
        try:  # a text field holds a number: 1 KB is plenty
            form = await _capped(request, limit, too_big).form(
                max_files=2 * len(files), max_fields=2 * len(parameters), max_part_size=1024)
        except HTTPException as e:  # Starlette's answer to a malformed or oversized form
            raise RequestError(400, "body", f"malformed multipart form: {e.detail}") from None
        repeated = sorted(n for n, count in Counter(k for k, _ in form.multi_items()).items()
                          if count > 1)
        if repeated:
            raise RequestError(422, repeated[0], "is given more than once")
        uploads = {k: v for k, v in form.items() if isinstance(v, UploadFile)}
        unexpected = sorted(set(uploads) - set(files))
        if unexpected:
            raise RequestError(422, unexpected[0], "unexpected file field; expected "
                                                   f"{' and '.join(files)}")
        for name in files:
            if name not in uploads:
                raise RequestError(422, name, "missing multipart file field (a part with a "
                                              "filename)")
        out = {name: await uploads[name].read() for name in files}
        out["params"] = {k: v for k, v in form.items() if k not in uploads}
        return out

    async def _parse(self, request: Request) -> GenerationRequest:
        form = await self._form(request, FILES, PARAMETERS,
                                self.limits.max_image_mb + self.limits.max_audio_mb + 1)
        s = await self._model_info()
        # Decoding is CPU work (off the event loop) on untrusted bytes (in a child process).
        return await asyncio.to_thread(validate_isolated, form["image"], form["audio"],
                                       form["params"], self.limits, s["resolution"], s["fps"],
                                       s["sample_rate"])


def build(args: dict) -> serve.Application:
    """Application builder for `serve run serve/config.yaml` (args from the config file; Serve
    applies the config's deployment options itself).

    Bearer-token auth is on when ONESTEP_API_TOKEN is set where the app is built (the shell of
    `serve run`, or `runtime_env.env_vars` of the application for `serve deploy`);
    `docs_need_token: true` puts /openapi.json, /docs and /redoc behind it too.
    """
    return _wire(args, {})


def from_config(path: str | Path, deployments: dict | None = None, **args) -> serve.Application:
    """The application as `serve run <path>` builds it, its args updated with `args` and each
    deployment's options with `deployments` (name → options; `autoscaling_config` merged key by
    key): the same autoscaling, batching and limits for Python callers (the benchmarks)."""
    spec = yaml.safe_load(Path(path).read_text())["applications"][0]
    options = {d["name"]: {k: v for k, v in d.items() if k != "name"}
               for d in spec.get("deployments", [])}
    for name, changes in (deployments or {}).items():
        merged = options.setdefault(name, {})
        for key, value in changes.items():
            merged[key] = ({**merged[key], **value} if key == "autoscaling_config"
                           and isinstance(merged.get(key), dict) and value else value)
    return _wire({**spec["args"], **args}, options)


def _wire(args: dict, options: dict) -> serve.Application:
    """The ingress bound to the generator; `options` maps a deployment name to its options.

    The checkpoint is verified here, where the application is built, so that a server never
    comes up on weights it cannot load: its checksums, its config and its tensors' shapes
    (from the header, nothing loaded). A failure names the file, and the application does not
    deploy (`serve status` shows DEPLOY_FAILED with that line).
    """
    endpoint = args.get("s3_endpoint_url", "")
    check_export(resolve_checkpoint(args["checkpoint"], endpoint), endpoint)
    token = os.environ.get("ONESTEP_API_TOKEN", "")
    if args.get("docs_need_token") and not token:
        raise ValueError("docs_need_token: true needs ONESTEP_API_TOKEN set where the app is "
                         "built (there is no token to ask for)")
    precision = check_precision(args.get("precision", "fp32"))
    batching = args.get("batching") or {}
    generator = Generator.options(**options.get("Generator", {})).bind(
        args["checkpoint"], args.get("s3_endpoint_url", ""), args.get("device", "cpu"),
        precision, **batching, sessions=args.get("sessions"))
    return AvatarAPI.options(**options.get("AvatarAPI", {})).bind(
        generator, args.get("limits"), token, bool(args.get("docs_need_token", False)))
