#!/usr/bin/env python3
"""Consistency of docker-compose.yml beyond its JSON schema (what `docker compose config` would
resolve), plus the OpenTelemetry collector config; exits 1 on any error.

- YAML anchors/merge keys resolve; no duplicate keys.
- every depends_on target exists; `condition: service_healthy` only on services with a healthcheck;
  each of the five platform services has a healthcheck and waits for Redis healthy (and Postgres
  healthy when it has a database).
- named volumes are declared; bind-mounted files exist in the repository.
- each build names deploy/Dockerfile with a SERVICE arg that is a directory under services/.
- Redis runs with --appendonly yes and a named volume; every service gets
  APP__TELEMETRY__OTLP_ENDPOINT pointing at the collector service.
- every APP__ variable is a real setting of its service (configkeys.py).
- the collector config: each pipeline names receivers/processors/exporters that are defined, and
  the exporter endpoint's host is a compose service.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import urlparse

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from configkeys import ConfigKeys  # noqa: E402
from validate_manifests import UniqueKeyLoader  # noqa: E402

PLATFORM = ["campaign-api", "checkout-api", "webhook-ingest", "usage-meter", "customer-count-refresher"]


def env_dict(env) -> dict:
    if isinstance(env, list):
        return dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return dict(env or {})


def main() -> int:
    compose_path = Path(sys.argv[1])
    repo = Path(sys.argv[2]) if len(sys.argv) > 2 else HERE.parent.parent
    errors: list[str] = []
    notes: list[str] = []
    keys = ConfigKeys(repo)
    try:
        doc = yaml.load(compose_path.read_text(), Loader=UniqueKeyLoader)
    except yaml.YAMLError as e:
        print(f"  ERROR: {compose_path}: {e}")
        return 1
    services = doc.get("services") or {}
    volumes = set((doc.get("volumes") or {}).keys())

    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for dep, spec in deps.items():
            if dep not in services:
                errors.append(f"{name}: depends_on {dep}, which is not a service")
            elif (spec or {}).get("condition") == "service_healthy" and not services[dep].get("healthcheck"):
                errors.append(f"{name}: waits for {dep} to be healthy but {dep} has no healthcheck")
        for vol in svc.get("volumes") or []:
            src = vol.split(":", 1)[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith((".", "/")):
                if not (repo / src).exists():
                    errors.append(f"{name}: bind mount {src} does not exist")
            elif src and src not in volumes:
                errors.append(f"{name}: volume {src} is not declared under top-level volumes")
        build = svc.get("build")
        if isinstance(build, dict):
            if build.get("dockerfile") != "deploy/Dockerfile":
                errors.append(f"{name}: builds from {build.get('dockerfile')}, not deploy/Dockerfile")
            arg = (build.get("args") or {}).get("SERVICE")
            if not arg or not (repo / "services" / arg).is_dir():
                errors.append(f"{name}: build arg SERVICE={arg!r} is not a directory under services/")
            elif arg != name:
                errors.append(f"{name}: builds SERVICE={arg}")

    for name in PLATFORM:
        svc = services.get(name)
        if svc is None:
            errors.append(f"service {name} is missing")
            continue
        if not (svc.get("healthcheck") or {}).get("test"):
            errors.append(f"{name}: no healthcheck")
        deps = svc.get("depends_on") or {}
        if (deps.get("redis") or {}).get("condition") != "service_healthy":
            errors.append(f"{name}: must wait for redis: service_healthy")
        env = env_dict(svc.get("environment"))
        has_db = "APP__DATABASE__URL" in env
        if has_db and (deps.get("postgres") or {}).get("condition") != "service_healthy":
            errors.append(f"{name}: has a database but does not wait for postgres: service_healthy")
        otlp = env.get("APP__TELEMETRY__OTLP_ENDPOINT", "")
        host = urlparse(otlp).hostname
        if host not in services:
            errors.append(f"{name}: APP__TELEMETRY__OTLP_ENDPOINT={otlp!r} does not point at a compose service")
        port = env.get("APP__HTTP__PORT")
        if port and not any(str(p).endswith(f":{port}") for p in svc.get("ports") or []):
            errors.append(f"{name}: APP__HTTP__PORT {port} is not published")
        for var in env:
            if var.startswith("APP__"):
                r = keys.check(name, var)
                if r == "pending":
                    notes.append(f"pending: {name} {var}")
                elif r:
                    errors.append(r)

    redis = services.get("redis") or {}
    cmd = " ".join(redis.get("command") or []) if isinstance(redis.get("command"), list) else str(redis.get("command"))
    if not re.search(r"--appendonly\s+yes", cmd):
        errors.append("redis: AOF persistence (--appendonly yes) is off")
    if not any(str(v).endswith(":/data") for v in redis.get("volumes") or []):
        errors.append("redis: /data is not on a named volume")

    # OpenTelemetry collector config
    col = services.get("otel-collector") or {}
    cfg_mount = next((v for v in col.get("volumes") or [] if str(v).startswith("./")), None)
    if not cfg_mount:
        errors.append("otel-collector: no config file mounted")
    else:
        cfg_path = repo / cfg_mount.split(":", 1)[0]
        cfg = yaml.load(cfg_path.read_text(), Loader=UniqueKeyLoader) if cfg_path.exists() else {}
        pipelines = ((cfg.get("service") or {}).get("pipelines") or {})
        if "traces" not in pipelines:
            errors.append(f"{cfg_path.name}: no traces pipeline")
        for pname, p in pipelines.items():
            for section in ("receivers", "processors", "exporters"):
                for comp in p.get(section) or []:
                    if comp not in (cfg.get(section) or {}):
                        errors.append(f"{cfg_path.name}: pipeline {pname} uses {section[:-1]} {comp}, which is not defined")
        for ext in (cfg.get("service") or {}).get("extensions") or []:
            if ext not in (cfg.get("extensions") or {}):
                errors.append(f"{cfg_path.name}: extension {ext} is not defined")
        for ename, e in (cfg.get("exporters") or {}).items():
            ep = (e or {}).get("endpoint")
            if ep:
                host = urlparse(ep if "://" in ep else f"//{ep}").hostname
                if host not in services:
                    errors.append(f"{cfg_path.name}: exporter {ename} sends to {host}, not a compose service")

    for n in sorted(set(notes)):
        print(f"  note: {n}")
    for e in errors:
        print(f"  ERROR: {e}")
    print(f"  {len(services)} compose services checked; {len(errors)} error(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
