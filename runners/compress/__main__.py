"""Process entry: `python -m runners.compress SPEC.json`.

Exit codes (CONTRACTS.md §2): 0 succeeded, 1 failed for a user/data reason (result.json says why),
anything else = environment fault (an uncaught crash exits 2 after writing a failed result).
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

from pydantic import ValidationError

from runners.runfiles import RunFiles, UserError
from schemas.run_compress import CompressRunSpec


def main(argv: list[str]) -> int:
    from runners.runfiles import quiet_progress_bars

    quiet_progress_bars()
    if len(argv) != 1:
        print("usage: python -m runners.compress SPEC.json", file=sys.stderr)
        return 1
    path = Path(argv[0])
    try:
        run = CompressRunSpec.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, ValidationError) as exc:
        print(f"{path}: invalid compression spec: {exc}", file=sys.stderr)
        return 1
    files = RunFiles(run.workdir)
    try:
        from runners.compress.run import compress

        files.event("started", f"{run.address} strategy {run.spec.strategy}")
        outputs = compress(run, files)
    except UserError as exc:
        files.event("failed", str(exc))
        files.result("failed", error=str(exc))
        return 1
    except Exception as exc:  # environment fault or bug: retryable, so not exit 1
        traceback.print_exc()
        files.event("failed", f"{type(exc).__name__}: {exc}")
        files.result("failed", error=f"{type(exc).__name__}: {exc}")
        return 2
    files.event("succeeded", f"{outputs['model_dir']} size ratio {outputs['size_ratio']:.3f}")
    files.result("succeeded", outputs=outputs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
