# The paper's tables and figures. `report` reads only metrics files, so it reruns in
# seconds when one changes; `overlays` reads trained models and is kept apart. The
# outputs are listed here only: `reproduce` takes them from rules.report.output.


rule report:
    """Tables 1-2, box plots (Fig. 5), label-amount curve (Fig. 8), per-fold Dice, learning curves and convergence, QC page."""
    input:
        fold_metrics=report_fold_metrics(),
        label_amount_metrics=report_label_amount_metrics(),
        losses=report_losses(),
        validation=report_validation(),
        qc=f"{RESULTS}/preprocessed/qc.csv",
        mosaic=f"{RESULTS}/preprocessed/mosaic.png",
    output:
        learning_curves=learning_curve_outputs(),
        convergence_html=report(f"{REPORT_DIR}/convergence.html", caption="../report/convergence.rst", category="3. Learning curves"),
        convergence_csv=report(f"{REPORT_DIR}/convergence.csv", caption="../report/convergence.rst", category="3. Learning curves"),
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
        # The results folder holds the report folder.
        results=lambda wildcards, output: Path(output.per_fold).parents[1],
        out=lambda wildcards, output: Path(output.per_fold).parent,
        preprocessed=lambda wildcards, input: Path(input.qc).parent,
        methods=" ".join(config["methods"]),
        ablation=" ".join(config["ablation"]),
        folds=" ".join(str(k) for k in range(FOLDS.n_folds)),
        structures=" ".join(config["data"]["labels"]),
        label_amount_methods=" ".join(config["label_amount_methods"]),
        label_amounts=" ".join(str(n) for n in sorted(set(FOLDS.label_amounts))),
        repeats=FOLDS.label_amount_repeats,
    log:
        f"{LOGS}/report.log",
    conda:
        "../envs/deeprs.yaml"
    shell:
        "deeprs report --results {params.results:q} --out {params.out:q} --replace-study-report"
        " --preprocessed {params.preprocessed:q}"
        " --methods {params.methods} --ablation {params.ablation} --folds {params.folds}"
        " --structures {params.structures} --label-amount-methods {params.label_amount_methods}"
        " --label-amounts {params.label_amounts} --repeats {params.repeats} > {log:q} 2>&1"


rule overlays:
    """One slice per method of a test pair (Fig. 6) and a test image (Fig. 7), the scored predictions with their Dice."""
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
        results=lambda wildcards, output: Path(output.registration).parents[1],
        out=lambda wildcards, output: Path(output.registration).parent,
        methods=" ".join(config["methods"]),
        device=config["train"]["device"],
        precision=cpu_bf16_flag(),
    threads: config["train"]["threads"]
    log:
        f"{LOGS}/overlays.log",
    conda:
        "../envs/deeprs.yaml"
    shell:
        "deeprs overlays --manifest {input.manifest:q} --split {input.split:q}"
        " --results {params.results:q} --methods {params.methods} --out-dir {params.out:q}"
        " --device {params.device} {params.precision} --threads {threads} > {log:q} 2>&1"
