"""Handler of models: import a folder (checked, and validated by `runners.validate` when asked),
build a catalog debug base, or record a catalog model; each is version 1 of the model.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from zsconf.engine.context import ApplyContext, desired_spec, record, split_address
from zsconf.errors import ExecutorError, PermanentError
from zsconf.plans import Action, Change
from zsconf.registry import runner, runner_argv
from zsconf.state import ModelVersion

__all__ = ["apply_model"]


def apply_model(ctx: ApplyContext, ch: Change) -> str:
    _, tenant, name = split_address(ch.address)
    assert tenant is not None
    if ch.action is Action.DELETE:
        ctx.store.remove_model_versions(tenant, name)
        ctx.store.remove_resource(ch.address)
        return "destroyed"
    if ch.action is Action.UPDATE:
        record(ctx, ch)
        return "updated"
    spec = desired_spec(ctx, ch.address)
    if ch.action is Action.REPLACE:
        ctx.store.remove_model_versions(tenant, name)
    if spec.path:
        p = Path(spec.path)
        src = p if p.is_absolute() else ctx.stack_dir / p
        if not (src / "config.json").exists() and not (src / "model_index.json").exists():
            raise PermanentError(
                f"model folder {src} does not exist or has no config.json (model_index.json for a diffusers pipeline)"
            )
        path, fmt = src.resolve(), "huggingface"
        if spec.validate_weights:
            _validate(ctx, ch, src)
        validated = spec.validate_weights
    elif spec.base.startswith("debug/"):
        path = ctx.artifacts / "base" / spec.base.replace("/", "_")
        if not (path / "config.json").exists() and not (path / "model_index.json").exists():
            _build_debug_base(ctx, spec.base, path)
        fmt, validated = "huggingface", True
    else:
        path, fmt, validated = Path(""), "catalog", False
    quant = None if spec.quantization == "none" else spec.quantization
    ctx.store.add_model_version(
        ModelVersion(tenant=tenant, model=name, version=1, source_address=ch.address,
                     content_hash=ch.content_hash, path=str(path) if str(path) != "." else "",
                     format=fmt, quantization=quant, validated=validated)
    )  # fmt: skip
    record(ctx, ch, outputs={"versions": [1], "path": str(path)})
    return f"version 1 at {path}"


def _validate(ctx: ApplyContext, ch: Change, src: Path) -> None:
    """The platform's weight checks on an imported folder, in a runner process (transformers)."""
    workdir = ctx.artifacts / "runs" / ch.address.replace("/", "_") / "validate"
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path = workdir / "spec.json"
    # schemas/run_validate.py (ValidateRunSpec)
    spec_path.write_text(json.dumps({"run_id": "validate-" + ch.content_hash[:12], "address": ch.address,
                                     "workdir": str(workdir), "model_dir": str(src.resolve()),
                                     "quantized": (ch.after or {}).get("quantization", "none") != "none"}))  # fmt: skip
    proc = subprocess.run(runner_argv(runner("validate"), str(spec_path)), cwd=workdir,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    if proc.returncode != 0:
        why = f"weight validation failed for {src}: {proc.stdout[-500:]}{proc.stderr[-500:]}"
        raise PermanentError(why) if proc.returncode == 1 else ExecutorError(why)


def _build_debug_base(ctx: ApplyContext, base: str, path: Path) -> None:
    from zsconf.catalog import load_catalog

    entry_dict = (ctx.catalog or load_catalog()).model(base).model_dump(mode="json")
    path.parent.mkdir(parents=True, exist_ok=True)
    spec_path = path.parent / f"{path.name}.spec.json"
    spec_path.write_text(json.dumps({"entry": {"name": base, **entry_dict}, "output_dir": str(path)}))
    proc = subprocess.run(runner_argv(runner("debug_model"), str(spec_path)),
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    if proc.returncode != 0:
        raise ExecutorError(f"building {base} failed: {proc.stderr[-800:]}")
