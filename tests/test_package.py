"""The installed package: the wheel holds one import name, `timedistill`, and a fresh virtual
environment that installs it can load a registered student and predict without this checkout, and
finds the shipped sample that the shipped configs name."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(folder), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (built,) = folder.glob("timedistill-*.whl")
    return built


def test_the_wheel_installs_one_import_name(wheel):
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
        names = archive.namelist()
    assert {top for top in tops if not top.endswith(".dist-info")} == {"timedistill"}
    assert "timedistill/conf/smoke.yaml" in names and "timedistill/flows/cli.py" in names
    assert "timedistill/data/ETTh1.csv" in names


def test_a_fresh_environment_imports_and_predicts(wheel, smoke_pipeline, session_root, tmp_path):
    """A new venv gets the wheel (its dependencies come from this environment's site-packages,
    which the new one reads through a .pth file, so nothing is downloaded)."""
    venv = tmp_path / "fresh"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    (purelib / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    script = (
        "import importlib.util, json, os, numpy as np, timedistill\n"
        "from timedistill.conf import load_config\n"
        "shadows = [n for n in ('conf', 'flows', 'tasks', 'models', 'serving', 'store')"
        " if importlib.util.find_spec(n) is not None]\n"
        f"model = timedistill.load_model('smoke-24', version='v1', storage={str(session_root)!r})\n"
        "forecast = model.predict(np.ones((96, len(model.variables))) * 5)\n"
        "sample = load_config('smoke').data.path\n"
        "print(json.dumps({'shadows': shadows, 'file': timedistill.__file__, 'shape': list(forecast.shape),"
        " 'columns': forecast.columns, 'version': timedistill.__version__,"
        " 'sample': sample, 'sample_found': os.path.isfile(sample)}))\n"
    )
    done = subprocess.run([str(python), "-c", script], cwd=tmp_path, check=True, capture_output=True, text=True,
                          timeout=300)
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["shadows"] == [] and facts["file"].startswith(str(venv))
    assert facts["shape"] == [24, 8] and facts["columns"][0] == "step" and facts["version"] == "0.1.0"
    assert facts["sample_found"] and facts["sample"].startswith(str(venv))
    cli = subprocess.run([str(venv / "bin" / "timedistill"), "models", "list", "--storage", str(session_root),
                          "--json"], cwd=tmp_path, check=True, capture_output=True, text=True, timeout=300)
    assert "smoke-24" in {m["name"] for m in json.loads(cli.stdout.strip().splitlines()[-1])["models"]}
