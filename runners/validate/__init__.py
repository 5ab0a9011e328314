"""Weight validation runner (`python -m runners.validate SPEC.json`) and `validate_weights`."""

from __future__ import annotations

from runners.validate.checks import MESSAGES, validate_weights

__all__ = ["MESSAGES", "validate_weights"]
