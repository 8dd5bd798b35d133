# The budget search (config section `budget`): every Table 1 method that trains, at each
# learning rate, on one split; `deeprs budget` reads their validation curves and proposes
# the preset's train.lr and train.iterations. Not part of `reproduce`: run it as
#   snakemake --cores all budget


rule train_budget:
    """One search run: `{method}` at learning rate `{lr}` (R, S and D alike) on the budget split."""
    input:
        manifest=f"{RESULTS}/preprocessed/manifest.json",
        split=f"{RESULTS}/splits/{BUDGET['split']}.json",
    output:
        model=f"{RESULTS}/budget/lr_{{lr}}/{{method}}/{BUDGET['split']}/model.pt",
        losses=f"{RESULTS}/budget/lr_{{lr}}/{{method}}/{BUDGET['split']}/losses.csv",
        validation=f"{RESULTS}/budget/lr_{{lr}}/{{method}}/{BUDGET['split']}/validation.csv",
    wildcard_constraints:
        method="|".join(METHODS),
        lr=r"[0-9.e-]+",
    params:
        out_dir=lambda wildcards, output: Path(output.model).parent,
        settings=lambda wildcards: budget_train_settings(wildcards.lr),
        device=config["train"]["device"],
    threads: config["train"]["threads"]
    resources:
        gpu=TRAIN_GPUS,
    log:
        f"{LOGS}/budget/lr_{{lr}}/{{method}}/train.log",
    conda:
        "../envs/deeprs.yaml"
    shell:
        "deeprs train --method {wildcards.method} --manifest {input.manifest:q}"
        " --split {input.split:q} --out-dir {params.out_dir:q} --settings {params.settings:q}"
        " --device {params.device} --threads {threads} > {log:q} 2>&1"


rule budget:
    """budget.csv, budget.json (the proposed lr and iterations, and why) and budget.png."""
    input:
        budget_validation(),
    output:
        table=f"{RESULTS}/budget/budget.csv",
        choice=f"{RESULTS}/budget/budget.json",
        curves=f"{RESULTS}/budget/budget.png",
    params:
        # The results folder holds the budget folder.
        results=lambda wildcards, output: Path(output.table).parents[1],
        out=lambda wildcards, output: Path(output.table).parent,
        lrs=" ".join(f"{lr:g}" for lr in BUDGET["lrs"]),
        methods=" ".join(budget_methods()),
        split=BUDGET["split"],
    log:
        f"{LOGS}/budget/budget.log",
    conda:
        "../envs/deeprs.yaml"
    shell:
        "deeprs budget --results {params.results:q} --lrs {params.lrs} --methods {params.methods}"
        " --split {params.split} --out {params.out:q} > {log:q} 2>&1"
