from pathlib import Path

import pytest
from pydantic import ValidationError

from timedistill.conf import Config, ConfigError, load_config

CONF = Path(__file__).resolve().parent.parent / "conf"
SHIPPED = ["etth1", "ettm1", "weather", "exchange", "illness", "smoke"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_validate(name):
    config = load_config(CONF / f"{name}.yaml")
    assert config.data.name == name
    assert Path(config.data.path).is_absolute()


def test_defaults_follow_the_method():
    config = load_config()
    assert config.data.lookback == 720
    assert config.data.horizons == [96, 192, 336, 720]
    assert config.data.ratios == (0.7, 0.1, 0.2)
    assert config.data.missing == "error"
    assert config.serve.host == "127.0.0.1" and config.serve.port == 8000
    assert load_config(CONF / "etth1.yaml").data.split == "ett-hour"
    assert load_config(CONF / "ettm1.yaml").data.split == "ett-minute"
    illness = load_config(CONF / "illness.yaml").data
    assert (illness.lookback, illness.horizons, illness.split) == (104, [24, 36, 48, 60], "ratio")


def test_the_config_is_frozen():
    config = load_config()
    with pytest.raises(ValidationError):
        config.data.lookback = 5  # type: ignore[misc]


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  lookbak: 96\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'data\.lookbak'"):
        load_config(path)
    path.write_text("dta: {}\n")
    with pytest.raises(ConfigError, match="unknown key 'dta'"):
        load_config(path)


def test_set_overrides_parse_yaml_values():
    config = load_config(CONF / "smoke.yaml", ["data.horizons=[96, 48]", "distill.alpha=0.5",
                                               "ray.address=null", "teacher.params={d_model: 8}"])
    assert config.data.horizons == [96, 48]
    assert config.distill.alpha == 0.5
    assert config.ray.address is None
    assert config.teacher.params == {"d_model": 8}


def test_set_overrides_are_validated():
    with pytest.raises(ConfigError, match=r"--set|<defaults>: unknown key 'distill.alpah'"):
        load_config(None, ["distill.alpah=1"])
    with pytest.raises(ConfigError, match=r"data\.lookback"):
        load_config(None, ["data.lookback=-3"])
    with pytest.raises(ConfigError, match=r"dotted\.key=value"):
        load_config(None, ["data.lookback"])
    with pytest.raises(ConfigError, match=r"data\.split"):
        load_config(None, ["data.split=weekly"])
    with pytest.raises(ConfigError, match=r"data\.name"):
        load_config(None, ["data.name=../etc"])


def test_relative_data_path_resolves_against_the_config_folder_then_cwd(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "here.csv").write_text("x")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "there.csv").write_text("x")
    monkeypatch.chdir(tmp_path / "work")
    config_file = tmp_path / "cfg" / "c.yaml"
    config_file.write_text("data: {path: here.csv}\n")
    assert load_config(config_file).data.path == str(tmp_path / "cfg" / "here.csv")
    config_file.write_text("data: {path: there.csv}\n")
    assert load_config(config_file).data.path == str(tmp_path / "work" / "there.csv")
    config_file.write_text("data: {path: 's3://bucket/key.csv'}\n")
    assert load_config(config_file).data.path == "s3://bucket/key.csv"


def test_shipped_configs_resolve_by_name():
    assert load_config("smoke").data.name == "smoke"
    with pytest.raises(ConfigError, match="not found"):
        load_config("no-such-config")


def test_run_id_depends_on_results_not_on_placement():
    base = Config()
    moved = base.model_copy(update={"ray": base.ray.model_copy(update={"num_workers": 4})})
    assert base.run_id("fp") == moved.run_id("fp")
    assert base.run_id("fp") != base.run_id("other-data")
    tuned = load_config(None, ["distill.alpha=0.1"])
    assert tuned.run_id("fp") != base.run_id("fp")


def test_invalid_yaml_and_non_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


@pytest.mark.parametrize(("overrides", "message"), [
    (["teacher.name=auto"], r"teacher\.name: auto needs teacher\.candidates"),
    (["teacher.name=auto", "teacher.candidates=[dlinear]"], r"two or more"),
    (["teacher.name=auto", "teacher.candidates=[dlinear, dlinear]"], r"teacher\.candidates must name distinct"),
    (["teacher.candidates=[dlinear, patchtst]"], r"teacher\.candidates is only read with teacher\.name: auto"),
    (["teacher.name=auto", "teacher.candidates=[dlinear, patchtst]", "teacher.params={d_model: 8}"],
     r"teacher\.params cannot apply to every candidate"),
])
def test_teacher_auto_needs_candidates_and_no_shared_params(overrides, message):
    with pytest.raises(ConfigError, match=message) as raised:
        load_config(None, overrides)
    assert "\n" not in str(raised.value) and "Value error" not in str(raised.value)


def test_a_candidate_of_auto_is_the_teacher_named_alone():
    auto = load_config(None, ["teacher.name=auto", "teacher.candidates=[dlinear, patchtst]"]).teacher
    alone = load_config(None, ["teacher.name=patchtst"]).teacher
    assert auto.alone("patchtst").key_payload() == alone.key_payload()


@pytest.mark.parametrize(("levels", "message"), [
    ("[0.9, 0.5, 0.1]", "sorted and distinct"),
    ("[0.1, 0.9]", "include 0.5 and be symmetric"),
    ("[0.2, 0.5, 0.9]", "include 0.5 and be symmetric"),
    ("[0, 0.5, 1]", "strictly between 0 and 1"),
])
def test_quantile_levels_make_central_intervals(levels, message):
    with pytest.raises(ConfigError, match=rf"student\.quantiles: levels must .*{message}") as raised:
        load_config(None, [f"student.quantiles={levels}"])
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("half_life", ["0", "-3", "7x", "seven days"])
def test_a_calibration_half_life_is_steps_or_a_duration(half_life):
    with pytest.raises(ConfigError, match=r"student\.calibration_half_life: must be a .*number of steps") as raised:
        load_config(None, [f"student.calibration_half_life={half_life}"])
    assert "\n" not in str(raised.value)
    assert load_config(None, ["student.calibration_half_life=36h"]).student.calibration_half_life == "36h"
