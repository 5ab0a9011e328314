"""Training runner (`python -m runners.train SPEC.json`): see recipe.py and launch.py."""
