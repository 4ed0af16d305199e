"""Stages keyed by their settings: reused when the settings match, stale otherwise."""

from __future__ import annotations

import json

import pytest

from groupinf.stages import Stage, Stages, StaleStagesError, differences


def stage(tmp_path, name: str, **settings) -> Stage:
    return Stage(name, settings, (tmp_path / name,), tmp_path / name / "done.json")


def writer(calls: list[str], stage: Stage):
    def compute() -> None:
        calls.append(stage.name)
        stage.files[0].mkdir(parents=True, exist_ok=True)
        stage.done.write_text("{}")

    return compute


def test_a_stage_runs_once_per_settings_and_records_them(tmp_path):
    calls: list[str] = []
    first = stage(tmp_path, "warmup", warmup={"lr": 0.1, "epochs": 2})
    Stages(tmp_path).run(first, writer(calls, first))
    Stages(tmp_path).run(first, writer(calls, first))
    assert calls == ["warmup"]
    assert json.loads((tmp_path / "stages" / "warmup.json").read_text()) == first.settings


def test_other_settings_stop_the_run_naming_them_or_recompute_only_that_stage(tmp_path):
    calls: list[str] = []
    kept, changed = stage(tmp_path, "warmup", lr=0.1), stage(tmp_path, "select", select={"k": 4, "seed": 0})
    for each in (kept, changed):
        Stages(tmp_path).run(each, writer(calls, each))
    (changed.files[0] / "partial.bin").write_text("old")
    now = stage(tmp_path, "select", select={"k": 2, "seed": 0})
    with pytest.raises(StaleStagesError, match=r"select\.k: 4 -> 2; stale stages: select\. Rerun with --recompute"):
        Stages(tmp_path).check([kept, now])
    assert (changed.files[0] / "partial.bin").exists()  # nothing was touched
    with pytest.raises(StaleStagesError, match=r"select\.k"):
        Stages(tmp_path).run(now, writer(calls, now))
    recompute = Stages(tmp_path, recompute=True)
    recompute.check([kept, now])
    for each in (kept, now):
        recompute.run(each, writer(calls, each))
    assert calls == ["warmup", "select", "select"]
    assert not (changed.files[0] / "partial.bin").exists()  # the stale stage's files were removed first
    assert json.loads((tmp_path / "stages" / "select.json").read_text()) == now.settings


def test_an_interrupted_stage_resumes_with_the_same_settings(tmp_path):
    calls: list[str] = []
    each = stage(tmp_path, "finetune/less/math/seed3", finetune={"epochs": 2})

    def interrupted() -> None:
        each.files[0].mkdir(parents=True)
        calls.append("started")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Stages(tmp_path).run(each, interrupted)
    Stages(tmp_path).run(each, writer(calls, each))  # files without the done file, same settings: resumed
    assert calls == ["started", each.name]


def test_files_without_a_record_are_stale(tmp_path):
    (tmp_path / "world").mkdir()
    with pytest.raises(StaleStagesError, match=r"files without a settings record .*stale stages: world"):
        Stages(tmp_path).check([stage(tmp_path, "world", toy={"pool_size": 50})])


def test_every_stale_stage_is_named_in_one_message(tmp_path):
    stages = [stage(tmp_path, f"eval/m/t/seed{s}", eval={"n": 1}) for s in range(3)]
    for each in stages:
        Stages(tmp_path).run(each, writer([], each))
    later = [stage(tmp_path, each.name, eval={"n": 2}) for each in stages]
    with pytest.raises(StaleStagesError, match=r"eval\.n: 1 -> 2; stale stages: eval \(3\)"):
        Stages(tmp_path).check(later)


def test_differences_name_nested_settings():
    saved = {"warmup": {"lr": 0.1, "modules": ["q", "v"]}, "k": 4}
    assert differences(saved, {"warmup": {"lr": 0.2, "modules": ["q", "v"]}, "k": 4, "dev": {"math": "ab"}}) == {
        "warmup.lr": (0.1, 0.2),
        "dev.math": (None, "ab"),
    }
