"""The HTTP API and the web studio: FastAPI routes around the engine, the queue and the feedback store.

Every error is JSON `{"error": "..."}` with a 4xx/5xx status (FastAPI's own validation errors included), bodies over
the upload limit are cut off at the limit, and with a token every route but the page itself wants
`Authorization: Bearer <token>` (the page holds no data; it asks for the token and sends it).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from archdiff.serve.engine import Request as Job
from archdiff.serve.engine import RequestError, Stopped
from archdiff.serve.jobs import Disconnected, JobQueue, QueueFull, TimedOut
from archdiff.serve.settings import ServeConfig

STATIC = Path(__file__).parent / "static"
PUBLIC_PATHS = ("/", "/favicon.ico")  # the page shell; /static/ too


class LoraChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="A name from GET /v1/loras.")
    scale: float = 1.0


class GenerateBody(BaseModel):
    """POST /v1/generate. Images are base64 (PNG or JPEG); sizes are multiples of 8."""

    model_config = ConfigDict(extra="forbid")
    prompt: str
    negative_prompt: str | None = None
    loras: list[LoraChoice] = Field(default_factory=list)
    seed: int | None = Field(None, ge=0, lt=2**32, description="null: a random seed (returned in settings.seeds).")
    num_images: int = 1
    steps: int = 25
    guidance: float = 7.5
    width: int | None = None
    height: int | None = None
    init_image: str | None = Field(None, description="img2img: start from this image (base64).")
    strength: float = Field(0.6, description="img2img: how far to move away from init_image (1 = ignore it).")
    control_image: str | None = Field(None, description="A sketch, plan or photo a ControlNet follows (base64).")
    controlnet: str | None = Field(None, description="A ControlNet name from GET /v1/loras (default: the only one).")
    control_scale: float | None = None
    control_type: str | None = Field(None, description="lines, canny, drawing or none (default: what it trained on).")


class FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: int
    rating: str = Field(description="good or bad")


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _image(text: str | None, field: str, max_pixels: int):
    """A base64 upload decoded with the pixel count checked from its header first (decompression bombs)."""
    from archdiff.data.images import TooManyPixels, UnreadableImage, open_image

    if text is None:
        return None
    try:
        data = base64.b64decode(text.split(",", 1)[1] if text.startswith("data:") else text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"{field} is not base64") from None
    try:
        return open_image(data, max_pixels)
    except TooManyPixels as error:
        raise RequestError(413, f"{field}: {error}") from None
    except UnreadableImage as error:
        raise RequestError(400, f"{field}: {error}") from None


def to_job(body: GenerateBody, limits) -> Job:
    fields = body.model_dump(exclude={"loras", "init_image", "control_image"})
    return Job(
        **fields,
        loras=[(choice.name, choice.scale) for choice in body.loras],
        init_image=_image(body.init_image, "init_image", limits.upload_pixels),
        control_image=_image(body.control_image, "control_image", limits.upload_pixels),
    )


def create_app(engine, store, config: ServeConfig) -> FastAPI:
    """The app around an engine (archdiff.serve.engine.Engine, or anything with its describe/check/generate) and a store."""
    queue = JobQueue(config.queue, config.timeout)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        queue.close()

    app = FastAPI(title="archdiff", description="Draw with the studio's LoRAs and ControlNets.", version="1", lifespan=lifespan)
    app.state.queue = queue

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem.get("loc", ()) if part != "body") or "body"
        return _error(422, f"{where}: {problem.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        if isinstance(error.__cause__, BodyTooLarge):  # FastAPI reports any failure to read the body as a 400
            return _error(413, f"request body is over the limit of {config.limits.upload_bytes} bytes")
        return _error(error.status_code, str(error.detail))

    @app.exception_handler(Exception)
    async def unforeseen(request: Request, error: Exception):
        """A failure nobody foresaw is still JSON (and one line in the server's log), never a plain-text 500."""
        from archdiff.errors import first_line

        print(f"archdiff serve: {request.url.path}: {type(error).__name__}: {first_line(error)}")
        return _error(500, f"the server failed on this request ({type(error).__name__}: {first_line(error)})")

    @app.exception_handler(RequestError)
    async def refused(request: Request, error: RequestError):
        return _error(error.status, str(error))

    @app.get("/health")
    async def health():
        return {"status": "ok", "base": engine.base.name, "queue": queue.state()}

    @app.get("/v1/loras")
    async def loras():
        return engine.describe()

    @app.post("/v1/generate")
    async def generate(body: GenerateBody, request: Request):
        job = engine.check(to_job(body, config.limits))
        try:
            pngs, settings = await queue.run(lambda should_stop: engine.generate(job, should_stop), request.is_disconnected)
        except QueueFull as full:
            return _error(503, str(full), {"Retry-After": str(full.retry_after)})
        except TimedOut:
            return _error(504, f"the request took longer than the server's limit of {config.timeout:g} s")
        except (Disconnected, Stopped):
            return _error(499, "the client went away")
        per_image = [
            {key: value for key, value in settings.items() if key != "seeds"} | {"seed": seed} for seed in settings["seeds"]
        ]
        ids = [await run_in_threadpool(store.add, png, job.prompt, meta) for png, meta in zip(pngs, per_image, strict=True)]
        return {"images": [base64.b64encode(png).decode() for png in pngs], "ids": ids, "settings": settings}

    @app.post("/v1/feedback")
    async def feedback(body: FeedbackBody):
        if body.rating not in ("good", "bad"):
            raise RequestError(400, f"rating must be good or bad (got '{body.rating}')")
        try:
            await run_in_threadpool(store.rate, body.id, body.rating)
        except KeyError:
            raise RequestError(404, f"no result with id {body.id}") from None
        return {"id": body.id, "rating": body.rating}

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(BodyLimit, limit=config.limits.upload_bytes)
    app.add_middleware(Guard, token=config.token, limit=config.limits.upload_bytes)
    return app


class Guard:
    """The token and the declared body size, as plain ASGI: a BaseHTTPMiddleware (`app.middleware("http")`) hides the
    client's disconnect from `request.is_disconnected()` and wraps errors raised while reading the body."""

    def __init__(self, app, token: str | None, limit: int):
        self.app, self.token, self.limit = app, token, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers, path = Headers(scope=scope), scope["path"]
            if self.token and path not in PUBLIC_PATHS and not path.startswith("/static/"):
                if not hmac.compare_digest(headers.get("authorization", "").encode(), f"Bearer {self.token}".encode()):
                    refusal = _error(401, "missing or wrong token: send the header 'Authorization: Bearer <token>'")
                    return await refusal(scope, receive, send)
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self.limit:
                return await _error(413, f"request body is over the limit of {self.limit} bytes")(scope, receive, send)
        await self.app(scope, receive, send)


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Counts a request body as it streams in (chunked bodies have no Content-Length to check) and stops at `limit`."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyTooLarge
            return message

        await self.app(scope, counted, send)
