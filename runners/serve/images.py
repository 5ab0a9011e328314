"""The text-to-image model server: OpenAI's `POST /v1/images/generations` over a diffusers pipeline.

Built by `runners/serve/__main__.py` for `engine: diffusers` (which binds, loads in the background,
prints the ready line and stops gracefully, as for the embedded engine). The gateway forwards
requests it has validated against the model's `ImageOptions` (schemas/catalog.py); this server
checks them again (it may be called directly) and answers 400 in OpenAI's error shape naming the
parameter. The pipeline is not thread-safe, so every generation runs on ONE worker thread, in
arrival order; the event loop stays free (`/health` answers while an image is made). A request
whose client hung up is skipped if it has not started, and stopped at the next denoising step if
it has. torch and diffusers are imported inside functions: the server process only.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import secrets
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Litestar, Request, Response, post
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from runners.serve.accesslog import access_log
from runners.serve.app import EXCEPTION_HANDLERS, status_routes
from runners.serve.engine import select_device
from runners.serve.protocol import ApiError, error_body, guard_for, parse_request
from schemas.catalog import ImageOptions, parse_size

if TYPE_CHECKING:
    from schemas.run_serve import ServeSpec

__all__ = [
    "ImageEngine",
    "ImageJob",
    "ImageParams",
    "ImageRequest",
    "build_images_app",
    "image_options",
    "resolve",
]

log = logging.getLogger("runners.serve")

MAX_PROMPT = 1000  # characters, prompt and negative_prompt (the manual's limit)
MAX_SEED = 2**63 - 1  # torch generators take 64-bit seeds; seed + i stays below 2**64


def image_options(spec: ServeSpec) -> ImageOptions:
    """The model's ImageOptions from the spec (`images`, the catalog entry's, dumped); ValueError
    when missing or invalid (a bad spec: exit 1)."""
    if spec.images is None:
        raise ValueError(
            "images: engine diffusers needs the model's image options (schemas.catalog.ImageOptions)"
        )
    try:
        return ImageOptions.model_validate(spec.images)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise ValueError(f"images.{where}: {message}" if where else f"images: {message}") from None


class ImageRequest(BaseModel):
    """The JSON body of `/v1/images/generations`: types and fixed bounds. The model's own limits
    (sizes, steps, n, styles) are checked by `resolve`. Unknown fields are ignored, as OpenAI-
    compatible servers do; `user` and `quality` are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr
    prompt: StrictStr = Field(min_length=1, max_length=MAX_PROMPT)
    negative_prompt: StrictStr | None = Field(default=None, max_length=MAX_PROMPT)
    n: StrictInt | None = Field(default=None, ge=1)
    num_inference_steps: StrictInt | None = None
    size: StrictStr | None = None
    style: StrictStr | None = None
    seed: StrictInt | None = Field(default=None, ge=0, le=MAX_SEED)
    response_format: StrictStr | None = None
    user: Any = None
    quality: Any = None


@dataclass(frozen=True)
class ImageParams:
    """One request resolved against the model's options: what the pipeline is called with."""

    prompt: str  # the revised prompt: the request's plus its style's words
    negative_prompt: str | None
    n: int
    steps: int
    height: int
    width: int
    seed: int
    guidance_scale: float


@dataclass
class ImageJob:
    """One request on its way through the worker; `cancelled` is set when its client hangs up."""

    params: ImageParams
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class _Cancelled(Exception):
    """Raised in the worker for a job whose client went away (skipped, or stopped mid-way)."""


def resolve(req: ImageRequest, options: ImageOptions) -> ImageParams:
    """Apply the model's defaults and limits; the style's words join the prompt (revised_prompt).
    A seed is drawn per request when none is given."""
    n = req.n if req.n is not None else 1
    if n > options.max_n:
        raise ApiError(400, f"n: at most {options.max_n} images per request, got {n}", param="n")
    lo, hi = options.steps
    steps = req.num_inference_steps if req.num_inference_steps is not None else options.default_steps
    if not lo <= steps <= hi:
        raise ApiError(
            400,
            f"num_inference_steps: expected an integer in [{lo}, {hi}], got {steps}",
            param="num_inference_steps",
        )
    size = req.size if req.size is not None else options.default_size
    if size not in options.sizes:
        raise ApiError(
            400, f"size: {size!r} is not one of {', '.join(options.sizes)} (HEIGHTxWIDTH)", param="size"
        )
    height, width = parse_size(size)
    style = req.style if req.style is not None else options.default_style
    if style not in options.styles:
        raise ApiError(400, f"style: {style!r} is not one of {', '.join(options.styles)}", param="style")
    if req.response_format not in (None, "b64_json"):
        why = "url is answered by the gateway" if req.response_format == "url" else "expected b64_json"
        raise ApiError(
            400, f"response_format: the model server returns b64_json only ({why})", param="response_format"
        )
    words = options.styles[style]
    return ImageParams(
        prompt=f"{req.prompt}, {words}" if words else req.prompt,
        negative_prompt=req.negative_prompt,
        n=n,
        steps=steps,
        height=height,
        width=width,
        seed=req.seed if req.seed is not None else secrets.randbelow(2**32),
        guidance_scale=options.guidance_scale,
    )


def _png_b64(image: Any) -> str:
    """PIL image -> base64 PNG. No metadata, fixed settings: the same pixels give the same bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


class ImageEngine:
    """Loads the pipeline, then runs jobs one at a time on a single worker thread (FIFO)."""

    def __init__(self, model_dir: str, device: str = "auto") -> None:
        self.model_dir = model_dir
        self.requested_device = device
        self.device = "cpu"
        self.loaded = threading.Event()
        self.pipe: Any = None
        # One thread: the pipeline (its scheduler's step index, above all) is not thread-safe.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="image-worker")
        self._lock = threading.Lock()
        self._queued = 0
        # counters shown by /health (written by the worker only; read racily, which is fine)
        self.stats = {"requests": 0, "images": 0, "cancelled": 0}

    def load(self) -> None:
        """Load the pipeline from its folder: float32 on CPU, float16 on an accelerator."""
        import torch

        self.device, _ = select_device(self.requested_device)
        if self.device == "npu":
            import torch_npu  # noqa: F401  (registers the npu device with torch)
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import logging as df_logging

        df_logging.disable_progress_bar()  # the log is the executor's runner.log: no progress bars
        # Its truncation warning quotes the prompt: user content stays out of the log.
        logging.getLogger(StableDiffusionPipeline.__module__).setLevel(logging.ERROR)
        dtype = torch.float32 if self.device == "cpu" else torch.float16
        pipe = StableDiffusionPipeline.from_pretrained(self.model_dir, dtype=dtype)
        if self.device != "cpu":
            pipe = pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        self.loaded.set()
        log.info("loaded %s on %s", self.model_dir, self.device)

    def queued(self) -> int:
        """Jobs submitted and not yet started."""
        return self._queued

    async def generate(self, job: ImageJob) -> list[str]:
        """Run `job` on the worker (after those before it); base64 PNGs, one per image.
        Raises _Cancelled when its client went away first."""
        with self._lock:
            self._queued += 1
        future = self._executor.submit(self._run, job)
        future.add_done_callback(self._dropped)
        return await asyncio.wrap_future(future)

    def _dropped(self, future: Future[list[str]]) -> None:
        # Cancelled before the worker took it (the handler was cancelled): `_run` never counted it.
        if future.cancelled():
            with self._lock:
                self._queued -= 1

    def close(self) -> None:
        """Finish what was submitted, then stop the worker (after uvicorn's graceful stop)."""
        self._executor.shutdown(wait=True)

    def _run(self, job: ImageJob) -> list[str]:
        import torch

        with self._lock:
            self._queued -= 1
        if job.cancelled.is_set():  # its client left while it waited: skip, do not make images
            self.stats["cancelled"] += 1
            raise _Cancelled
        self.stats["requests"] += 1
        p = job.params

        def on_step(_pipe: Any, _step: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if job.cancelled.is_set():  # stop at this step rather than finish an unwanted image
                raise _Cancelled
            return tensors

        # CPU generators on every device: the same seed gives the same starting noise anywhere.
        generators = [torch.Generator("cpu").manual_seed(p.seed + i) for i in range(p.n)]
        try:
            result = self.pipe(
                prompt=p.prompt,
                negative_prompt=p.negative_prompt,
                num_images_per_prompt=p.n,
                height=p.height,
                width=p.width,
                num_inference_steps=p.steps,
                guidance_scale=p.guidance_scale,
                generator=generators,
                output_type="pil",
                callback_on_step_end=on_step,
            )
        except _Cancelled:
            self.stats["cancelled"] += 1
            raise
        images = [_png_b64(image) for image in result.images]
        self.stats["images"] += len(images)
        return images


async def _json(request: Request[Any, Any, Any]) -> Any:
    try:
        return msgspec.json.decode(await request.body())
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None


async def _watch_disconnect(request: Request[Any, Any, Any], job: ImageJob) -> None:
    """Cancel the job when the client hangs up (the body is read, so the next ASGI message is the
    disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            job.cancel()
            return


def build_images_app(engine: ImageEngine, spec: ServeSpec, options: ImageOptions) -> Litestar:
    """The Litestar app serving `engine` as `spec.served_model_name`: health, models, images."""
    name = spec.served_model_name
    guard = guard_for(spec.api_key, engine.loaded)

    @post("/v1/images/generations", status_code=200)
    async def generations(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        guard(request)
        req = parse_request(ImageRequest, await _json(request))
        if req.model != name:
            raise ApiError(
                404, f"the model {req.model!r} does not exist", param="model", code="model_not_found"
            )
        params = resolve(req, options)
        job = ImageJob(params)
        watcher = asyncio.create_task(_watch_disconnect(request, job))
        try:
            images = await engine.generate(job)
        except _Cancelled:
            # Nobody reads this answer; 499 (nginx's "client closed request") marks it in the log.
            return Response(
                error_body("the client closed the request", "invalid_request_error"), status_code=499
            )
        except Exception as exc:  # one bad generation must not take the server down
            log.exception("generation failed")
            raise ApiError(
                500, f"generation failed: {type(exc).__name__}: {exc}", type_="server_error"
            ) from None
        finally:
            watcher.cancel()
            job.cancel()  # the handler itself was cancelled: do not start (or go on with) the job
        created = int(time.time())
        return Response(
            {
                "created": created,
                "data": [{"b64_json": b64, "revised_prompt": params.prompt} for b64 in images],
            },
            status_code=200,
            media_type="application/json",
        )

    return Litestar(
        route_handlers=[*status_routes(engine, spec, guard), generations],
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[access_log],
        openapi_config=None,
        debug=False,
    )
