#!/usr/bin/env python3
"""Check the deployment and alerting files under deploy/ as far as a machine without Docker or a
Kubernetes cluster can:
  - every YAML under deploy/ parses (all documents), the Grafana dashboard JSON parses;
  - the generated k8s manifests are fresh (scripts/gen-k8s.py --check), the PrometheusRule's
    spec.groups equals alerts.yml's groups, the ConfigMap's rlap.toml equals deploy/rlap.toml;
  - every rlap_* metric (and its labels) used by the alert rules and the dashboard is one
    the binary defines (`rlap metrics --list`; histograms: also _bucket/_sum/_count and le),
    so the binary must be built first (cargo build --release);
  - every dashboard query is valid PromQL (promtool check rules on a generated rule file);
  - every alert has a severity (critical|warning|info), a summary, a description and a
    runbook_url naming a heading of docs/runbook.md;
  - alerts_test.yml has, for every alert and severity, a case that fires and one that does not;
  - promtool check config / check rules / test rules;
  - deploy/rlap.toml and the ConfigMap's copy are accepted by `rlap check-config`, with the
    RLAP__* overrides that compose and the StatefulSet set (fallback when the binary or the
    subcommand is missing: keys checked against configs/default.toml, with a warning);
  - cross references: k8s selectors, ports, volume/claim/ConfigMap names, probes; compose
    bind mounts and build paths; Grafana datasource uid and dashboard path; the Dockerfile's
    ONNX Runtime version against src/onnx/runtime.rs; the root .dockerignore.
Needs python3 with PyYAML; promtool comes from scripts/setup-prometheus.sh (fetched once).
Environment: RLAP_BIN (default target/release/rlap), PROMTOOL (default: setup-prometheus.sh's).
Exits non-zero with one line per problem. Writes nothing outside a temp folder.
"""
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

try:
    import yaml
except ImportError:
    sys.exit("check-deploy: python3 needs PyYAML (pip install pyyaml / apt-get install python3-yaml)")

ROOT = Path(__file__).resolve().parent.parent
os.chdir(ROOT)
PROMTOOL = os.environ.get("PROMTOOL") or str(
    Path(subprocess.run(["scripts/setup-prometheus.sh"], check=True, stdout=subprocess.PIPE,
                        text=True).stdout.strip().splitlines()[-1]) / "promtool")
RLAP_BIN = os.environ.get("RLAP_BIN") or str(
    Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target") / "release" / "rlap")
_tmp = tempfile.TemporaryDirectory(prefix="check-deploy-")
TMP = Path(_tmp.name)

problems = []
warnings = []
done = []


def problem(msg):
    problems.append(msg)


def ok(msg):
    done.append(msg)


def run(cmd, env=None):
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)


# ------------------------------------------------------------------ parse everything
docs = {}
for f in sorted(glob.glob("deploy/**/*.y*ml", recursive=True)):
    try:
        with open(f) as fh:
            docs[f] = [d for d in yaml.safe_load_all(fh) if d is not None]
    except yaml.YAMLError as e:
        problem(f"{f}: YAML does not parse: {str(e).splitlines()[0]}")
ok(f"{len(docs)} YAML files under deploy/ parse")

dash_path = "deploy/grafana/dashboards/rlap.json"
dashboards = {}
for f in sorted(glob.glob("deploy/grafana/dashboards/*.json")):
    try:
        dashboards[f] = json.load(open(f))
    except json.JSONDecodeError as e:
        problem(f"{f}: JSON does not parse: {e}")
if dash_path not in dashboards and not any(p.startswith(dash_path) for p in problems):
    problem(f"{dash_path}: missing")


def one(path, kind=None):
    """The single document of `path` (or the one of `kind`)."""
    ds = docs.get(path)
    if ds is None:
        problem(f"{path}: missing or unparsable")
        return None
    if kind:
        ds = [d for d in ds if isinstance(d, dict) and d.get("kind") == kind]
    if len(ds) != 1:
        problem(f"{path}: expected one {kind or 'document'}, found {len(ds)}")
        return None
    return ds[0]


alerts = one("deploy/prometheus/alerts.yml")
tests = one("deploy/prometheus/alerts_test.yml")

# ------------------------------------------------------------------ generated manifests
r = run([sys.executable, "scripts/gen-k8s.py", "--check"])
if r.returncode != 0:
    problem((r.stderr or r.stdout).strip())
else:
    ok("deploy/k8s/{configmap,prometheusrule}.yaml are fresh (scripts/gen-k8s.py --check)")

rule = one("deploy/k8s/prometheusrule.yaml", "PrometheusRule")
if rule and alerts:
    if rule.get("apiVersion") != "monitoring.coreos.com/v1":
        problem("deploy/k8s/prometheusrule.yaml: apiVersion must be monitoring.coreos.com/v1")
    if (rule.get("spec") or {}).get("groups") != alerts.get("groups"):
        problem("deploy/k8s/prometheusrule.yaml: spec.groups differs from deploy/prometheus/alerts.yml groups")
    else:
        ok("PrometheusRule spec.groups == alerts.yml groups (parsed)")

cm = one("deploy/k8s/configmap.yaml", "ConfigMap")
cm_toml = ((cm or {}).get("data") or {}).get("rlap.toml")
rlap_toml = Path("deploy/rlap.toml").read_text() if Path("deploy/rlap.toml").exists() else None
if rlap_toml is None:
    problem("deploy/rlap.toml: missing")
if cm is not None and cm_toml is None:
    problem("deploy/k8s/configmap.yaml: no data.rlap.toml")
elif cm_toml is not None and rlap_toml is not None and cm_toml != rlap_toml:
    problem("deploy/k8s/configmap.yaml: data.rlap.toml differs from deploy/rlap.toml")

# ------------------------------------------------------------------ metric names and labels
# `rlap metrics --list`: name, type, label names (`-`: none), help; tab-separated.
exposed = {}
r = run([RLAP_BIN, "metrics", "--list"]) if os.access(RLAP_BIN, os.X_OK) else None
if r is None or r.returncode != 0:
    problem(f"{RLAP_BIN} metrics --list failed (build it first: cargo build --release): "
            f"{(r.stderr.strip() if r else 'not built')}")
else:
    kinds = {}
    for line in r.stdout.splitlines():
        name, kind, labs, _help = line.split("\t", 3)
        ls = set() if labs == "-" else set(labs.split(","))
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind == "histogram":
            exposed[name + "_bucket"] = ls | {"le"}
            exposed[name + "_sum"] = ls
            exposed[name + "_count"] = ls
        else:
            exposed[name] = ls
    if not kinds.get("histogram") or not kinds.get("counter"):
        problem(f"{RLAP_BIN} metrics --list: expected counters and histograms, got {kinds}")
    else:
        ok(f"rlap metrics --list: {sum(kinds.values())} metrics ({kinds})")
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "endpoint", "container"}
SEL = re.compile(r"(rlap_[a-z_]+)(\{([^}]*)\})?")


def check_promql(expr, where):
    used = set()
    for m in SEL.finditer(expr):
        name, sel = m.group(1), m.group(3)
        used.add(name)
        if name not in exposed:
            problem(f"{where}: {name} is not a metric rlap exposes (rlap metrics --list)")
            continue
        for lab in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!=|!~|=)", sel or ""):
            if lab not in exposed[name] | TARGET_LABELS:
                problem(f"{where}: {name} has no label {lab!r} (it has {sorted(exposed[name])})")
    # Labels in by (...)/without (...)/on (...)/ignoring (...) must exist on some rlap metric used.
    have = set(TARGET_LABELS)
    for n in used:
        have |= exposed.get(n, set())
    for grp in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        for lab in [x.strip() for x in grp.split(",") if x.strip()]:
            if lab not in have:
                problem(f"{where}: label {lab!r} in a grouping is on none of {sorted(used)}")
    return used


def anchors(md):
    """The GitHub-style anchors of a Markdown file's headings (lower case, punctuation
    dropped, spaces to hyphens)."""
    out = set()
    for line in md.read_text().splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return out


alert_names = {}
if alerts:
    groups = alerts.get("groups") or []
    if [g.get("name") for g in groups] != ["rlap"]:
        problem("deploy/prometheus/alerts.yml: expected exactly one group named rlap")
    for g in groups:
        for r_ in g.get("rules", []):
            a = r_.get("alert")
            if not a:
                continue
            where = f"alerts.yml {a}"
            sev = (r_.get("labels") or {}).get("severity")
            if sev not in ("critical", "warning", "info"):
                problem(f"{where}: severity must be critical|warning|info, not {sev!r}")
            ann = r_.get("annotations") or {}
            for k in ("summary", "description", "runbook_url"):
                if not ann.get(k):
                    problem(f"{where}: annotation {k} missing")
            rb = ann.get("runbook_url") or ""
            rb_file, _, rb_anchor = rb.partition("#")
            if rb and (not (ROOT / rb_file).is_file() or rb_anchor not in anchors(ROOT / rb_file)):
                problem(f"{where}: runbook_url {rb} names no heading of {rb_file}")
            alert_names.setdefault(a, set()).add(sev)
            check_promql(r_.get("expr", ""), where)
    ok(f"alerts.yml: {sum(len(v) for v in alert_names.values())} alert rules ({len(alert_names)} names), metrics and labels exist")

# Every alert (and severity) has a firing and a not-firing unit test.
if tests and alerts:
    fires, quiet = {}, set()
    for t in tests.get("tests", []):
        for c in t.get("alert_rule_test", []):
            n = c.get("alertname")
            if c.get("exp_alerts"):
                for e in c["exp_alerts"]:
                    fires.setdefault(n, set()).add((e.get("exp_labels") or {}).get("severity"))
            else:
                quiet.add(n)
    for a, sevs in alert_names.items():
        if not sevs <= fires.get(a, set()):
            problem(f"alerts_test.yml: no firing case for {a} severity {sorted(sevs - fires.get(a, set()))}")
        if a not in quiet:
            problem(f"alerts_test.yml: no not-firing case for {a}")
    ok("alerts_test.yml: every alert and severity has a firing and a not-firing case")

# Dashboard queries: metric names and labels, and PromQL syntax through promtool.
dash_exprs = []
for f, d in dashboards.items():
    def walk(panels):
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))
    for p in walk(d.get("panels", [])):
        for t in p.get("targets", []):
            if t.get("expr"):
                dash_exprs.append((f"{Path(f).name} panel {p.get('title')!r} {t.get('refId')}", t["expr"]))
        ds = p.get("datasource")
        if ds and ds.get("uid") not in ("${DS_PROMETHEUS}", "prometheus", "-- Grafana --", "-- Mixed --"):
            problem(f"{f}: panel {p.get('title')!r} uses datasource uid {ds.get('uid')!r}")
    for a in (d.get("annotations") or {}).get("list", []):
        if a.get("expr"):
            dash_exprs.append((f"{Path(f).name} annotation {a.get('name')!r}", a["expr"]))
    for v in (d.get("templating") or {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if v.get("type") == "query" and q:
            m = re.fullmatch(r"label_values\((.*),\s*([a-z_]+)\)", q.strip())
            dash_exprs.append((f"{Path(f).name} variable {v.get('name')}", m.group(1) if m else q))
    if d.get("uid") is None or not d.get("title"):
        problem(f"{f}: needs a uid and a title")
    if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < 36:
        problem(f"{f}: schemaVersion {d.get('schemaVersion')!r} is older than Grafana 9.4's 36")
    ids = [p.get("id") for p in walk(d.get("panels", []))]
    if len(ids) != len(set(ids)):
        problem(f"{f}: duplicate panel ids")
used_dash = set()
for where, e in dash_exprs:
    used_dash |= check_promql(e, where)
ok(f"dashboards: {len(dash_exprs)} queries over {len(used_dash)} rlap metrics, all exposed")

GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$instance": ".*",
                "${instance}": ".*", "$__range_s": "3600"}
rules = []
for i, (where, e) in enumerate(dash_exprs):
    for k, v in GRAFANA_VARS.items():
        e = e.replace(k, v)
    if "$" in e:
        problem(f"{where}: unknown Grafana variable in {e!r}")
        continue
    rules.append({"record": f"dashboard:query_{i}:check", "expr": e})
(TMP / "dashboard_rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
r = run([PROMTOOL, "check", "rules", str(TMP / "dashboard_rules.yml")])
if r.returncode != 0:
    idx = {f"dashboard:query_{i}:check": w for i, (w, _) in enumerate(dash_exprs)}
    out = r.stdout + r.stderr
    for k, w in idx.items():
        out = out.replace(k, w)
    problem("dashboard PromQL does not parse:\n" + out.strip())
else:
    ok(f"dashboards: {len(rules)} queries are valid PromQL (promtool check rules)")

# ------------------------------------------------------------------ promtool on the real files
for args in (["check", "config", "deploy/prometheus/prometheus.yml"],
             ["check", "rules", "deploy/prometheus/alerts.yml"],
             ["test", "rules", "deploy/prometheus/alerts_test.yml"]):
    r = run([PROMTOOL, *args])
    if r.returncode != 0:
        problem(f"promtool {' '.join(args)} failed:\n{(r.stdout + r.stderr).strip()}")
    else:
        extra = ""
        if args[0] == "test":
            extra = f" ({sum(len(t.get('alert_rule_test', [])) for t in (tests or {}).get('tests', []))} alert cases in {len((tests or {}).get('tests', []))} tests)"
        ok(f"promtool {' '.join(args)}: SUCCESS{extra}")

prom = one("deploy/prometheus/prometheus.yml")
if prom:
    jobs = {j.get("job_name"): j for j in prom.get("scrape_configs", [])}
    if "rlap" not in jobs:
        problem("deploy/prometheus/prometheus.yml: no scrape job named rlap (the alerts match job=\"rlap\")")
    elif jobs["rlap"].get("metrics_path", "/metrics") != "/metrics":
        problem("deploy/prometheus/prometheus.yml: job rlap must scrape /metrics")
    if "alerts.yml" not in prom.get("rule_files", []):
        problem("deploy/prometheus/prometheus.yml: rule_files must load alerts.yml")

# ------------------------------------------------------------------ the daemon accepts the configs
def env_overrides_k8s():
    sts = one("deploy/k8s/statefulset.yaml", "StatefulSet")
    env = {}
    if not sts:
        return env
    for c in sts["spec"]["template"]["spec"].get("containers", []):
        for e in c.get("env", []):
            if e["name"].startswith("RLAP__"):
                env[e["name"]] = e.get("value", "check-deploy-placeholder")
    return env


def env_overrides_compose():
    comp = one("deploy/docker-compose.yml")
    env = {}
    if not comp:
        return env
    raw = ((comp.get("services") or {}).get("rlap") or {}).get("environment") or {}
    if isinstance(raw, list):
        raw = dict(x.split("=", 1) for x in raw)
    for k, v in raw.items():
        if k.startswith("RLAP__"):
            # ${VAR:-default} -> default (or a placeholder when empty), as compose would with VAR unset.
            v = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", str(v))
            env[k] = v
    return env


def default_keys():
    d = tomllib.loads(Path("configs/default.toml").read_text())
    keys = set()
    def walk(t, pre):
        for k, v in t.items():
            if isinstance(v, dict) and k != "properties":
                walk(v, pre + [k])
            else:
                keys.add(".".join(pre + [k]))
    walk(d, [])
    # Optional keys documented as comments in configs/default.toml.
    keys |= {"kafka.verdicts_topic", "kafka.dlq_topic", "cycle.validation.dataset",
             "cycle.validation.data_dir", "cycle.validation.limit"}
    return keys


def fallback_check(text, label, env):
    try:
        t = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problem(f"{label}: TOML does not parse: {e}")
        return
    known = default_keys()
    def walk(tb, pre):
        for k, v in tb.items():
            key = ".".join(pre + [k])
            if key == "kafka.properties":
                continue
            if isinstance(v, dict):
                walk(v, pre + [k])
            elif key not in known:
                problem(f"{label}: unknown key {key} (not in configs/default.toml)")
    walk(t, [])
    for k in env:
        key = ".".join(p.lower() for p in k[len("RLAP__"):].split("__"))
        if key not in known:
            problem(f"{label}: environment override {k} names no key of configs/default.toml")


def have_check_config():
    if not os.access(RLAP_BIN, os.X_OK):
        return f"{RLAP_BIN} not built"
    r = run([RLAP_BIN, "check-config", "--help"])
    if r.returncode != 0:
        return f"{RLAP_BIN} has no check-config subcommand"
    return None


why_not = have_check_config()
base_env = {k: v for k, v in os.environ.items() if not k.startswith("RLAP__")}
cases = []
if rlap_toml is not None:
    cases.append(("deploy/rlap.toml (compose env)", rlap_toml, env_overrides_compose()))
if cm_toml is not None:
    cases.append(("deploy/k8s/configmap.yaml rlap.toml (StatefulSet env)", cm_toml, env_overrides_k8s()))
for i, (label, text, env) in enumerate(cases):
    if why_not:
        fallback_check(text, label, env)
        continue
    f = TMP / f"rlap-{i}.toml"
    f.write_text(text)
    r = run([RLAP_BIN, "--quiet", "check-config", "--config", str(f)], env={**base_env, **env})
    if r.returncode != 0 or "config OK" not in r.stdout:
        out = (r.stdout + r.stderr).strip().replace(str(f), label)
        problem(f"rlap check-config rejects {label} with {sorted(env)}:\n{out}")
    else:
        ok(f"rlap check-config: {label} with {sorted(env)}: config OK")
if why_not:
    warnings.append(f"{why_not}: checked the configs' keys against configs/default.toml instead of with the daemon")

# ------------------------------------------------------------------ k8s cross references
k8s = {}
for f, ds in docs.items():
    if f.startswith("deploy/k8s/"):
        for d in ds:
            if isinstance(d, dict) and d.get("kind"):
                k8s[(d["kind"], d.get("metadata", {}).get("name"))] = d
                if d["kind"] != "Kustomization" and not d.get("apiVersion"):
                    problem(f"{f}: {d['kind']} has no apiVersion")
kust = k8s.get(("Kustomization", None))
if kust:
    for res in kust.get("resources", []):
        if not Path("deploy/k8s", res).exists():
            problem(f"deploy/k8s/kustomization.yaml: resource {res} does not exist")
    listed = set(kust.get("resources", []))
    for f in glob.glob("deploy/k8s/*.yaml"):
        n = Path(f).name
        if n != "kustomization.yaml" and n not in listed:
            problem(f"deploy/k8s/kustomization.yaml: {n} is not listed in resources")

sts = k8s.get(("StatefulSet", "rlap"))
if not sts:
    problem("deploy/k8s/statefulset.yaml: no StatefulSet rlap")
else:
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    if spec["selector"]["matchLabels"].items() - pod_labels.items():
        problem("statefulset.yaml: selector does not match the pod template's labels")
    gov = k8s.get(("Service", spec.get("serviceName")))
    if not gov or gov["spec"].get("clusterIP") != "None":
        problem(f"statefulset.yaml: serviceName {spec.get('serviceName')!r} is not a headless Service")
    c = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    if ports.get("http") != 8080:
        problem("statefulset.yaml: container port http must be 8080 (api.listen)")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        hg = (c.get(probe) or {}).get("httpGet") or {}
        if hg.get("path") != path or hg.get("port") not in ("http", 8080):
            problem(f"statefulset.yaml: {probe} must be httpGet {path} on port http")
    mem = ((c.get("resources") or {}).get("limits") or {}).get("memory")
    if not mem:
        problem("statefulset.yaml: no memory limit")
    if not any(e["name"] == "RLAP__API__ADMIN_TOKEN" and "secretKeyRef" in (e.get("valueFrom") or {})
               for e in c.get("env", [])):
        problem("statefulset.yaml: RLAP__API__ADMIN_TOKEN must come from a Secret")
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    vcts = {v["metadata"]["name"]: v for v in spec.get("volumeClaimTemplates", [])}
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    toml = tomllib.loads(cm_toml) if cm_toml else {}
    want = {"/etc/rlap": "config",
            str((toml.get("model") or {}).get("store", "/var/lib/rlap/models")): "models",
            str((toml.get("state") or {}).get("dir", "/var/lib/rlap/state")): "state"}
    for path, name in want.items():
        if mounts.get(path) != name:
            problem(f"statefulset.yaml: {path} must be mounted from volume {name!r} (the config's path)")
    if "state" not in vcts:
        problem("statefulset.yaml: the state volume must come from volumeClaimTemplates")
    cmv = (vols.get("config") or {}).get("configMap", {}).get("name")
    if ("ConfigMap", cmv) not in k8s:
        problem(f"statefulset.yaml: configMap {cmv!r} is not defined under deploy/k8s")
    claim = (vols.get("models") or {}).get("persistentVolumeClaim", {}).get("claimName")
    pvc = k8s.get(("PersistentVolumeClaim", claim))
    if not pvc:
        problem(f"statefulset.yaml: claim {claim!r} is not defined under deploy/k8s")
    elif "ReadWriteMany" not in pvc["spec"].get("accessModes", []):
        problem(f"pvc-models.yaml: {claim} must be ReadWriteMany (followers load versions from it)")
    if "--config" in c.get("args", []):
        cfg = c["args"][c["args"].index("--config") + 1]
        if cfg != "/etc/rlap/rlap.toml" or "rlap.toml" not in ((cm or {}).get("data") or {}):
            problem(f"statefulset.yaml: --config {cfg} is not the ConfigMap's rlap.toml")
    api = k8s.get(("Service", "rlap"))
    if not api:
        problem("service.yaml: no Service rlap")
    else:
        if api["spec"]["selector"].items() - pod_labels.items():
            problem("service.yaml: Service rlap's selector does not match the pods")
        sp = {p["name"]: p for p in api["spec"].get("ports", [])}
        if "http" not in sp or sp["http"].get("port") != 8080:
            problem("service.yaml: Service rlap needs port 8080 named http")
        sm = k8s.get(("ServiceMonitor", "rlap"))
        if not sm:
            problem("servicemonitor.yaml: no ServiceMonitor rlap")
        else:
            if sm["spec"]["selector"]["matchLabels"].items() - api["metadata"]["labels"].items():
                problem("servicemonitor.yaml: selector does not match Service rlap's labels")
            for s in k8s.values():
                if s["kind"] == "Service" and s is not api and not (sm["spec"]["selector"]["matchLabels"].items() - s["metadata"].get("labels", {}).items()):
                    problem(f"servicemonitor.yaml: also selects Service {s['metadata']['name']} (double scrape)")
            eps = sm["spec"].get("endpoints", [])
            if not any(e.get("port") == "http" and e.get("path") == "/metrics" for e in eps):
                problem("servicemonitor.yaml: needs an endpoint port http path /metrics")
    ok("k8s: selectors, ports, probes, volumes, claims, ConfigMap and ServiceMonitor agree")

# ------------------------------------------------------------------ compose, grafana, docker
comp = one("deploy/docker-compose.yml")
if comp:
    svcs = comp.get("services") or {}
    for s in ("kafka", "rlap", "prometheus", "grafana"):
        if s not in svcs:
            problem(f"docker-compose.yml: no service {s}")
    for name, s in svcs.items():
        for v in s.get("volumes", []):
            src_ = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
            if src_.startswith("."):
                p = (ROOT / "deploy" / src_).resolve()
                if not p.exists() and not (name == "producer" and src_ == "../data"):
                    problem(f"docker-compose.yml: {name} mounts {src_}, which does not exist")
            elif src_ and src_ not in (comp.get("volumes") or {}):
                problem(f"docker-compose.yml: {name} mounts volume {src_}, not declared under volumes")
    b = (svcs.get("rlap") or {}).get("build") or {}
    ctx = (ROOT / "deploy" / b.get("context", ".")).resolve()
    if not (ctx / b.get("dockerfile", "Dockerfile")).exists():
        problem(f"docker-compose.yml: rlap build {b} does not name deploy/Dockerfile")
    if ctx != ROOT:
        problem("docker-compose.yml: rlap must build with the repository root as context")
    if "rlap:8080" not in json.dumps(prom or {}):
        problem("prometheus.yml: target rlap:8080 (the compose service) missing")
    kenv = (svcs.get("kafka") or {}).get("environment") or {}
    for k in ("KAFKA_NODE_ID", "KAFKA_PROCESS_ROLES", "KAFKA_CONTROLLER_QUORUM_VOTERS",
              "KAFKA_LISTENERS", "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"):
        if k not in kenv:
            problem(f"docker-compose.yml: kafka environment lacks {k}")

dsp = one("deploy/grafana/provisioning/datasources/prometheus.yml")
uids = {d.get("uid") for d in (dsp or {}).get("datasources", []) if d.get("type") == "prometheus"}
for f, d in dashboards.items():
    for v in (d.get("templating") or {}).get("list", []):
        if v.get("name") == "DS_PROMETHEUS" and (v.get("current") or {}).get("value") not in uids:
            problem(f"{f}: DS_PROMETHEUS defaults to {(v.get('current') or {}).get('value')!r}, not a provisioned uid {sorted(uids)}")
dbp = one("deploy/grafana/provisioning/dashboards/rlap.yml")
paths = {(p.get("options") or {}).get("path") for p in (dbp or {}).get("providers", []) if p.get("type") == "file"}
if comp and not any(str(v).startswith("./grafana/dashboards:" + p) for v in (comp["services"].get("grafana") or {}).get("volumes", []) for p in paths if p):
    problem(f"grafana: the dashboards provider path {sorted(p for p in paths if p)} is not where compose mounts ./grafana/dashboards")

dockerfile = Path("deploy/Dockerfile").read_text() if Path("deploy/Dockerfile").exists() else ""
if not dockerfile:
    problem("deploy/Dockerfile: missing")
else:
    ort = re.search(r'ORT_VERSION: &str = "([^"]+)"', Path("src/onnx/runtime.rs").read_text())
    m = re.search(r"ARG ORT_VERSION=(\S+)", dockerfile)
    if ort and (not m or m.group(1) != ort.group(1)):
        problem(f"deploy/Dockerfile: ORT_VERSION {m and m.group(1)} != src/onnx/runtime.rs {ort.group(1)}")
    for need in ('ENTRYPOINT ["rlap"]', 'CMD ["serve", "--config", "/etc/rlap/rlap.toml"]', "EXPOSE 8080",
                 "cargo build --release --locked", "USER 10001"):
        if need not in dockerfile:
            problem(f"deploy/Dockerfile: missing {need!r}")
    for m in re.finditer(r"^COPY (?!--from)(\S+)", dockerfile, re.M):
        if m.group(1) != "." and not Path(m.group(1)).exists():
            problem(f"deploy/Dockerfile: COPY {m.group(1)}: no such path in the build context")
di = Path(".dockerignore")
if not di.exists():
    problem(".dockerignore: missing (docker build -f deploy/Dockerfile . would send target/ and data/)")
else:
    pats = {l.strip().strip("/") for l in di.read_text().splitlines() if l.strip() and not l.startswith("#")}
    for p in ("target", ".cache", "data", "out"):
        if p not in pats:
            problem(f".dockerignore: should exclude {p}/")
    for p in ("src", "proto", "Cargo.toml", "Cargo.lock", "build.rs", "deploy"):
        if p in pats:
            problem(f".dockerignore: must not exclude {p} (the build needs it)")

# ------------------------------------------------------------------ report
for d in done:
    print(f"check-deploy: ok   {d}")
for w in warnings:
    print(f"check-deploy: WARN {w}")
if problems:
    for p in problems:
        print(f"check-deploy: FAIL {p}", file=sys.stderr)
    print(f"check-deploy: {len(problems)} problem(s)", file=sys.stderr)
    sys.exit(1)
print("check-deploy: all deployment checks passed")
