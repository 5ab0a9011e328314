"""The embedded engine: one transformers model, one generation worker thread, a queue of jobs.

Called by `runners/serve/app.py` (the HTTP layer). A single worker thread owns the model, so no two
generations ever share state; requests wait in a FIFO queue (the embedded engine is the CPU
default for small models, where one sequence at a time already uses every core). Each job streams
events back to its asyncio request through `loop.call_soon_threadsafe`, and a job whose client went
away is stopped at the next token. Imports torch and transformers: server process only.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["Engine", "Event", "GenParams", "Job", "select_device"]

log = logging.getLogger("runners.serve")


@dataclass(frozen=True)
class GenParams:
    """Sampling parameters of one request, validated and resolved by the protocol layer."""

    max_tokens: int
    temperature: float = 1.0  # 0 -> greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 -> off
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


@dataclass(frozen=True)
class Event:
    """`delta` (text of choice `index`), `finish` (reason, completion tokens), `error`, `done`."""

    kind: str
    index: int = 0
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0


@dataclass
class Job:
    """One request: n choices over one prompt, results delivered to an asyncio queue."""

    prompt_ids: list[int]
    params: GenParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def cancel(self) -> None:
        """Stop generating at the next token (the client went away)."""
        self.cancelled.set()


def select_device(requested: str) -> tuple[str, bool]:
    """`auto` -> npu, cuda or cpu, whichever is present; an explicit choice is checked.
    Returns (device type, bfloat16 supported).

    `kernels.select_device` holds the rule (one place for it); the local detection below is only
    the fallback for a checkout whose kernels package lacks it."""
    try:
        from kernels import select_device as kernels_select
    except ImportError:
        kernels_select = None
    if kernels_select is not None:
        info = kernels_select(requested)
        return str(info.type), bool(info.bf16_supported)
    import torch

    def npu_ok() -> bool:
        try:
            import torch_npu  # noqa: F401
        except ImportError:
            return False
        return bool(torch.npu.is_available())  # type: ignore[attr-defined]

    if requested == "auto":
        if npu_ok():
            return "npu", True
        return ("cuda", True) if torch.cuda.is_available() else ("cpu", False)
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda requested but torch sees no CUDA device")
    if requested == "npu" and not npu_ok():
        raise RuntimeError(
            "device npu requested but torch_npu is missing or sees no NPU (install the [npu] extra)"
        )
    return requested, requested != "cpu"


class _Penalties:
    """OpenAI presence/frequency penalties over the tokens generated so far (not the prompt):
    logit[j] -= count[j] * frequency_penalty + (count[j] > 0) * presence_penalty.

    (transformers' repetition_penalty divides logits and counts the prompt: a different rule.)"""

    def __init__(self, prompt_len: int, presence: float, frequency: float) -> None:
        self.prompt_len, self.presence, self.frequency = prompt_len, presence, frequency

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        import torch

        generated = input_ids[:, self.prompt_len :]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(
            1, generated, torch.ones_like(generated, dtype=scores.dtype)
        )
        return scores - counts * self.frequency - (counts > 0).to(scores.dtype) * self.presence


class _Choice:
    """Turns the token stream of one choice into text deltas: incremental detokenisation, stop
    sequences (held back until they cannot match, then trimmed), EOS, cancellation.

    Used as a transformers StoppingCriteria: generate() calls it after appending each token, so it
    sees every token once, in order, and can stop the generation."""

    def __init__(self, engine: Engine, job: Job, index: int) -> None:
        self.engine, self.job, self.index = engine, job, index
        self.prompt_len = len(job.prompt_ids)
        self.ids: list[int] = []
        self.sent = 0  # characters of the decoded text already emitted
        self.finish_reason: str | None = None
        self.hold = max((len(s) for s in job.params.stop), default=1) - 1

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **_: Any) -> torch.BoolTensor:
        import torch

        done = self.step(int(input_ids[0, -1]))
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    def step(self, token: int) -> bool:
        if self.finish_reason is not None:
            return True
        self.ids.append(token)
        if token in self.engine.eos_ids:
            self.finish("stop", self.text())
            return True
        text = self.text()
        for stop in self.job.params.stop:
            # search only where a new match can start: after what was already emitted
            at = text.find(stop, max(self.sent - len(stop) + 1, 0))
            if at >= 0:
                self.finish("stop", text[:at])
                return True
        if self.job.cancelled.is_set():
            self.finish("cancelled", text)
            return True
        safe = len(text) - self.hold
        if text.endswith("\ufffd"):  # half a multi-byte character: wait for the rest
            safe = min(safe, len(text) - 1)
        if safe > self.sent:
            self.job.emit(Event("delta", self.index, text=text[self.sent : safe]))
            self.sent = safe
        return False

    def text(self) -> str:
        return self.engine.tokenizer.decode(self.ids, skip_special_tokens=True)

    def finish(self, reason: str, final_text: str) -> None:
        if len(final_text) > self.sent:
            self.job.emit(Event("delta", self.index, text=final_text[self.sent :]))
            self.sent = len(final_text)
        self.finish_reason = reason


class Engine:
    """Loads the model, then runs jobs one at a time on its worker thread."""

    def __init__(
        self, model_dir: str, device: str = "auto", max_model_len: int | None = None, dtype: str | None = None
    ) -> None:
        self.model_dir = model_dir
        self.requested_device = device
        self.requested_max_len = max_model_len
        self.dtype_name = dtype
        self.loaded = threading.Event()
        self.tokenizer: Any = None
        self.model: Any = None
        self.device = "cpu"
        self.max_model_len = max_model_len or 0
        self.eos_ids: frozenset[int] = frozenset()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        # counters shown by /health (written by the worker only; ints are read racily, which is fine)
        self.stats = {"requests": 0, "generated_tokens": 0, "cancelled": 0}

    # -- setup ---------------------------------------------------------------------------------
    def load(self) -> None:
        """Load tokenizer and model (plain or compressed-tensors), then start the worker."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device, bf16 = select_device(self.requested_device)
        if self.dtype_name and self.dtype_name != "auto":
            dtype: Any = getattr(torch, self.dtype_name)
        elif self.dtype_name == "auto":
            dtype = "auto"
        else:
            # CPU kernels are fastest and most complete in float32; accelerators take bfloat16
            # where they support it, else float16.
            dtype = torch.float32 if self.device == "cpu" else (torch.bfloat16 if bf16 else torch.float16)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the log is the executor's runner.log: no progress bars
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype)
        self.model = model.to(self.device).eval()
        config_len = getattr(model.config, "max_position_embeddings", None) or 4096
        self.max_model_len = min(self.requested_max_len or config_len, config_len)
        eos = model.generation_config.eos_token_id
        eos_list = eos if isinstance(eos, list) else [eos]
        if self.tokenizer.eos_token_id is not None:
            eos_list.append(self.tokenizer.eos_token_id)
        self.eos_ids = frozenset(int(e) for e in eos_list if e is not None)
        self._worker = threading.Thread(target=self._run, name="generation-worker", daemon=True)
        self._worker.start()
        self.loaded.set()
        log.info(
            "loaded %s on %s (max_model_len %d)", Path(self.model_dir).name, self.device, self.max_model_len
        )

    def generation_defaults(self) -> dict[str, Any]:
        """Sampling defaults from the model's generation_config (as vLLM uses them), when it samples."""
        cfg = self.model.generation_config
        if not getattr(cfg, "do_sample", False):
            return {}
        return {
            k: getattr(cfg, k) for k in ("temperature", "top_p", "top_k") if getattr(cfg, k, None) is not None
        }

    # -- prompts -------------------------------------------------------------------------------
    def chat_prompt(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[int]:
        """Render the model's chat template (with tools when given; a template that ignores them
        simply does) and tokenize. The template adds its own special tokens.

        Runs on the event loop while the worker decodes with the same tokenizer: safe because
        neither side changes the fast tokenizer's truncation/padding state (the only mutation
        that makes concurrent use of a Rust tokenizer fail with "Already borrowed")."""
        kwargs: dict[str, Any] = {"tools": tools} if tools else {}
        text = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False, **kwargs
        )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def text_prompt(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt)["input_ids"])

    # -- running -------------------------------------------------------------------------------
    def queued(self) -> int:
        return self._queue.qsize()

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    def close(self, timeout: float = 30.0) -> None:
        """Finish queued jobs, then stop the worker."""
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            self.stats["requests"] += 1
            try:
                self._generate(job)
            except Exception as exc:  # one bad request must not take the server down
                log.exception("generation failed")
                job.emit(Event("error", text=f"generation failed: {type(exc).__name__}: {exc}"))
            job.emit(Event("done"))

    def _generate(self, job: Job) -> None:
        import torch
        from transformers import (
            GenerationConfig,
            LogitsProcessorList,
            StoppingCriteriaList,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        p = job.params
        if p.seed is not None:
            torch.manual_seed(p.seed)  # one worker thread: the global generator is ours alone
        greedy = p.temperature == 0.0
        input_ids = torch.tensor([job.prompt_ids], device=self.device)
        # generate() fills every unset field of our config from the checkpoint's generation_config
        # (a Qwen instruct model brings top_k=20, repetition_penalty=1.05, ...), which would add
        # processors behind the request's back: set them neutral. Ours run in OpenAI's order:
        # penalties, then temperature, top-k, top-p. (Greedy leaves top_k alone: unused.)
        neutral: dict[str, Any] = {
            "temperature": 1.0,
            "top_p": 1.0,
            "repetition_penalty": 1.0,
            "no_repeat_ngram_size": 0,
            "min_new_tokens": 0,
        }
        if not greedy:
            neutral["top_k"] = 0
        pad = self.tokenizer.pad_token_id
        config = GenerationConfig(
            do_sample=not greedy,
            max_new_tokens=p.max_tokens,
            pad_token_id=pad if pad is not None else min(self.eos_ids),
            eos_token_id=sorted(self.eos_ids),
            **neutral,
        )
        for index in range(p.n):
            if job.cancelled.is_set():  # the client left while this job waited in the queue
                self.stats["cancelled"] += 1
                return
            processors = LogitsProcessorList()
            if p.presence_penalty or p.frequency_penalty:
                processors.append(_Penalties(len(job.prompt_ids), p.presence_penalty, p.frequency_penalty))
            if not greedy:
                if p.temperature != 1.0:
                    processors.append(TemperatureLogitsWarper(p.temperature))
                if p.top_k > 0:
                    processors.append(TopKLogitsWarper(p.top_k))
                if p.top_p < 1.0:
                    processors.append(TopPLogitsWarper(p.top_p))
            choice = _Choice(self, job, index)
            with torch.inference_mode():
                self.model.generate(
                    input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    generation_config=config,
                    logits_processor=processors,
                    stopping_criteria=StoppingCriteriaList([choice]),
                )
            self.stats["generated_tokens"] += len(choice.ids)
            if choice.finish_reason is None:  # ran to max_tokens
                choice.finish("length", choice.text())
            if choice.finish_reason == "cancelled":
                self.stats["cancelled"] += 1
                return
            job.emit(
                Event("finish", index, finish_reason=choice.finish_reason, completion_tokens=len(choice.ids))
            )
