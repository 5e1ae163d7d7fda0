"""The admin manifests under k8s/: complete kustomizations, least-privilege RBAC, no secret values,
valid names, and (when kubernetes-validate is installed) strict validation against the official
Kubernetes JSON schemas."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from gpujob.defaults import HF_CACHE

K8S = Path(__file__).resolve().parents[2] / "k8s"
NAMESPACE = "gpujob"
# Kubernetes versions to validate against (strict schemas shipped by kubernetes-validate): a
# conservative floor and the newest it ships.
SCHEMA_VERSIONS = ("1.33.0", "1.37.0")
# Kinds with no schema in the core Kubernetes set: Kueue CRDs and kustomize's own config file.
NON_CORE_GROUPS = ("kueue.x-k8s.io/", "kustomize.config.k8s.io/")
CLUSTER_SCOPED = {"Namespace", "ClusterQueue", "ResourceFlavor", "ClusterRole", "ClusterRoleBinding"}
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

_yaml = YAML(typ="safe", pure=True)


def _load(path: Path) -> list[dict]:
    return [doc for doc in _yaml.load_all(path.read_text(encoding="utf-8")) if doc is not None]


def _is_example(path: Path) -> bool:
    return path.name.endswith("-example.yaml")


KUSTOMIZATIONS = sorted(K8S.rglob("kustomization.yaml"))
MANIFEST_FILES = sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")
DOCS = [(path, doc) for path in MANIFEST_FILES for doc in _load(path)]


def _ids(items):
    return [f"{p.relative_to(K8S)}:{d['kind']}/{d['metadata']['name']}" for p, d in items]


def _one(kind: str, name: str) -> dict:
    found = [d for _, d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind}/{name}, found {len(found)}"
    return found[0]


def test_expected_files_exist():
    rel = {str(p.relative_to(K8S)) for p in K8S.rglob("*.yaml")}
    assert rel >= {
        "kustomization.yaml", "namespace.yaml", "rbac.yaml", "hf-cache-pvc.yaml", "secret-example.yaml",
        "kueue/kustomization.yaml", "kueue/resource-flavor.yaml", "kueue/cluster-queue.yaml",
        "kueue/local-queue.yaml",
    }
    assert (K8S / "README.md").is_file()


def test_every_yaml_file_parses_to_kubernetes_objects():
    for path in [*KUSTOMIZATIONS, *MANIFEST_FILES]:
        docs = _load(path)
        assert docs, f"{path} has no YAML documents"
        for doc in docs:
            assert isinstance(doc, dict), path
            assert doc.get("apiVersion") and doc.get("kind"), f"{path}: missing apiVersion/kind"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(K8S)))
def test_kustomization_lists_exactly_the_folders_manifests(kustomization: Path):
    (k,) = _load(kustomization)
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert k["kind"] == "Kustomization"
    assert "commonLabels" not in k, "commonLabels is deprecated; use labels"
    assert k["labels"] == [{"pairs": {"app.kubernetes.io/part-of": "gpujob"}, "includeSelectors": False}]
    folder = kustomization.parent
    listed = k["resources"]
    assert len(listed) == len(set(listed)), "duplicate resources"
    for entry in listed:
        assert (folder / entry).exists(), f"{kustomization}: lists missing {entry}"
    should_list = {p.name for p in folder.glob("*.yaml") if p.name != "kustomization.yaml" and not _is_example(p)}
    assert should_list <= set(listed), f"{kustomization}: not listed: {sorted(should_list - set(listed))}"
    assert not any(_is_example(folder / entry) for entry in listed), "example manifests must not be applied"


def test_base_kustomization_namespace():
    (k,) = _load(K8S / "kustomization.yaml")
    assert k["namespace"] == NAMESPACE
    # Kueue is optional: the base must not pull it in.
    assert not any(str(r).startswith("kueue") for r in k["resources"])


def test_kueue_kustomization_sets_no_namespace():
    # ResourceFlavor/ClusterQueue are cluster-scoped CRDs; kustomize would stamp a namespace onto them.
    (k,) = _load(K8S / "kueue" / "kustomization.yaml")
    assert "namespace" not in k


@pytest.mark.parametrize(("path", "doc"), DOCS, ids=_ids(DOCS))
def test_names_and_namespaces(path: Path, doc: dict):
    meta = doc["metadata"]
    assert DNS1123_LABEL.match(meta["name"]) and len(meta["name"]) <= 63, f"not DNS-1123: {meta['name']!r}"
    if doc["kind"] in CLUSTER_SCOPED:
        assert "namespace" not in meta
    else:
        # Explicit, so `kubectl apply -f` without kustomize lands in the right place too.
        assert meta.get("namespace") == NAMESPACE


def test_namespace_enforces_restricted_pod_security():
    labels = _one("Namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["pod-security.kubernetes.io/enforce-version"] == "latest"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"


def test_runner_service_account_mounts_no_token():
    assert _one("ServiceAccount", "gpujob-runner")["automountServiceAccountToken"] is False


EXPECTED_USER_PERMISSIONS = {
    ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
    ("", "pods"): {"get", "list", "watch", "delete"},
    ("", "pods/log"): {"get"},
    ("", "services"): {"create", "get", "list", "delete", "patch"},
    ("", "configmaps"): {"create", "get", "list", "delete", "patch"},
    ("", "events"): {"get", "list", "watch"},
}


def _granted(role: dict) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def test_user_role_is_least_privilege():
    role = _one("Role", "gpujob-user")
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert not any("*" in item for item in rule[field]), f"wildcard in {field}: {rule}"
    granted = _granted(role)
    resources = {resource for _, resource in granted}
    assert "secrets" not in resources, "gpujob never reads secrets; it references them by name"
    assert "pods/exec" not in resources and "pods/attach" not in resources
    assert granted == EXPECTED_USER_PERMISSIONS


def test_transfer_role_is_apart_and_only_creates_pods_and_execs():
    """Staging onto the PVC and pulling off it need pods/exec, which reaches every pod of the
    namespace: a Role of its own, so an admin can leave it unbound (and users stage to a bucket)."""
    assert _granted(_one("Role", "gpujob-transfer")) == {("", "pods"): {"create"}, ("", "pods/exec"): {"create", "get"}}
    assert _one("RoleBinding", "gpujob-transfer-users")["roleRef"]["name"] == "gpujob-transfer"


def test_user_role_binding():
    binding = _one("RoleBinding", "gpujob-users")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "gpujob-user"}
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "gpujob-users"}]
    assert "replace" in (K8S / "rbac.yaml").read_text(encoding="utf-8").lower()


def test_no_cluster_wide_rbac_in_base():
    assert not [d for _, d in DOCS if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]


def test_hf_cache_pvc():
    pvc = _one("PersistentVolumeClaim", HF_CACHE)   # the claim jobs mount unless runtime.cache_pvc says otherwise
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "200Gi"
    assert "storageClassName" not in pvc["spec"], "leave unset: the cluster's default class"


def test_example_secret_has_no_value():
    path = K8S / "secret-example.yaml"
    (secret,) = _load(path)
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == "gpujob-secrets"
    assert secret["type"] == "Opaque"
    assert secret["stringData"] == {"HF_TOKEN": ""}
    assert "data" not in secret
    assert "kubectl -n gpujob create secret generic gpujob-secrets --from-literal=HF_TOKEN=" in path.read_text()


def test_no_secret_in_any_applied_manifest():
    assert not [d for p, d in DOCS if d["kind"] == "Secret" and not _is_example(p)]


def test_kueue_objects():
    assert _one("ResourceFlavor", "h100")["spec"]["nodeLabels"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    cq = _one("ClusterQueue", "gpujob-cluster-queue")["spec"]
    assert cq["namespaceSelector"] == {}
    assert cq["queueingStrategy"] == "BestEffortFIFO"
    (group,) = cq["resourceGroups"]
    assert group["coveredResources"] == ["cpu", "memory", "nvidia.com/gpu"]
    (flavor,) = group["flavors"]
    assert flavor["name"] == "h100"
    assert [r["name"] for r in flavor["resources"]] == group["coveredResources"]
    lq = _one("LocalQueue", "gpujob")
    assert lq["spec"] == {"clusterQueue": "gpujob-cluster-queue"}
    for path in (K8S / "kueue").glob("*.yaml"):
        for doc in _load(path):
            if doc["kind"] != "Kustomization":
                assert doc["apiVersion"] == "kueue.x-k8s.io/v1beta1", path


SCHEMA_DOCS = [(p, d) for p, d in DOCS if not d["apiVersion"].startswith(NON_CORE_GROUPS)]


def test_schema_validation_covers_the_core_objects():
    kinds = {d["kind"] for _, d in SCHEMA_DOCS}
    assert kinds == {"Namespace", "ServiceAccount", "Role", "RoleBinding", "PersistentVolumeClaim", "Secret",
                     "ConfigMap"}


def test_the_example_price_table_is_one_the_kubernetes_backend_reads():
    from gpujob.backends.kubernetes.prices import PRICES_CONFIGMAP
    from gpujob.pricing import check_entries
    from gpujob.spec.yaml_bounded import parse_yaml

    doc = _one("ConfigMap", PRICES_CONFIGMAP)
    prices = check_entries(parse_yaml(doc["data"]["prices.yaml"], "prices.yaml"), "prices.yaml")
    assert prices["h100"] > prices["l4"] > 0 and "gpu" in prices and "cpu" in prices


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
@pytest.mark.parametrize(("path", "doc"), SCHEMA_DOCS, ids=_ids(SCHEMA_DOCS))
def test_core_objects_match_official_schema_strictly(path: Path, doc: dict, version: str):
    # Kueue CRDs and kustomization.yaml are skipped (SCHEMA_DOCS): their schemas aren't in the core set.
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    # strict=True: the "-strict" schemas forbid unknown fields, so typos fail.
    kubernetes_validate.validate(doc, version, strict=True)


def test_strict_schema_rejects_unknown_fields():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    doc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "x"},
           "spec": {"accessModes": ["ReadWriteMany"], "storageclassname": "typo"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, SCHEMA_VERSIONS[0], strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("folder", [K8S, K8S / "kueue"], ids=["base", "kueue"])
def test_kubectl_kustomize_renders(folder: Path):
    """kubectl's built-in kustomize builds each folder offline; every object gets the part-of label."""
    out = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rendered = [d for d in _yaml.load_all(out.stdout) if d]
    assert rendered
    for doc in rendered:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "gpujob"
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"]["namespace"] == NAMESPACE
        else:
            assert "namespace" not in doc["metadata"]
