"""Checks the Helm chart against its rendered copy (deploy/k8s/taskraft.yaml) without
helm: every .Values path a template uses exists in values.yaml, every kind the chart
makes by default is in the rendered file, and the values that shape the cluster
(replicas, ports, storage, image, resources, PDB, the peer port and its secret) are
what the rendered file says. The `--set key=value` items of the `helm template` command
in the rendered file's header comment are applied to values.yaml first, so the command
written there is the one checked. Prints problems and exits 1 if there are any."""
import re
import sys
from pathlib import Path

import yaml

chart = Path(sys.argv[1])
rendered_path = Path(sys.argv[2])
values = yaml.safe_load((chart / "values.yaml").read_text())
problems = []

# The header's `helm template ... --set a.b=c` overrides (string values only).
header = []
for line in rendered_path.read_text().splitlines():
    if not line.startswith("#"):
        break
    header.append(line)
for key, value in re.findall(r"--set ([A-Za-z0-9_.]+)=(\S+)", "\n".join(header)):
    node = values
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def lookup(path):
    node = values
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None, False
        node = node[part]
    return node, True


for tpl in sorted((chart / "templates").iterdir()):
    for path in re.findall(r"\.Values\.([A-Za-z0-9_.]+)", tpl.read_text()):
        if not lookup(path)[1]:
            problems.append(f"{tpl.name}: .Values.{path} is not in values.yaml")

docs = [d for d in yaml.safe_load_all(rendered_path.read_text()) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
for kind in ["StatefulSet", "Service", "PodDisruptionBudget"]:
    if kind not in by_kind:
        problems.append(f"rendered file has no {kind}")
if problems:
    print("\n".join(problems))
    sys.exit(1)

sts = by_kind["StatefulSet"][0]
spec = sts["spec"]
pod = spec["template"]["spec"]
c = pod["containers"][0]
env = {e["name"]: e.get("value") for e in c["env"]}
n = values["replicas"]
name = sts["metadata"]["name"]
grpc, http = values["ports"]["grpc"], values["ports"]["http"]
peer = values["ports"]["peer"]
initial = values.get("initialReplicas") or n
want_peers = ",".join(
    f"{i + 1}={name}-{i}.{name}-headless:{grpc}/{name}-{i}.{name}-headless:{peer}"
    for i in range(initial)
)
secret = values["clusterSecret"]
mtls = values["tls"]["enabled"] and values["tls"]["clientCA"]
if max(n, initial) > 1 and not (secret["value"] or secret["existingSecret"] or mtls):
    problems.append("more than one node without clusterSecret or mutual TLS: the chart "
                    "refuses to render that (the nodes would refuse to start)")
secret_refs = {
    e["name"]: e["valueFrom"]["secretKeyRef"]
    for e in c["env"]
    if "secretKeyRef" in e.get("valueFrom", {})
}
if secret["value"] or secret["existingSecret"]:
    want_ref = {"name": secret["existingSecret"] or f"{name}-cluster", "key": secret["key"]}
else:
    want_ref = None
container_ports = {p["name"]: p["containerPort"] for p in c["ports"]}
checks = [
    (spec["replicas"], n, "replicas"),
    (spec["podManagementPolicy"], "Parallel", "podManagementPolicy"),
    (spec["serviceName"], f"{name}-headless", "serviceName"),
    (env.get("TASKRAFT_PEERS"), want_peers, "TASKRAFT_PEERS"),
    (env.get("TASKRAFT_ID_FROM_HOSTNAME"), "true", "node id from the pod ordinal"),
    (env.get("TASKRAFT_LISTEN"), f"0.0.0.0:{grpc}", "TASKRAFT_LISTEN"),
    (env.get("TASKRAFT_HTTP"), f"0.0.0.0:{http}", "TASKRAFT_HTTP"),
    (env.get("TASKRAFT_PEER_LISTEN"),
     f"0.0.0.0:{peer}" if (want_ref or mtls) else f"127.0.0.1:{peer}", "TASKRAFT_PEER_LISTEN"),
    (secret_refs.get("TASKRAFT_CLUSTER_SECRET"), want_ref,
     "TASKRAFT_CLUSTER_SECRET from the cluster Secret"),
    (container_ports, {"grpc": grpc, "http": http, "peer": peer}, "container ports"),
    (c["image"], f"{values['image']['repository']}:{values['image']['tag']}", "image"),
    (c["resources"], values["resources"], "resources"),
    (c["readinessProbe"]["httpGet"]["path"], "/readyz", "readiness probe"),
    (c["livenessProbe"]["httpGet"]["path"], "/healthz", "liveness probe"),
    (pod["securityContext"]["runAsNonRoot"], True, "runAsNonRoot"),
    (spec["template"]["metadata"]["annotations"]["prometheus.io/port"], str(http), "scrape port"),
    (spec["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
     values["storage"]["size"], "storage size"),
    (by_kind["PodDisruptionBudget"][0]["spec"]["maxUnavailable"], (n - 1) // 2,
     "PDB keeps a quorum"),
    (pod["affinity"], values["affinity"], "affinity"),
]
headless = [s for s in by_kind["Service"] if s["spec"].get("clusterIP") == "None"]
checks.append((len(headless), 1, "one headless Service"))
if headless:
    checks.append((headless[0]["spec"].get("publishNotReadyAddresses"), True,
                   "headless Service publishes not-ready pods (peers resolve before quorum)"))
    checks.append(({p["name"]: p["port"] for p in headless[0]["spec"]["ports"]},
                   {"grpc": grpc, "http": http, "peer": peer}, "headless Service ports"))
for svc in by_kind["Service"]:
    if svc["spec"].get("clusterIP") != "None":
        exposed = [p for p in svc["spec"]["ports"]
                   if p["port"] == peer or p.get("targetPort") in ("peer", peer)]
        checks.append((exposed, [],
                       f"Service {svc['metadata']['name']} keeps the peer port from clients"))
for got, want, what in checks:
    if got != want:
        problems.append(f"{what}: rendered {got!r}, chart says {want!r}")
print("\n".join(problems) if problems else "chart and rendered manifests agree")
sys.exit(1 if problems else 0)
