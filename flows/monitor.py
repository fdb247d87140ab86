"""The monitor flow: does each registered model of a config still forecast its newest data as
well as when it was registered? Scheduled beside the nightly retrain (`timedistill schedule
CONFIG --monitor`), it can start that retrain when a model drifts.

    ingest the newest data -> score every LATEST on the windows with new truth -> (drift?) retrain
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.exceptions import ObjectNotFound

from timedistill.conf import Config, load_config, storage_root
from timedistill.flows.retrain import artifact_key, retrain
from timedistill.store.records import Dataset
from timedistill.store.storage import Storage
from timedistill.tasks.monitor import DriftReport, check_models


def check(config: str, overrides: list[str] | None = None, trigger: bool = False,
          ray_address: str | None = None) -> tuple[Dataset, list[DriftReport]]:
    """Check every registered model of one config for drift; with `trigger`, a drift starts the
    retrain flow (its deployment when one exists, here otherwise). A check needs neither Ray nor
    Prefect; only a retrain it starts does."""
    settings = load_config(config, overrides or [])
    dataset, reports = check_models(settings, Storage(storage_root(settings), settings.storage.endpoint_override))
    if trigger:
        reports = retrain_drifted(settings, config, overrides or [], ray_address, reports)
    return dataset, reports


def retrain_drifted(settings: Config, config: str, overrides: list[str], ray_address: str | None,
                    reports: list[DriftReport]) -> list[DriftReport]:
    """The reports, with what a drift among them started (nothing when none drifted)."""
    if not any(report.drift for report in reports):
        return reports
    started = start_retrain(settings, config, overrides, ray_address)
    return [report.model_copy(update={"retrain": started}) if report.drift else report for report in reports]


@flow(name="timedistill-monitor", log_prints=True)
def monitor(config: str = "smoke", overrides: list[str] | None = None, trigger: bool = False,
            ray_address: str | None = None) -> list[DriftReport]:
    """`check` as a Prefect flow run: each report in the run's log, all of them as a table artifact."""
    dataset, reports = check(config, overrides, trigger, ray_address)
    logger = get_run_logger()
    for report in reports:
        logger.info("%s", report.describe())
    create_table_artifact([report.to_json() for report in reports], key=artifact_key(f"{dataset.name}-monitor"),
                          description=f"timedistill drift check of {dataset.name}, data {dataset.fingerprint}")
    return reports


def start_retrain(settings: Config, config: str, overrides: list[str], ray_address: str | None) -> str:
    """Run the retrain flow of this config: through its Prefect deployment (`timedistill
    schedule`, or infra/prefect.yaml) when one exists, so that it runs where retrains run;
    in this process otherwise. Says what it started."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    name = f"{retrain.name}/retrain-{settings.data.name}"
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
        except ObjectNotFound:
            summary = retrain(config=config, overrides=overrides, ray_address=ray_address)
            return "; ".join(model.describe() for model in summary.models)
    run: Any = run_deployment(name, parameters={"config": config, "overrides": overrides,
                                                "ray_address": ray_address}, timeout=0)
    return f"started flow run {run.name} of deployment {name}"


def monitor_deployment(config: str, cron: str, *, overrides: list[str] | None = None, name: str | None = None,
                       trigger: bool = True, ray_address: str | None = None) -> Any:
    """The monitor flow as a Prefect deployment with a cron schedule (`timedistill schedule
    --monitor`)."""
    settings = load_config(config, overrides or [])
    return monitor.to_deployment(
        name=name or f"monitor-{settings.data.name}",
        cron=cron,
        parameters={"config": config, "overrides": overrides or [], "trigger": trigger, "ray_address": ray_address},
        description=f"Drift check of the registered students of {settings.data.name}",
        tags=["timedistill", settings.data.name, "monitor"],
    )
