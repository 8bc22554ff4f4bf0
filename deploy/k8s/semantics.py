"""The semantics stage of validate.py: cross-object facts no schema sees."""
import os
import pathlib
import re
import subprocess

from manifests import ENTRYPOINT, LWS_KIND, name_of, pod_templates


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

    # Probes hit ports the container declares. Readiness is grpc.health.v1 for both roles (the
    # coordinator's: the truth about the group; a worker's: its shard is served). Liveness /
    # startup are TCP or a gRPC probe naming the always-SERVING "liveness" service: a liveness
    # probe on the default service would restart a worker that only waits for its group, or a
    # coordinator waiting for a lost rank to return (losing its queue).
    for owner, role, t in coord + work:
        c = t["spec"]["containers"][0]
        ports = {p["containerPort"] for p in c.get("ports", [])} | {p.get("name") for p in c.get("ports", [])}
        is_coord = (owner, role, t) in coord
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            p = c.get(probe, {})
            kind = "grpc" if "grpc" in p else "tcpSocket" if "tcpSocket" in p else None
            need_grpc = probe == "readinessProbe"
            if kind is None or (need_grpc and kind != "grpc"):
                errors.append(f"semantics: {name_of(owner)} {c['name']}: {probe} is not a "
                              f"{'gRPC health' if need_grpc else 'gRPC health or TCP'} probe")
            elif probe != "readinessProbe" and kind == "grpc" and not p[kind].get("service"):
                what = "a lost rank returns" if is_coord else "the rank waits for its group"
                errors.append(f"semantics: {name_of(owner)} {c['name']}: {probe} checks the "
                              f"{'coordinator' if is_coord else 'worker'}'s default health service, "
                              f"NOT_SERVING while {what}: use service: liveness")
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
