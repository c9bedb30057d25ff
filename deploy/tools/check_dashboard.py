#!/usr/bin/env python3
"""Checks Grafana dashboard JSON files; exits 1 on any error.

Structure: a JSON object with title, uid, an integer schemaVersion, editable tags/time, and a
non-empty panels list; every panel has a unique integer id, a type, a title and a gridPos
(h, w, x, y integers within the 24-column grid); every panel but a row has a datasource and a
non-empty targets list whose items have a unique refId and an expr. Queries: every expr (and every
`label_values(…)` variable query) parses as PromQL once Grafana's variables are substituted, and
names only metrics the services export (deploy/tools/metricnames.py, read from their source),
with `service` and `route` matchers that exist; every $variable an expr uses is defined in
templating.

    check_dashboard.py [--repo REPO] FILE...
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import metricnames  # noqa: E402
import routetable  # noqa: E402

BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s", "__range_ms"}
LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.*?)\s*,\s*\w+\s*\)\s*$", re.S)


def check(dashboard, names: dict, routes: dict, where: str) -> list[str]:
    errors: list[str] = []
    err = errors.append
    if not isinstance(dashboard, dict):
        return [f"{where}: not a JSON object"]
    for key, kind in (("title", str), ("uid", str), ("schemaVersion", int), ("panels", list)):
        if not isinstance(dashboard.get(key), kind):
            err(f"{where}: `{key}` missing or not a {kind.__name__}")
    if errors:
        return errors
    if dashboard["schemaVersion"] < 30:
        err(f"{where}: schemaVersion {dashboard['schemaVersion']} is older than Grafana 8 dashboards")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"]):
        err(f"{where}: uid {dashboard['uid']!r} must be 1-40 of [A-Za-z0-9_-]")

    variables = set(BUILTIN_VARIABLES)
    for var in (dashboard.get("templating") or {}).get("list") or []:
        if not isinstance(var, dict) or not var.get("name") or not var.get("type"):
            err(f"{where}: a templating variable without name or type")
            continue
        variables.add(var["name"])
        query = var.get("query")
        text = query.get("query") if isinstance(query, dict) else query
        if var["type"] == "query" and isinstance(text, str):
            m = LABEL_VALUES.match(text)
            selector = m.group(1) if m else text
            for problem in metricnames.check_expr(selector, names, routes, grafana=True):
                err(f"{where}: variable ${var['name']}: {problem}")

    panels = list(dashboard["panels"])
    for p in list(panels):  # collapsed rows keep their panels inside
        if isinstance(p, dict) and p.get("type") == "row":
            panels += p.get("panels") or []
    if not panels:
        err(f"{where}: no panels")
    ids = set()
    queried = 0
    for i, p in enumerate(panels):
        label = f"{where}: panel {p.get('title', i) if isinstance(p, dict) else i!r}"
        if not isinstance(p, dict):
            err(f"{label}: not an object")
            continue
        pid = p.get("id")
        if not isinstance(pid, int) or isinstance(pid, bool):
            err(f"{label}: id missing or not an integer")
        elif pid in ids:
            err(f"{label}: duplicate id {pid}")
        ids.add(pid)
        for key in ("type", "title"):
            if not isinstance(p.get(key), str) or not p.get(key):
                err(f"{label}: `{key}` missing")
        grid = p.get("gridPos")
        if not isinstance(grid, dict) or not all(isinstance(grid.get(k), int) for k in ("h", "w", "x", "y")):
            err(f"{label}: gridPos needs integer h, w, x, y")
        elif not (0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["w"] > 0 and grid["h"] > 0):
            err(f"{label}: gridPos outside the 24-column grid")
        if p.get("type") == "row":
            continue
        if not p.get("datasource"):
            err(f"{label}: no datasource")
        targets = p.get("targets")
        if not isinstance(targets, list) or not targets:
            err(f"{label}: no targets")
            continue
        refs = set()
        for t in targets:
            if not isinstance(t, dict) or not isinstance(t.get("expr"), str) or not t["expr"].strip():
                err(f"{label}: a target without an expr")
                continue
            if t.get("refId") in refs or not t.get("refId"):
                err(f"{label}: refId missing or repeated ({t.get('refId')!r})")
            refs.add(t.get("refId"))
            queried += 1
            for problem in metricnames.check_expr(t["expr"], names, routes, grafana=True):
                err(f"{label} [{t.get('refId')}]: {problem}: {t['expr']}")
            for v in metricnames.grafana_variables(t["expr"]) - variables:
                err(f"{label} [{t.get('refId')}]: ${v} is not a templating variable")
    if not errors:
        shown = sum(1 for p in panels if p.get("type") != "row")
        print(f"  {where}: {shown} panels, {queried} queries, every metric one of the {len(names)} "
              f"series the services export: ok")
    return errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--repo", type=Path, default=HERE.parent.parent)
    args = ap.parse_args()
    names = metricnames.load(args.repo)
    routes = routetable.load(args.repo)
    errors = []
    for f in args.files:
        try:
            dashboard = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            errors.append(f"{f}: not valid JSON: {e}")
            continue
        errors += check(dashboard, names, routes, str(f))
    for e in errors:
        print(f"  ERROR: {e}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
