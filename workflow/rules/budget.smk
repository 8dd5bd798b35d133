# The budget search (config section `budget`): every Table 1 method that trains, at each
# learning rate, on one split; `deeprs budget` reads their validation curves and proposes
# the preset's train.lr and train.iterations. The folding penalty's search
# (`budget.fold_weights`) trains every Table 1 method with R at each weight of
# train.weights.fold; `deeprs fold-search` proposes the weight. Neither is part of
# `reproduce`: run them as
#   snakemake --cores all budget
#   snakemake --cores all fold_search


# One search run's folder, with the wildcards {search} and {method}.
SEARCH_RUN = search_folder(RESULTS, "{search}", "{method}", BUDGET["split"])


rule train_search:
    """One run of a search on the budget split: `{method}` at learning rate x (R, S and D
    alike) for `{search}` = lr_x, or with the folding penalty's weight x for fold_x."""
    input:
        manifest=f"{RESULTS}/preprocessed/manifest.json",
        split=f"{RESULTS}/splits/{BUDGET['split']}.json",
    output:
        model=f"{SEARCH_RUN}/model.pt",
        losses=f"{SEARCH_RUN}/losses.csv",
        validation=f"{SEARCH_RUN}/validation.csv",
    wildcard_constraints:
        method="|".join(METHODS),
        search=SEARCH_PATTERN,
    params:
        out_dir=lambda wildcards, output: Path(output.model).parent,
        settings=lambda wildcards: search_train_settings(wildcards.search),
        device=config["train"]["device"],
    threads: config["train"]["threads"]
    resources:
        gpu=TRAIN_GPUS,
    log:
        f"{LOGS}/budget/{{search}}/{{method}}/train.log",
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


rule fold_search:
    """fold_search.csv and fold_search.json: the proposed train.weights.fold, and why."""
    input:
        fold_search_validation(),
    output:
        table=f"{RESULTS}/budget/fold_search.csv",
        choice=f"{RESULTS}/budget/fold_search.json",
    params:
        results=lambda wildcards, output: Path(output.table).parents[1],
        out=lambda wildcards, output: Path(output.table).parent,
        weights=" ".join(f"{weight:g}" for weight in BUDGET["fold_weights"]),
        methods=" ".join(fold_search_methods()),
        split=BUDGET["split"],
        max_folding=BUDGET["max_folding_pct"],
    log:
        f"{LOGS}/budget/fold_search.log",
    conda:
        "../envs/deeprs.yaml"
    shell:
        "deeprs fold-search --results {params.results:q} --weights {params.weights}"
        " --methods {params.methods} --split {params.split} --max-folding {params.max_folding}"
        " --out {params.out:q} > {log:q} 2>&1"
