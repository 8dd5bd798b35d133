# The cross-validation folds and the label-amount splits of the preprocessed cohort.


rule split:
    """Seeded folds (grouped by subject) and label-amount splits; protocol in docs/methods.md."""
    input:
        manifest=f"{RESULTS}/preprocessed/manifest.json",
    output:
        [f"{RESULTS}/splits/{name}.json" for name in all_split_names()],
    params:
        out=lambda wildcards, output: Path(output[0]).parent,
        settings=settings_of("folds"),
    log:
        f"{LOGS}/split.log",
    conda:
        "../envs/deeprs.yaml"
    shell:
        "deeprs split --manifest {input.manifest:q} --out {params.out:q}"
        " --settings {params.settings:q} > {log:q} 2>&1"
