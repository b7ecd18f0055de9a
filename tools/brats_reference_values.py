"""Record what the BraTS challenge's own lesion-wise metric scripts compute for tests/lesion_cases.py.

The challenge publishes its scoring code in two repositories:

* rachitsaluja/BraTS-2023-Metrics: one ``metrics.py`` for every 2023 cohort;
* rachitsaluja/BraTS-2024-Metrics: one ``metrics_<COHORT>.py`` per cohort. Its
  commit 9a0ab9c scored the 2024 leaderboards and commit 9e8879a the 2025 ones.

This tool does not contain any of that code: it imports the scripts from
checkouts given on the command line, writes every case of
``tests/lesion_cases.py`` as a prediction / truth pair of NIfTI files, calls each
script's ``get_LesionWiseResults`` on them and stores the table it returns in
``tests/brats_reference_values.json``, so tests can compare our lesion-wise
metric with the challenge's without needing the scripts or their packages.

The scripts need their own environment; run this tool with that environment's
python. tests/brats_reference_values.json was made with the 2023 repository's
pinned versions (Python 3.10, numpy 1.24.3, pandas 1.3.4, scipy 1.11.1, nibabel
5.1.0, connected-components-3d 3.12.1) plus medpy 0.5.2 for the 2025 scripts;
the 2024 and 2025 commits' own pins give the same numbers for their years.
numpy must be < 2 (np.Inf) and pandas < 2 (DataFrame.append in the 2023 and
2024 scripts); with pandas 1.4 or later the 2023 script also raises on a truth
lesion that several predicted components overlap (its DataFrame.replace meets
the arrays of lesion numbers), so keep pandas 1.3.4::

    REF_VENV/bin/python tools/brats_reference_values.py \\
        --r2023 CHECKOUTS/BraTS-2023-Metrics --r2024-2024 CHECKOUTS/BraTS-2024-Metrics@9a0ab9c \\
        --r2024-2025 CHECKOUTS/BraTS-2024-Metrics@9e8879a --out tests/brats_reference_values.json

Each script runs in a fresh temporary working directory (the 2024 scripts
write ``./tmp_gt`` and ``./tmp_pred`` there) and is imported afresh, with its
own vendored ``surface_distance`` package, for every case.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import math
import numbers
import os
import subprocess
import sys
import tempfile
import warnings
from collections import OrderedDict

import nibabel as nib
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO_ROOT, "tests", "brats_reference_values.json")

# year -> (repository, the commit this tool expects, command-line option)
SOURCES = OrderedDict([
    ("2023", ("rachitsaluja/BraTS-2023-Metrics", "43c905242b2eecf421d4ab2da7af8ece9777d322", "r2023")),
    ("2024", ("rachitsaluja/BraTS-2024-Metrics", "9a0ab9c7d75f158a3ea685cd44ac059c3a6712a1", "r2024_2024")),
    ("2025", ("rachitsaluja/BraTS-2024-Metrics", "9e8879a9201b9b6f2e069eb07e2acb6d4dee34b6", "r2024_2025")),
])

# The 2023 script serves every 2023 cohort; PED is left out because the cases use the
# 2024 paediatric labels, and MEN-RT was new in 2024.
COHORTS_2023 = ("GLI", "SSA", "MEN", "MET")
# cohort -> module of the 2024 repository (metrics_MEN.py is absent from the 2024 commit).
MODULES_2024 = OrderedDict([
    ("GLI", "metrics_GLI"),
    ("SSA", "metrics_SSA"),
    ("PED", "metrics_PED"),
    ("MET", "metrics_MET"),
    ("MEN-RT", "metrics_MEN_RT"),
    ("MEN", "metrics_MEN"),
])
REFERENCE_MODULES = ("metrics",) + tuple(MODULES_2024.values())

# What the versions in "packages" are read from: key -> distribution name.
PACKAGES = OrderedDict([
    ("numpy", "numpy"),
    ("scipy", "scipy"),
    ("cc3d", "connected-components-3d"),
    ("nibabel", "nibabel"),
    ("pandas", "pandas"),
    ("medpy", "medpy"),
])


def load_lesion_cases():
    path = os.path.join(REPO_ROOT, "tests", "lesion_cases.py")
    spec = importlib.util.spec_from_file_location("lesion_cases", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["lesion_cases"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module.cases()


def case_file_names(cohort, number):
    """(prediction, truth) file names in the challenge's naming for one case."""
    if cohort == "MEN-RT":
        stem = "BraTS-MEN-RT-{:04d}-1".format(number)
        return stem + ".nii.gz", stem + "_gtv.nii.gz"
    stem = "BraTS-{}-{:05d}-000".format(cohort, number)
    return stem + ".nii.gz", stem + "-seg.nii.gz"


def write_nifti(array, spacing, path):
    affine = np.diag(list(spacing) + [1.0])
    image = nib.Nifti1Image(np.asarray(array, dtype=np.uint8), affine)
    image.set_data_dtype(np.uint8)
    nib.save(image, path)
    # The header stores the zooms as float32 (1.2 reads back as 1.2000000476837158), and the
    # scripts take the spacing from the header, so they compute with the float32 values.
    zooms = nib.load(path).header.get_zooms()
    if not np.array_equal(np.asarray(zooms, np.float32), np.asarray(spacing, np.float32)):
        raise RuntimeError("{}: header zooms {} are not the spacing {}".format(path, zooms, spacing))


def references_for(cohort, folders):
    """[(year, folder, module name, challenge name)] of the scripts that score this cohort."""
    runs = []
    if cohort in COHORTS_2023:
        runs.append(("2023", folders["2023"], "metrics", "BraTS-" + cohort))
    for year in ("2024", "2025"):
        module = MODULES_2024.get(cohort)
        if module and os.path.exists(os.path.join(folders[year], module + ".py")):
            runs.append((year, folders[year], module, "BraTS-" + cohort))
    return runs


def forget_reference_modules():
    for name in list(sys.modules):
        if name in REFERENCE_MODULES or name == "surface_distance" or name.startswith("surface_distance."):
            del sys.modules[name]


def import_reference(folder, module_name):
    """The module imported afresh from folder, with that folder's own surface_distance."""
    forget_reference_modules()
    sys.path.insert(0, folder)
    try:
        spec = importlib.util.spec_from_file_location(module_name, os.path.join(folder, module_name + ".py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
    vendored = os.path.realpath(os.path.join(folder, "surface_distance"))
    used = os.path.realpath(os.path.dirname(sys.modules["surface_distance"].__file__))
    if used != vendored:
        raise RuntimeError("{} imported surface_distance from {}, not {}".format(module_name, used, vendored))
    return module


def json_value(value):
    """A JSON value for one cell: numbers as numbers, inf and nan as strings, None for anything else."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    return None


def results_table(returned):
    """{region: {column: value}} from what get_LesionWiseResults returned."""
    # The 2023 script returns the results table; the 2024 ones (results table, per-lesion table).
    table = returned[0] if isinstance(returned, tuple) else returned
    regions = OrderedDict()
    for _, row in table.iterrows():
        columns = OrderedDict()
        for column, value in row.items():
            if column == "Labels":
                continue
            converted = json_value(value)
            if converted is None:
                raise TypeError("column {!r} of {!r} is not a number: {!r}".format(column, row["Labels"], value))
            columns[str(column)] = converted
        regions[str(row["Labels"])] = columns
    return regions


def one_line(text):
    return " ".join(str(text).split())


def run_reference(folder, module_name, challenge, prediction, truth, warning_counts):
    """(results or {"error": ...}, lines the script printed)."""
    printed = io.StringIO()
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="brats_ref_") as workdir:
        os.chdir(workdir)
        try:
            with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(printed):
                warnings.simplefilter("always")
                try:
                    module = import_reference(folder, module_name)
                    results = results_table(module.get_LesionWiseResults(prediction, truth, challenge))
                except Exception as error:  # recorded, not fatal: the table says which case failed
                    results = {"error": one_line("{}: {}".format(type(error).__name__, error))}
        finally:
            os.chdir(cwd)
            forget_reference_modules()
    for warning in caught:
        key = "{}: {}".format(warning.category.__name__, one_line(warning.message))
        warning_counts[key] = warning_counts.get(key, 0) + 1
    lines = [line for line in printed.getvalue().splitlines() if line.strip()]
    return results, lines


def checkout_commit(folder):
    try:
        return subprocess.check_output(["git", "-C", folder, "rev-parse", "HEAD"], stderr=subprocess.DEVNULL,
                                       universal_newlines=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def package_versions():
    from importlib import metadata  # Python 3.8+, as the scripts' environment is

    versions = OrderedDict()
    for key, distribution in PACKAGES.items():
        try:
            versions[key] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[key] = None
    return versions


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--r2023", required=True, help="checkout of rachitsaluja/BraTS-2023-Metrics")
    parser.add_argument("--r2024-2024", required=True,
                        help="checkout of rachitsaluja/BraTS-2024-Metrics at the 2024 leaderboard commit")
    parser.add_argument("--r2024-2025", required=True,
                        help="checkout of rachitsaluja/BraTS-2024-Metrics at the 2025 leaderboard commit")
    parser.add_argument("--out", default=DEFAULT_OUT, help="JSON file to write (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    folders = OrderedDict((year, os.path.abspath(getattr(args, option)))
                          for year, (_, _, option) in SOURCES.items())
    out = os.path.abspath(args.out)

    sources = OrderedDict()
    for year, (repository, expected, _) in SOURCES.items():
        commit = checkout_commit(folders[year])
        if commit != expected:
            print("warning: {} is at {}, not the expected {} ({})".format(folders[year], commit, expected, year))
        sources[year] = OrderedDict([("repository", repository), ("commit", commit)])

    pandas_version = package_versions()["pandas"] or ""
    if tuple(int(part) for part in pandas_version.split(".")[:2] if part.isdigit()) >= (1, 4):
        print("warning: pandas {}: the 2023 script raises on lesions overlapped by several predicted "
              "components (it ran with pandas 1.3.4)".format(pandas_version))

    cases = load_lesion_cases()
    recorded = OrderedDict()
    warning_counts = OrderedDict()
    printed_by_scripts = []
    errors = []
    with tempfile.TemporaryDirectory(prefix="brats_cases_") as inputs:
        for number, (name, case) in enumerate(cases.items(), start=1):
            spacing = tuple(float(s) for s in case.spacing)
            prediction_name, truth_name = case_file_names(case.cohort, number)
            prediction = os.path.join(inputs, prediction_name)
            truth = os.path.join(inputs, truth_name)
            write_nifti(case.prediction, spacing, prediction)
            write_nifti(case.truth, spacing, truth)

            entry = OrderedDict([("cohort", case.cohort), ("spacing", list(spacing))])
            for year, folder, module_name, challenge in references_for(case.cohort, folders):
                results, lines = run_reference(folder, module_name, challenge, prediction, truth, warning_counts)
                entry[year] = results
                if "error" in results:
                    status = "ERROR " + results["error"]
                    errors.append("{} [{}]: {}".format(name, year, results["error"]))
                else:
                    status = "ok: " + " ".join(results)
                print("{} [{} {} {}]: {}".format(name, year, module_name, challenge, status), flush=True)
                for line in lines:
                    print("    printed: " + line)
                    printed_by_scripts.append("{} [{}]: {}".format(name, year, line))
            recorded[name] = entry

    document = OrderedDict([
        ("about", "Lesion-wise results of the BraTS challenge's own metric scripts for the cases of "
                  "tests/lesion_cases.py, written by tools/brats_reference_values.py."),
        ("sources", sources),
        ("packages", package_versions()),
        ("cases", recorded),
    ])
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as stream:
        json.dump(document, stream, indent=1, sort_keys=True)
        stream.write("\n")
    print("wrote " + out)

    for key, count in warning_counts.items():
        print("warning from the scripts ({}x): {}".format(count, key))
    if printed_by_scripts:
        print("{} line(s) printed by the scripts (e.g. 'Error processing'), listed above".format(
            len(printed_by_scripts)))
    if errors:
        print("{} reference run(s) raised:".format(len(errors)))
        for line in errors:
            print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
