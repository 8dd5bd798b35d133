# Paths, wildcard constraints and input functions shared by the rule files.
from pathlib import Path

RESULTS = config["results"]
LOGS = config["logs"]
DATA_DIR = config["data"]["dir"]


def phantom_case_ids():
    """Case ids of the synthetic cohort, named as MM-WHS names them."""
    settings = config["phantom"]
    labelled = [f"ct_train_{1001 + i}" for i in range(settings["n_labelled"])]
    unlabelled = [f"ct_test_{2001 + i}" for i in range(settings["n_unlabelled"])]
    return labelled, unlabelled


def raw_cohort_files():
    """The image and label files the preprocessing step reads."""
    if config["data"]["source"] == "phantom":
        labelled, unlabelled = phantom_case_ids()
        files = [f"{DATA_DIR}/ct_train/{case}_{kind}.nii.gz" for case in labelled for kind in ("image", "label")]
        files += [f"{DATA_DIR}/ct_test/{case}_image.nii.gz" for case in unlabelled]
        return files
    return []


def reproduce_targets():
    """Everything `snakemake reproduce` builds; grows as steps are added."""
    targets = []
    if config["data"]["source"] == "phantom":
        targets += raw_cohort_files() + [f"{DATA_DIR}/mosaic.png"]
    return targets
