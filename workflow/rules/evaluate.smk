# Evaluation of one method (or label-amount run) on one split: Dice, HD95, folding.


rule evaluate:
    """metrics.csv of `{run}` (a method, or label_amount/<method>) on the test cases of `{split}`."""
    input:
        unpack(evaluate_inputs),
    output:
        f"{RESULTS}/{{run}}/{{split}}/metrics.csv",
    wildcard_constraints:
        run=RUN_PATTERN,
        split=SPLIT_PATTERN,
    params:
        method=lambda wildcards: method_of_run(wildcards.run),
        model=lambda wildcards, input: f"--model '{input.model}'" if "model" in input.keys() else "",
        device=config["train"]["device"],
        precision=cpu_bf16_flag(),
    threads: config["train"]["threads"]
    resources:
        gpu=run_gpus,
    log:
        f"{LOGS}/{{run}}/{{split}}/evaluate.log",
    conda:
        "../envs/deeprs.yaml"
    shell:
        "deeprs evaluate --method {params.method} --split {input.split:q}"
        " --manifest {input.manifest:q} {params.model} --out {output:q}"
        " --device {params.device} {params.precision} --threads {threads} > {log:q} 2>&1"
