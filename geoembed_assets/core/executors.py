"""Which Dagster executor runs the steps of a run, chosen per deployment by GEOEMBED_EXECUTOR.

* unset, empty or ``in_process``: Dagster's ``in_process_executor``: every step of a run in the run worker
  itself, one after the other. The default for one machine: a step subprocess costs a fresh interpreter
  importing torch, Dagster and the code location (5-10 s of both cores each on a 2-core machine) for steps
  that mostly run seconds, and a product's steps within a run form a chain anyway. Pools (``gpu``) hold.
* ``multiprocess``: ``None``, i.e. Dagster's default executor (every step in a subprocess of the run
  worker, independent steps in parallel).
* ``k8s``: dagster-k8s's ``k8s_job_executor``: every step in its own Kubernetes Job (pod). Steps carry
  their own Kubernetes settings in the ``dagster-k8s/config`` op tag: ``cell_embeddings`` asks for one
  NVIDIA GPU and GPU nodes (``GPU_STEP_K8S_CONFIG`` in geoembed_assets/core/policies.py); every other step gets the modest
  defaults below. How many GPU steps run at once, across all runs, is the Dagster pool ``gpu``
  (deploy/k8s/dagster.yaml: ``concurrency.pools.default_limit``, or ``dagster instance concurrency set gpu N``).

Every process that loads the code location (code server, run worker pods, step pods) must see the same
value: deploy/k8s sets GEOEMBED_EXECUTOR=k8s on the user deployment and on the run launcher's pods.
"""

from __future__ import annotations

import os

import dagster as dg

EXECUTOR_ENV_VAR = "GEOEMBED_EXECUTOR"
EXECUTOR_CHOICES = ("in_process", "multiprocess", "k8s")

# Run config of dagster-k8s's k8s_job_executor (its schema: dagster_k8s.executor._K8S_EXECUTOR_CONFIG_SCHEMA).
# Namespace, service account, image, env secrets/vars and volumes are not repeated here: step pods
# inherit them from the K8sRunLauncher of the instance (deploy/k8s/dagster.yaml) and from the code
# location; the op tag of a step is merged on top of step_k8s_config (deep merge: the GPU step keeps
# these requests' keys and overrides cpu/memory).
K8S_EXECUTOR_CONFIG: dict = {
    # Pods of one run at a time (a per-run limit; the GPU limit across runs is the pool "gpu").
    "max_concurrent": 8,
    # Step Jobs are owned by their run's pod: deleting a run pod garbage-collects its step pods.
    "enable_owner_references": True,
    "step_k8s_config": {
        "container_config": {
            "resources": {
                "requests": {"cpu": "1", "memory": "4Gi"},
                "limits": {"memory": "8Gi"},
            }
        },
        "pod_template_spec_metadata": {"labels": {"app.kubernetes.io/part-of": "geoembed"}},
    },
}


def executor_from_env() -> dg.ExecutorDefinition | None:
    """The executor named by GEOEMBED_EXECUTOR: unset / ``in_process`` (the default), ``multiprocess``
    (Dagster's default, returned as ``None``) or ``k8s``. Any other value raises ValueError naming the
    variable."""
    raw = os.environ.get(EXECUTOR_ENV_VAR, "")
    value = raw.strip().lower()
    if value in ("", "in_process"):
        return dg.in_process_executor
    if value == "multiprocess":
        return None
    if value == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor.configured(K8S_EXECUTOR_CONFIG)
    raise ValueError(
        f"{EXECUTOR_ENV_VAR}={raw!r} is not a known executor: use 'k8s' (one Kubernetes Job per step, "
        f"dagster-k8s), 'multiprocess' (a subprocess per step) or leave {EXECUTOR_ENV_VAR} unset (or 'in_process': "
        f"every step in the run's own process)"
    )
