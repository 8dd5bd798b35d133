# The paper's tables and figures. `report` reads only metrics files, so it reruns in
# seconds when one changes; `overlays` reads trained models and is kept apart.
from pathlib import Path

from deeprs.methods import get_method

REPORT_DIR = f"{RESULTS}/report"
OVERLAY_SPLIT = "fold_0"


def report_fold_metrics():
    """metrics.csv of every Table 1 and Table 2 method on every fold."""
    methods = dict.fromkeys(config["methods"] + config["ablation"])
    return [f"{RESULTS}/{method}/{fold}/metrics.csv" for method in methods for fold in fold_names()]


def report_label_amount_metrics():
    """metrics.csv of every label-amount run (Fig. 8)."""
    return [
        f"{RESULTS}/label_amount/{method}/{split}/metrics.csv"
        for method in dict.fromkeys(config["label_amount_methods"])
        for split in label_split_names()
    ]


def trained_methods():
    """Table 1 and Table 2 methods that train, so have losses.csv and a learning curve."""
    return [method for method in dict.fromkeys(config["methods"] + config["ablation"]) if get_method(method).trains]


def report_losses():
    """losses.csv of every trained method on every fold (the learning curves)."""
    return [f"{RESULTS}/{method}/{fold}/losses.csv" for method in trained_methods() for fold in fold_names()]


def learning_curve_outputs():
    """learning_curves_{method}.png of every trained method, for the report's category."""
    files = [f"{REPORT_DIR}/learning_curves_{method}.png" for method in trained_methods()]
    caption = "../report/learning_curves.rst"
    return [report(path, caption=caption, category="3. Learning curves") for path in files]


def overlay_models():
    """model.pt on the overlay split of every Table 1 method that trains."""
    return [
        f"{RESULTS}/{method}/{OVERLAY_SPLIT}/model.pt"
        for method in dict.fromkeys(config["methods"])
        if get_method(method).trains
    ]


def report_targets():
    """The outputs of `report` and `overlays`, for `reproduce`."""
    tables = [f"{REPORT_DIR}/table{n}.{suffix}" for n in (1, 2) for suffix in ("csv", "md", "html", "tex")]
    figures = [f"{REPORT_DIR}/boxplot_{task}.{suffix}" for task in ("registration", "segmentation") for suffix in ("svg", "png")]
    overlays = [f"{REPORT_DIR}/overlays_{task}.png" for task in ("registration", "segmentation")]
    other = [f"{REPORT_DIR}/label_amount.{suffix}" for suffix in ("csv", "png", "html")]
    other += [f"{REPORT_DIR}/per_fold.{suffix}" for suffix in ("csv", "html")]
    other += [f"{REPORT_DIR}/qc.html"] + [f"{REPORT_DIR}/learning_curves_{method}.png" for method in trained_methods()]
    return tables + figures + other + overlays


rule report:
    """Tables 1-2, box plots (Fig. 5), label-amount curve (Fig. 8), per-fold Dice, learning curves, QC page."""
    input:
        fold_metrics=report_fold_metrics(),
        label_amount_metrics=report_label_amount_metrics(),
        losses=report_losses(),
        qc=f"{RESULTS}/preprocessed/qc.csv",
        mosaic=f"{RESULTS}/preprocessed/mosaic.png",
    output:
        learning_curves=learning_curve_outputs(),
        qc=report(f"{REPORT_DIR}/qc.html", caption="../report/qc.rst", category="4. Preprocessing QC"),
        table1_html=report(f"{REPORT_DIR}/table1.html", caption="../report/table1.rst", category="1. Tables", subcategory="1. Table 1: baselines"),
        table1_csv=report(f"{REPORT_DIR}/table1.csv", caption="../report/table1.rst", category="1. Tables", subcategory="1. Table 1: baselines"),
        table1_other=multiext(f"{REPORT_DIR}/table1", ".md", ".tex"),
        table2_html=report(f"{REPORT_DIR}/table2.html", caption="../report/table2.rst", category="1. Tables", subcategory="2. Table 2: ablation"),
        table2_csv=report(f"{REPORT_DIR}/table2.csv", caption="../report/table2.rst", category="1. Tables", subcategory="2. Table 2: ablation"),
        table2_other=multiext(f"{REPORT_DIR}/table2", ".md", ".tex"),
        boxplot_registration=report(
            f"{REPORT_DIR}/boxplot_registration.svg", caption="../report/boxplot_registration.rst", category="2. Figures", subcategory="1. Box plots (Fig. 5)"
        ),
        boxplot_segmentation=report(
            f"{REPORT_DIR}/boxplot_segmentation.svg", caption="../report/boxplot_segmentation.rst", category="2. Figures", subcategory="1. Box plots (Fig. 5)"
        ),
        boxplot_png=multiext(f"{REPORT_DIR}/boxplot_", "registration.png", "segmentation.png"),
        label_amount_png=report(f"{REPORT_DIR}/label_amount.png", caption="../report/label_amount.rst", category="2. Figures", subcategory="2. Label amount (Fig. 8)"),
        label_amount_html=report(f"{REPORT_DIR}/label_amount.html", caption="../report/label_amount.rst", category="1. Tables", subcategory="3. Label amount (Fig. 8)"),
        label_amount_csv=report(f"{REPORT_DIR}/label_amount.csv", caption="../report/label_amount.rst", category="1. Tables", subcategory="3. Label amount (Fig. 8)"),
        per_fold_html=report(f"{REPORT_DIR}/per_fold.html", caption="../report/per_fold.rst", category="1. Tables", subcategory="4. Per fold"),
        per_fold=report(f"{REPORT_DIR}/per_fold.csv", caption="../report/per_fold.rst", category="1. Tables", subcategory="4. Per fold"),
    params:
        results=RESULTS,
        out=lambda wildcards, output: Path(output.per_fold).parent,
        preprocessed=lambda wildcards, input: Path(input.qc).parent,
        methods=" ".join(config["methods"]),
        ablation=" ".join(config["ablation"]),
        folds=" ".join(str(k) for k in range(config["folds"]["n_folds"])),
        structures=" ".join(config["data"]["labels"]),
        label_amount_methods=" ".join(config["label_amount_methods"]),
        label_amounts=" ".join(str(n) for n in sorted(set(config["folds"]["label_amounts"]))),
        repeats=config["folds"]["label_amount_repeats"],
    log:
        f"{LOGS}/report.log",
    shell:
        "deeprs report --results {params.results:q} --out {params.out:q} --replace-study-report"
        " --preprocessed {params.preprocessed:q}"
        " --methods {params.methods} --ablation {params.ablation} --folds {params.folds}"
        " --structures {params.structures} --label-amount-methods {params.label_amount_methods}"
        " --label-amounts {params.label_amounts} --repeats {params.repeats} > {log:q} 2>&1"


rule overlays:
    """One slice per method of a test pair (Fig. 6) and a test image (Fig. 7), from the models."""
    input:
        manifest=f"{RESULTS}/preprocessed/manifest.json",
        split=f"{RESULTS}/splits/{OVERLAY_SPLIT}.json",
        models=overlay_models(),
    output:
        registration=report(
            f"{REPORT_DIR}/overlays_registration.png", caption="../report/overlays_registration.rst", category="2. Figures", subcategory="3. Overlays (Figs. 6-7)"
        ),
        segmentation=report(
            f"{REPORT_DIR}/overlays_segmentation.png", caption="../report/overlays_segmentation.rst", category="2. Figures", subcategory="3. Overlays (Figs. 6-7)"
        ),
    params:
        results=RESULTS,
        out=lambda wildcards, output: Path(output.registration).parent,
        methods=" ".join(config["methods"]),
        device=config["train"]["device"],
    threads: config["train"]["threads"]
    log:
        f"{LOGS}/overlays.log",
    shell:
        "python -m deeprs.report.overlays --manifest {input.manifest:q} --split {input.split:q}"
        " --results {params.results:q} --methods {params.methods} --out-dir {params.out:q}"
        " --device {params.device} --threads {threads} > {log:q} 2>&1"
