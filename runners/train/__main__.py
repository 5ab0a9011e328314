"""`python -m runners.train SPEC.json` (one process, or one per card under torchrun).

Started by the executor with the argv the engine built (`zsconf.registry.runner_argv`: torchrun
when it needs more than one process). Exit 0 = succeeded,
1 = user/data error (no retry), 2 = environment fault (retryable), 143 = stopped by SIGTERM after
a checkpoint (`zsconf job resume` goes on from it). result.json is written last, and not at all
when stopped: the run did not end.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from pathlib import Path

from pydantic import ValidationError

from runners.runfiles import RunFiles, UserError
from schemas.run_train import TrainRunSpec


def main(argv: list[str]) -> int:
    from runners.runfiles import quiet_progress_bars

    quiet_progress_bars()
    if len(argv) != 1:
        print("usage: python -m runners.train SPEC.json", file=sys.stderr)
        return 1
    path = Path(argv[0])
    try:
        run = TrainRunSpec.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, ValidationError) as exc:
        print(f"{path}: invalid train spec: {exc}", file=sys.stderr)
        return 1
    main_rank = os.environ.get("RANK", "0") == "0"
    files = RunFiles(run.workdir) if main_rank else None
    from runners.train.recipe import Stopped, TrainRecipe

    try:
        recipe = TrainRecipe(run)
        outputs = recipe.run_all()
        recipe.cleanup()
    except Stopped as exc:
        recipe.cleanup()
        if files:
            files.event("stopped", str(exc))
        return 128 + signal.SIGTERM
    except UserError as exc:
        if files:
            files.event("failed", str(exc))
            files.result("failed", error=str(exc))
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # environment fault: retryable
        traceback.print_exc()
        if files:
            files.event("failed", f"{type(exc).__name__}: {exc}")
            files.result("failed", error=f"{type(exc).__name__}: {exc}")
        return 2
    if files:
        files.result("succeeded", outputs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
