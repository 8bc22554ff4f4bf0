"""What validate.py and its helpers share: paths, the tools in .venv-deploy, rendering an overlay
with `kubectl kustomize`, and the pod templates of rendered objects (LeaderWorkerSet included)."""
import pathlib
import subprocess
import sys

import yaml

K8S_DIR = pathlib.Path(__file__).resolve().parent
ROOT = K8S_DIR.parent.parent
VENV_BIN = pathlib.Path(sys.executable).parent
K8S_VERSION = "1.37.0"
STAGES = ("yaml", "schema", "security", "semantics", "docker", "sources")
DOCKER_DIR = ROOT / "deploy" / "docker"
LWS_KIND = ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet")
ENTRYPOINT = ROOT / "deploy" / "docker" / "entrypoint.sh"


def tool(name):
    return str(VENV_BIN / name)


def overlays():
    return sorted(p.name for p in (K8S_DIR / "overlays").iterdir() if (p / "kustomization.yaml").exists())


def render(overlay_dir):
    """kubectl kustomize -> (yaml text, list of objects)."""
    proc = subprocess.run([tool("kubectl"), "kustomize", str(overlay_dir)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"kustomize {overlay_dir}: {proc.stderr.strip()}")
    return proc.stdout, [d for d in yaml.safe_load_all(proc.stdout) if d]


def name_of(obj):
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


# ---- pod templates ------------------------------------------------------------------------------

def pod_templates(objs):
    """(owner, role, template) for every pod template; LWS gives 'leader' and 'worker'."""
    out = []
    for o in objs:
        kind, spec = o.get("kind"), o.get("spec", {})
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            out.append((o, kind, spec.get("template", {})))
        elif (o.get("apiVersion"), kind) == LWS_KIND:
            lwt = spec.get("leaderWorkerTemplate", {})
            if "leaderTemplate" in lwt:
                out.append((o, "leader", lwt["leaderTemplate"]))
            out.append((o, "worker", lwt.get("workerTemplate", {})))
    return out


def lws_as_deployments(objs):
    """LeaderWorkerSet templates as Deployments, so checkov scans the pods they create."""
    out = []
    for owner, role, tmpl in pod_templates(objs):
        if role not in ("leader", "worker"):
            continue
        meta = owner["metadata"]
        labels = tmpl.get("metadata", {}).get("labels", {})
        out.append({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": f"{meta['name']}-{role}", "namespace": meta.get("namespace"),
                         "annotations": meta.get("annotations", {})},
            "spec": {"selector": {"matchLabels": labels}, "template": tmpl},
        })
    return out
