# The input cohort: generated (synthetic phantom) or the user's folder.


rule phantom:
    """Generate the synthetic cardiac CT cohort (MM-WHS layout and label values)."""
    output:
        files=raw_cohort_files(),
        mosaic=f"{DATA_DIR}/mosaic.png",
    params:
        out=lambda wildcards, output: Path(output.mosaic).parent,
        settings=settings_of("phantom"),
        labels=config["data"]["labels"],
    log:
        f"{LOGS}/phantom.log",
    # Cases are independent: two processes share them when two cores are free (same files).
    threads: 2
    conda:
        "../envs/deeprs.yaml"
    shell:
        "deeprs phantom --out {params.out:q} --settings {params.settings:q}"
        " --workers {threads} > {log:q} 2>&1"
