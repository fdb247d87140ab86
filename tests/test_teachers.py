"""Several teachers for one student (teacher.names): each trained and cached by its own key, one
student distilled from all of them, the weights that combine them, and what the run records."""

from __future__ import annotations

import math

import pytest

from tests.conftest import smoke_overrides


def member(name: str, val_mse: float):
    from timedistill.store.records import Teacher

    return Teacher.model_construct(name=name, val_mse=val_mse, horizon=24, cached=True)


def test_val_softmax_weighs_teachers_by_their_relative_validation_error():
    from timedistill.conf import ConfigError
    from timedistill.tasks.teacher import weigh

    ensemble = weigh([member("a", 0.5), member("b", 0.55)], "val-softmax")
    assert ensemble.weights[1] / ensemble.weights[0] == pytest.approx(math.exp(-1))  # 10% worse: e^-1 as much
    assert ensemble.primary.name == "a" and ensemble.cached
    assert weigh([member("a", 0.5), member("b", 0.9)], "uniform").weights == [0.5, 0.5]
    assert weigh([member("a", 0.5), member("b", 0.9)], "learned").weights is None
    with pytest.raises(ConfigError, match=r"distill\.teacher_weighting: val-softmax needs every teacher's "):
        weigh([member("a", 0.5), member("b", float("nan"))], "val-softmax")


@pytest.mark.parametrize(("overrides", "message"), [
    (["teacher.names=[dlinear]"], r"teacher\.names must list two or more distinct teachers"),
    (["teacher.names=[dlinear, dlinear]"], r"teacher\.names must list two or more distinct teachers"),
    (["teacher.names=[dlinear, patchtst]", "teacher.name=auto", "teacher.candidates=[dlinear, patchtst]"],
     r"do not go together"),
    (["teacher.names=[dlinear, patchtst]", "teacher.params={d_model: 8}"], r"teacher\.params cannot apply"),
    (["distill.teacher_weighting=softmax"], r"distill\.teacher_weighting"),
])
def test_bad_teacher_lists_are_one_line_errors(overrides, message):
    from timedistill.conf import ConfigError, load_config

    with pytest.raises(ConfigError, match=message) as raised:
        load_config(None, overrides)
    assert "\n" not in str(raised.value)


def test_an_unknown_teacher_in_the_list_fails_before_any_training(smoke_csv, tmp_path):
    from timedistill.conf import ConfigError, load_config
    from timedistill.tasks.steps import RunContext, ingest_step, teacher_step

    config = load_config("smoke", [*smoke_overrides(tmp_path, smoke_csv), "teacher.params={}",
                                   "teacher.names=[dlinear, transformerx]"])
    with RunContext(config) as run, pytest.raises(ConfigError, match=r"teacher\.names: unknown model 'transformerx'"):
        teacher_step(run, ingest_step(run), 24)
    assert not (tmp_path / "teachers").exists()


def test_one_student_learns_from_every_listed_teacher(ray_local, smoke_csv, two_teachers_root):
    from timedistill.conf import load_config
    from timedistill.tasks import steps

    own_root = [*smoke_overrides(two_teachers_root, smoke_csv), "teacher.params={}", "teacher.preset=ettm1"]
    config = load_config("smoke", [*own_root, "teacher.names=[dlinear, itransformer]",
                                   "distill.teacher_weighting=learned"])
    with steps.RunContext(config) as run:
        dataset = steps.ingest_step(run)
        teachers = steps.teacher_step(run, dataset, 24)
        caches = steps.cache_step(run, dataset, teachers)
        students = steps.distill_step(run, dataset, teachers, caches)
        (row,) = steps.evaluate_step(run, dataset, [teachers], [students]).rows
        summary = steps.summarize(run, dataset, {}, [teachers], [caches], [students])
    ensemble, teacher = teachers.ensemble, teachers.chosen
    assert [m.name for m in ensemble.members] == ["dlinear", "itransformer"] and ensemble.weights is None
    assert teacher.name == min(ensemble.members, key=lambda m: m.val_mse).name == row.teacher.name
    assert [score.name for score in row.teachers] == ["dlinear", "itransformer"]
    assert students.teacher_name == "dlinear+itransformer" and len(students.teacher_dirs) == 2
    assert len(summary.caches) == 2 and {c.teacher_dir for c in summary.caches} == set(students.teacher_dirs)
    (listed,) = summary.to_json()["teacher_sets"]
    assert [m["name"] for m in listed["members"]] == ["dlinear", "itransformer"] and listed["weighting"] == "learned"
    history = students.student.history
    weights = [history[-1].parts["teacher_weight_0"], history[-1].parts["teacher_weight_1"]]
    assert sum(weights) == pytest.approx(1.0) and weights[0] != pytest.approx(0.5)  # learned away from equal
    assert "teacher_weight_0" not in students.baseline.history[-1].parts
    report = (two_teachers_root / run.run_dir(dataset) / "report.md").read_text()
    assert "| 24 | dlinear |" in report and "learned |" in report
    # each teacher and its cache are the ones a run naming it alone uses
    with steps.RunContext(load_config("smoke", [*own_root, "teacher.name=dlinear"])) as alone:
        dataset = steps.ingest_step(alone)
        found = steps.teacher_step(alone, dataset, 24)
        assert found.cached and steps.cache_step(alone, dataset, found).cached
