"""The Kubernetes deployment (deploy/k8s/), validated with the libraries that will run it, no cluster:

* deploy/k8s/dagster.yaml is a valid Dagster instance (Dagster's own loader and schemas, every class it
  names loaded and its config processed), with dagster-k8s's K8sRunLauncher and run monitoring on;
* the Kubernetes Job of a step is built by dagster-k8s's own code (K8sRunLauncher from that file, the
  k8s_job_executor of geoembed_assets/executors.py, the step's op tags from the real definitions, then
  construct_dagster_k8s_job), then checked by the Kubernetes client's models: cell_embeddings requests
  one NVIDIA GPU on GPU nodes, other steps none;
* GEOEMBED_EXECUTOR picks the executor;
* deploy/k8s/values.yaml (the official Helm chart) agrees with dagster.yaml and sets only keys the
  chart has.
"""

from __future__ import annotations

import json
import re
import tomllib
import uuid
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import kubernetes
import pytest
import yaml
from dagster._config import process_config, resolve_to_config_type
from dagster._core.definitions.job_base import InMemoryJob
from dagster._core.execution.api import create_execution_plan
from dagster._core.executor.init import InitExecutorContext
from dagster._core.instance.config import dagster_instance_config
from dagster._core.instance.ref import InstanceRef
from dagster._serdes.config_class import class_from_code_pointer
from dagster_k8s import K8sRunLauncher, k8s_job_executor
from dagster_k8s.job import construct_dagster_k8s_job
from kubernetes.utils.quantity import parse_quantity

from conftest import REPO
from geoembed.landcover.settings import load_settings
from geoembed_assets.definitions import build_definitions, local_resources
from geoembed_assets.core.executors import EXECUTOR_ENV_VAR, executor_from_env
from geoembed_resources import InferenceDevice, ProductStorage

K8S_DIR = REPO / "deploy" / "k8s"
GPU = "nvidia.com/gpu"
PRODUCT = "nlcd_zion"


def _load(name: str) -> dict:
    return yaml.safe_load((K8S_DIR / name).read_text())


def _env_refs(node) -> set[str]:
    """Names of the environment variables a Dagster config references as {env: NAME}."""
    if isinstance(node, dict):
        if set(node) == {"env"} and isinstance(node["env"], str):
            return {node["env"]}
        return set().union(*(_env_refs(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_env_refs(v) for v in node)) if node else set()
    return set()


def _strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def _env_vars(entries: list[str]) -> dict[str, str]:
    return dict(entry.split("=", 1) for entry in entries)


@pytest.fixture(scope="module")
def instance_yaml() -> dict:
    return _load("dagster.yaml")


@pytest.fixture(scope="module")
def values() -> dict:
    return _load("values.yaml")


@pytest.fixture(scope="module")
def dummy_env(instance_yaml):
    """Dummy values for the variables the instance reads (in a cluster they come from Secrets)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in _env_refs(instance_yaml):
            mp.setenv(name, "postgresql://user:secret@db.invalid:5432/dagster")
        yield


# ------------------------------------------------------------------ (a) the instance


def test_instance_config_is_valid_for_dagster_and_dagster_k8s(instance_yaml, dummy_env, tmp_path):
    (tmp_path / "dagster.yaml").write_text((K8S_DIR / "dagster.yaml").read_text())
    config, custom_instance_class = dagster_instance_config(str(tmp_path))  # Dagster's own validation
    assert custom_instance_class is None

    # Every class the file names is importable and its config passes that class's schema, as the
    # instance's rehydration does (without connecting to PostgreSQL or a cluster).
    ref = InstanceRef.from_dir(str(tmp_path))
    named = {"storage": ref.storage_data, "run_coordinator": ref.run_coordinator_data,
             "run_launcher": ref.run_launcher_data, "compute_logs": ref.compute_logs_data}
    for what, data in named.items():
        klass = class_from_code_pointer(data.module_name, data.class_name)
        result = process_config(resolve_to_config_type(klass.config_type()), data.config_dict)
        assert result.success, (what, [e.message for e in result.errors])

    assert (ref.storage_data.module_name, ref.storage_data.class_name) == ("dagster_postgres", "DagsterPostgresStorage")
    assert ref.run_coordinator_data.class_name == "QueuedRunCoordinator"
    launcher_class = class_from_code_pointer(ref.run_launcher_data.module_name, ref.run_launcher_data.class_name)
    assert launcher_class is K8sRunLauncher
    launcher = process_config(K8sRunLauncher.config_type(), ref.run_launcher_data.config_dict).value
    assert launcher["job_namespace"] and launcher["service_account_name"] and launcher["instance_config_map"]

    # Storage from the environment, never credentials in the file.
    assert config["storage"]["postgres"] == {"postgres_url": {"env": "DAGSTER_PG_URL"}}
    for text in _strings(instance_yaml):
        assert not re.search(r"://[^/\s]*:[^/\s]*@", text), f"credentials in deploy/k8s/dagster.yaml: {text}"

    # Runs whose pod dies are marked failed, and their pool slots are given back.
    assert config["run_monitoring"]["enabled"] is True
    assert config["run_monitoring"]["max_resume_run_attempts"] == 0
    assert config["run_monitoring"]["free_slots_after_run_end_seconds"] > 0
    # Inference steps (pool "gpu") are limited per step, default limit = GPUs of the deployment.
    assert config["concurrency"]["pools"]["granularity"] == "op"
    assert config["concurrency"]["pools"]["default_limit"] >= 1
    assert config["telemetry"]["enabled"] is False


# ------------------------------------------------------------------ (b) step pods


@pytest.fixture(scope="module")
def k8s_instance(instance_yaml, dummy_env, tmp_path_factory):
    """A real DagsterInstance with the run launcher, run coordinator, pools and run monitoring of
    deploy/k8s/dagster.yaml (storage: a local SQLite instead of PostgreSQL; the launcher reads a
    kubeconfig file of a cluster nobody calls instead of the in-cluster service account)."""
    kubeconfig = tmp_path_factory.mktemp("kube") / "config"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "test", "user": {"token": "unused"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
    }))
    overrides = {key: value for key, value in instance_yaml.items() if key not in ("storage", "compute_logs")}
    launcher = dict(overrides["run_launcher"])
    launcher["config"] = {**launcher["config"], "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)}
    overrides["run_launcher"] = launcher
    saved = kubernetes.client.Configuration.get_default_copy()
    try:
        with dg.instance_for_test(overrides=overrides) as instance:
            assert isinstance(instance.run_launcher, K8sRunLauncher)
            yield instance
    finally:
        kubernetes.client.Configuration.set_default(saved)


@pytest.fixture(scope="module")
def product_defs(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    resources = local_resources(data, inference_device=InferenceDevice(device="cpu"))
    return build_definitions([load_settings(REPO / "products" / f"{PRODUCT}.yaml")], resources)


@pytest.fixture(scope="module")
def plan_steps(product_defs):
    job = product_defs.resolve_implicit_global_asset_job_def()
    return {step.key: step for step in create_execution_plan(job).steps}


@pytest.fixture(scope="module")
def step_handler(k8s_instance, product_defs):
    """dagster-k8s's K8sStepHandler, made by k8s_job_executor from the config executors.py gives it,
    exactly as Dagster does when a run starts (configured executor config resolved by Dagster)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(EXECUTOR_ENV_VAR, "k8s")
        executor_def = executor_from_env()
    resolved = executor_def.config_schema.resolve_config({})
    assert resolved.success, [e.message for e in resolved.errors]
    job = product_defs.resolve_implicit_global_asset_job_def()
    executor = executor_def.executor_creation_fn(InitExecutorContext(
        job=InMemoryJob(job), executor_def=executor_def, executor_config=resolved.value["config"],
        instance=k8s_instance))
    return executor._step_handler


@pytest.fixture(scope="module")
def code_image(values) -> str:
    image = values["dagster-user-deployments"]["deployments"][0]["image"]
    return f"{image['repository']}:{image['tag']}"


def _step_job(step_handler, instance, step, image):
    """The Kubernetes Job of one step, as K8sStepHandler.launch_step builds it: its container context
    (run launcher, then executor config, then the step's dagster-k8s/config op tag), then
    construct_dagster_k8s_job. Returns the manifest round-tripped through the Kubernetes client."""
    run = dg.DagsterRun(job_name="__ASSET_JOB", run_id=str(uuid.uuid4()))
    context = SimpleNamespace(
        execute_step_args=SimpleNamespace(step_keys_to_execute=[step.key], run_id=run.run_id, known_state=None),
        dagster_run=run, instance=instance, step_tags={step.key: step.tags},
        get_step_context=lambda key: SimpleNamespace(step=step))
    container_context = step_handler._get_container_context(context)
    job_name = step_handler._get_k8s_step_job_name(context)
    job = construct_dagster_k8s_job(
        job_config=container_context.get_k8s_job_config(image, instance.run_launcher),
        args=["dagster", "api", "execute_step"], job_name=job_name, pod_name=job_name,
        component="step_worker", user_defined_k8s_config=container_context.run_k8s_config,
        labels={"dagster/job": run.job_name, "dagster/op": step.key, "dagster/run-id": run.run_id},
        env_vars=[{"name": "DAGSTER_RUN_JOB_NAME", "value": run.job_name},
                  {"name": "DAGSTER_RUN_STEP_KEY", "value": step.key}])
    # The manifest the API server would receive, read back into the client's typed models (a missing
    # required field or a wrong type fails here).
    api = kubernetes.client.ApiClient()
    manifest = api.sanitize_for_serialization(job)
    parsed = api.deserialize(SimpleNamespace(data=json.dumps(manifest)), "V1Job")
    assert isinstance(parsed, kubernetes.client.V1Job)
    assert api.sanitize_for_serialization(parsed) == manifest
    assert container_context.namespace == instance.run_launcher.job_namespace
    return parsed, manifest


def _check_quantities(resources: kubernetes.client.V1ResourceRequirements):
    requests, limits = resources.requests or {}, resources.limits or {}
    for quantity in [*requests.values(), *limits.values()]:
        parse_quantity(quantity)  # a Kubernetes quantity, or it raises
    for name in set(requests) & set(limits):
        assert parse_quantity(requests[name]) <= parse_quantity(limits[name]), name
    if GPU in requests or GPU in limits:  # extended resources: Kubernetes wants requests == limits
        assert requests.get(GPU) == limits.get(GPU)


def test_inference_step_pod_requests_one_gpu_on_gpu_nodes(step_handler, k8s_instance, plan_steps, code_image,
                                                          instance_yaml):
    step = plan_steps[f"{PRODUCT}__cell_embeddings"]
    assert step.pool == "gpu"
    job, manifest = _step_job(step_handler, k8s_instance, step, code_image)

    pod = job.spec.template.spec
    (container,) = pod.containers
    assert container.resources.requests[GPU] == "1" and container.resources.limits[GPU] == "1"
    assert container.resources.requests["cpu"] == "4"  # the op tag deep-merged over the executor's default
    _check_quantities(container.resources)
    assert pod.node_selector == {"nvidia.com/gpu.present": "true"}
    assert any(t.key == GPU and t.operator == "Exists" and t.effect == "NoSchedule" for t in pod.tolerations)
    assert manifest["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][GPU] == "1"

    # The rest of the pod comes from the instance's run launcher: image, secrets, env, shared volume.
    launcher = instance_yaml["run_launcher"]["config"]
    assert container.image == code_image
    assert container.image_pull_policy == launcher["image_pull_policy"]
    assert pod.service_account_name == launcher["service_account_name"]
    assert [e.secret_ref.name for e in container.env_from if e.secret_ref] == launcher["env_secrets"]
    env = {e.name: e.value for e in container.env}
    assert _env_vars(launcher["env_vars"]).items() <= env.items()
    assert env["DAGSTER_HOME"] == launcher["dagster_home"]
    assert [(m.name, m.mount_path) for m in container.volume_mounts] == [
        (m["name"], m["mountPath"]) for m in launcher["volume_mounts"]]
    assert [v.persistent_volume_claim.claim_name for v in pod.volumes] == [
        v["persistentVolumeClaim"]["claimName"] for v in launcher["volumes"]]
    assert job.metadata.labels["app.kubernetes.io/component"] == "step_worker"


def test_other_steps_get_no_gpu(step_handler, k8s_instance, plan_steps, code_image):
    step = plan_steps[f"{PRODUCT}__landcover_samples"]
    assert step.pool is None
    job, _ = _step_job(step_handler, k8s_instance, step, code_image)
    pod = job.spec.template.spec
    (container,) = pod.containers
    assert GPU not in (container.resources.requests or {}) and GPU not in (container.resources.limits or {})
    assert container.resources.requests == {"cpu": "1", "memory": "4Gi"}  # executors.py's default
    _check_quantities(container.resources)
    assert not pod.node_selector and not pod.tolerations
    # Every other step of the product is CPU-only too.
    for key, other in plan_steps.items():
        if key != f"{PRODUCT}__cell_embeddings":
            assert GPU not in other.tags.get("dagster-k8s/config", ""), key


# ------------------------------------------------------------------ (c) the executor switch


def test_executor_from_env(monkeypatch, tmp_path):
    resources = local_resources(tmp_path, inference_device=InferenceDevice(device="cpu"))

    def job_executor():
        defs = build_definitions([load_settings(REPO / "products" / f"{PRODUCT}.yaml")], resources)
        return defs.resolve_implicit_global_asset_job_def().executor_def

    monkeypatch.delenv(EXECUTOR_ENV_VAR, raising=False)
    assert executor_from_env() is dg.in_process_executor
    assert job_executor().name == "in_process"
    monkeypatch.setenv(EXECUTOR_ENV_VAR, "multiprocess")
    assert executor_from_env() is None
    assert job_executor().name == "multi_or_in_process_executor"  # Dagster's default

    monkeypatch.setenv(EXECUTOR_ENV_VAR, "k8s")
    executor_def = executor_from_env()
    assert executor_def.executor_creation_fn is k8s_job_executor.executor_creation_fn
    assert executor_def.config_schema.resolve_config({}).success
    assert job_executor().executor_creation_fn is k8s_job_executor.executor_creation_fn

    monkeypatch.setenv(EXECUTOR_ENV_VAR, "kubernetes")
    with pytest.raises(ValueError, match=rf"{EXECUTOR_ENV_VAR}='kubernetes'.*'k8s'"):
        executor_from_env()


# ------------------------------------------------------------------ (d) the Helm values

# Key paths of the official chart (dagster-io/dagster, helm/dagster) that values.yaml may use, extracted
# from values.schema.json at commit bdb8547fab497826eeec292bc160b549a0a329ef (user deployments, postgresql,
# run launcher, daemon, compute logs, global), schema/charts/dagster/subschema/concurrency.py at
# 0f2d9d8ee1755dff289e167e49167d87f4977a9f (concurrency) and templates/configmap-instance.yaml at
# 835892b45aaa0917bc97102968fe062155b64e19 (the runMonitoring keys the template reads). ANY: a free-form
# map or a Kubernetes object (checked with the Kubernetes client below); STRINGS: a list of strings.
ANY = "ANY"
STRINGS = "STRINGS"
IMAGE = {"repository": None, "tag": None, "pullPolicy": {"Always", "IfNotPresent", "Never"}}
CHART_KEYS = {
    "global": {"postgresqlSecretName": None, "dagsterHome": None, "serviceAccountName": None,
               "celeryConfigSecretName": None},
    "generatePostgresqlPasswordSecret": None,
    "postgresql": {"image": IMAGE, "enabled": None, "postgresqlHost": None, "postgresqlUsername": None,
                   "postgresqlPassword": None, "postgresqlDatabase": None, "postgresqlParams": ANY,
                   "postgresqlScheme": None, "service": {"port": None}},
    "dagster-user-deployments": {
        "enabled": None, "enableSubchart": None, "imagePullSecrets": ANY,
        "deployments": [{
            "name": None, "image": IMAGE, "dagsterApiGrpcArgs": STRINGS, "codeServerArgs": STRINGS,
            "includeConfigInLaunchedRuns": {"enabled": None}, "deploymentNamespace": None, "port": None,
            "env": ANY, "envConfigMaps": ANY, "envSecrets": ANY, "annotations": ANY, "nodeSelector": ANY,
            "affinity": ANY, "tolerations": ANY, "podSecurityContext": ANY, "securityContext": ANY,
            "resources": ANY, "livenessProbe": ANY, "readinessProbe": ANY, "startupProbe": ANY, "labels": ANY,
            "volumeMounts": ANY, "volumes": ANY, "schedulerName": None, "initContainers": ANY,
            "sidecarContainers": ANY}]},
    "runLauncher": {"type": {"K8sRunLauncher", "CeleryK8sRunLauncher", "CustomRunLauncher"}, "config": {
        "k8sRunLauncher": {
            "image": IMAGE, "imagePullPolicy": {"Always", "IfNotPresent", "Never"}, "jobNamespace": None,
            "loadInclusterConfig": None, "kubeconfigFile": None, "envConfigMaps": ANY, "envSecrets": ANY,
            "envVars": STRINGS, "volumeMounts": ANY, "volumes": ANY, "labels": ANY, "failPodOnRunFailure": None,
            "resources": ANY, "schedulerName": None, "securityContext": ANY,
            "runK8sConfig": {"containerConfig": ANY, "podSpecConfig": ANY, "podTemplateSpecMetadata": ANY,
                             "jobSpecConfig": ANY, "jobMetadata": ANY}}}},
    "dagsterDaemon": {
        "enabled": None, "image": IMAGE, "heartbeatTolerance": None, "env": ANY, "envConfigMaps": ANY,
        "envSecrets": ANY, "resources": ANY, "nodeSelector": ANY, "tolerations": ANY, "annotations": ANY,
        "runCoordinator": {"enabled": None, "type": {"QueuedRunCoordinator", "CustomRunCoordinator"}, "config": {
            "queuedRunCoordinator": {"maxConcurrentRuns": None, "tagConcurrencyLimits": ANY,
                                     "dequeueIntervalSeconds": None, "dequeueNumWorkers": None,
                                     "dequeueUseThreads": None, "blockOpConcurrencyLimitedRuns": ANY},
            "customRunCoordinator": ANY}},
        "runMonitoring": {"enabled": None, "startTimeoutSeconds": None, "cancelTimeoutSeconds": None,
                          "maxResumeRunAttempts": None, "pollIntervalSeconds": None,
                          "freeSlotsAfterRunEndSeconds": None},
        "runRetries": ANY, "sensors": ANY, "schedules": ANY},
    "concurrency": {"enabled": None,
                    "pools": {"defaultLimit": None, "granularity": {"op", "run"}, "opGranularityRunBuffer": None},
                    "runs": {"maxConcurrentRuns": None, "tagConcurrencyLimits": ANY}},
    "computeLogManager": {
        "type": {"NoOpComputeLogManager", "AzureBlobComputeLogManager", "GCSComputeLogManager",
                 "S3ComputeLogManager", "CustomComputeLogManager", "LocalComputeLogManager"},
        "config": {"s3ComputeLogManager": {
            "bucket": None, "localDir": None, "prefix": None, "useSsl": None, "verify": None,
            "verifyCertPath": None, "endpointUrl": None, "skipEmptyFiles": None, "uploadInterval": None,
            "uploadExtraArgs": ANY, "showUrlOnly": None, "region": None}}},
    "dagsterWebserver": {"image": IMAGE, "env": ANY, "envConfigMaps": ANY, "envSecrets": ANY, "resources": ANY,
                         "nodeSelector": ANY, "tolerations": ANY, "annotations": ANY, "replicaCount": None},
    "telemetry": {"enabled": None},
    "serviceAccount": {"create": None, "name": None, "annotations": ANY},
}


def _unknown_keys(node, spec, path="") -> list[str]:
    if spec == ANY or spec is None and not isinstance(node, (dict, list)):
        return []
    if spec == STRINGS:
        ok = isinstance(node, list) and all(isinstance(item, str) for item in node)
        return [] if ok else [f"{path}: not a list of strings"]
    if isinstance(spec, set):
        return [] if node in spec else [f"{path} = {node!r} (chart allows {sorted(spec)})"]
    if isinstance(spec, list):
        return [bad for i, item in enumerate(node) for bad in _unknown_keys(item, spec[0], f"{path}[{i}]")]
    if not isinstance(spec, dict) or not isinstance(node, dict):
        return [f"{path}: {type(node).__name__} where the chart has {'a map' if isinstance(spec, dict) else 'a value'}"]
    bad = [f"{path}.{key}" for key in node if key not in spec]
    return bad + [b for key in node if key in spec for b in _unknown_keys(node[key], spec[key], f"{path}.{key}")]


RELEASE = "geoembed"  # `helm upgrade --install geoembed dagster/dagster ...` (values.yaml's header)


def _chart_fullname(release: str) -> str:
    """The chart's "dagster.fullname" (templates/helpers/_helpers.tpl) with no name overrides."""
    return release if "dagster" in release else f"{release}-dagster"


def _chart_k8s_run_launcher(values: dict) -> dict:
    """The run_launcher config the chart renders from values (templates/helpers/instance/_run-launcher.tpl,
    dagsterYaml.runLauncher.k8s at a07d616f8ac33bf62c92e48cc36f9b58d829d12f), for the keys set here."""
    v = values["runLauncher"]["config"]["k8sRunLauncher"]
    rendered = {
        "load_incluster_config": v["loadInclusterConfig"],
        "job_namespace": v["jobNamespace"],
        "image_pull_policy": v["imagePullPolicy"],
        "service_account_name": values["global"]["serviceAccountName"],
        "dagster_home": values["global"].get("dagsterHome", "/opt/dagster/dagster_home"),
        "instance_config_map": f"{_chart_fullname(RELEASE)}-instance",
        "postgres_password_secret": values["global"]["postgresqlSecretName"],
    }
    optional = {"envConfigMaps": "env_config_maps", "envSecrets": "env_secrets", "envVars": "env_vars",
                "volumeMounts": "volume_mounts", "volumes": "volumes", "labels": "labels",
                "resources": "resources", "failPodOnRunFailure": "fail_pod_on_run_failure"}
    for key, name in optional.items():
        if v.get(key):
            value = v[key]
            rendered[name] = [s["name"] for s in value] if key in ("envConfigMaps", "envSecrets") else value
    return rendered


def test_helm_values_match_the_instance_and_the_chart(values, instance_yaml):
    assert not _unknown_keys(values, CHART_KEYS), _unknown_keys(values, CHART_KEYS)
    assert not [s for s in _strings(values) if re.search(r"://[^/\s]*:[^/\s]*@", s)]

    (deployment,) = values["dagster-user-deployments"]["deployments"]
    module = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["dagster"]["module_name"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", module]
    assert deployment["image"]["repository"] == "ghcr.io/geoembed/geoembed"

    # The run launcher the chart renders is a valid K8sRunLauncher config, and the one of dagster.yaml.
    rendered = _chart_k8s_run_launcher(values)
    assert process_config(K8sRunLauncher.config_type(), rendered).success
    ours = instance_yaml["run_launcher"]["config"]
    # (The chart's storage reads its password from that Secret; dagster.yaml's from DAGSTER_PG_URL.)
    assert {k: v for k, v in rendered.items() if k != "postgres_password_secret"} == ours

    # The code server sees the same environment as run and step pods (same executor, product, data).
    assert deployment["env"] == _env_vars(ours["env_vars"])
    assert [s["name"] for s in deployment["envSecrets"]] == ours["env_secrets"]
    assert deployment["volumes"] == ours["volumes"] and deployment["volumeMounts"] == ours["volume_mounts"]
    data_dir = Path(deployment["env"]["GEOEMBED_DATA_DIR"])  # on the volume every step pod mounts
    assert any(data_dir.is_relative_to(m["mountPath"]) for m in ours["volume_mounts"])
    load_settings(REPO / deployment["env"]["GEOEMBED_PRODUCT"])  # the image's product file parses
    # The published outputs go to S3: the storage resource accepts the URL (s3fs is installed).
    storage = ProductStorage(root=str(data_dir), outputs=deployment["env"]["GEOEMBED_OUTPUTS"])
    assert str(storage.embeddings_path("p")) == f"{deployment['env']['GEOEMBED_OUTPUTS']}/p/embeddings.zarr"

    # Queue, pools and run monitoring as in dagster.yaml (the chart's camelCase names).
    concurrency = values["concurrency"]
    assert concurrency["enabled"] is True
    assert concurrency["pools"]["defaultLimit"] == instance_yaml["concurrency"]["pools"]["default_limit"]
    assert concurrency["pools"]["granularity"] == instance_yaml["concurrency"]["pools"]["granularity"]
    assert concurrency["runs"]["maxConcurrentRuns"] == instance_yaml["concurrency"]["runs"]["max_concurrent_runs"]
    daemon = values["dagsterDaemon"]
    assert daemon["enabled"] and daemon["runCoordinator"]["type"] == "QueuedRunCoordinator"
    snake = {re.sub(r"(?<!^)([A-Z])", r"_\1", k).lower(): v for k, v in daemon["runMonitoring"].items()}
    assert snake == instance_yaml["run_monitoring"]
    s3_logs = values["computeLogManager"]["config"]["s3ComputeLogManager"]
    assert s3_logs == instance_yaml["compute_logs"]["config"]
    assert {"name": "geoembed-aws"} in values["dagsterWebserver"]["envSecrets"]  # it reads those logs
    assert values["telemetry"]["enabled"] is False

    # External PostgreSQL, password only in a Secret.
    assert values["postgresql"]["enabled"] is False and "postgresqlPassword" not in values["postgresql"]
    assert values["generatePostgresqlPasswordSecret"] is False and values["global"]["postgresqlSecretName"]

    # The Kubernetes objects in the values are valid for the Kubernetes client's models.
    api = kubernetes.client.ApiClient()
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    for data, model in [(launcher["resources"], "V1ResourceRequirements"),
                        *[(v, "V1Volume") for v in launcher["volumes"] + deployment["volumes"]],
                        *[(m, "V1VolumeMount") for m in launcher["volumeMounts"] + deployment["volumeMounts"]]]:
        parsed = api.deserialize(SimpleNamespace(data=json.dumps(data)), model)
        assert api.sanitize_for_serialization(parsed) == data, model


def test_image_matches_the_deployment(instance_yaml):
    dockerfile = (K8S_DIR / "Dockerfile").read_text()
    assert f"DAGSTER_HOME={instance_yaml['run_launcher']['config']['dagster_home']}" in dockerfile
    assert re.search(r"^COPY products \./products$", dockerfile, re.M)
    assert re.search(r"pip install -c constraints\.txt \.", dockerfile)
