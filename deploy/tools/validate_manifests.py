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

CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): HERE / "schemas" / "servicemonitor-monitoring-v1.json",
}
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

    for line in keys.stale_pending():
        notes.append(f"stale pending entry (the service has it now; delete it from deploy/tools/pending-config-keys.txt): {line}")


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
