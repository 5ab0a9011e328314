"""What the console's pages show, read from the state store, the run folders and the stack files.

Called by `daemon.console.pages` (in worker threads: SQLAlchemy is synchronous). Plain dicts and
lists out, so templates and the JSON endpoints share them. Nothing here writes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zsconf.names import ACTIVE_RUN

if TYPE_CHECKING:
    from zsconf.loading import LoadedStack
    from zsconf.state import Store

__all__ = [
    "deployments",
    "keys",
    "lineage",
    "metrics_series",
    "models",
    "overview",
    "resource_page",
    "run_groups",
    "spec_lines",
    "training",
    "usage",
]

METRIC_KEYS = ("loss", "validation_loss", "tokens_per_s_per_card", "learning_rate")
EVAL_METRICS = ("accuracy", "rouge_1", "rouge_2", "rouge_l", "bleu_4")


def _ts(value: Any) -> float | None:
    """Epoch seconds of a datetime (stored naive as UTC by SQLite) or a number."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    from datetime import UTC

    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


# -- overview -----------------------------------------------------------------------------------
def overview(store: Store, kind: str = "", tenant: str = "", status: str = "") -> dict[str, Any]:
    """Every resource with the daemon's two axes, filtered; and the filter choices."""
    from daemon.status import read_statuses

    rows = store.resources()
    axes = read_statuses(store)
    out = []
    for addr in sorted(rows):
        r = rows[addr]
        ax = axes.get(addr)
        item = {"address": addr, "kind": r.kind, "tenant": r.tenant or "", "name": r.name, "state": r.status,
                "sync": ax.sync if ax else "Unknown", "health": ax.health if ax else "Unknown",
                "reason": ax.reason if ax else "", "since": ax.since if ax else None}  # fmt: skip
        out.append(item)
    choices = {
        "kinds": sorted({x["kind"] for x in out}),
        "tenants": sorted({x["tenant"] for x in out if x["tenant"]}),
        "statuses": sorted({x["sync"] for x in out} | {x["health"] for x in out}),
    }
    shown = [
        x
        for x in out
        if (not kind or x["kind"] == kind)
        and (not tenant or x["tenant"] == tenant)
        and (not status or status in (x["sync"], x["health"]))
    ]
    return {"resources": shown, "total": len(out), **choices}


# -- one resource -------------------------------------------------------------------------------
def spec_lines(loaded: LoadedStack | None, kind: str, name: str) -> list[dict[str, Any]]:
    """The resource's spec as written in the files: one entry per leaf field with its file:line
    (fields left to defaults are not shown: they are not in any file). Secrets stay masked."""
    if loaded is None:
        return []
    from schemas.stack import SINGULAR_TO_KEY

    key = SINGULAR_TO_KEY.get(kind)
    spec = getattr(loaded.stack, key, {}).get(name) if key else None
    if spec is None:
        return []
    data = spec.model_dump(mode="json", exclude_unset=True)
    out: list[dict[str, Any]] = []

    def walk(value: Any, path: list[str]) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(v, [*path, str(k)])
            return
        file, line = loaded.locate([key, name, *path])
        if file and Path(file).is_absolute() and Path(file).is_relative_to(loaded.stack_dir):
            file = str(Path(file).relative_to(loaded.stack_dir))
        shown = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
        out.append({"field": ".".join(path), "value": loaded.secrets.text(shown), "file": file, "line": line})

    walk(data, [])
    return out


def lineage(store: Store, address: str) -> dict[str, Any]:
    """The resources upstream and downstream of `address` (tenants left out: every resource has
    one), laid out in columns by depth for an SVG drawing."""
    rows = store.resources()
    deps = {
        a: [d for d in r.dependencies if d in rows and not d.startswith("tenant/")] for a, r in rows.items()
    }
    users: dict[str, list[str]] = {a: [] for a in rows}
    for a, ds in deps.items():
        for d in ds:
            users[d].append(a)
    seen = {address}
    for graph in (deps, users):
        todo = [address]
        while todo:
            for nxt in graph.get(todo.pop(), []):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
    depth: dict[str, int] = {}

    def level(a: str) -> int:
        if a not in depth:
            depth[a] = 1 + max((level(d) for d in deps.get(a, []) if d in seen), default=-1)
        return depth[a]

    columns: dict[int, list[str]] = {}
    for a in sorted(seen):
        columns.setdefault(level(a), []).append(a)
    w, h, gap_x, gap_y = 200, 34, 60, 18
    pos = {a: (c * (w + gap_x), i * (h + gap_y)) for c, col in columns.items() for i, a in enumerate(col)}
    nodes = [{"address": a, "kind": rows[a].kind, "name": rows[a].name, "x": x, "y": y, "w": w, "h": h,
              "current": a == address} for a, (x, y) in pos.items()]  # fmt: skip
    edges = [{"x1": pos[d][0] + w, "y1": pos[d][1] + h / 2, "x2": pos[a][0], "y2": pos[a][1] + h / 2}
             for a in seen for d in deps.get(a, []) if d in seen]  # fmt: skip
    width = (max(columns, default=0) + 1) * (w + gap_x) - gap_x
    height = max((len(c) for c in columns.values()), default=1) * (h + gap_y) - gap_y
    return {"nodes": nodes, "edges": edges, "width": width, "height": height}


def run_groups(store: Store, address: str, runs: list[Any] | None = None) -> list[dict[str, Any]]:
    """Runs of a resource, newest first, each with its attempts (oldest first) and durations
    (`runs`: the resource's rows when the caller has read them already)."""
    groups: dict[str, list[Any]] = {}
    for r in store.runs(address) if runs is None else runs:
        groups.setdefault(r.run_id, []).append(r)
    out = []
    now = time.time()
    for run_id, attempts in groups.items():
        items = []
        for a in attempts:
            start, end = _ts(a.started_at or a.created_at), _ts(a.finished_at)
            items.append({"attempt": a.attempt, "status": a.status, "exit_code": a.exit_code, "error": a.error,
                          "started": start, "seconds": ((end or now) - start) if start else None,
                          "pid": a.pid, "host": a.host, "url": (a.handle or {}).get("url")})  # fmt: skip
        last = attempts[-1]
        out.append({"run_id": run_id, "status": last.status, "workdir": last.workdir,
                    "active": last.status in ACTIVE_RUN, "attempts": items})  # fmt: skip
    return out[::-1]


def resource_page(store: Store, address: str, loaded: LoadedStack | None) -> dict[str, Any] | None:
    from daemon.records import read_log
    from daemon.status import read_statuses

    row = store.resources().get(address)
    if row is None:
        return None
    ax = read_statuses(store).get(address)
    runs = run_groups(store, address)
    tail, offset = "", 0
    if runs:
        tail, offset, _ = read_log(runs[0]["workdir"], -8192)
    return {
        "address": address, "kind": row.kind, "tenant": row.tenant, "name": row.name, "state": row.status,
        "axes": ax.as_dict() if ax else None,
        "description": (row.spec or {}).get("description") or "",
        "spec": spec_lines(loaded, row.kind, row.name),
        "outputs": json.dumps(row.outputs, indent=2, ensure_ascii=False, default=str),
        "lineage": lineage(store, address),
        "runs": runs,
        "log_tail": tail,
        "log_offset": offset,
        "is_job": row.kind in ("finetune", "compression", "evaluation"),
    }  # fmt: skip


# -- training -----------------------------------------------------------------------------------
def metrics_series(workdir: str) -> dict[str, Any]:
    """The per-step curves of a training run's metrics.jsonl (one point per logged step; a step
    logged twice after a resume keeps its last value) and the checkpoints' steps."""
    points: dict[int, dict[str, Any]] = {}
    path = Path(workdir) / "metrics.jsonl"
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line still being written
                if isinstance(rec, dict) and isinstance(rec.get("step"), int):
                    points[rec["step"]] = {**points.get(rec["step"], {}), **rec}
    except OSError:
        pass
    steps = sorted(points)
    series: dict[str, Any] = {"step": steps}
    for k in (*METRIC_KEYS, "elapsed_s"):
        series[k] = [points[s].get(k) for s in steps]
    ckpts = []
    root = Path(workdir) / "checkpoints"
    if root.is_dir():
        import re

        for d in root.iterdir():
            m = re.search(r"(\d+)$", d.name)
            if d.is_dir() and m and not d.name.startswith("."):
                ckpts.append(int(m.group(1)))
    series["checkpoints"] = sorted(ckpts)
    return series


def training(store: Store) -> list[dict[str, Any]]:
    """Fine-tune runs, newest first: status, steps, last loss, throughput, time against the plan's
    estimate (recorded with the run's resource when it was applied)."""
    out = []
    rows = store.resources()
    runs = _runs_by_address(store)
    for addr, row in sorted(rows.items()):
        if row.kind != "finetune":
            continue
        for g in run_groups(store, addr, runs.get(addr, [])):
            last = _last_metrics(g["workdir"])
            seconds = sum(a["seconds"] or 0 for a in g["attempts"])
            hours = ((row.outputs or {}).get("estimate") or {}).get("duration_hours")
            out.append({"address": addr, "run_id": g["run_id"], "status": g["status"], "active": g["active"],
                        "steps": last.get("step") or 0, "loss": last.get("loss"),
                        "tokens_per_s": last.get("tokens_per_s_per_card"), "seconds": seconds,
                        "estimate_s": [h * 3600 for h in hours] if hours else None, "attempts": len(g["attempts"])})  # fmt: skip
    return out


def _runs_by_address(store: Store) -> dict[str, list[Any]]:
    """Every run row in one query (a page listing many resources asks once, not once each)."""
    out: dict[str, list[Any]] = {}
    for r in store.runs():
        out.setdefault(r.address, []).append(r)
    return out


def _last_metrics(workdir: str) -> dict[str, Any]:
    """The last step's record of a run's metrics.jsonl, read from the end of the file."""
    try:
        with open(Path(workdir) / "metrics.jsonl", "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 16384))
            tail = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return {}
    for line in reversed(tail):
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line still being written, or cut by the seek
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            return rec
    return {}


# -- models -------------------------------------------------------------------------------------
def _dir_size(path: str) -> int | None:
    total = 0
    try:
        for root, _, files in os.walk(path):
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    except OSError:
        return None
    return total or None


def models(store: Store) -> list[dict[str, Any]]:
    """Every model with its versions: lineage (what made it), gate, size, perplexity change, and
    the scores of the evaluations that ran on the resource that made it."""
    from sqlmodel import select

    from zsconf.state import ModelVersion

    rows = store.resources()
    scores: dict[str, list[dict[str, Any]]] = {}
    for addr, r in rows.items():
        if r.kind != "evaluation":
            continue
        metrics = ((r.outputs or {}).get("result") or {}).get("metrics") or {}
        for dep in r.dependencies:
            if dep.split("/")[0] in ("finetune", "compression", "model"):
                scores.setdefault(dep, []).append(
                    {"evaluation": addr, **{k: metrics.get(k) for k in EVAL_METRICS}}
                )
    with store.session() as s:
        versions = list(s.exec(select(ModelVersion).order_by(ModelVersion.tenant, ModelVersion.model,
                                                             ModelVersion.version)).all())  # fmt: skip
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for v in versions:
        src = rows.get(v.source_address or "")
        result = ((src.outputs or {}).get("result") or {}) if src is not None else {}
        entry = out.setdefault((v.tenant, v.model), {"tenant": v.tenant, "model": v.model, "versions": []})
        entry["versions"].append({
            "version": v.version, "source": v.source_address, "quantization": v.quantization,
            "gate": v.gate_status, "validated": v.validated, "size": _dir_size(v.path),
            "perplexity_increase": result.get("perplexity_increase"),
            "created": _ts(v.created_at), "scores": scores.get(v.source_address or "", []),
        })  # fmt: skip
    return list(out.values())


# -- deployments --------------------------------------------------------------------------------
def deployments(store: Store, metrics: bool = True) -> list[dict[str, Any]]:
    """Deployments with their live instances (endpoint, health, engine, version, restarts) and a
    few of the engine's own Prometheus metrics where it exposes them."""
    from daemon.status import read_statuses

    rows = store.resources()
    axes = read_statuses(store)
    all_runs = _runs_by_address(store)
    out = []
    for addr, r in sorted(rows.items()):
        if r.kind != "deployment":
            continue
        runs = all_runs.get(addr, [])
        restarts = sum(1 for x in runs if x.attempt > 1)
        instances = []
        for x in runs:
            if x.status not in ACTIVE_RUN:
                continue
            url = (x.handle or {}).get("url")
            instances.append({"run_id": x.run_id, "index": (x.handle or {}).get("index"), "status": x.status,
                              "url": url, "pid": x.pid, "host": x.host, "started": _ts(x.started_at),
                              "attempt": x.attempt,
                              "metrics": _engine_metrics(url) if (metrics and url) else {}})  # fmt: skip
        spec = r.spec or {}
        ax = axes.get(addr)
        out.append({"address": addr, "tenant": r.tenant, "name": r.name, "model": spec.get("model"),
                    "engine": (r.outputs or {}).get("engine") or spec.get("engine"),
                    "version": (r.outputs or {}).get("model_version"), "health": ax.health if ax else "Unknown",
                    "reason": ax.reason if ax else "", "instances": instances, "restarts": restarts,
                    "adapter_on": spec.get("adapter_on")})  # fmt: skip
    return out


_ENGINE_METRICS = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
    "vllm:prompt_tokens_total": "prompt_tokens",
    "vllm:generation_tokens_total": "generation_tokens",
}


def _engine_metrics(url: str) -> dict[str, float]:
    """A few of vLLM's metrics from the instance's /metrics (1 s at most; {} when the engine has
    none, as the embedded engine)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=1.0) as resp:  # loopback instance
            text = resp.read(2 << 20).decode("utf-8", "replace")
        out: dict[str, float] = {}
        for fam in text_string_to_metric_families(text):
            for sample in fam.samples:
                name = _ENGINE_METRICS.get(sample.name)
                if name:
                    out[name] = out.get(name, 0.0) + float(sample.value)
        return out
    except Exception:  # an instance starting, or no /metrics: shown as none
        return {}


# -- keys ---------------------------------------------------------------------------------------
def keys(store: Store) -> list[dict[str, Any]]:
    """Service groups and their keys (id, prefix, state): never a secret, only its prefix."""
    rows = store.resources()
    by_group: dict[tuple[str, str], list[Any]] = {}
    for k in store.api_keys():
        by_group.setdefault((k.tenant, k.group), []).append(k)
    out = []
    for addr, r in sorted(rows.items()):
        if r.kind != "service_group":
            continue
        ks = by_group.get((r.tenant or "", r.name), [])
        out.append({"address": addr, "ref": f"{r.tenant}/{r.name}", "api_keys": [
            {"id": k.id, "prefix": k.prefix, "created": _ts(k.created_at), "revoked": _ts(k.revoked_at),
             "banned": k.banned} for k in sorted(ks, key=lambda k: k.created_at, reverse=True)]})  # fmt: skip
    return out


# -- usage --------------------------------------------------------------------------------------
# range: (seconds, bucket). The hour reads the calls themselves (exact percentiles); a day and a
# week read the hourly rollup (zsconf.state.rollup), a few hundred rows instead of a million.
RANGES = {"1h": (3600, 60), "24h": (86400, 3600), "7d": (7 * 86400, 3600)}


def _filters(group: str, deployment: str, key: str) -> tuple[list[str], dict[str, Any]]:
    where: list[str] = []
    params: dict[str, Any] = {}
    if group:
        tenant, _, name = group.rpartition("/")
        if tenant:
            where.append("tenant = :tenant")
            params["tenant"] = tenant
        where.append('"group" = :group')
        params["group"] = name
    if deployment:
        where.append("deployment = :deployment")
        params["deployment"] = deployment
    if key:
        where.append("key_id = :key")
        params["key"] = key
    return where, params


_DIMS = (("by_group", "tenant || '/' || \"group\""), ("by_deployment", "deployment"), ("by_key", "key_id"))


def _raw(conn: Any, cond: str, params: dict[str, Any]) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
    """Per-minute series and the breakdowns from the calls themselves (exact percentiles: each
    call's rank within its minute, by a window function, so no row leaves the database)."""
    from sqlalchemy import text

    failed = "(error_code IS NOT NULL OR status <> 200)"
    b = "CAST((ts - :start) / :bucket AS INTEGER)"
    series = {r.b: dict(r._mapping) for r in conn.execute(text(f"""
        SELECT {b} AS b, COUNT(*) AS calls, SUM(CASE WHEN {failed} THEN 1 ELSE 0 END) AS failed,
               SUM(prompt_tokens) AS tin, SUM(completion_tokens) AS tout, SUM(images) AS img
        FROM usage_records WHERE {cond} GROUP BY b"""), params)}  # fmt: skip
    for r in conn.execute(text(f"""
        SELECT b, MIN(CASE WHEN rn >= 0.5 * n THEN latency_ms END) AS p50,
                  MIN(CASE WHEN rn >= 0.99 * n THEN latency_ms END) AS p99
        FROM (SELECT {b} AS b, latency_ms, ROW_NUMBER() OVER (PARTITION BY {b} ORDER BY latency_ms) AS rn,
                     COUNT(*) OVER (PARTITION BY {b}) AS n
              FROM usage_records WHERE {cond} AND NOT {failed}) AS ranked
        GROUP BY b"""), params):  # fmt: skip
        series[r.b].update(p50=r.p50, p99=r.p99)
    dims = {name: [dict(r._mapping) for r in conn.execute(text(f"""
        SELECT {dim} AS k, COUNT(*) AS calls, SUM(CASE WHEN {failed} THEN 1 ELSE 0 END) AS failed,
               SUM(prompt_tokens) AS tin, SUM(completion_tokens) AS tout, SUM(images) AS img,
               AVG(CASE WHEN {failed} THEN NULL ELSE latency_ms END) AS avg_ms
        FROM usage_records WHERE {cond} GROUP BY {dim} ORDER BY calls DESC LIMIT 50"""), params)]
            for name, dim in _DIMS}  # fmt: skip
    dims["codes"] = [dict(r._mapping) for r in conn.execute(text(f"""
        SELECT COALESCE(error_code, CAST(status AS TEXT)) AS code, COUNT(*) AS n
        FROM usage_records WHERE {cond} AND {failed} GROUP BY code ORDER BY n DESC"""), params)]  # fmt: skip
    return series, dims


def _hourly(
    conn: Any, where: list[str], params: dict[str, Any]
) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
    """The same from the hourly rollups, from hour `h0` on: percentiles from the latency histogram
    (±19 %)."""
    from sqlalchemy import text

    from zsconf.state.rollup import BINS, percentile_of

    cond = " AND ".join(["hour >= :h0", *where])
    bins = ", ".join(f"SUM(l{i:02d}) AS l{i:02d}" for i in range(BINS))
    series: dict[int, dict[str, Any]] = {}
    for r in conn.execute(text(f"""
        SELECT hour - :h0 AS b, SUM(calls) AS calls, SUM(failed) AS failed, SUM(prompt_tokens) AS tin,
               SUM(completion_tokens) AS tout, SUM(images) AS img, {bins}
        FROM usage_hours WHERE {cond} GROUP BY hour"""), params):  # fmt: skip
        m = r._mapping
        hist = [int(m[f"l{i:02d}"]) for i in range(BINS)]
        series[int(r.b)] = {"calls": m["calls"], "failed": m["failed"], "tin": m["tin"], "tout": m["tout"],
                            "img": m["img"], "p50": percentile_of(hist, 50), "p99": percentile_of(hist, 99)}  # fmt: skip

    def per(dim: str) -> list[dict[str, Any]]:
        return [dict(r._mapping) for r in conn.execute(text(f"""
            SELECT {dim} AS k, SUM(calls) AS calls, SUM(failed) AS failed, SUM(prompt_tokens) AS tin,
                   SUM(completion_tokens) AS tout, SUM(images) AS img,
                   SUM(latency_ms_sum) / NULLIF(SUM(ok_calls), 0) AS avg_ms
            FROM usage_hours WHERE {cond} GROUP BY {dim} ORDER BY calls DESC LIMIT 50"""), params)]  # fmt: skip

    dims = {name: per(dim) for name, dim in _DIMS if name != "by_key"}
    # Keys: whole days from the daily rollup, the hours before the first whole day from the hourly.
    day0 = -(-params["h0"] // 24)
    hours_cond = " AND ".join(["hour >= :h0", "hour < :day0 * 24", *where])
    days_cond = " AND ".join(["day >= :day0", *where])
    dims["by_key"] = [dict(r._mapping) for r in conn.execute(text(f"""
        SELECT key_id AS k, SUM(calls) AS calls, SUM(failed) AS failed, SUM(prompt_tokens) AS tin,
               SUM(completion_tokens) AS tout, SUM(images) AS img,
               SUM(latency_ms_sum) / NULLIF(SUM(ok_calls), 0) AS avg_ms
        FROM (SELECT key_id, calls, failed, prompt_tokens, completion_tokens, images, latency_ms_sum, ok_calls
              FROM usage_key_hours WHERE {hours_cond}
              UNION ALL
              SELECT key_id, calls, failed, prompt_tokens, completion_tokens, images, latency_ms_sum, ok_calls
              FROM usage_key_days WHERE {days_cond}) AS k
        GROUP BY key_id ORDER BY calls DESC LIMIT 50"""), {**params, "day0": day0})]  # fmt: skip
    dims["codes"] = [dict(r._mapping) for r in conn.execute(text(f"""
        SELECT code, SUM(calls) AS n FROM usage_hours WHERE {cond} AND code <> ''
        GROUP BY code ORDER BY n DESC"""), params)]  # fmt: skip
    return series, dims


def usage(store: Store, range_: str = "1h", group: str = "", deployment: str = "", key: str = "",
          now: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Calls, failures, tokens, images and latency p50/p99 over time, and per service group,
    deployment, key and error code, aggregated in SQL (indexed on the time column)."""
    from schemas.run_gateway import ERROR_CODES

    range_ = range_ if range_ in RANGES else "1h"
    span, bucket = RANGES[range_]
    now = time.time() if now is None else now
    where, params = _filters(group, deployment, key)
    with store.engine.connect() as conn:
        if bucket < 3600 or key:  # one key's calls are few: read them, exactly
            start = now - span
            params |= {"start": start, "end": now, "bucket": bucket}
            series, dims = _raw(conn, " AND ".join(["ts >= :start", "ts < :end", *where]), params)
        else:  # whole hours, the current one included
            h0 = int(now // 3600) - int(span // 3600) + 1
            start = h0 * 3600.0
            params["h0"] = h0
            series, dims = _hourly(conn, where, params)
    raw = "start" in params
    n = int(span // bucket) + (1 if raw else 0)
    cols = {"t": [], "calls": [], "failed": [], "tokens_in": [], "tokens_out": [], "images": [], "p50": [],
            "p99": []}  # fmt: skip
    for b in range(n):
        r = series.get(b) or {}
        cols["t"].append(start + b * bucket)
        cols["calls"].append(int(r.get("calls") or 0))
        cols["failed"].append(int(r.get("failed") or 0))
        cols["tokens_in"].append(int(r.get("tin") or 0))
        cols["tokens_out"].append(int(r.get("tout") or 0))
        cols["images"].append(int(r.get("img") or 0))
        cols["p50"].append(r.get("p50"))
        cols["p99"].append(r.get("p99"))
    for c in dims["codes"]:
        c["n"] = int(c["n"])
        c["type"] = ERROR_CODES.get(c["code"], ("", 0, ""))[0]
    for name, _ in _DIMS:  # PostgreSQL's SUM is numeric: plain numbers for the page and its JSON
        for row in dims[name]:
            row.update({k: int(row[k] or 0) for k in ("calls", "failed", "tin", "tout", "img")})
            row["avg_ms"] = float(row["avg_ms"]) if row["avg_ms"] is not None else None
    totals = {k: sum(cols[k]) for k in ("calls", "failed", "tokens_in", "tokens_out", "images")}
    return {
        "range": range_,
        "bucket": bucket,
        "exact": bucket < 3600,
        "series": cols,
        "totals": totals,
        **dims,
    }
