#!/usr/bin/env python3
"""Validates rendered Kubernetes manifests; exits 1 on any error.

1. YAML: every document parses, no duplicate keys (kubectl rejects them; PyYAML would not).
2. Schema: every object against the Kubernetes OpenAPI schemas of each --k8s-version with
   kubernetes-validate in strict mode (unknown fields and wrong types fail). Kinds it has no
   schema for (CRDs) must have one under deploy/tools/schemas/, else it is an error, not a skip.
3. Platform rules (what the chart promises): no Secret objects and no literal secret values;
   every Deployment has /healthz liveness and /readyz readiness on the http port, a preStop
   sleep, terminationGracePeriodSeconds > preStop + drain delay + shutdown timeout,
   maxUnavailable 0, checksum/config annotation, non-root, resources; every Service, HPA, PDB
   and NetworkPolicy points at an existing Deployment; every APP__ variable is a real setting of
   its service (configkeys.py); with --expect-helm-test, a helm test hook that GETs /readyz of
   every Service.
4. Public routing: every path of an Ingress or HTTPRoute (Exact or Prefix only) reaches at least
   one route its backend service registers (routetable.py, read from the Rust source), never an
   admin, internal, Redis management, /metrics, /readyz, /healthz or /api/health/redis route, and
   not only service-token routes.
5. Monitoring: every PrometheusRule alert has a severity label (critical|warning|info) and
   summary, description and runbook_url annotations; every rule expression and every query of a
   dashboard ConfigMap (label grafana_dashboard) names only metrics the services export
   (metricnames.py, read from the Rust source); dashboards pass check_dashboard.py.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from configkeys import ConfigKeys  # noqa: E402
import check_dashboard  # noqa: E402
import metricnames  # noqa: E402
import routetable  # noqa: E402

CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): HERE / "schemas" / "servicemonitor-monitoring-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): HERE / "schemas" / "prometheusrule-monitoring-v1.json",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): HERE / "schemas" / "httproute-gateway-v1.json",
}
SEVERITIES = ("critical", "warning", "info")
ALERT_ANNOTATIONS = ("summary", "description", "runbook_url")
SECRET_NAME_RE = re.compile(r"(TOKEN|PASSWORD|SECRET|_KEY$|SECRETS$|DATABASE__URL$)")


class UniqueKeyLoader(yaml.SafeLoader):
    pass


def _no_duplicates(loader, node, deep=False):
    """Explicit keys of a mapping must be unique; `<<` merge keys may be overridden."""
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def name_of(obj) -> str:
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


def load(paths: list[Path], errors: list[str]) -> list[tuple[Path, dict]]:
    out = []
    for path in paths:
        try:
            docs = list(yaml.load_all(path.read_text(), Loader=UniqueKeyLoader))
        except yaml.YAMLError as e:
            errors.append(f"{path}: YAML: {e}")
            continue
        for doc in docs:
            if doc is None:
                continue
            if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                errors.append(f"{path}: a document without kind/apiVersion")
                continue
            out.append((path, doc))
    return out


def schema_check(objs, versions: list[str], errors: list[str]) -> int:
    checked = 0
    for path, obj in objs:
        crd = CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
        for version in versions:
            try:
                if crd:
                    jsonschema.validate(obj, json.loads(crd.read_text()))
                else:
                    kubernetes_validate.validate(obj, version, strict=True)
                checked += 1
            except kubernetes_validate.SchemaNotFoundError:
                errors.append(f"{path}: {name_of(obj)}: no schema for {obj['apiVersion']} {obj['kind']} "
                              f"in Kubernetes {version} (add one under deploy/tools/schemas/)")
            except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as e:
                where = "/".join(str(p) for p in e.absolute_path) or "(root)"
                errors.append(f"{path}: {name_of(obj)}: Kubernetes {version} schema: at {where}: {e.message}")
            if crd:
                break
    return checked


def pod_spec(obj):
    kind = obj["kind"]
    spec = obj.get("spec") or {}
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return (spec.get("template") or {}).get("spec") or {}
    if kind == "CronJob":
        return ((((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get("spec")) or {}
    if kind == "Pod":
        return spec
    return None


def service_of(obj) -> str | None:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    name = labels.get("app.kubernetes.io/name", "")
    return name.removesuffix("-refresh") or None


def policy_check(objs, repo: Path, expect_test: bool, errors: list[str], notes: list[str]) -> None:
    keys = ConfigKeys(repo)
    by_kind: dict[str, list[dict]] = {}
    for _, obj in objs:
        by_kind.setdefault(obj["kind"], []).append(obj)
    configmaps = {o["metadata"]["name"]: o for o in by_kind.get("ConfigMap", [])}
    deployments = {o["metadata"]["name"]: o for o in by_kind.get("Deployment", [])}

    for obj in by_kind.get("Secret", []):
        errors.append(f"{name_of(obj)}: the chart must not render Secrets (existingSecret references only)")

    def check_var(service, var, where):
        if not var.startswith("APP__"):
            return
        result = keys.check(service, var)
        if result == "pending":
            notes.append(f"pending: {service} {var} ({where})")
        elif result:
            errors.append(f"{where}: {result}")

    for _, obj in objs:
        spec = pod_spec(obj)
        if spec is None:
            continue
        service = service_of(obj)
        is_service_pod = obj["kind"] in ("Deployment", "CronJob")
        for c in spec.get("containers") or []:
            for env in c.get("env") or []:
                if "value" in env and SECRET_NAME_RE.search(env["name"]):
                    errors.append(f"{name_of(obj)}: {env['name']} has a literal value; secrets go through secretKeyRef")
                if is_service_pod:
                    check_var(service, env["name"], name_of(obj))
            for ref in c.get("envFrom") or []:
                cm = configmaps.get((ref.get("configMapRef") or {}).get("name"))
                if ref.get("configMapRef") and cm is None:
                    errors.append(f"{name_of(obj)}: envFrom names a ConfigMap that is not rendered")
                if cm and is_service_pod:
                    for var, value in (cm.get("data") or {}).items():
                        check_var(service, var, name_of(cm))
                        if SECRET_NAME_RE.search(var):
                            errors.append(f"{name_of(cm)}: {var} is secret-like and must come from a Secret")
                        if var == "APP__REDIS__URL" and "@" in str(value):
                            errors.append(f"{name_of(cm)}: APP__REDIS__URL carries credentials; use global.redis.existingSecret")

    for name, d in deployments.items():
        where = name_of(d)
        tmpl = d["spec"]["template"]
        ps = tmpl["spec"]
        c = ps["containers"][0]
        ann = (tmpl.get("metadata") or {}).get("annotations") or {}
        if "checksum/config" not in ann:
            errors.append(f"{where}: pod template lacks the checksum/config annotation")
        ru = (d["spec"].get("strategy") or {}).get("rollingUpdate") or {}
        if str(ru.get("maxUnavailable")) not in ("0", "0%"):
            errors.append(f"{where}: rollingUpdate.maxUnavailable must be 0 (no capacity lost during a rollout)")
        probe_paths = {p: ((c.get(p) or {}).get("httpGet") or {}).get("path") for p in ("livenessProbe", "readinessProbe")}
        if probe_paths["livenessProbe"] != "/healthz":
            errors.append(f"{where}: livenessProbe must GET /healthz (never depends on Redis/Postgres)")
        if probe_paths["readinessProbe"] != "/readyz":
            errors.append(f"{where}: readinessProbe must GET /readyz (turns 503 on SIGTERM)")
        cmd = (((c.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or []
        sleep_action = (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds")
        pre_stop = int(cmd[-1]) if cmd and "sleep" in cmd[0] else (int(sleep_action) if sleep_action else 0)
        if pre_stop <= 0:
            errors.append(f"{where}: no preStop sleep (endpoints need time to drop the pod before SIGTERM)")
        cm = configmaps.get(name, {}).get("data") or {}
        drain_ms = int(cm.get("APP__HTTP__DRAIN_DELAY_MS", 0))
        shutdown = int(cm.get("APP__HTTP__SHUTDOWN_TIMEOUT_SECS", 20))
        if drain_ms <= 0:
            errors.append(f"{where}: APP__HTTP__DRAIN_DELAY_MS must be > 0 so /readyz turns 503 before the listener closes")
        grace = int(ps.get("terminationGracePeriodSeconds", 30))
        if grace <= pre_stop + drain_ms / 1000 + shutdown:
            errors.append(f"{where}: terminationGracePeriodSeconds {grace} <= preStop {pre_stop} + drain {drain_ms / 1000} + shutdown {shutdown}")
        sc = ps.get("securityContext") or {}
        if not sc.get("runAsNonRoot"):
            errors.append(f"{where}: pod must set runAsNonRoot")
        if not (c.get("resources") or {}).get("requests"):
            errors.append(f"{where}: container has no resource requests")
        if str(c.get("image", "")).endswith(":latest") or ":" not in str(c.get("image", "")):
            errors.append(f"{where}: image must carry an explicit tag")

    def selects_deployment(selector: dict) -> bool:
        return any(all(((d["spec"]["template"].get("metadata") or {}).get("labels") or {}).get(k) == v
                       for k, v in selector.items()) for d in deployments.values())

    for s in by_kind.get("Service", []):
        if not selects_deployment(s["spec"].get("selector") or {}):
            errors.append(f"{name_of(s)}: selector matches no Deployment")
    for p in by_kind.get("PodDisruptionBudget", []) + by_kind.get("NetworkPolicy", []):
        sel = (p["spec"].get("selector") or p["spec"].get("podSelector") or {}).get("matchLabels") or {}
        if not selects_deployment(sel):
            errors.append(f"{name_of(p)}: selector matches no Deployment")
    for h in by_kind.get("HorizontalPodAutoscaler", []):
        target = h["spec"]["scaleTargetRef"]["name"]
        if target not in deployments:
            errors.append(f"{name_of(h)}: scales {target}, which is not rendered")
        elif "replicas" in deployments[target]["spec"]:
            errors.append(f"{name_of(deployments[target])}: sets replicas while an HPA scales it (every apply would reset the scale)")

    if expect_test:
        tests = [o for o in by_kind.get("Pod", [])
                 if ((o["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test")]
        if not tests:
            errors.append("no `helm test` hook Pod rendered")
        else:
            script = json.dumps([c.get("args") for t in tests for c in t["spec"]["containers"]])
            if "/readyz" not in script:
                errors.append("the helm test hook does not call /readyz")
            for s in by_kind.get("Service", []):
                target = f"{s['metadata']['name']}:{s['spec']['ports'][0]['port']}"
                if target not in script:
                    errors.append(f"the helm test hook does not check {target}/readyz")

    routing_check(objs, by_kind, repo, errors, notes)
    monitoring_check(by_kind, repo, errors)

    for line in keys.stale_pending():
        notes.append(f"stale pending entry (the service has it now; delete it from deploy/tools/pending-config-keys.txt): {line}")


def public_paths(obj) -> list[tuple[str, str, str, object]]:
    """(path type, path, backend Service name, backend port) of every path an Ingress or an
    HTTPRoute routes."""
    out = []
    spec = obj.get("spec") or {}
    if obj["kind"] == "Ingress":
        if spec.get("defaultBackend"):
            out.append(("Prefix", "/", spec["defaultBackend"].get("service", {}).get("name"), None))
        for rule in spec.get("rules") or []:
            for p in ((rule.get("http") or {}).get("paths")) or []:
                svc = (p.get("backend") or {}).get("service") or {}
                port = (svc.get("port") or {}).get("name") or (svc.get("port") or {}).get("number")
                out.append((p.get("pathType"), p.get("path", "/"), svc.get("name"), port))
    else:
        for rule in spec.get("rules") or []:
            matches = rule.get("matches") or [{}]
            for ref in rule.get("backendRefs") or []:
                for m in matches:
                    path = m.get("path") or {"type": "PathPrefix", "value": "/"}
                    out.append((path.get("type", "PathPrefix"), path.get("value", "/"), ref.get("name"), ref.get("port")))
    return out


def routing_check(objs, by_kind, repo: Path, errors: list[str], notes: list[str]) -> None:
    routed = by_kind.get("Ingress", []) + by_kind.get("HTTPRoute", [])
    if not routed:
        return
    table = routetable.load(repo)
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    for obj in routed:
        where = name_of(obj)
        for path_type, path, backend, port in public_paths(obj):
            what = f"{where}: {path} ({path_type}) -> {backend}"
            if path_type not in ("Exact", "Prefix", "PathPrefix"):
                errors.append(f"{what}: path type must be Exact or Prefix/PathPrefix (what else it routes cannot be checked)")
                continue
            svc = services.get(backend)
            if svc is None:
                errors.append(f"{what}: no such Service in the rendering")
                continue
            ports = {p.get("name") for p in svc["spec"]["ports"]} | {p.get("port") for p in svc["spec"]["ports"]}
            if port is not None and port not in ports:
                errors.append(f"{what}: port {port} is not a port of the Service")
            service = service_of(svc)
            reached = [r for r in table.get(service, []) if routetable.reaches(path_type, path, r.pattern)]
            forbidden = [r.pattern for r in reached if r.forbidden]
            if forbidden:
                errors.append(f"{what}: reaches {', '.join(forbidden)}, which must never be public "
                              f"(admin, internal, health and metrics routes of {service})")
            elif not reached:
                errors.append(f"{what}: reaches no route of {service} (routes: deploy/tools/routetable.py)")
            elif all(r.service_only for r in reached):
                errors.append(f"{what}: reaches only service-token routes of {service}: "
                              f"{', '.join(r.pattern for r in reached)}")
            else:
                covered = [r.pattern for r in reached if r.service_only]
                if covered:
                    notes.append(f"{what} also covers service-token routes {', '.join(covered)} (401 without the token)")


def monitoring_check(by_kind, repo: Path, errors: list[str]) -> None:
    rules = by_kind.get("PrometheusRule", [])
    dashboards = [c for c in by_kind.get("ConfigMap", [])
                  if "grafana_dashboard" in ((c.get("metadata") or {}).get("labels") or {})]
    if not rules and not dashboards:
        return
    names = metricnames.load(repo)
    routes = routetable.load(repo)
    for obj in rules:
        for group in (obj.get("spec") or {}).get("groups") or []:
            for rule in group.get("rules") or []:
                what = f"{name_of(obj)}: {group.get('name')}/{rule.get('alert') or rule.get('record')}"
                if rule.get("alert"):
                    severity = (rule.get("labels") or {}).get("severity")
                    if severity not in SEVERITIES:
                        errors.append(f"{what}: labels.severity must be one of {', '.join(SEVERITIES)} (is {severity!r})")
                    for key in ALERT_ANNOTATIONS:
                        if not str((rule.get("annotations") or {}).get(key) or "").strip():
                            errors.append(f"{what}: annotation {key} is missing")
                for problem in metricnames.check_expr(str(rule.get("expr", "")), names, routes):
                    errors.append(f"{what}: {problem}")
    for cm in dashboards:
        for key, text in (cm.get("data") or {}).items():
            if not key.endswith(".json"):
                continue
            try:
                dashboard = json.loads(text)
            except json.JSONDecodeError as e:
                errors.append(f"{name_of(cm)}: {key} is not valid JSON: {e}")
                continue
            errors.extend(check_dashboard.check(dashboard, names, routes, f"{name_of(cm)}: {key}"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--k8s-version", action="append", required=True)
    ap.add_argument("--repo", type=Path, default=HERE.parent.parent)
    ap.add_argument("--expect-helm-test", action="store_true")
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    errors: list[str] = []
    notes: list[str] = []
    objs = load(args.files, errors)
    if not objs and not errors:
        errors.append("no Kubernetes objects found")
    checked = schema_check(objs, args.k8s_version, errors)
    policy_check(objs, args.repo, args.expect_helm_test, errors, notes)
    kinds: dict[str, int] = {}
    for _, o in objs:
        kinds[o["kind"]] = kinds.get(o["kind"], 0) + 1
    label = f"[{args.label}] " if args.label else ""
    for n in sorted(set(notes)):
        print(f"  {label}note: {n}")
    for e in errors:
        print(f"  {label}ERROR: {e}")
    summary = ", ".join(f"{v} {k}" for k, v in sorted(kinds.items()))
    print(f"  {label}{len(objs)} objects ({summary}); {checked} schema validations "
          f"(Kubernetes {', '.join(args.k8s_version)}, strict); {len(errors)} error(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
