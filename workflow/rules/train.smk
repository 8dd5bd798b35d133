# Training of one method (or label-amount run) on one split: one job per (run, split).
import json


def training_gpus():
    """1 when training runs on an accelerator (the profile caps the `gpu` resource), else 0.

    For `device: auto` this asks torch on the machine that builds the DAG, so CPU-only
    laptops can run several training jobs side by side.
    """
    device = config["train"]["device"]
    if device == "auto":
        import torch

        backend = getattr(torch.backends, "mps", None)
        return int(torch.cuda.is_available() or bool(backend and backend.is_available()))
    return int(device != "cpu")


rule train:
    """model.pt, losses.csv and losses.png of `{run}` (a method, or label_amount/<method>) on `{split}`."""
    input:
        manifest=f"{RESULTS}/preprocessed/manifest.json",
        split=f"{RESULTS}/splits/{{split}}.json",
    output:
        model=f"{RESULTS}/{{run}}/{{split}}/model.pt",
        losses=f"{RESULTS}/{{run}}/{{split}}/losses.csv",
        curves=f"{RESULTS}/{{run}}/{{split}}/losses.png",
    wildcard_constraints:
        run=RUN_PATTERN,
        split=SPLIT_PATTERN,
    params:
        method=lambda wildcards: method_of_run(wildcards.run),
        out_dir=lambda wildcards: f"{RESULTS}/{wildcards.run}/{wildcards.split}",
        iterations=config["train"]["iterations"],
        width=config["train"]["width"],
        lr=config["train"]["lr"],
        discriminator_lr=(
            f"--discriminator-lr {config['train']['discriminator_lr']}"
            if config["train"]["discriminator_lr"] is not None
            else ""
        ),
        weights=json.dumps(config["train"]["weights"], sort_keys=True),
        checkpoint_every=config["train"]["checkpoint_every"],
        seed=config["seed"],
        device=config["train"]["device"],
        precision=cpu_bf16_flag(),
    threads: config["train"]["threads"]
    resources:
        gpu=training_gpus(),
    log:
        f"{LOGS}/{{run}}/{{split}}/train.log",
    conda:
        "../envs/deeprs.yaml"
    shell:
        "deeprs train --method {params.method} --manifest {input.manifest:q}"
        " --split {input.split:q} --out-dir {params.out_dir:q}"
        " --iterations {params.iterations} --width {params.width} --lr {params.lr} {params.discriminator_lr}"
        " --weights {params.weights:q} --checkpoint-every {params.checkpoint_every}"
        " --seed {params.seed} --device {params.device} {params.precision} --threads {threads} > {log:q} 2>&1"
