"""Fake runners for engine tests, named as such: tiny real processes that honour the runner
protocol of CONTRACTS.md section 2 (read one SPEC.json, write metrics/events, a model folder and
result.json last, atomically) without torch, so the engine tests do not depend on the real runners.

Point the engine at them with env `ZSCONF_RUNNER_MODULE_<KIND>=fake_runners.job` (or `.serve`)
and `PYTHONPATH=<repo>/tests`. Behaviour knobs (env): FAKE_SLEEP seconds (default 0.2),
FAKE_CRASH=1 (exit 3 without result.json), FAKE_FAIL=1 (result failed, exit 1), FAKE_STARTS=FILE
(each start appends "run_id pid" to FILE: tests count starts to prove nothing ran twice).
"""
