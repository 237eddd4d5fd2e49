"""How every pipeline's assets run: partitions per run in backfills, refresh when upstream changes, and
the GPU inference step (the Dagster pool ``gpu``, one NVIDIA GPU per pod on Kubernetes)."""

from __future__ import annotations

import dagster as dg

# Partitions materialized per run when a backfill (or the main job) covers many of them: one process
# start and one code load per batch, not per partition. Runs hold at most ~100,000 cells of data at a time
# whatever their size (samples, product commits and table loads are batched), so a run can be large: at
# 256 a run, Dagster's ~2-3 s per run was a fifth of the res-5 main job.
PARTITIONS_PER_RUN = 1024
# Derived assets refresh themselves when what they are made from changes: a retrained model (new
# model version) makes every embedding partition and what is made from it stale, and Dagster's
# automation sensor (run by the daemon) requests them. Training itself is never automatic.
REFRESH_WHEN_UPSTREAM_CHANGES = dg.AutomationCondition.eager()
# Inference steps share one pool: its limit is how many run at once across all runs (one per GPU;
# dagster.yaml's default_limit, or `dagster instance concurrency set gpu N`).
GPU_POOL = "gpu"
# On Kubernetes (deploy/k8s/, dagster-k8s's k8s_job_executor) each inference step runs in its own pod
# that requests one NVIDIA GPU and is scheduled onto GPU nodes; other executors ignore this tag.
GPU_STEP_K8S_CONFIG = {
    "container_config": {
        "resources": {
            "requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
            "limits": {"memory": "32Gi", "nvidia.com/gpu": "1"},
        }
    },
    "pod_spec_config": {
        "node_selector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
}
# Keyword arguments that make an asset a GPU inference step.
GPU_STEP = {"pool": GPU_POOL, "op_tags": {"dagster-k8s/config": GPU_STEP_K8S_CONFIG}}


def batched_backfills() -> dg.BackfillPolicy:
    return dg.BackfillPolicy.multi_run(max_partitions_per_run=PARTITIONS_PER_RUN)


EVALUATION_CHECK = "enough_data_to_evaluate"


def evaluation_check_spec(key: dg.AssetKey, what: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(EVALUATION_CHECK, asset=key, description=(
        f"There were enough {what} to train on and to hold out: otherwise the model's quality figures are "
        "not evidence of anything (the run warns, and this check fails)."))


def evaluation_check_result(problems: list[str]) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(check_name=EVALUATION_CHECK, passed=not problems,
                               metadata={"problems": dg.MetadataValue.json(problems)})
