# Training of one method (or label-amount run) on one split: one job per (run, split).


rule train:
    """model.pt, losses.csv, losses.png and validation.csv of `{run}` (a method, or label_amount/<method>) on `{split}`."""
    input:
        manifest=f"{RESULTS}/preprocessed/manifest.json",
        split=f"{RESULTS}/splits/{{split}}.json",
    output:
        model=f"{RESULTS}/{{run}}/{{split}}/model.pt",
        losses=f"{RESULTS}/{{run}}/{{split}}/losses.csv",
        curves=f"{RESULTS}/{{run}}/{{split}}/losses.png",
        validation=f"{RESULTS}/{{run}}/{{split}}/validation.csv",
    wildcard_constraints:
        run=RUN_PATTERN,
        split=SPLIT_PATTERN,
    params:
        method=lambda wildcards: method_of_run(wildcards.run),
        out_dir=lambda wildcards, output: Path(output.model).parent,
        # The whole section (and the seed): a change of any setting reruns training.
        settings=settings_of("train"),
        device=config["train"]["device"],
    threads: config["train"]["threads"]
    resources:
        gpu=TRAIN_GPUS,
    log:
        f"{LOGS}/{{run}}/{{split}}/train.log",
    conda:
        "../envs/deeprs.yaml"
    shell:
        "deeprs train --method {params.method} --manifest {input.manifest:q}"
        " --split {input.split:q} --out-dir {params.out_dir:q} --settings {params.settings:q}"
        " --device {params.device} --threads {threads} > {log:q} 2>&1"
