"""`python -m runners.debug_models SPEC.json`: SPEC = {"entry": <catalog entry>, "output_dir": ...}."""

from __future__ import annotations

import json
import sys

from runners.debug_models import build_debug_model


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m runners.debug_models SPEC.json", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as f:
        spec = json.load(f)
    path = build_debug_model(spec["entry"], spec["output_dir"])
    print(json.dumps({"status": "succeeded", "model_dir": str(path)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
