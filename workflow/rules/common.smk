# Paths, wildcard constraints and input functions shared by the rule files.
from pathlib import Path

from deeprs.data.ingest import IMAGE_SUFFIXES
from deeprs.methods import METHODS, get_method

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


def folder_cohort_files():
    """The image and label files of a user's cohort folder (data.source: folder), found now."""
    from deeprs.data.ingest import discover_cases
    from deeprs.errors import DeeprsError

    try:
        cases = discover_cases(DATA_DIR, config["data"]["layout"])
    except DeeprsError as error:
        sys.exit(f"deeprs: {error}")
    return [str(path) for case in cases for path in (case.image, case.label) if path is not None]


def fold_names():
    """`fold_0` ... : the cross-validation splits (deeprs.folds)."""
    return [f"fold_{k}" for k in range(config["folds"]["n_folds"])]


def label_split_names():
    """`labels_{n}_rep_{r}`: the label-amount splits (deeprs.folds)."""
    folds = config["folds"]
    amounts = sorted(set(folds["label_amounts"]))
    return [f"labels_{n}_rep_{r}" for r in range(folds["label_amount_repeats"]) for n in amounts]


def split_names():
    return fold_names() + label_split_names()


def cpu_bf16_flag():
    """The `deeprs train` / `deeprs evaluate` option for config train.cpu_bf16."""
    return "--cpu-bf16" if config["train"]["cpu_bf16"] else "--no-cpu-bf16"


def method_of_run(run):
    """`deeprs` for the run `deeprs`, `unet3d` for the run `label_amount/unet3d`."""
    return run.split("/")[-1]


# `{run}` is a method name or `label_amount/<method>`; `{split}` a split file's name.
RUN_PATTERN = r"(label_amount/)?(" + "|".join(METHODS) + ")"
SPLIT_PATTERN = r"(fold_\d+|labels_\d+_rep_\d+)"


def evaluate_inputs(wildcards):
    """Split, manifest and, for trained methods only, the model of `{run}` on `{split}`."""
    inputs = {
        "split": f"{RESULTS}/splits/{wildcards.split}.json",
        "manifest": f"{RESULTS}/preprocessed/manifest.json",
    }
    if get_method(method_of_run(wildcards.run)).trains:
        inputs["model"] = f"{RESULTS}/{wildcards.run}/{wildcards.split}/model.pt"
    return inputs


def reproduce_targets():
    """Everything `snakemake reproduce` builds; grows as steps are added."""
    targets = []
    if config["data"]["source"] == "phantom":
        targets += raw_cohort_files() + [f"{DATA_DIR}/mosaic.png"]
    targets += [f"{RESULTS}/preprocessed/{name}" for name in ("manifest.json", "qc.csv", "mosaic.png")]
    targets += [f"{RESULTS}/splits/{name}.json" for name in split_names()]
    targets += report_targets()  # defined in report.smk
    targets += predict_targets()  # defined in predict.smk
    return targets


# Applying trained models (predict.smk).
PREDICT = config["predict"]


def predict_images():
    """The image files of predict.images (none while it is null)."""
    if PREDICT["images"] is None:
        return []
    folder = Path(PREDICT["images"])
    if not folder.is_dir():
        sys.exit(f"deeprs: config key 'predict.images': folder '{folder}' does not exist")
    images = sorted(p for p in folder.iterdir() if p.name.endswith(IMAGE_SUFFIXES) and not p.name.startswith("."))
    if not images:
        sys.exit(f"deeprs: config key 'predict.images': folder '{folder}' holds no NIfTI/MHA/NRRD image")
    return images


def predict_targets():
    """One label map per image in results/predictions/<method>/, named as the image."""
    return [f"{RESULTS}/predictions/{PREDICT['method']}/{image.name}" for image in predict_images()]
