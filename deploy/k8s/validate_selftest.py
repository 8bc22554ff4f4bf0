"""Negative self-test of validate.py: every stage must reject a deliberately broken manifest.

A linter that silently passes everything (a wrong flag, a schema it never loads, a CRD it skips)
looks exactly like a clean tree. Each case below breaks one thing in a copy of a rendered overlay
(or of a Dockerfile) in a temporary folder, runs the one stage that should catch it, and expects an
error that names the problem. The clean renders of the same overlays pass (the plain lint run).
"""
import copy
import pathlib
import tempfile

import yaml

import validate as v


def find(objs, kind, name=None):
    for o in objs:
        if o["kind"] == kind and (name is None or o["metadata"]["name"] == name):
            return o
    raise KeyError(f"{kind}/{name}")


def container(o, name):
    spec = o["spec"]["template"]["spec"] if "template" in o["spec"] else o["spec"]
    return next(c for c in spec["containers"] if c["name"] == name)


def env_set(c, name, value):
    c["env"] = [e for e in c.get("env", []) if e["name"] != name]
    if value is not None:
        c["env"].append({"name": name, "value": value})


def lws_worker(objs):
    return find(objs, "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]


# (name, overlay, stage, mutate(objs) or text mutation, expected substring of an error)
def m_port_type(objs):
    container(find(objs, "StatefulSet"), "worker")["ports"][0]["containerPort"] = "control"


def m_unknown_field(objs):
    find(objs, "StatefulSet")["spec"]["replica"] = 3


def m_lws_restart(objs):
    find(objs, "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]["restartPolicy"] = "Sometimes"


def m_lws_template_field(objs):
    lws_worker(objs)["imagePullPolicyy"] = "Always"


def m_privileged(objs):
    sc = container(find(objs, "Deployment"), "coordinator")["securityContext"]
    sc["privileged"] = True
    sc["allowPrivilegeEscalation"] = True


def m_lws_privileged(objs):
    lws_worker(objs)["securityContext"]["privileged"] = True


def m_replicas(objs):
    find(objs, "StatefulSet")["spec"]["replicas"] = 2


def m_target_port(objs):
    find(objs, "Service", "tpserve")["spec"]["ports"][0]["targetPort"] = "grcp"


def m_policy_selector(objs):
    np = find(objs, "NetworkPolicy", "tpserve-worker")
    np["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] = "workers"


def m_no_tp(objs):
    env_set(container(find(objs, "StatefulSet"), "worker"), "TP", None)


def m_cuda_without_gpu(objs):
    env_set(container(find(objs, "StatefulSet"), "worker"), "DEVICE", "cuda:0")


def m_duplicate_key(text):
    return text.replace("kind: Service\n", "kind: Service\nkind: Service\n", 1)


CASES = [
    ("wrong type (containerPort a string)", "cpu-demo", "schema", m_port_type, "containerPort"),
    ("unknown field (strict)", "cpu-demo", "schema", m_unknown_field, "replica"),
    ("LeaderWorkerSet enum", "multi-node", "schema", m_lws_restart, "Sometimes"),
    ("unknown field in a LeaderWorkerSet pod template", "multi-node", "schema", m_lws_template_field,
     "imagePullPolicyy"),
    ("privileged container", "cpu-demo", "security", m_privileged, "CKV_K8S_16"),
    ("privileged LeaderWorkerSet worker", "multi-node", "security", m_lws_privileged, "CKV_K8S_16"),
    ("worker replicas != TP", "cpu-demo", "semantics", m_replicas, "replicas 2 != TP 3"),
    ("Service targets a port nobody declares", "cpu-demo", "semantics", m_target_port, "grcp"),
    ("NetworkPolicy selects nothing", "cpu-demo", "semantics", m_policy_selector, "selects no pod"),
    ("entrypoint refuses the pod's environment", "cpu-demo", "semantics", m_no_tp, "set TP"),
    ("CUDA rank without a GPU", "cpu-demo", "semantics", m_cuda_without_gpu, "nvidia.com/gpu"),
    ("duplicate YAML key", "cpu-demo", "yaml", m_duplicate_key, "duplication"),
]


def run_case(name, overlay, stage, mutate, expect, tmp):
    text, objs = v.render(v.K8S_DIR / "overlays" / overlay)
    if stage == "yaml":
        text = mutate(text)
    else:
        objs = copy.deepcopy(objs)
        mutate(objs)
        text = yaml.safe_dump_all(objs, sort_keys=False)
    if stage == "security":
        # The way main() runs it: one checkov over rendered overlays and the Dockerfiles together.
        paths = []
        v.validate_objects("broken", text, objs, tmp, {stage}, security_paths=paths)
        errors = v.run_checkov(paths + v.dockerfiles(), "kubernetes,dockerfile")
    else:
        errors = v.validate_objects("broken", text, objs, tmp, {stage})
    return any(expect in e for e in errors), errors


def docker_case(tmp):
    src = (v.DOCKER_DIR / "Dockerfile.cpu").read_text()
    broken = tmp / "Dockerfile.broken"
    # An unpinned base and a `cd` in RUN: hadolint DL3006/DL3007 and DL3003.
    broken.write_text(src.replace("FROM debian:12.8-slim AS build", "FROM debian:latest AS build", 1)
                      .replace("RUN scripts/setup.sh", "RUN cd /opt && scripts/setup.sh", 1))
    errors = v.stage_docker([broken])
    return any("DL3007" in e for e in errors) and any("DL3003" in e for e in errors), errors


def flags_case(tmp):
    """A tpserve-worker whose --help lacks --advertise: the entrypoint's flag must be reported."""
    fake = tmp / "bin" / "tpserve-worker"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text("#!/bin/sh\necho '--coordinator --rank --tp --device --listen --threads --memory-budget'\n")
    fake.chmod(0o755)
    text, objs = v.render(v.K8S_DIR / "overlays" / "cpu-demo")
    errors = v.validate_objects("flags", text, objs, tmp, {"semantics"}, bin_dir=str(fake.parent))
    return any("--help lists no --advertise" in e for e in errors), errors


def run():
    passed, failed = 0, 0
    with tempfile.TemporaryDirectory() as t:
        tmp = pathlib.Path(t)
        results = [(name, stage) + run_case(name, overlay, stage, mutate, expect, tmp)
                   for name, overlay, stage, mutate, expect in CASES]
        results.append(("Dockerfile with latest base and cd in RUN", "docker") + docker_case(tmp))
        results.append(("entrypoint passes a flag the binary does not know", "semantics") + flags_case(tmp))
    for name, stage, caught, errors in results:
        print(f"{'ok  ' if caught else 'FAIL'} {stage:9} {name}")
        if not caught:
            print("     expected error not reported; got:")
            for e in errors or ["(no errors)"]:
                print(f"       {e}")
        passed, failed = passed + caught, failed + (not caught)
    print(f"validate --self-test: {passed} passed, {failed} failed")
    return 1 if failed else 0
