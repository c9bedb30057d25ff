"""Checks that APP__<SECTION>__<KEY> variables name settings the service really has.

A variable is known when the service's configuration has the section and the key, either set or
as a commented example (`# otlp_endpoint = …`, `# [redis.cache] url = …`). A service's
configuration is two files, layered as the service loads them: the defaults every service shares
(crates/platform-service/config/common.toml), then services/<service>/config/default.toml. The
shared [database] section counts only for services whose own file has [database] (those with a
Postgres database).
Keys that other issues are still adding to a service are listed in pending-config-keys.txt: they
are reported as pending (not errors) until the service's default.toml has them, and reported as
stale once it has (so the list shrinks to nothing).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
PENDING_FILE = HERE / "pending-config-keys.txt"
COMMON_FILE = Path("crates") / "platform-service" / "config" / "common.toml"
# Shared sections only some services have: known for a service whose own file has the section.
OPTIONAL_COMMON_SECTIONS = {"database"}
ENV_RE = re.compile(r"^APP__([A-Z0-9_]+?)__([A-Z0-9_]+(?:__[A-Z0-9_]+)*)$")


def load_pending() -> set[tuple[str, str]]:
    out = set()
    for line in PENDING_FILE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            service, var = line.split()
            out.add((service, var))
    return out


class ConfigKeys:
    def __init__(self, repo: Path):
        self.repo = repo
        self.pending = load_pending()
        self.used_pending: set[tuple[str, str]] = set()
        self._cache: dict[str, tuple[dict, list[str]] | None] = {}
        self._common_text = (repo / COMMON_FILE).read_text()

    def _load(self, service: str):
        """The service's merged settings tree and the texts of its two files, or None."""
        if service not in self._cache:
            path = self.repo / "services" / service / "config" / "default.toml"
            if path.exists():
                own_text = path.read_text()
                own = tomllib.loads(own_text)
                common = tomllib.loads(self._common_text)
                common_text = self._common_text
                for section in OPTIONAL_COMMON_SECTIONS - own.keys():
                    common.pop(section, None)
                    common_text = _without_section(common_text, section)
                self._cache[service] = (_merge(common, own), [common_text, own_text])
            else:
                self._cache[service] = None
        return self._cache[service]

    def known(self, service: str, var: str) -> bool:
        loaded = self._load(service)
        if loaded is None:
            return False
        data, texts = loaded
        m = ENV_RE.match(var)
        if not m:
            return False
        parts = [p.lower() for p in [m.group(1), *m.group(2).split("__")]]
        # walk the TOML tables as far as they go; the rest may be a commented example
        node = data
        for i, part in enumerate(parts):
            if isinstance(node, dict) and part in node:
                node = node[part]
                continue
            if i == 0:
                return False
            return any(self._commented(text, parts[:i], parts[i:]) for text in texts)
        return True

    @staticmethod
    def _commented(text: str, section: list[str], rest: list[str]) -> bool:
        """`# key = …` inside [section], or `# [section.sub] key = …` anywhere."""
        name = ".".join(section)
        if len(rest) == 1:
            m = re.search(rf"^\[{re.escape(name)}\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
            return bool(m and re.search(rf"^#\s*{re.escape(rest[0])}\s*=", m.group(1), re.M))
        table = ".".join([*section, *rest[:-1]])
        return bool(re.search(rf"^#\s*\[{re.escape(table)}\]\s*{re.escape(rest[-1])}\s*=", text, re.M))

    def check(self, service: str, var: str) -> str | None:
        """None when fine; 'pending' when listed as pending; else an error sentence."""
        if self._load(service) is None:
            return f"{service}: no services/{service}/config/default.toml"
        if self.known(service, var):
            return None
        if (service, var) in self.pending:
            self.used_pending.add((service, var))
            return "pending"
        return f"{service}: {var} is not a setting of {service} (no such key in services/{service}/config/default.toml or {COMMON_FILE})"

    def stale_pending(self) -> list[str]:
        return sorted(f"{s} {v}" for s, v in self.pending if self._load(s) and self.known(s, v))


def _merge(base: dict, over: dict) -> dict:
    """`over` layered on `base`, tables merged key by key (as the service's loader does)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _without_section(text: str, section: str) -> str:
    """`text` without the [section] table (and its commented examples)."""
    return re.sub(rf"^\[{re.escape(section)}\]\s*$.*?(?=^\[|\Z)", "", text, flags=re.M | re.S)
