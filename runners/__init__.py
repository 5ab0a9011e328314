"""Runners: one subpackage per kind of work, each started as `python -m runners.<name> SPEC.json`.

A runner is a separate process: a JSON spec in, files out (model folders, metrics.jsonl,
events.jsonl, result.json). Runners import schemas and kernels, never the CLI or the engine.
"""
