# deeprs: DeepRS joint registration and few-shot segmentation, from raw volumes to the
# paper's tables. This file only reads the config and includes the rule files; each rule
# calls one `deeprs` subcommand. Default target: `reproduce`.
import sys

from deeprs.config import read_config_file, validate_config
from deeprs.errors import ConfigError

DEFAULT_CONFIG = "config/config.yaml"

# Each config file is read strictly first: the demo preset before Snakemake loads it, so a
# YAML mistake is one line with its line and column, and a --configfile (which Snakemake
# parses before this file runs) for keys given twice, which plain YAML keeps silently.
try:
    for path in workflow.config_settings.configfiles or [DEFAULT_CONFIG]:
        read_config_file(path)
except ConfigError as error:
    sys.exit(f"deeprs: {error}")

# A config given with --configfile replaces the demo preset instead of being merged into it
# (a merge would, e.g., unite two label tables).
if not workflow.config_settings.configfiles:

    configfile: DEFAULT_CONFIG

report: "workflow/report/workflow.rst"


try:
    validate_config(config)
except ConfigError as error:
    sys.exit(f"deeprs: {error}")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/split.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/budget.smk"


# Rules that only read small files run where Snakemake runs, not as cluster jobs.
localrules:
    reproduce,
    split,
    report,


rule reproduce:
    """Every method, study and report of the config."""
    input:
        reproduce_targets(),
    default_target: True
