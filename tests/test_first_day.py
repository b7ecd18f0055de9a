"""What a new user trips over (issue 28): run folders that know what they are (a cross-validation folder with
--fold N means its fold-N run, no command writes a single run at its top, a folder that is not a run says what
it is and the likely fix), evaluation with provenance, resume that finishes what the run was started for."""
import json
import os
import sys

import pytest
from conftest import TINY_MODEL, run_cli


@pytest.fixture(scope="module")
def cross_validation(records, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("cv") / "cv")
    run_cli(["train", "--data_dir", records, "--model_dir", model_dir, "--fold", "all", "--max_steps", "1",
             "--backend", "cpu"] + TINY_MODEL)
    return model_dir


def _error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def _steps(run_dir):
    with open(os.path.join(run_dir, "checkpoint")) as handle:
        return handle.read()


def test_train_with_one_fold_of_a_cross_validation_folder_continues_that_folds_run(
        cross_validation, records, capsys):
    capsys.readouterr()
    run_cli(["train", "--data_dir", records, "--model_dir", cross_validation, "--fold", "1", "--max_steps", "2",
             "--backend", "cpu"])
    out = capsys.readouterr()
    assert not os.path.exists(os.path.join(cross_validation, "run.json"))  # nothing written at the top
    fold_run = os.path.join(cross_validation, "fold-1")
    assert "model.ckpt-2" in _steps(fold_run)
    assert "model.ckpt-2" not in _steps(os.path.join(cross_validation, "fold-0"))
    assert "cross-validation folder: --fold 1 trains its run {}".format(fold_run) in out.out + out.err
    with open(os.path.join(fold_run, "run.json")) as handle:
        assert json.load(handle)["data"]["fold"] == 1


@pytest.mark.parametrize("command", ["train", "evaluate", "predict"])
def test_a_cross_validation_folder_without_a_fold_is_refused(cross_validation, records, command, capsys):
    code = run_cli([command, "--data_dir", records, "--model_dir", cross_validation, "--backend", "cpu"],
                   check=False)
    assert code == 1
    message = _error(capsys)
    assert "is a cross-validation folder (runs of folds 0, 1, 2, 3, 4)" in message and "--fold N" in message
    assert not os.path.exists(os.path.join(cross_validation, "run.json"))


def test_evaluate_and_export_act_on_the_folds_run(cross_validation, records, tmp_path):
    run_cli(["evaluate", "--data_dir", records, "--model_dir", cross_validation, "--fold", "2", "--backend", "cpu"])
    with open(os.path.join(cross_validation, "fold-2", "eval_results.json")) as handle:
        assert json.load(handle)["checkpoint_step"] == 1
    assert not os.path.exists(os.path.join(cross_validation, "eval_results.json"))
    out = str(tmp_path / "exported")
    run_cli(["export", "--model_dir", cross_validation, "--fold", "2", "--out", out])
    with open(os.path.join(out, "export.json")) as handle:
        labels = json.load(handle)["output"]["labels"]
    # The nnunet recipe's regions, in the BraTS 2019 labels the data set's files use (ET = 4 there).
    assert labels == {"layout": "brats2019", "channels": [
        {"channel": 0, "region": "WT", "source_labels": [1, 2, 4]},
        {"channel": 1, "region": "TC", "source_labels": [1, 4]},
        {"channel": 2, "region": "ET", "source_labels": [4]}]}


def test_a_fold_the_cross_validation_lacks_is_named(cross_validation, records, tmp_path, capsys):
    code = run_cli(["export", "--model_dir", cross_validation, "--fold", "7", "--out", str(tmp_path / "x")],
                   check=False)
    assert code == 1
    assert "fold-7 is not a trained run (this cross-validation folder has runs of folds 0, 1, 2, 3, 4)" in \
        _error(capsys)
    assert not os.path.exists(str(tmp_path / "x"))


def test_fold_all_into_a_single_runs_folder_is_refused(records, tmp_path, capsys):
    single = str(tmp_path / "single")
    run_cli(["train", "--data_dir", records, "--model_dir", single, "--max_steps", "1", "--backend", "cpu"]
            + TINY_MODEL)
    code = run_cli(["train", "--data_dir", records, "--model_dir", single, "--fold", "all", "--backend", "cpu"],
                   check=False)
    assert code == 1
    assert "holds a single run (fold 0)" in _error(capsys)
    assert not any(name.startswith("fold-") for name in os.listdir(single))


def test_a_missing_run_folder_does_not_exist(records, tmp_path, capsys):
    missing = str(tmp_path / "typo")
    code = run_cli(["evaluate", "--data_dir", records, "--model_dir", missing, "--backend", "cpu"], check=False)
    assert code == 1
    assert _error(capsys) == "error: --model_dir {}: does not exist".format(missing)


def test_swapped_folders_are_named_as_swapped(records, tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    run_cli(["train", "--data_dir", records, "--model_dir", run_dir, "--max_steps", "1", "--backend", "cpu"]
            + TINY_MODEL)
    code = run_cli(["evaluate", "--data_dir", run_dir, "--model_dir", records, "--backend", "cpu"], check=False)
    assert code == 1
    message = _error(capsys)
    assert "a preprocessed data set (it holds manifest.json)" in message and "swapped?" in message
    code = run_cli(["train", "--data_dir", run_dir, "--model_dir", str(tmp_path / "new"), "--backend", "cpu"],
                   check=False)
    assert code == 1
    message = _error(capsys)
    assert "it is a unet3d run folder (it holds run.json)" in message and "swapped?" in message
    assert not os.path.exists(str(tmp_path / "new"))


def test_raw_data_as_a_folder_of_records_or_of_a_run_gets_the_fix(raw_dataset, records, tmp_path, capsys):
    code = run_cli(["train", "--data_dir", raw_dataset, "--model_dir", str(tmp_path / "new"), "--backend", "cpu"],
                   check=False)
    assert code == 1
    message = _error(capsys)
    assert "raw NIfTI data" in message and "preprocess -i {} -o {}-records".format(raw_dataset, raw_dataset) in message
    before = sorted(os.listdir(raw_dataset))
    code = run_cli(["train", "--data_dir", records, "--model_dir", raw_dataset, "--backend", "cpu"], check=False)
    assert code == 1
    assert "it is raw NIfTI data (not preprocessed), and a run needs a folder of its own" in _error(capsys)
    assert sorted(os.listdir(raw_dataset)) == before


def test_another_data_sets_scores_never_replace_the_runs_own(records, raw_dataset, tmp_path, capsys):
    from unet3d_core.data.preprocess import preprocess
    from unet3d_core.data.records import Manifest

    run_dir = str(tmp_path / "run")
    run_cli(["train", "--exec_mode", "train_and_evaluate", "--data_dir", records, "--model_dir", run_dir,
             "--max_steps", "1",
             "--backend", "cpu"] + TINY_MODEL)
    own_path = os.path.join(run_dir, "eval_results.json")
    with open(own_path) as handle:
        own = json.load(handle)
    assert own["data"] == {"data_dir": os.path.abspath(records), "fingerprint": Manifest(records).fingerprint(),
                           "training_data": True}
    assert own["checkpoint_step"] == 1 and own["checkpoint"] == "best/model.ckpt-1"
    other = str(tmp_path / "other")
    preprocess(raw_dataset, other, folds=2, seed=1, show_progress=False)
    capsys.readouterr()
    run_cli(["evaluate", "--data_dir", other, "--model_dir", run_dir, "--fold", "0", "--backend", "cpu"])
    out = capsys.readouterr().out
    with open(own_path) as handle:
        assert json.load(handle) == own  # untouched
    fingerprint = Manifest(other).fingerprint()
    name = "eval_results-other-{}".format(fingerprint[:8])
    assert "its scores are in {}".format(os.path.join(run_dir, name + ".json")) in out
    with open(os.path.join(run_dir, name + ".json")) as handle:
        scored = json.load(handle)
    assert scored["data"] == {"data_dir": os.path.abspath(other), "fingerprint": fingerprint,
                              "training_data": False}
    assert len(scored["cases"]) == len(Manifest(other).split(0)[1])
    assert os.path.isfile(os.path.join(run_dir, name + ".csv"))
    run_cli(["report", run_dir])
    with open(os.path.join(run_dir, "report", "index.md")) as handle:
        report = handle.read()
    assert "Data scored: {} (manifest fingerprint {}).".format(
        os.path.abspath(records), own["data"]["fingerprint"][:12]) in report
    assert "Data scored: {} (manifest fingerprint {}), not the run's training data set.".format(
        os.path.abspath(other), fingerprint[:12]) in report


def test_resuming_a_train_and_evaluate_run_evaluates_at_the_end(records, tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    run_cli(["train", "--exec_mode", "train_and_evaluate", "--data_dir", records, "--model_dir", run_dir,
             "--max_steps", "1", "--backend", "cpu", "--recipe", "seed"] + TINY_MODEL)
    with open(os.path.join(run_dir, "run.json")) as handle:
        assert json.load(handle)["training"]["exec_mode"] == "train_and_evaluate"
    results = os.path.join(run_dir, "eval_results.json")
    os.remove(results)
    capsys.readouterr()
    run_cli(["train", "--data_dir", records, "--model_dir", run_dir, "--max_steps", "2", "--backend", "cpu"])
    out = capsys.readouterr().out
    assert "started with --exec_mode train_and_evaluate: it evaluates when training ends" in out
    assert "model.ckpt-2" in _steps(run_dir)
    with open(results) as handle:  # the final evaluation ran again (of the best checkpoint: step 1 or 2)
        assert json.load(handle)["checkpoint_step"] in (1, 2)
    # An explicit --exec_mode train only trains, and the run remembers that from then on.
    os.remove(results)
    run_cli(["train", "--exec_mode", "train", "--data_dir", records, "--model_dir", run_dir, "--max_steps", "3",
             "--backend", "cpu"])
    assert "model.ckpt-3" in _steps(run_dir) and not os.path.exists(results)
    with open(os.path.join(run_dir, "run.json")) as handle:
        assert json.load(handle)["training"]["exec_mode"] == "train"


def _argparse_error(argv, capsys):
    """The one line a flag error prints, after exit status 2."""
    import cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


@pytest.mark.parametrize("flag, meant", [("--aug", "--augment or --augmentation"), ("--base", "--base_filters"),
                                         ("--dep", "--depth"), ("--learning", "--learning_rate")])
def test_abbreviated_flags_are_refused_with_the_flag_meant(flag, meant, records, tmp_path, capsys):
    error = _argparse_error(["train", "--data_dir", records, "--model_dir", str(tmp_path / "m"), flag, "3"], capsys)
    assert error == "error: unrecognized arguments: {} 3 - did you mean {}? (see 'cli.py train --help')".format(
        flag, meant)
    assert not os.path.exists(str(tmp_path / "m"))


def test_an_unknown_flag_command_or_choice_gets_a_did_you_mean(capsys):
    assert "did you mean --augment?" in _argparse_error(["train", "--data_dir", "d", "--model_dir", "m",
                                                         "--agument"], capsys)
    assert "did you mean train?" in _argparse_error(["trian"], capsys)
    assert "did you mean brats2023?" in _argparse_error(["preprocess", "-i", "a", "-o", "b", "--layout",
                                                         "brats2022"], capsys)
    assert "did you mean 2025?" in _argparse_error(["score", "--pred", "a", "--truth", "b", "--lesion_rules",
                                                    "2o25"], capsys)


def test_hyphenated_flags_are_our_flags(records, tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    run_cli(["train", "--data-dir", records, "--model-dir", run_dir, "--max-steps", "1", "--backend", "cpu",
             "--input-shape", "16", "16", "16", "--base-filters", "4", "--max_filters", "16", "--depth", "3"])
    with open(os.path.join(run_dir, "run.json")) as handle:
        content = json.load(handle)
    assert content["network"]["base_filters"] == 4 and content["training"]["max_steps"] == 1


def test_an_unknown_backend_gets_the_installed_one_meant(records, tmp_path, capsys):
    code = run_cli(["train", "--data_dir", records, "--model_dir", str(tmp_path / "m"), "--backend", "GPU"],
                   check=False)
    assert code == 1
    assert _error(capsys).endswith("did you mean gpu?")


def test_brats2021_is_the_2020_layout(tmp_path):
    from unet3d_core.data.layouts import detect_layout, layout_of

    assert layout_of("brats2021").name == "brats2020"
    assert detect_layout(str(tmp_path), "brats2021") == "brats2020"


class _TwoRanks:
    """One rank of two whose sums come from a script: what the other rank adds to each allreduce_sum."""

    def __init__(self, rank, other_adds):
        self.rank, self.size, self.is_chief = rank, 2, rank == 0
        self.other_adds = list(other_adds)
        self.sums = []

    def allreduce_sum(self, values):
        import numpy as np

        total = np.asarray(values, np.float64) + np.asarray(self.other_adds.pop(0), np.float64)
        self.sums.append(total)
        return total


def test_a_rank_that_does_not_see_the_run_folder_stops_every_rank_at_once(tmp_path):
    """Issue 27, item 2: ranks on a server without the shared folder would fail to restore while rank 0 waits in
    a collective for HCCL's timeout; the check finds it first, on every rank, naming the ranks."""
    from unet3d_core.errors import ConfigError
    from unet3d_core.folders import SHARED_FOLDER_PROBE, check_shared_folder

    shared, elsewhere = str(tmp_path / "shared"), str(tmp_path / "other-server")
    # Rank 0 writes the token; rank 1 (its own empty folder) adds nothing to the token and reports itself.
    chief = _TwoRanks(0, other_adds=[[0], [0, 1]])
    with pytest.raises(ConfigError, match=r"rank\(s\) 1 of 2 do not see the folder rank 0 writes"):
        check_shared_folder(chief, shared)
    token = int(chief.sums[0][0])
    assert token > 0 and not os.path.exists(os.path.join(shared, SHARED_FOLDER_PROBE))
    os.makedirs(elsewhere)
    other = _TwoRanks(1, other_adds=[[token], [0, 0]])
    with pytest.raises(ConfigError, match=r"rank\(s\) 1 of 2"):
        check_shared_folder(other, elsewhere)
    # Both ranks see the same folder: nothing raised, the probe gone.
    chief = _TwoRanks(0, other_adds=[[0], [0, 0]])
    check_shared_folder(chief, shared)
    assert list(chief.sums[1]) == [0, 0] and os.listdir(shared) == []


def test_preprocess_refuses_an_output_inside_its_input(raw_dataset, capsys):
    before = sorted(os.listdir(raw_dataset))
    for inside in (os.path.join(raw_dataset, "records"), raw_dataset):
        code = run_cli(["preprocess", "-i", raw_dataset, "-o", inside], check=False)
        assert code == 1
        message = _error(capsys)
        assert "is inside -i" in message or "already exists and is not empty" in message
    assert sorted(os.listdir(raw_dataset)) == before
    code = run_cli(["preprocess", "-i", raw_dataset, "-o", os.path.join(raw_dataset, "records")], check=False)
    assert "-o {} is inside -i {}".format(os.path.join(raw_dataset, "records"), raw_dataset) in _error(capsys)


def test_predict_skip_invalid_leaves_out_an_unreadable_case_and_lists_it(records, raw_dataset, tmp_path, capsys):
    import shutil

    run_dir = str(tmp_path / "run")
    run_cli(["train", "--data_dir", records, "--model_dir", run_dir, "--max_steps", "1", "--backend", "cpu"]
            + TINY_MODEL)
    new_cases = tmp_path / "new" / "HGG"
    source = os.path.join(raw_dataset, "HGG")
    names = sorted(os.listdir(source))[:3]
    for name in names:
        shutil.copytree(os.path.join(source, name), str(new_cases / name))
    broken = new_cases / names[1] / "{}_flair.nii.gz".format(names[1])
    broken.write_bytes(b"not a NIfTI file")
    flags = ["predict", "--model_dir", run_dir, "--input_dir", str(tmp_path / "new"), "--inference_mode", "crop",
             "--backend", "cpu"]
    # Without the flag the batch stops at the broken case, naming it.
    code = run_cli(flags + ["--output_dir", str(tmp_path / "stopped")], check=False)
    assert code == 1 and str(broken) in _error(capsys)
    capsys.readouterr()
    run_cli(flags + ["--output_dir", str(tmp_path / "out"), "--skip_invalid"])
    out = capsys.readouterr().out
    assert sorted(os.listdir(str(tmp_path / "out"))) == sorted(
        "{}.nii.gz".format(name) for name in (names[0], names[2]))
    assert "--skip_invalid: left out 1 case(s) that could not be read:" in out
    listed = [line for line in out.splitlines() if line.startswith("  {}: ".format(names[1]))]
    assert len(listed) == 1 and str(broken) in listed[0] and "not a gzip file" in listed[0]


def test_hints_name_the_program_as_it_was_invoked(raw_dataset, tmp_path, monkeypatch, capsys):
    import cli

    monkeypatch.setattr(sys, "argv", ["/opt/venv/bin/unet3d"])
    assert cli.main(["train", "--data_dir", raw_dataset, "--model_dir", str(tmp_path / "m")]) == 1
    message = _error(capsys)
    assert "e.g. 'unet3d preprocess -i {}".format(raw_dataset) in message and "cli.py" not in message
    with pytest.raises(SystemExit):
        cli.main(["train", "--dep", "3"])
    assert "(see 'unet3d train --help')" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    assert cli.main(["train", "--data_dir", raw_dataset, "--model_dir", str(tmp_path / "m")]) == 1
    assert "e.g. 'python cli.py preprocess -i" in _error(capsys)


def _score_against_itself(tmp_path, name, labels, capsys, *extra):
    """score a MET release's truth against itself: (summary JSON, printed output)."""
    from raw_trees import save, write_cohort

    raw, predictions = str(tmp_path / name), str(tmp_path / (name + "-pred"))
    if not os.path.isdir(raw):
        for case_id, case in write_cohort(raw, "MET", count=2, labels=labels).items():
            save(os.path.join(predictions, case_id + ".nii.gz"), case.seg)
    capsys.readouterr()
    out_csv = str(tmp_path / "{}{}.csv".format(name, len(extra)))
    run_cli(["score", "--pred", predictions, "--truth", raw, "--out", out_csv] + list(extra))
    with open(out_csv[:-4] + ".json") as handle:
        return json.load(handle), capsys.readouterr().out


def test_lesion_rules_auto_scores_a_resection_cavity_when_the_truth_holds_one(tmp_path, capsys):
    # MET truth with label 4 (RC): the 2023 rules of the MET release would leave RC out silently; auto takes 2025.
    summary, out = _score_against_itself(tmp_path, "met-rc", (1, 2, 3, 4), capsys)
    assert summary["lesion_rules"] == "2025" and "LesionDice_RC" in summary["metrics"]
    assert summary["metrics"]["LesionDice_RC"]["mean"] == pytest.approx(1.0)
    assert "the 2025 rules, because --truth" in summary["lesion_rules_chosen"]
    assert "resection cavity (RC, label 4)" in out and "2023 rules of the brats-met release do not score" in out
    # A year given is used as given, with nothing to explain.
    summary, out = _score_against_itself(tmp_path, "met-rc", (1, 2, 3, 4), capsys, "--lesion_rules", "2023")
    assert summary["lesion_rules"] == "2023" and summary["lesion_rules_chosen"] is None
    assert "LesionDice_RC" not in summary["metrics"] and "--lesion_rules auto" not in out
    # Without a cavity, the MET release's own (2023) rules, which score WT, TC and ET; the choice is said too.
    summary, out = _score_against_itself(tmp_path, "met", (1, 2, 3), capsys)
    assert summary["lesion_rules"] == "2023" and not any(name.endswith("_RC") for name in summary["metrics"])
    assert "holds no resection cavity" in out


def test_lesion_rules_auto_reads_the_labels_preprocess_recorded(tmp_path):
    from raw_trees import preprocess_tree, write_cohort

    import cli
    from unet3d_core.data.records import Manifest
    from unet3d_core.engine.run_config import resolve
    from unet3d_core.engine.run_flags import CommandFlags

    parser = cli.build_parser(cli.load_backends())

    def resolved(records, name):
        flags = parser.parse_args(["train", "--exec_mode", "train_and_evaluate", "--data_dir", records,
                                   "--model_dir", str(tmp_path / (name + "-run")), "--backend", "cpu"] + TINY_MODEL)
        return resolve(CommandFlags(vars(flags)))[1]

    for name, labels, year in (("rc", (1, 2, 3, 4), "2025"), ("plain", (1, 2, 3), "2023")):
        raw = str(tmp_path / name)
        write_cohort(raw, "MET", count=4, labels=labels)
        records = preprocess_tree(raw, tmp_path, name=name + "-records")
        assert Manifest(records).labels_present() == list(labels)
        config = resolved(records, name)
        assert config.lesion_rules == year
        assert any(note.startswith("--lesion_rules auto: the {} rules".format(year)) for note in config.notes)
    # Records preprocessed before the labels were recorded: the release's rules, and the note says how to get RC.
    records = str(tmp_path / "rc-records")
    with open(os.path.join(records, "manifest.json")) as handle:
        content = json.load(handle)
    for case in content["cases"]:
        del case["labels_present"]
    with open(os.path.join(records, "manifest.json"), "w") as handle:
        json.dump(content, handle)
    config = resolved(records, "old")
    assert config.lesion_rules == "2023"
    assert any("is not recorded (preprocess it again to record it)" in note and "--lesion_rules 2025" in note
               for note in config.notes)
