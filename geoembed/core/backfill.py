"""Launch asset backfills and runs through a running Dagster webserver's GraphQL API and wait for them.

``launch_backfill`` sends the request of the UI's "Materialize all partitions": Dagster's backfill daemon
then splits it into runs by each asset's backfill policy (geoembed: up to 1,024 regions per run).
``launch_run`` sends the request of the UI's "Materialize" over a partition range: one run, queued and
started by the run queue (every few seconds, where the backfill daemon looks every 30 s).
``serve_dagster`` starts a local `dagster dev` or `dagster-webserver` for scripts (benchmarks, tests)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

REPO = Path(__file__).resolve().parents[2]

FINISHED = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
SUCCEEDED = {"COMPLETED", "COMPLETED_SUCCESS"}

_LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}"""

_STATUS = """
query Status($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      status numPartitions timestamp endTimestamp
      error { message }
      assetBackfillData { assetBackfillStatuses { ... on AssetPartitionsStatusCounts {
        assetKey { path } numPartitionsTargeted numPartitionsInProgress numPartitionsMaterialized numPartitionsFailed
      } } }
    }
    ... on Error { message }
  }
}"""


_LOCATIONS = """
query Locations {
  workspaceOrError {
    __typename
    ... on Workspace { locationEntries { name locationOrLoadError {
      __typename
      ... on RepositoryLocation { repositories { name assetNodes { assetKey { path } } } }
      ... on PythonError { message }
    } } }
    ... on Error { message }
  }
}"""

_LAUNCH_RUN = """
mutation LaunchRun($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on Error { message }
  }
}"""

_RUN_STATUS = """
query RunStatus($id: ID!) {
  runOrError(runId: $id) {
    __typename
    ... on Run { status }
    ... on Error { message }
  }
}"""

RUN_FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


class DagsterApiError(RuntimeError):
    """The webserver refused a request or answered with an error."""


@dataclass
class AssetProgress:
    asset: str
    targeted: int
    in_progress: int
    materialized: int
    failed: int


@dataclass
class BackfillStatus:
    backfill_id: str
    status: str
    partitions: int | None
    assets: list[AssetProgress] = field(default_factory=list)
    error: str | None = None
    created: float | None = None  # unix seconds
    ended: float | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def succeeded(self) -> bool:
        return self.status in SUCCEEDED and not any(a.failed for a in self.assets)

    def summary(self) -> str:
        parts = [f"{a.asset}: {a.materialized}/{a.targeted} materialized, {a.in_progress} running, {a.failed} failed"
                 for a in self.assets]
        return f"backfill {self.backfill_id} {self.status}; " + "; ".join(parts)


def graphql(url: str, query: str, variables: dict | None = None, timeout: float = 120) -> dict:
    """POST ``query`` to ``<url>/graphql``; GraphQL errors raise DagsterApiError."""
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"{url.rstrip('/')}/graphql", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.loads(response.read())
    except urllib.error.URLError as exc:
        raise ConnectionError(f"the Dagster webserver at {url} is unreachable: {exc.reason}") from exc
    if payload.get("errors"):
        raise DagsterApiError(f"{url}/graphql answered with errors: {payload['errors']}")
    return payload["data"]


def launch_backfill(url: str, assets: list[str], partitions: list[str] | None = None, title: str | None = None) -> str:
    """Backfill ``assets`` ("product/asset" keys) over ``partitions`` (default: all); the backfill id."""
    params: dict = {"assetSelection": [{"path": a.split("/")} for a in assets]}
    if partitions is None:
        params["allPartitions"] = True
    else:
        params["partitionNames"] = list(partitions)
    if title:
        params["title"] = title
    result = graphql(url, _LAUNCH, {"params": params})["launchPartitionBackfill"]
    if result["__typename"] != "LaunchBackfillSuccess":
        raise DagsterApiError(f"backfill of {assets} was refused ({result['__typename']}): {result.get('message')}")
    return result["backfillId"]


def _repository_of(url: str, asset_path: list[str]) -> tuple[str, str]:
    """(code location, repository) that defines the asset ``asset_path``."""
    workspace = graphql(url, _LOCATIONS)["workspaceOrError"]
    if workspace["__typename"] != "Workspace":
        raise DagsterApiError(f"{url} could not list its code locations: {workspace.get('message')}")
    for entry in workspace["locationEntries"]:
        location = entry["locationOrLoadError"] or {}
        for repository in location.get("repositories", []):
            if any(node["assetKey"]["path"] == asset_path for node in repository["assetNodes"]):
                return entry["name"], repository["name"]
    raise DagsterApiError(f"no code location served by {url} defines the asset {'/'.join(asset_path)!r}")


def launch_run(url: str, assets: list[str], partition_range: tuple[str, str] | None = None,
               tags: dict[str, str] | None = None) -> str:
    """One run materializing ``assets`` ("product/asset" keys) over the partitions ``partition_range``
    (first, last; both included); the run id."""
    paths = [a.split("/") for a in assets]
    location, repository = _repository_of(url, paths[0])
    run_tags = dict(tags or {})
    if partition_range:
        run_tags.update({"dagster/asset_partition_range_start": partition_range[0],
                         "dagster/asset_partition_range_end": partition_range[1]})
    params = {
        "selector": {"repositoryLocationName": location, "repositoryName": repository, "jobName": "__ASSET_JOB",
                     "assetSelection": [{"path": p} for p in paths]},  # with their checks
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in run_tags.items()]},
    }
    result = graphql(url, _LAUNCH_RUN, {"params": params})["launchRun"]
    if result["__typename"] != "LaunchRunSuccess":
        detail = result.get("message") or "; ".join(e["message"] for e in result.get("errors", []))
        raise DagsterApiError(f"the run of {assets} was refused ({result['__typename']}): {detail}")
    return result["run"]["runId"]


def wait_for_run(url: str, run_id: str, timeout: float, poll_seconds: float = 1.0) -> str:
    """Poll until the run has finished; its final status (SUCCESS, FAILURE, CANCELED)."""
    deadline = time.monotonic() + timeout
    while True:
        result = graphql(url, _RUN_STATUS, {"id": run_id})["runOrError"]
        if result["__typename"] != "Run":
            raise DagsterApiError(f"run {run_id!r}: {result.get('message', result['__typename'])}")
        if result["status"] in RUN_FINISHED:
            return result["status"]
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} did not finish within {timeout:.0f} s (status {result['status']})")
        time.sleep(poll_seconds)


def backfill_status(url: str, backfill_id: str) -> BackfillStatus:
    result = graphql(url, _STATUS, {"id": backfill_id})["partitionBackfillOrError"]
    if result["__typename"] != "PartitionBackfill":
        raise DagsterApiError(f"backfill {backfill_id!r}: {result.get('message', result['__typename'])}")
    assets = [AssetProgress("/".join(s["assetKey"]["path"]), s["numPartitionsTargeted"], s["numPartitionsInProgress"],
                            s["numPartitionsMaterialized"], s["numPartitionsFailed"])
              for s in (result.get("assetBackfillData") or {}).get("assetBackfillStatuses", []) if "assetKey" in s]
    return BackfillStatus(backfill_id, result["status"], result["numPartitions"], assets,
                          (result.get("error") or {}).get("message"), result.get("timestamp"), result.get("endTimestamp"))


def wait_for_backfill(url: str, backfill_id: str, timeout: float, poll_seconds: float = 2.0,
                      progress: Callable[[BackfillStatus], None] | None = None) -> BackfillStatus:
    """Poll until the backfill has finished (any outcome); TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        status = backfill_status(url, backfill_id)
        if progress:
            progress(status)
        if status.finished:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"backfill {backfill_id} did not finish within {timeout:.0f} s: {status.summary()}")
        time.sleep(poll_seconds)


BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_dagster(command: str, env: dict[str, str], log_path: Path, ready_seconds: float = 180,
                  cwd: Path = REPO) -> Iterator[str]:
    """Start ``command`` ("dagster-webserver" or "dagster dev") on workspace.yaml with ``env`` on top of
    this process's environment; yield its base URL once /server_info answers; stop it afterwards."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = [str(BIN / command)] if command == "dagster-webserver" else [str(BIN / "dagster"), "dev"]
    server_env = {**os.environ, **env, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        server = subprocess.Popen([*args, "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"],
                                  cwd=cwd, env=server_env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            deadline = time.monotonic() + ready_seconds
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"{command} exited ({server.returncode}); see {log_path}")
                try:
                    with urllib.request.urlopen(f"{base}/server_info", timeout=5) as response:
                        json.loads(response.read())
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{command} did not answer on {base} within {ready_seconds} s; see {log_path}")
                    time.sleep(0.5)
            yield base
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)

