"""`snakemake --lint` finds nothing but the findings justified here (CI runs this test)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# (rule file, finding) -> why it stays. Each input function here serves the one rule beside
# it, so a reader sees the function where it is used; issue 12 ("One source of truth") moves
# the shared ones into common.smk, after which an entry may go.
JUSTIFIED = {
    ("preprocess.smk", "Mixed rules and functions in same snakefile."): "preprocess_inputs",
    ("train.smk", "Mixed rules and functions in same snakefile."): "training_gpus",
    ("report.smk", "Mixed rules and functions in same snakefile."): "report_* target lists",
}


def lint_findings(output: str) -> set[tuple[str, str]]:
    """(file or rule, title) of each finding in `snakemake --lint`'s text output."""
    findings, subject = set(), ""
    for line in output.splitlines():
        header = re.match(r"Lints for (?:snakefile (\S+)|rule (\w+) \(line \d+, (\S+)\)):", line)
        if header:
            subject = Path(header[1]).name if header[1] else f"rule {header[2]}"
        elif finding := re.match(r"    \* (.+?):?$", line):
            findings.add((subject, finding[1]))
    return findings


def test_snakemake_lint_finds_only_justified_findings() -> None:
    environment = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    linted = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint"],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
    )
    output = linted.stdout + linted.stderr
    assert "Traceback" not in output and "Error" not in output, output[-3000:]
    findings = lint_findings(output)
    assert findings <= set(JUSTIFIED), sorted(findings - set(JUSTIFIED))
    if not findings:
        assert linted.returncode == 0, output[-3000:]


def test_lint_findings_are_parsed() -> None:
    sample = (
        "Lints for snakefile /x/workflow/rules/train.smk:\n"
        "    * Mixed rules and functions in same snakefile.:\n"
        "      Small one-liner functions ...\n\n"
        "Lints for rule split (line 4, /x/workflow/rules/split.smk):\n"
        "    * Specify a conda environment or container for each rule.:\n"
    )
    assert lint_findings(sample) == {
        ("train.smk", "Mixed rules and functions in same snakefile."),
        ("rule split", "Specify a conda environment or container for each rule."),
    }
