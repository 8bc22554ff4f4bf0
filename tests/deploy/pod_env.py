#!/usr/bin/env python3
"""Prints the environment and arguments a rendered overlay gives one tpserve pod, so the multi-host
test starts each process exactly as Kubernetes would start the container.

  pod_env.py OVERLAY COMPONENT [--pod-ip IP] [--pod-index N] [--set NAME=VALUE]...

COMPONENT is `coordinator` or `worker`. Output: one NAME=VALUE line per variable, then a line
`--`, then the container's args one per line. The kubelet's own inputs are filled in the way it
fills them: fieldRef status.podIP -> --pod-ip, the pod-index label -> --pod-index,
resourceFieldRef limits.cpu -> the container's CPU limit rounded up. --set replaces what only the
cluster provides (the model volume's mount path, a Service name's address); every other variable
comes from the manifest unchanged.
"""
import argparse
import math
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "deploy" / "k8s"))
import validate  # noqa: E402  (deploy/k8s/validate.py: rendering with kubectl kustomize)


def cpu_quantity(q):
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def memory_quantity(q):
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}
    q = str(q)
    for u, f in units.items():
        if q.endswith(u):
            return int(float(q[: -len(u)]) * f)
    return int(q)


def resolve(e, container, pod_ip, pod_index):
    if "value" in e:
        return e["value"]
    src = e.get("valueFrom", {})
    if "fieldRef" in src:
        path = src["fieldRef"]["fieldPath"]
        if path == "status.podIP":
            return pod_ip
        if path == "metadata.labels['apps.kubernetes.io/pod-index']":
            return str(pod_index)
    if "resourceFieldRef" in src:
        ref = src["resourceFieldRef"]
        kind, res = ref["resource"].split(".")
        q = container["resources"][kind][res]
        divisor = ref.get("divisor", "1")
        if res == "cpu":
            return str(math.ceil(cpu_quantity(q) / cpu_quantity(divisor)))
        return str(math.ceil(memory_quantity(q) / memory_quantity(divisor)))
    raise SystemExit(f"pod_env: cannot resolve {e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overlay")
    ap.add_argument("component", choices=["coordinator", "worker"])
    ap.add_argument("--pod-ip", default="")
    ap.add_argument("--pod-index", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    a = ap.parse_args()
    _, objs = validate.render(validate.K8S_DIR / "overlays" / a.overlay)
    tmpl = next(t for _, _, t in validate.pod_templates(objs)
                if t["metadata"]["labels"].get("app.kubernetes.io/component") == a.component)
    c = tmpl["spec"]["containers"][0]
    env = {e["name"]: resolve(e, c, a.pod_ip, a.pod_index) for e in c.get("env", [])}
    for kv in a.set:
        name, _, value = kv.partition("=")
        if name not in env:
            raise SystemExit(f"pod_env: --set {name}: the manifest sets no such variable")
        env[name] = value
    for k, v in env.items():
        print(f"{k}={v}")
    print("--")
    for arg in c.get("args", []):
        print(arg)


if __name__ == "__main__":
    main()
