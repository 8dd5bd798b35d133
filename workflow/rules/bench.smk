# Speed and peak memory of the training steps, ours against a plain reference implementation.
# Not part of `reproduce`: run it with `snakemake --cores all bench` (or through the SLURM
# profile, where it gets one GPU like a training job).


rule bench:
    """Median time per step, voxels per second and peak memory of R, S, D and the joint iteration."""
    output:
        f"{RESULTS}/bench/bench.json",
    params:
        device=config["train"]["device"],
        sizes="demo,paper",
    threads: config["train"]["threads"]
    resources:
        gpu=TRAIN_GPUS,
    log:
        f"{LOGS}/bench.log",
    conda:
        "../envs/deeprs.yaml"
    shell:
        "deeprs bench --device {params.device} --sizes {params.sizes} --threads {threads}"
        " --out {output:q} > {log:q} 2>&1"
