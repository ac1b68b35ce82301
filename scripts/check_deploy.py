"""Checks the deployment files offline (run by scripts/check_deploy.sh, which puts the tools on PATH).

1. hadolint on the Dockerfile.
2. Every kustomization under deploy/k8s/ rendered with `kubectl kustomize` (or `kustomize build`) and
   validated with `kubernetes-validate --strict` against Kubernetes 1.30; then maas's own rules on the
   rendered objects (probes, drain timing, selectors, security context).
3. deploy/kserve/*.yaml validated with jsonschema against the openAPIV3Schema of KServe's CRDs
   (deploy/kserve/crds/), with unknown fields refused as the API server's strict field validation
   does; then the runtime contract (container name, args, h2c port, annotations).
4. A self-check: deliberately broken copies must fail each of these checks.

Exit status 0 when everything passes; every failure is printed with the file and what was wrong.
"""

from __future__ import annotations

import copy
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import jsonschema
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
KSERVE = ROOT / "deploy" / "kserve"
CRDS = KSERVE / "crds"
K8S_VERSION = "1.30.0"
# libyaml's parser: the InferenceService CRD is 2 MB of YAML (pure-Python parsing takes seconds).
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class Failed(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# tools


def kustomize_cmd() -> list[str]:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    raise Failed("neither kubectl nor kustomize is on PATH (pip install -r scripts/requirements.txt)")


def run(cmd: list[str], what: str) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        out = (p.stdout + p.stderr).strip()
        first = next((l for l in out.splitlines() if "ERROR" in l or "DL" in l or "error" in l), out[:200])
        raise Failed(f"{what}: exited {p.returncode}: {first.strip()}\n`{' '.join(cmd)}` printed:\n{out}")
    return p.stdout


def hadolint(dockerfile: pathlib.Path) -> None:
    run(["hadolint", "--no-color", str(dockerfile)], f"hadolint {dockerfile.name}")


def render(overlay: pathlib.Path) -> str:
    return run(kustomize_cmd() + [str(overlay)], f"rendering {overlay.relative_to(ROOT)}")


def kubernetes_validate(files: list[pathlib.Path]) -> None:
    run(["kubernetes-validate", "--strict", "-k", K8S_VERSION, "--quiet"] + [str(f) for f in files],
        "kubernetes-validate")


# ---------------------------------------------------------------------------------------------
# maas's rules for the rendered Kubernetes objects


def flag(args: list[str], name: str) -> str | None:
    for a in args:
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


def check_k8s_objects(where: str, docs: list[dict]) -> None:
    deployments = [d for d in docs if d.get("kind") == "Deployment"]
    if len(deployments) != 1:
        raise Failed(f"{where}: expected one Deployment, found {len(deployments)}")
    dep = deployments[0]
    pod = dep["spec"]["template"]
    labels = pod["metadata"].get("labels", {})
    spec = pod["spec"]
    (c,) = [c for c in spec["containers"] if c["name"] == "maas"]
    args = c.get("args", [])
    grpc_port = int(flag(args, "port") or 8500)
    tls = flag(args, "tls-cert-file") is not None

    def probe(kind: str, service: str | None) -> None:
        p = c.get(kind)
        if p is None:
            raise Failed(f"{where}: the maas container has no {kind}")
        if tls:
            # The kubelet's gRPC probe cannot speak TLS.
            if "httpGet" not in p or p["httpGet"].get("scheme") != "HTTPS":
                raise Failed(f"{where}: with TLS the {kind} must be an HTTPS httpGet, got {p}")
            return
        g = p.get("grpc")
        if g is None:
            raise Failed(f"{where}: {kind} must be a gRPC probe, got {p}")
        if not isinstance(g.get("port"), int) or g["port"] != grpc_port:
            raise Failed(f"{where}: {kind} gRPC port must be the number {grpc_port} (--port), got {g.get('port')!r}")
        if g.get("service", "") != service:
            raise Failed(f"{where}: {kind} must ask for the health service {service!r}, got {g.get('service', '')!r}")

    probe("readinessProbe", "")
    probe("livenessProbe", "liveness")
    probe("startupProbe", "")
    startup = c["startupProbe"]
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    if budget < 600:
        raise Failed(f"{where}: the startupProbe allows {budget} s; large models need at least 600 s")

    drain = float(flag(args, "drain-timeout-seconds") or 30)
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    if pre_stop <= 0:
        raise Failed(f"{where}: the maas container needs a preStop sleep")
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if grace <= pre_stop + drain:
        raise Failed(
            f"{where}: terminationGracePeriodSeconds {grace} must exceed the preStop sleep ({pre_stop} s)"
            f" + --drain-timeout-seconds ({drain:g} s)")

    sc = c.get("securityContext", {})
    psc = spec.get("securityContext", {})
    if sc.get("readOnlyRootFilesystem") is not True:
        raise Failed(f"{where}: readOnlyRootFilesystem must be true")
    if sc.get("capabilities", {}).get("drop") != ["ALL"]:
        raise Failed(f"{where}: capabilities must drop ALL")
    if sc.get("allowPrivilegeEscalation") is not False:
        raise Failed(f"{where}: allowPrivilegeEscalation must be false")
    if sc.get("runAsUser", psc.get("runAsUser")) != 65532 or not sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
        raise Failed(f"{where}: maas must run as the non-root uid 65532")

    cache = flag(args, "model-cache-dir")
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    if cache is None or cache not in mounts or "emptyDir" not in volumes.get(mounts[cache], {}):
        raise Failed(f"{where}: --model-cache-dir must be an emptyDir mount, got {cache!r}")
    for m, name in mounts.items():
        if name not in volumes:
            raise Failed(f"{where}: volumeMount {m} names the missing volume {name!r}")

    def selects(sel: dict, kind: str) -> None:
        if not sel:
            raise Failed(f"{where}: the {kind} has no selector (it would select every pod)")
        if any(labels.get(k) != v for k, v in sel.items()):
            raise Failed(f"{where}: the {kind} selector {sel} does not match the pod labels {labels}")

    selects(dep["spec"]["selector"].get("matchLabels", {}), "Deployment")
    services = [d for d in docs if d.get("kind") == "Service"]
    pdbs = [d for d in docs if d.get("kind") == "PodDisruptionBudget"]
    if not services or not pdbs:
        raise Failed(f"{where}: a Service and a PodDisruptionBudget are needed")
    for s in services:
        selects(s["spec"].get("selector", {}), f"Service {s['metadata']['name']}")
        ports = {p["name"]: p for p in s["spec"]["ports"]}
        if "grpc" not in ports or (not tls and ports["grpc"].get("appProtocol") != "kubernetes.io/h2c"):
            raise Failed(f"{where}: Service port grpc needs appProtocol kubernetes.io/h2c")
    for p in pdbs:
        selects(p["spec"].get("selector", {}).get("matchLabels", {}), "PodDisruptionBudget")
    hpas = [d for d in docs if d.get("kind") == "HorizontalPodAutoscaler"]
    if hpas and "replicas" in dep["spec"]:
        raise Failed(f"{where}: with an HPA the Deployment must not set replicas")


def check_k8s(tmp: pathlib.Path) -> int:
    overlays = sorted(p.parent for p in K8S.glob("*/kustomization.yaml"))
    if not overlays:
        raise Failed(f"no kustomization under {K8S}")
    rendered = []
    for o in overlays:
        out = tmp / f"k8s-{o.name}.yaml"
        text = render(o)
        out.write_text(text)
        rendered.append(out)
        check_k8s_objects(str(o.relative_to(ROOT)), [d for d in yaml.safe_load_all(text) if d])
    kubernetes_validate(rendered)
    return len(overlays)


# ---------------------------------------------------------------------------------------------
# KServe: CRD schema validation


def strict_schema(node):
    """The CRD's structural schema as JSON Schema: Kubernetes extensions translated, and objects with
    declared properties closed (the API server's strict field validation refuses unknown fields)."""
    if isinstance(node, list):
        return [strict_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable"):
        t = out.get("type")
        if isinstance(t, str):
            out["type"] = [t, "null"]
    out.pop("nullable", None)
    if ("properties" in out and "additionalProperties" not in out
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def load_crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    validators = {}
    for f in sorted(CRDS.glob("*.yaml")):
        crd = yaml.load(f.read_text(), Loader=YAML_LOADER)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            schema = strict_schema(v["schema"]["openAPIV3Schema"])
            cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
            validators[(f"{group}/{v['name']}", kind)] = cls(schema)
    return validators


def validate_kserve_file(f: pathlib.Path, validators) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(f.read_text()) if d]
    if not docs:
        raise Failed(f"{f}: no objects")
    for d in docs:
        key = (d.get("apiVersion"), d.get("kind"))
        v = validators.get(key)
        if v is None:
            raise Failed(f"{f}: no KServe CRD schema for apiVersion {key[0]!r} kind {key[1]!r}")
        errors = sorted(v.iter_errors(d), key=lambda e: list(e.absolute_path))
        if errors:
            lines = [f" at {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors[:10]]
            raise Failed(f"{f.name}: {key[1]} {d.get('metadata', {}).get('name')!r} does not match KServe's "
                         f"schema ({len(errors)} error(s)):" + "\n".join(lines))
        if not d.get("metadata", {}).get("name"):
            raise Failed(f"{f}: {key[1]} has no metadata.name")
    return docs


def check_runtime_contract(f: pathlib.Path, rt: dict) -> None:
    spec = rt["spec"]
    where = f"{f.name}: {rt['metadata']['name']}"
    (c,) = [c for c in spec["containers"] if c["name"] == "kserve-container"] or [None]
    if c is None:
        raise Failed(f"{where}: the container must be named kserve-container")
    args = c.get("args", [])
    if "--model-name={{.Name}}" not in args:
        raise Failed(f"{where}: args need --model-name={{{{.Name}}}}, got {args}")
    base = flag(args, "model-base-path")
    if spec.get("storageHelper", {}).get("disabled"):
        if base is None or not base.startswith("$(") or flag(args, "model-cache-dir") is None:
            raise Failed(f"{where}: with storageHelper disabled maas needs the bucket ($(VAR)) and a cache dir")
    elif base != "/mnt/models":
        raise Failed(f"{where}: args need --model-base-path=/mnt/models, got {base!r}")
    port = int(flag(args, "port") or 8500)
    ports = c.get("ports", [])
    if not ports or ports[0].get("name") != "h2c" or ports[0].get("containerPort") != port:
        raise Failed(f"{where}: the first port must be the gRPC port {port} named h2c, got {ports}")
    if set(spec.get("protocolVersions", [])) != {"v1", "v2", "grpc-v1", "grpc-v2"}:
        raise Failed(f"{where}: protocolVersions must be v1, v2, grpc-v1, grpc-v2")
    if [m.get("name") for m in spec.get("supportedModelFormats", [])] != ["onnx"]:
        raise Failed(f"{where}: supportedModelFormats must be onnx")
    ann = spec.get("annotations", {})
    if ann.get("prometheus.kserve.io/port") != str(flag(args, "rest-api-port")) or "prometheus.kserve.io/path" not in ann:
        raise Failed(f"{where}: prometheus.kserve.io/port must be the REST port, and a path given")
    for kind, service in (("readinessProbe", ""), ("livenessProbe", "liveness")):
        g = c.get(kind, {}).get("grpc")
        if g is not None and (g.get("port") != port or g.get("service", "") != service):
            raise Failed(f"{where}: {kind} must be grpc port {port} service {service!r}, got {g}")


def check_kserve(validators) -> int:
    files = sorted(KSERVE.glob("*.yaml"))
    runtimes = {}
    services = []
    for f in files:
        for d in validate_kserve_file(f, validators):
            if d["kind"] == "ClusterServingRuntime":
                check_runtime_contract(f, d)
                runtimes[d["metadata"]["name"]] = d
            elif d["kind"] == "InferenceService":
                services.append((f, d))
    if "kserve-maas" not in runtimes:
        raise Failed("deploy/kserve: the ClusterServingRuntime kserve-maas is missing")
    for f, isvc in services:
        model = isvc["spec"]["predictor"].get("model", {})
        rt = runtimes.get(model.get("runtime", "kserve-maas"))
        if rt is None:
            raise Failed(f"{f.name}: runtime {model.get('runtime')!r} is not defined in deploy/kserve")
        if model.get("protocolVersion") and model["protocolVersion"] not in rt["spec"]["protocolVersions"]:
            raise Failed(f"{f.name}: protocolVersion {model['protocolVersion']} is not one the runtime declares")
        bucket = rt["spec"].get("storageHelper", {}).get("disabled", False)
        if bucket and "storageUri" in model:
            raise Failed(f"{f.name}: with {rt['metadata']['name']} give no storageUri (KServe would copy it once)")
        if not bucket and "storageUri" not in model:
            raise Failed(f"{f.name}: {rt['metadata']['name']} needs a storageUri")
    if len(services) < 2:
        raise Failed("deploy/kserve: two sample InferenceServices expected")
    return len(files)


# ---------------------------------------------------------------------------------------------
# self-check: broken copies must fail


def expect_failure(what: str, fn) -> None:
    try:
        fn()
    except Failed as e:
        first = str(e).strip().splitlines()[0]
        print(f"  ok: {what} is refused ({first[:220]})")
        return
    raise Failed(f"self-check: {what} was accepted; the check cannot fail")


def self_check(tmp: pathlib.Path, validators) -> None:
    # hadolint: a non-numeric USER (runAsNonRoot cannot check a name).
    df = tmp / "Dockerfile"
    df.write_text(re.sub(r"^USER .*$", "USER nonroot", (ROOT / "Dockerfile").read_text(), flags=re.M))
    expect_failure("a Dockerfile with USER nonroot", lambda: hadolint(df))

    # kubernetes-validate --strict: a misspelt field in the Deployment.
    base = render(K8S / "base")
    docs = [d for d in yaml.safe_load_all(base) if d]
    bad = copy.deepcopy(docs)
    dep = next(d for d in bad if d["kind"] == "Deployment")
    dep["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = \
        dep["spec"]["template"]["spec"]["containers"][0].pop("readinessProbe")
    typo = tmp / "typo.yaml"
    typo.write_text(yaml.safe_dump_all(bad))
    expect_failure("a Deployment with `readinesProbe`", lambda: kubernetes_validate([typo]))

    # maas's rules: a grace period that cuts the drain short, and a named gRPC probe port.
    bad = copy.deepcopy(docs)
    next(d for d in bad if d["kind"] == "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 30
    expect_failure("terminationGracePeriodSeconds 30", lambda: check_k8s_objects("broken base", bad))
    bad = copy.deepcopy(docs)
    c = next(d for d in bad if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    c["livenessProbe"]["grpc"]["service"] = ""
    expect_failure("a liveness probe on the readiness service", lambda: check_k8s_objects("broken base", bad))

    # KServe schema: a misspelt field, and a wrong type.
    rt = yaml.safe_load((KSERVE / "clusterservingruntime.yaml").read_text())
    bad = copy.deepcopy(rt)
    bad["spec"]["supportedModelFormat"] = bad["spec"].pop("supportedModelFormats")
    f = tmp / "rt-typo.yaml"
    f.write_text(yaml.safe_dump(bad))
    expect_failure("a ClusterServingRuntime with `supportedModelFormat`", lambda: validate_kserve_file(f, validators))
    bad = copy.deepcopy(rt)
    bad["spec"]["supportedModelFormats"][0]["priority"] = "high"
    f.write_text(yaml.safe_dump(bad))
    expect_failure("a string priority", lambda: validate_kserve_file(f, validators))
    isvc = yaml.safe_load((KSERVE / "inferenceservice-storage-initializer.yaml").read_text())
    isvc["spec"]["predictor"]["model"]["storageURI"] = isvc["spec"]["predictor"]["model"].pop("storageUri")
    f.write_text(yaml.safe_dump(isvc))
    expect_failure("an InferenceService with `storageURI`", lambda: validate_kserve_file(f, validators))
    # the runtime contract
    bad = copy.deepcopy(rt)
    bad["spec"]["containers"][0]["name"] = "maas"
    expect_failure("a runtime container not named kserve-container", lambda: check_runtime_contract(f, bad))


def main() -> int:
    try:
        with tempfile.TemporaryDirectory(prefix="maas-check-deploy-") as t:
            tmp = pathlib.Path(t)
            hadolint(ROOT / "Dockerfile")
            print("check_deploy: hadolint Dockerfile: ok")
            n = check_k8s(tmp)
            print(f"check_deploy: {n} kustomizations rendered, kubernetes-validate --strict -k {K8S_VERSION} "
                  "and maas's rules: ok")
            validators = load_crd_validators()
            n = check_kserve(validators)
            print(f"check_deploy: {n} KServe files match the CRD schemas and the runtime contract: ok")
            print("check_deploy: self-check (each broken copy must be refused):")
            self_check(tmp, validators)
    except Failed as e:
        print(f"check_deploy: FAILED: {e}", file=sys.stderr)
        return 1
    print("check_deploy: all deployment checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
