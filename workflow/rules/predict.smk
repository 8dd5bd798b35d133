# Applying trained models: one bundle per trained (run, split), and predictions for a folder
# of new images when the config names one (predict.images).

rule export:
    """bundle.pt of `{run}` on `{split}`: its networks, the preprocessing plan, labels and versions."""
    input:
        model=f"{RESULTS}/{{run}}/{{split}}/model.pt",
        plan=f"{RESULTS}/preprocessed/plan.json",
    output:
        f"{RESULTS}/{{run}}/{{split}}/bundle.pt",
    wildcard_constraints:
        run=RUN_PATTERN,
        split=SPLIT_PATTERN,
    log:
        f"{LOGS}/{{run}}/{{split}}/export.log",
    conda:
        "../envs/deeprs.yaml"
    shell:
        "deeprs export --model {input.model:q} --plan {input.plan:q} --out {output:q}"
        " --split {wildcards.split} > {log:q} 2>&1"


if PREDICT["images"] is not None:
    if not get_method(PREDICT["method"]).segmentation:
        sys.exit(f"deeprs: config key 'predict.method': '{PREDICT['method']}' does not segment; choose a method with S")
    if max(PREDICT["folds"]) >= config["folds"]["n_folds"]:
        sys.exit(f"deeprs: config key 'predict.folds': {PREDICT['folds']} names a fold beyond folds.n_folds")

    rule predict:
        """Label maps of predict.images, ensembling the bundles of predict.method on predict.folds."""
        input:
            images=predict_images(),
            bundles=[f"{RESULTS}/{PREDICT['method']}/fold_{k}/bundle.pt" for k in PREDICT["folds"]],
        output:
            predict_targets(),
        params:
            images=PREDICT["images"],
            method_dir=f"{RESULTS}/{PREDICT['method']}",
            folds=" ".join(str(k) for k in PREDICT["folds"]),
            out=f"{RESULTS}/predictions/{PREDICT['method']}",
            device=config["train"]["device"],
            precision=cpu_bf16_flag(),
        threads: config["train"]["threads"]
        resources:
            gpu=TRAIN_GPUS,
        log:
            f"{LOGS}/predict_{PREDICT['method']}.log",
        conda:
            "../envs/deeprs.yaml"
        shell:
            "deeprs predict {params.images:q} --bundle {params.method_dir:q} --folds {params.folds}"
            " --out {params.out:q} --device {params.device} {params.precision} --threads {threads}"
            " > {log:q} 2>&1"
