"""The prices a cluster's admin published for gpujob: ConfigMap ``gpujob-prices`` in the job's namespace, whose
key ``prices.yaml`` maps GPU types to USD per GPU-hour (``gpu``: any other type, ``cpu``: a job without GPUs),
as k8s/prices-example.yaml shows. Read at submit, when the spec and the user's own table name no price."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from gpujob.errors import GpujobError, UserError
from gpujob.pricing import check_entries

if TYPE_CHECKING:
    from gpujob.backends.kubernetes.cluster import Cluster

PRICES_CONFIGMAP = "gpujob-prices"
FIX = "ask the cluster's admin to fix it (k8s/prices-example.yaml shows the form)"


def published(cluster: "Cluster") -> Mapping[str, float] | None:
    """The cluster's prices; None when it published none or it cannot be read; a UserError naming the
    ConfigMap when what it holds is not a price table."""
    try:
        found = cluster.call(cluster.core.read_namespaced_config_map, PRICES_CONFIGMAP, cluster.namespace,
                             missing_ok=True, what=f"ConfigMap {PRICES_CONFIGMAP}")
    except GpujobError:
        return None
    text = ((found or {}).get("data") or {}).get("prices.yaml")
    if not text:
        return None
    from gpujob.spec.yaml_bounded import parse_yaml  # the spec's reader, already loaded by whoever submits

    where = f"ConfigMap {PRICES_CONFIGMAP} (namespace {cluster.namespace}), prices.yaml"
    try:
        return check_entries(parse_yaml(text, where), where)
    except UserError as exc:
        raise UserError(exc.message, hint=FIX) from None
    except Exception as exc:  # noqa: BLE001 - the YAML reader's own errors: it is not YAML at all
        raise UserError(f"{where}: is not a price table ({str(exc).splitlines()[0][:200]})", hint=FIX) from None
