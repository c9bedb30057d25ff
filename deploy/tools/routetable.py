#!/usr/bin/env python3
"""The HTTP routes each service registers, read from its Rust source; and which of them an
Ingress or HTTPRoute path reaches.

Sources: `services/<name>/src/routes.rs` or `services/<name>/src/routes/*.rs` (`web::resource("…")`,
`.route("…", …)`, `web::scope("…")` prefixes) and the routes every service gets from
`crates/platform-service/src/health.rs`. A route's handlers are the `.to(handler)` calls of its
registration; a route is service-only when every handler takes `RequireAdmin` or `ServiceOnly`.

Run alone, it prints the table: `python3 deploy/tools/routetable.py [REPO]`.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

SERVICES = ("campaign-api", "checkout-api", "webhook-ingest", "usage-meter", "customer-count-refresher")
COMMON_ROUTES = Path("crates/platform-service/src/health.rs")
# Never on a public ingress, whoever may call them: admin, service-to-service, health, metrics
# and Redis management routes.
FORBIDDEN_PREFIXES = ("/api/admin/", "/internal/", "/api/redis/")
FORBIDDEN_EXACT = ("/metrics", "/readyz", "/healthz", "/api/health/redis")
SERVICE_ONLY_EXTRACTORS = ("RequireAdmin", "ServiceOnly")

_REG = re.compile(r'(web::resource|web::scope|\.route)\(\s*"([^"]+)"')
_TO = re.compile(r'\.to\(\s*([A-Za-z_][\w:]*)\s*\)')


@dataclass
class Route:
    service: str
    pattern: str  # actix pattern, e.g. /api/campaigns/{id}/stats
    handlers: list[str] = field(default_factory=list)
    service_only: bool = False
    source: str = ""

    @property
    def forbidden(self) -> bool:
        return self.pattern in FORBIDDEN_EXACT or any(
            (self.pattern + "/").startswith(p) for p in FORBIDDEN_PREFIXES)

    @property
    def access(self) -> str:
        """never public; service token (every handler needs it); public (anyone, a user's cookie or a
        tenant token: what browsers and Stripe call)."""
        if self.forbidden:
            return "never public"
        return "service token" if self.service_only else "public"


def _strip_tests(text: str) -> str:
    cut = text.find("#[cfg(test)]")
    return text if cut < 0 else text[:cut]


def _matching_paren(text: str, open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    return len(text)


def _enclosing_call(text: str, pos: int) -> tuple[int, int]:
    """(open, close) of the innermost call whose parentheses contain the call starting at pos
    that is not pos's own call: the `.service(…)` a `web::scope(…)` is passed to."""
    depth = 0
    for i in range(pos - 1, -1, -1):
        if text[i] == ")":
            depth += 1
        elif text[i] == "(":
            if depth == 0:
                return i, _matching_paren(text, i)
            depth -= 1
    return 0, len(text)


def _registrations(path: Path, repo: Path) -> list[tuple[str, list[str]]]:
    """(full pattern, handler names) of every route registered in one file."""
    text = _strip_tests(path.read_text())
    regs = list(_REG.finditer(text))
    scopes = []  # (start, end, prefix)
    for m in regs:
        if m.group(1) == "web::scope":
            start, end = _enclosing_call(text, m.start())
            scopes.append((start, end, m.group(2)))
    out = []
    for i, m in enumerate(regs):
        kind, pattern = m.group(1), m.group(2)
        if kind == "web::scope":
            continue
        end = regs[i + 1].start() if i + 1 < len(regs) else len(text)
        chunk = text[m.end():end]
        handlers = [h.split("::")[-1] for h in _TO.findall(chunk)]
        prefix = "".join(p for s, e, p in scopes if s < m.start() < e)
        out.append((prefix + pattern, handlers))
    return out


def _handler_is_service_only(sources: list[str], handler: str) -> bool | None:
    for text in sources:
        m = re.search(r"async fn " + re.escape(handler) + r"\s*(<[^>]*>)?\s*\(", text)
        if m:
            params = text[m.end() - 1:_matching_paren(text, m.end() - 1)]
            return any(x in params for x in SERVICE_ONLY_EXTRACTORS)
    return None


def load(repo: Path) -> dict[str, list[Route]]:
    """service -> routes (its own, then the common ones)."""
    common = [Route("*", p, h, False, str(COMMON_ROUTES)) for p, h in _registrations(repo / COMMON_ROUTES, repo)]
    table: dict[str, list[Route]] = {}
    for service in SERVICES:
        src = repo / "services" / service / "src"
        files = sorted(src.glob("routes/*.rs")) + ([src / "routes.rs"] if (src / "routes.rs").exists() else [])
        if not files:
            raise SystemExit(f"routetable: no routes.rs or routes/*.rs under {src}")
        # Handlers are looked up in the route files first (a domain module may reuse a name).
        sources = [_strip_tests(f.read_text()) for f in files + sorted(set(src.rglob("*.rs")) - set(files))]
        merged: dict[str, Route] = {}
        for f in files:
            for pattern, handlers in _registrations(f, repo):
                route = merged.setdefault(pattern, Route(service, pattern, [], True, str(f.relative_to(repo))))
                route.handlers += handlers
        for route in merged.values():
            kinds = [_handler_is_service_only(sources, h) for h in route.handlers]
            # Unknown handler or none found: treat as public (the stricter reading for an ingress).
            route.service_only = bool(kinds) and all(k is True for k in kinds)
        table[service] = list(merged.values()) + [Route(service, r.pattern, r.handlers, False, r.source) for r in common]
    return table


def _segments(path: str) -> list[str]:
    return [s for s in path.split("/") if s]


def reaches(path_type: str, path: str, pattern: str) -> bool:
    """Whether requests an Ingress/HTTPRoute path sends on can hit the route `pattern`.

    Exact: the pattern matches that one path ({param} matches any one segment). Prefix (Ingress
    Prefix, Gateway PathPrefix): element-wise, some path under the prefix matches the pattern.
    """
    p, r = _segments(path), _segments(pattern)
    seg_ok = lambda a, b: b.startswith("{") or a == b  # noqa: E731
    if path_type == "Exact":
        return len(p) == len(r) and all(seg_ok(a, b) for a, b in zip(p, r))
    if path_type in ("Prefix", "PathPrefix"):
        return len(p) <= len(r) and all(seg_ok(a, b) for a, b in zip(p, r))
    # ImplementationSpecific, RegularExpression: cannot tell what they reach.
    return True


def main() -> int:
    repo = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2]
    for service, routes in load(repo).items():
        print(service)
        for r in routes:
            print(f"  {r.pattern:55} {r.access:14} {','.join(r.handlers)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
