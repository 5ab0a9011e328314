"""`python -m runners.validate SPEC.json`: run the weight checks, write result.json.

outputs = {"valid": bool, "failures": [messages]}; a failing check is a user error (exit 1).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import ValidationError

from runners.runfiles import RunFiles
from runners.validate.checks import validate_weights
from schemas.run_validate import ValidateRunSpec


def main(argv: list[str]) -> int:
    from runners.runfiles import quiet_progress_bars

    quiet_progress_bars()
    if len(argv) != 1:
        print("usage: python -m runners.validate SPEC.json", file=sys.stderr)
        return 1
    try:
        run = ValidateRunSpec.model_validate(json.loads(Path(argv[0]).read_text(encoding="utf-8")))
    except (OSError, ValueError, ValidationError) as exc:
        print(f"{argv[0]}: invalid validate spec: {exc}", file=sys.stderr)
        return 1
    files = RunFiles(run.workdir)
    files.event("started", f"validating weights in {run.model_dir}")
    failures = validate_weights(run.model_dir, run.quantized)
    outputs = {"valid": not failures, "failures": failures}
    if failures:
        for f in failures:
            print(f, file=sys.stderr)
        files.event("failed", failures[0])
        files.result("failed", outputs, error=" ".join(failures))
        return 1
    files.event("completed", "weights valid")
    files.result("succeeded", outputs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
