#!/usr/bin/env python3
"""The Prometheus series names the services export, read from their Rust source; and the
metric names and label matchers a PromQL expression uses.

Sources: every `register("name", "help", metric)` or `register_…(label, "name", "help", metric)`
(and the `("name", "help", &metric)` tuples registered in a loop) under `services/*/src` and `crates/platform-service/src`, typed by the
declaration of `metric` (Counter, Gauge, Histogram, or a Family of one), and every
`encode_descriptor("name", …, MetricType::X)` of a collector. prometheus_client exports a counter
as `<name>_total`, a gauge as `<name>`, a histogram as `<name>_bucket`, `_sum` and `_count`; every
series carries `service="<service>"` (the registry's label). Metrics registered in
platform-service are exported by every service.

Run alone, it prints the names: `python3 deploy/tools/metricnames.py [REPO]`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

SERVICES = ("campaign-api", "checkout-api", "webhook-ingest", "usage-meter", "customer-count-refresher")
ALL = "*"
TYPES = ("Counter", "Gauge", "Histogram")
SUFFIXES = {"Counter": ("_total",), "Gauge": ("",), "Histogram": ("_bucket", "_sum", "_count")}

_STR = r'"(?:[^"\\]|\\.)*"'
# "name", "help", <expression> )   — a register(...) call or a (name, help, metric) tuple
_REGISTER = re.compile(r'(?:\bregister\w*\(\s*(?:[\w.&]+\s*,\s*)?|(?<![\w>!])\()\s*"([a-z_][a-z0-9_]*)"\s*,\s*' + _STR + r'\s*,\s*([^;]*?)\s*,?\s*\)\s*[,;]', re.S)
_DESCRIPTOR = re.compile(r'encode_descriptor\(\s*"([a-z_][a-z0-9_]*)"\s*,\s*' + _STR
                         + r'\s*,\s*[^,]+,\s*MetricType::(\w+)', re.S)
_IDENT = re.compile(r'[A-Za-z_]\w*')


def _sources(root: Path) -> list[tuple[Path, str]]:
    out = []
    for f in sorted(root.rglob("*.rs")):
        text = f.read_text()
        cut = text.find("#[cfg(test)]")
        out.append((f, text if cut < 0 else text[:cut]))
    return out


def _type_of(ident: str, sources: list[tuple[Path, str]]) -> set[str]:
    ty = r'(?:Family\s*(?:::)?<\s*\w+\s*,\s*)?(' + "|".join(TYPES) + r')\b'
    pats = [
        re.compile(r'\b' + ident + r'\s*:\s*' + ty),                                  # field / binding type
        re.compile(r'\blet\s+(?:mut\s+)?' + ident + r'\s*(?::[^=]*)?=\s*' + ty),    # let x = Counter::…
        re.compile(r'\bfn\s+' + ident + r'\s*\([^)]*\)\s*->\s*' + ty),               # fn x(&self) -> Counter
    ]
    found = set()
    for _, text in sources:
        for p in pats:
            found.update(m.group(1) for m in p.finditer(text))
    return found


def load(repo: Path) -> dict[str, dict]:
    """exported series name -> {"base", "type", "services": set}. Raises ValueError when a
    registered metric's type cannot be told from the source."""
    roots = [(ALL, repo / "crates" / "platform-service" / "src")]
    roots += [(s, repo / "services" / s / "src") for s in SERVICES]
    out: dict[str, dict] = {}
    problems = []
    for owner, root in roots:
        sources = _sources(root)
        for path, text in sources:
            if not re.search(r"\bregister\w*\(|encode_descriptor\(", text):
                continue
            found: list[tuple[str, str]] = []
            for m in _DESCRIPTOR.finditer(text):
                found.append((m.group(1), m.group(2)))
            for m in _REGISTER.finditer(text):
                name, expr = m.group(1), m.group(2)
                idents = [i for i in _IDENT.findall(expr) if i not in ("clone", "self", "this", "Box", "new")]
                if not idents:
                    continue
                types = _type_of(idents[-1], sources)
                if len(types) != 1:
                    problems.append(f"{path.relative_to(repo)}: cannot tell the type of metric {name!r} "
                                    f"(registered as {expr.strip()!r}; found {sorted(types) or 'nothing'})")
                    continue
                found.append((name, types.pop()))
            for name, ty in found:
                if ty not in SUFFIXES:
                    problems.append(f"{path.relative_to(repo)}: metric {name!r} has type {ty}, not one of {TYPES}")
                    continue
                for suffix in SUFFIXES[ty]:
                    entry = out.setdefault(name + suffix, {"base": name, "type": ty, "services": set()})
                    entry["services"].add(owner)
    if problems:
        raise ValueError("; ".join(problems))
    if not out:
        raise ValueError(f"no metric registrations found under {repo}")
    return out


def exporters(entry: dict) -> set[str]:
    return set(SERVICES) if ALL in entry["services"] else set(entry["services"])


# ----------------------------------------------------------------------------------- PromQL
# Grafana's variables, replaced by something PromQL parses before an expression is checked.
_GRAFANA_RANGES = re.compile(r'\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}')
_GRAFANA_VARS = re.compile(r'\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]')
_CHILDREN = {
    "BinaryExpr": ("lhs", "rhs"), "AggregateExpr": ("expr", "param"), "UnaryExpr": ("expr",),
    "ParenExpr": ("expr",), "SubqueryExpr": ("expr",), "MatrixSelector": ("vector_selector",),
    "Call": ("args",), "NumberLiteral": (), "StringLiteral": (),
}


def grafana_variables(expr: str) -> set[str]:
    names = set()
    for m in _GRAFANA_VARS.finditer(_GRAFANA_RANGES.sub("", expr)):
        names.add(next(g for g in m.groups() if g))
    return names


def selectors(expr: str, grafana: bool = False) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(metric name, [(label, op, value)]) of every vector selector in expr. Raises ValueError
    when expr does not parse. With grafana=True, Grafana's $variables are substituted first."""
    import promql_parser  # installed in the deploy-check venv

    if grafana:
        expr = _GRAFANA_RANGES.sub("5m", expr)
        expr = _GRAFANA_VARS.sub("grafana_variable", expr)
    try:
        tree = promql_parser.parse(expr)
    except Exception as e:  # the parser raises ValueError and friends
        raise ValueError(f"PromQL does not parse: {e}") from None
    out: list = []

    def walk(node):
        if node is None:
            return
        if isinstance(node, list):
            for n in node:
                walk(n)
            return
        kind = type(node).__name__
        if kind == "VectorSelector":
            matchers = [(m.name, str(m.op).rsplit(".", 1)[-1], m.value) for m in node.matchers.matchers]
            name = node.name or next((v for n, op, v in matchers if n == "__name__" and op == "Equal"), None)
            out.append((name, [m for m in matchers if m[0] != "__name__"]))
            return
        if kind not in _CHILDREN:
            raise ValueError(f"PromQL node {kind} not understood by deploy/tools/metricnames.py")
        for attr in _CHILDREN[kind]:
            walk(getattr(node, attr))

    walk(tree)
    return out


def check_expr(expr: str, names: dict[str, dict], routes: dict | None = None, grafana: bool = False) -> list[str]:
    """Problems of one expression: unknown metrics, a `service` that does not export the metric,
    a `route` that no service registers."""
    try:
        sels = selectors(expr, grafana)
    except ValueError as e:
        return [str(e)]
    problems = []
    for name, matchers in sels:
        if name is None:
            problems.append("a selector without a metric name")
            continue
        entry = names.get(name)
        if entry is None:
            problems.append(f"unknown metric {name} (not exported by any service)")
            continue
        for label, op, value in matchers:
            if label == "service" and op == "Equal" and value not in exporters(entry):
                problems.append(f"{name}{{service=\"{value}\"}}: {value} does not export {name}")
            if label == "route" and op == "Equal" and routes is not None:
                services = exporters(entry)
                if not any(r.pattern == value for s in services for r in routes.get(s, [])):
                    problems.append(f"{name}{{route=\"{value}\"}}: no such route pattern")
    return problems


def main() -> int:
    repo = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2]
    for name, e in sorted(load(repo).items()):
        print(f"{name:55} {e['type']:9} {','.join(sorted(e['services']))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
