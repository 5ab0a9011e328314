"""Process entry: `python -m runners.evaluate SPEC.json`.

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
from schemas.run_evaluate import EvaluateRunSpec


def main(argv: list[str]) -> int:
    from runners.runfiles import quiet_progress_bars

    quiet_progress_bars()
    if len(argv) != 1:
        print("usage: python -m runners.evaluate SPEC.json", file=sys.stderr)
        return 1
    path = Path(argv[0])
    try:
        run = EvaluateRunSpec.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, ValidationError) as exc:
        print(f"{path}: invalid evaluation spec: {exc}", file=sys.stderr)
        return 1
    files = RunFiles(run.workdir)
    try:
        from runners.evaluate.run import evaluate

        files.event("started", run.address)
        outputs = evaluate(run, files)
    except UserError as exc:
        files.event("failed", str(exc))
        files.result("failed", error=str(exc))
        return 1
    except Exception as exc:  # environment fault or bug: retryable, so not exit 1
        traceback.print_exc()
        files.event("failed", f"{type(exc).__name__}: {exc}")
        files.result("failed", error=f"{type(exc).__name__}: {exc}")
        return 2
    files.event("succeeded", json.dumps(outputs["metrics"]))
    files.result("succeeded", outputs=outputs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
