# The input cohort: generated (synthetic phantom) or the user's folder.


rule phantom:
    """Generate the synthetic cardiac CT cohort (MM-WHS layout and label values)."""
    output:
        files=raw_cohort_files(),
        mosaic=f"{DATA_DIR}/mosaic.png",
    params:
        out=lambda wildcards, output: Path(output.mosaic).parent,
        settings=config["phantom"],
        seed=config["seed"],
        labels=config["data"]["labels"],
    log:
        f"{LOGS}/phantom.log",
    # Cases are independent: two processes share them when two cores are free (same files).
    threads: 2
    conda:
        "../envs/deeprs.yaml"
    shell:
        "deeprs phantom --out {params.out:q}"
        " --n-labelled {params.settings[n_labelled]} --n-unlabelled {params.settings[n_unlabelled]}"
        " --shape {params.settings[shape][0]} {params.settings[shape][1]} {params.settings[shape][2]}"
        " --spacing {params.settings[spacing][0]} {params.settings[spacing][1]} {params.settings[spacing][2]}"
        " --seed {params.seed} --workers {threads} > {log:q} 2>&1"
