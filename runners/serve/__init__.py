"""Model servers speaking the OpenAI HTTP API: the embedded transformers engine and the vLLM launcher.

Started as processes by the executor: `python -m runners.serve SPEC.json` (see `__main__`). The spec
is `schemas.run_serve.ServeSpec`. This package's modules import torch/transformers/litestar lazily
or only in the server process; `runners.serve.vllm_cmd` is pure and safe to import anywhere.
"""

from __future__ import annotations

__all__: list[str] = []
