"""The training recipe (phases like torchtune's LoRA recipe): construct, setup, train, save, cleanup.

Run by `runners/train/__main__.py` in each process (one, or one per card under torchrun). Rank 0
writes every file; data is sharded by rank inside each global batch. Resume restores model weights,
optimizer, scheduler, each rank's RNG (python / numpy / torch / the card's) and the data position
from the latest checkpoint. SIGTERM stops after the step in flight and a checkpoint.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kernels import HostValues, select_device
from runners.runfiles import RunFiles, UserError
from runners.train.data import batch_positions, collate, load_examples
from runners.train.metrics import MetricsLog
from schemas.run_train import TrainRunSpec

__all__ = ["Stopped", "TrainRecipe", "UserError", "checkpoint_steps", "total_iterations"]


class Stopped(Exception):
    """SIGTERM (`zsconf job stop`, auto_stop) ended the run after a step and its checkpoint."""


def total_iterations(samples: int, global_batch: int, epochs: int, given: int | str) -> int:
    """The platform's rule: ceil(samples / global batch) x epochs unless given."""
    return given if isinstance(given, int) else math.ceil(samples / global_batch) * epochs


def checkpoint_steps(iterations: int, count: int) -> list[int]:
    """`count` steps evenly spaced over the run, the last one at the final step."""
    count = min(count, iterations)
    return sorted({round(iterations * k / count) for k in range(1, count + 1)})


class TrainRecipe:
    """One training run. Methods are the phases; `run_all` chains them."""

    def __init__(self, run: TrainRunSpec) -> None:
        # construct: everything that can be refused without loading the model.
        self.run = run
        self.ft = run.spec
        self.hp = run.spec.hyperparameters
        self.workdir = Path(run.workdir)
        self.ckpt_dir = self.workdir / "checkpoints"
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.is_main = self.rank == 0
        self.files = RunFiles(run.workdir) if self.is_main else None
        hp = self.hp
        self.grad_accum = hp.global_batch_size // (hp.micro_batch_size * self.world)
        if self.grad_accum < 1 or hp.global_batch_size % (hp.micro_batch_size * self.world):
            raise UserError(
                f"global_batch_size {hp.global_batch_size} is not a multiple of micro_batch_size "
                f"{hp.micro_batch_size} x {self.world} processes"
            )
        self.deepspeed_stage = run.spec.resources.deepspeed_stage
        if self.deepspeed_stage is not None and importlib.util.find_spec("deepspeed") is None:
            raise UserError(
                f"DeepSpeed ZeRO stage {self.deepspeed_stage} requested but the deepspeed package is not "
                "installed: install the [gpu] extra (pip install 'zsconf[gpu]')"
            )
        if not (Path(run.inputs.model_dir) / "config.json").is_file():
            raise UserError(
                f"inputs.model_dir {run.inputs.model_dir}: no config.json (not a HuggingFace model folder)"
            )
        for role, ds in run.inputs.datasets.items():
            if not Path(ds.path).is_file():
                raise UserError(f"inputs.datasets.{role}: {ds.path} does not exist")
        if "train" not in run.inputs.datasets:
            raise UserError("inputs.datasets.train is required")

    # ---------------------------------------------------------------- files
    def event(self, event: str, message: str) -> None:
        if self.files:
            self.files.event(event, message)

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = select_device(self.run.device)
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group(self.device.dist_backend)
        self.torch_device = self.device.torch_device(self.local_rank)
        if self.device.type != "cpu":
            torch.cuda.set_device(self.torch_device)  # transfer_to_npu maps this onto the NPU
        # bf16 autocast over fp32 master weights where the card has bf16; plain fp32 on CPU.
        self.autocast = self.device.bf16_supported
        torch.manual_seed(self.hp.seed)
        random.seed(self.hp.seed)
        np.random.seed(self.hp.seed)

        model_dir = self.run.inputs.model_dir
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

        def load(role: str) -> list[Any]:
            ds = self.run.inputs.datasets.get(role)  # type: ignore[call-overload]  # Literal keys
            if ds is None:
                return []
            return load_examples(self.tokenizer, ds.path, ds.format, self.ft.method, self.hp.sequence_length)

        try:
            self.examples, self.val_examples = load("train"), load("validation")
        except ValueError as exc:
            raise UserError(str(exc)) from exc
        self.iterations = total_iterations(
            len(self.examples), self.hp.global_batch_size, self.hp.epochs, self.hp.iterations
        )
        self.ckpt_at = checkpoint_steps(self.iterations, self.hp.checkpoints)

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        if self.ft.method == "lora":
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(
                model,
                LoraConfig(
                    r=self.hp.lora_rank,
                    lora_alpha=self.hp.lora_alpha,
                    lora_dropout=self.hp.lora_dropout,
                    target_modules=list(self.hp.lora_targets),
                    task_type="CAUSAL_LM",
                ),
            )
        self.model = model.to(self.torch_device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=self.hp.learning_rate, weight_decay=self.hp.weight_decay
        )
        self.scheduler = self._scheduler()
        self.step = 0
        self.first_loss: float | None = None
        self.last_loss: float | None = None
        self.last_val_loss: float | None = None
        if self.run.resume:
            self._restore()
        self.engine = self.model
        if self.deepspeed_stage is not None:
            import deepspeed  # type: ignore[import-not-found]

            self.engine, self.optimizer, _, _ = deepspeed.initialize(
                model=self.model,
                optimizer=self.optimizer,
                config={
                    "train_micro_batch_size_per_gpu": self.hp.micro_batch_size,
                    "gradient_accumulation_steps": self.grad_accum,
                    "zero_optimization": {"stage": self.deepspeed_stage},
                    "bf16": {"enabled": self.autocast},
                },
            )
        elif self.world > 1:
            self.engine = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=None if self.device.type == "cpu" else [self.local_rank]
            )

    def _scheduler(self) -> torch.optim.lr_scheduler.LambdaLR:
        warmup = int(self.iterations * self.hp.warmup_ratio)
        kind = self.hp.lr_scheduler
        total = self.iterations

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(1, total - warmup)
            if kind == "cosine":
                return 0.5 * (1 + math.cos(math.pi * progress))
            if kind == "linear":
                return max(0.0, 1 - progress)
            return 1.0

        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    # ---------------------------------------------------------------- checkpoints
    def _trainable_state(self) -> dict[str, torch.Tensor]:
        if self.ft.method == "lora":
            from peft import get_peft_model_state_dict

            return get_peft_model_state_dict(self.model)
        return self.model.state_dict()

    def save_checkpoint(self) -> None:
        """HF-format weights (or adapter) + optimizer/scheduler/RNG/data position, written to a tmp
        folder then renamed so a kill never leaves a half checkpoint; oldest pruned to the count."""
        final = self.ckpt_dir / f"step-{self.step}"
        tmp = self.ckpt_dir / f".step-{self.step}.tmp"
        self._barrier()
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self._barrier()
        # every rank's own RNG streams (CPU and card: dropout masks differ per rank and per device)
        torch.save(self._rng_state(), tmp / f"rng_state_{self.rank}.pt")
        if self.is_main:
            self.model.save_pretrained(tmp)
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
            state = {
                "step": self.step,
                "data_position": self.step * self.hp.global_batch_size,
                "iterations": self.iterations,
                "first_loss": self.first_loss,
                "last_loss": self.last_loss,
                "validation_loss": self.last_val_loss,  # computed at this step when there is a set
            }
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        self._barrier()  # every rank's RNG file is in before the rename publishes the checkpoint
        if self.is_main:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in self.checkpoints()[: -self.hp.checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
            self.event("checkpoint", f"checkpoint saved at iteration {self.step}: {final}")
        self._barrier()

    @contextlib.contextmanager
    def _stop_on_sigterm(self) -> Iterator[None]:
        """SIGTERM asks for a stop: the step in flight finishes, a checkpoint is written, then
        Stopped. The executor sends SIGKILL after its grace period (30 s) regardless."""
        self.stop_asked = False

        def ask(signum: int, frame: Any) -> None:
            self.stop_asked = True

        previous = signal.signal(signal.SIGTERM, ask)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def _rng_state(self) -> dict[str, Any]:
        state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        if self.device.type != "cpu":
            state["device"] = torch.cuda.get_rng_state()  # the current card's; NPU through transfer_to_npu
        return state

    def _set_rng_state(self, state: dict[str, Any]) -> None:
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if self.device.type != "cpu" and "device" in state:
            torch.cuda.set_rng_state(state["device"])

    def checkpoints(self) -> list[Path]:
        if not self.ckpt_dir.is_dir():
            return []
        found = [p for p in self.ckpt_dir.glob("step-*") if (p / "trainer_state.json").is_file()]
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    def _restore(self) -> None:
        from safetensors.torch import load_file

        found = self.checkpoints()
        if not found:
            self.event("resumed", "resume requested but no checkpoint yet: starting from the base model")
            return
        ckpt = found[-1]
        if self.ft.method == "lora":
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.model, load_file(ckpt / "adapter_model.safetensors"))
        else:
            state: dict[str, torch.Tensor] = {}
            for f in sorted(ckpt.glob("*.safetensors")):
                state.update(load_file(f))
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            tied = set(getattr(self.model, "_tied_weights_keys", None) or [])
            if unexpected or [k for k in missing if k not in tied and "lm_head" not in k]:
                raise RuntimeError(f"checkpoint {ckpt} does not match the model: missing {missing[:3]}")
        self.optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=False))
        self.scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=False))
        rng_file = ckpt / f"rng_state_{self.rank}.pt"
        if rng_file.is_file():
            self._set_rng_state(torch.load(rng_file, weights_only=False))
        else:  # written by a run with fewer processes: same data order, fresh dropout masks
            self.event("warning", f"{ckpt} has no RNG state for rank {self.rank}: random streams start anew")
        st = json.loads((ckpt / "trainer_state.json").read_text())
        self.step, self.first_loss, self.last_loss = st["step"], st["first_loss"], st["last_loss"]
        self.event("resumed", f"resumed from {ckpt} at iteration {self.step}/{self.iterations}")

    # ---------------------------------------------------------------- train
    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        # bf16 autocast only where the card has it; entering a disabled one each step is waste.
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(self.torch_device.type, dtype=torch.bfloat16)

    def validation_loss(self) -> float | None:
        """Mean loss over the validation dataset (None without one). Every rank computes it: under
        DDP and ZeRO-3 the forward pass is collective."""
        if not self.val_examples:
            return None
        pad, size = self.tokenizer.pad_token_id, self.hp.micro_batch_size
        self.engine.eval()
        total = 0.0
        with torch.no_grad(), self._autocast():
            for lo in range(0, len(self.val_examples), size):
                examples = self.val_examples[lo : lo + size]
                batch = {k: v.to(self.torch_device) for k, v in collate(examples, pad).items()}
                total += float(self.engine(**batch).loss) * len(examples)
        self.engine.train()
        return total / len(self.val_examples)

    def train(self) -> None:
        hp = self.hp
        pad = self.tokenizer.pad_token_id
        autocast = self._autocast
        readback = HostValues(self.torch_device, 2)
        self.model.train()

        with contextlib.ExitStack() as stack:
            stack.enter_context(self._stop_on_sigterm())
            metrics = stack.enter_context(MetricsLog(self.run.workdir)) if self.is_main else None
            tokens_total, t_start = 0, time.perf_counter()
            bar = None
            if self.is_main and sys.stdout.isatty():
                from tqdm import tqdm

                bar = tqdm(total=self.iterations, initial=self.step, desc="train")
            while self.step < self.iterations:
                t0 = time.perf_counter()
                positions = batch_positions(self.step, len(self.examples), hp.seed, hp.global_batch_size)
                # global batch = [micro 0: rank 0, rank 1, ...][micro 1: ...]: each rank its own slices.
                loss_sum: torch.Tensor | None = None
                tokens = 0
                for m in range(self.grad_accum):
                    lo = (m * self.world + self.rank) * hp.micro_batch_size
                    examples = [self.examples[i] for i in positions[lo : lo + hp.micro_batch_size]]
                    # counted on the host from the examples: no tensor reduction, no device sync.
                    tokens += sum(len(e.input_ids) for e in examples)
                    batch = {k: v.to(self.torch_device) for k, v in collate(examples, pad).items()}
                    sync = m == self.grad_accum - 1
                    no_sync = self.world > 1 and not sync and hasattr(self.engine, "no_sync")
                    with self.engine.no_sync() if no_sync else contextlib.nullcontext(), autocast():
                        loss = self.engine(**batch).loss
                    if self.grad_accum > 1:  # x / 1 is exact, but it is one more op and graph node
                        loss = loss / self.grad_accum
                    loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
                    if sync:
                        # The step's loss (and whether any rank was asked to stop) leaves the card
                        # now, before backward is queued: reading it after the optimizer step then
                        # waits for the forward pass only, not for a full sync, so the host queues
                        # the next step while the card still works. Every rank sees the same stop
                        # flag at the same step, so all of them take the last checkpoint together.
                        stats = torch.stack([loss_sum, loss_sum.new_full((), float(self.stop_asked))])
                        if self.world > 1:
                            torch.distributed.all_reduce(stats)
                        readback.send(stats)
                    if self.deepspeed_stage is not None:
                        self.engine.backward(loss)
                    else:
                        loss.backward()
                if self.deepspeed_stage is not None:
                    self.engine.step()
                else:
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                lr = self.scheduler.get_last_lr()[0]
                self.scheduler.step()
                self.step += 1
                loss_sum_all, stops = readback.receive()
                loss_value = loss_sum_all / self.world
                dt = time.perf_counter() - t0
                tokens_total += tokens
                tps = tokens / dt
                if self.first_loss is None:
                    self.first_loss = loss_value
                self.last_loss = loss_value
                # Validation at each checkpoint and at the end: what the checkpoint is worth.
                val = None
                if self.step in self.ckpt_at or self.step == self.iterations:
                    val = self.validation_loss()
                    self.last_val_loss = val if val is not None else self.last_val_loss
                if self.is_main:
                    assert metrics is not None
                    extra = {} if val is None else {"validation_loss": val}
                    metrics.write(
                        step=self.step,
                        loss=loss_value,
                        learning_rate=lr,
                        tokens_per_s_per_card=tps,
                        elapsed_s=time.perf_counter() - t_start,
                        **extra,
                    )
                    line = (
                        f"iteration {self.step}/{self.iterations} | lm loss {loss_value:.4f} | "
                        f"elapsed time per iteration (ms): {dt * 1000:.1f} | learning rate {lr:.1e} | "
                        f"tokens/s/card {tps:.1f}"
                    )
                    if bar:
                        bar.update(1)
                        bar.set_postfix_str(f"loss {loss_value:.3f}")
                        if val is not None:
                            bar.write(f"iteration {self.step}: validation lm loss {val:.4f}")
                    else:
                        print(line + ("" if val is None else f" | validation lm loss {val:.4f}"), flush=True)
                if self.step in self.ckpt_at:
                    self.save_checkpoint()
                if stops and self.step < self.iterations:
                    if self.step not in self.ckpt_at:
                        self.save_checkpoint()
                    raise Stopped(f"stopped at iteration {self.step}/{self.iterations}: checkpoint saved")
            if bar:
                bar.close()
        elapsed = time.perf_counter() - t_start
        self.tokens_per_s = tokens_total / elapsed if elapsed > 0 else 0.0

    # ---------------------------------------------------------------- output
    def save_output(self) -> dict[str, Any]:
        """Final model into output_dir atomically: merged full weights (LoRA: merge_and_unload, the
        adapter beside it in adapter/), tokenizer and generation_config.json."""
        out = Path(self.run.output_dir)
        tmp = out.with_name(f".{out.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model = self.model
        adapter_dir = None
        if self.ft.method == "lora":
            model.save_pretrained(tmp / "adapter")
            model = model.merge_and_unload()
            adapter_dir = str(out / "adapter")
        model.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        if not (tmp / "generation_config.json").exists():
            from transformers import GenerationConfig

            GenerationConfig.from_model_config(model.config).save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        return {
            "model_dir": str(out),
            "adapter_dir": adapter_dir,
            "iterations": self.iterations,
            "final_loss": self.last_loss,
            "first_loss": self.first_loss,
            "validation_loss": self.last_val_loss,
            "train_samples": len(self.examples),
            "tokens_per_s_per_card": getattr(self, "tokens_per_s", 0.0),
            "checkpoints": [str(p) for p in self.checkpoints()],
        }

    def cleanup(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def run_all(self) -> dict[str, Any] | None:
        self.event(
            "started", f"{self.ft.method} training of {self.run.inputs.model_dir} ({self.run.address})"
        )
        self.setup()
        self.train()
        outputs = None
        if self.is_main:
            outputs = self.save_output()
            self.event(
                "completed", f"trained {self.iterations} iterations, final lm loss {self.last_loss:.4f}"
            )
        if self.world > 1:
            torch.distributed.barrier()
        return outputs
