# Heart crop, itk-elastix affine alignment to one reference, resampling and QC, in one job:
# elastix costs 15-25 s to start in a process, so every case is aligned in the same one.


rule preprocess:
    """Crop, affine-align and resample every case; manifest.json is written last."""
    input:
        cohort_files(),
    output:
        manifest=f"{RESULTS}/preprocessed/manifest.json",
        qc=f"{RESULTS}/preprocessed/qc.csv",
        boxes=f"{RESULTS}/preprocessed/crop_boxes.json",
        mosaic=f"{RESULTS}/preprocessed/mosaic.png",
        plan=f"{RESULTS}/preprocessed/plan.json",
        plan_images=multiext(f"{RESULTS}/preprocessed/plan_", "reference_cropped.mha", "reference_coarse.mha"),
    params:
        out=lambda wildcards, output: Path(output.manifest).parent,
        settings=preprocess_settings_json(),
    # Snakemake lowers it to --cores when fewer are given; a fixed number (not one derived
    # from workflow.cores) lets --report, --unlock and --lint run without --cores.
    threads: 4
    log:
        main=f"{LOGS}/preprocess.log",
        elastix=f"{LOGS}/preprocess_elastix.log",
    conda:
        "../envs/deeprs.yaml"
    shell:
        "deeprs preprocess --out {params.out:q} --threads {threads}"
        " --settings {params.settings:q} --elastix-log {log.elastix:q} > {log.main:q} 2>&1"
