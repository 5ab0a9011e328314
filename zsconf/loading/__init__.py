"""Stack loading: Hydra composition, secrets, schema validation with file/line diagnostics.

Called by `zsconf.graph`, `zsconf.validate`, the CLI and the plan/apply engine:
`load_stack(stack_dir, overrides) -> LoadedStack` (raises StackError).
"""

from __future__ import annotations

from zsconf.loading.secrets import MASK, SecretMask
from zsconf.loading.stack import LoadedStack, load_stack

__all__ = ["MASK", "LoadedStack", "SecretMask", "load_stack"]
