# The cross-validation folds and the label-amount splits of the preprocessed cohort.


rule split:
    """Seeded folds (grouped by subject) and label-amount splits; protocol in docs/methods.md."""
    input:
        manifest=f"{RESULTS}/preprocessed/manifest.json",
    output:
        [f"{RESULTS}/splits/{name}.json" for name in split_names()],
    params:
        out=lambda wildcards, output: Path(output[0]).parent,
        folds=config["folds"],
        seed=config["seed"],
    log:
        f"{LOGS}/split.log",
    conda:
        "../envs/deeprs.yaml"
    shell:
        "deeprs split --manifest {input.manifest:q} --out {params.out:q}"
        " --n-folds {params.folds[n_folds]}"
        " --label-amounts {params.folds[label_amounts]}"
        " --repeats {params.folds[label_amount_repeats]}"
        " --seed {params.seed} > {log:q} 2>&1"
