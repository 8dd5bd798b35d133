"""A throwaway single-node Slurm cluster (munge + slurmctld + slurmd) on loopback.

The SLURM test uses it to run the workflow through ``snakemake-executor-plugin-slurm``
for real. Everything lives in one folder (configs, key, sockets, spool, logs) on random
free ports, so it never touches a system Slurm. Without an accounting database
(``AccountingStorageType=accounting_storage/none``) ``sacct`` has nothing to report, so
``MinJobAge`` is raised to keep finished jobs visible to ``squeue``, which the test
selects as the executor's status command. The node advertises one GPU that does not exist
(``gres.conf`` points them at harmless device files): enough for Slurm to schedule
``--gpus=1`` jobs, which then run on the CPU. The node may advertise more CPUs and memory
than the machine has (``SlurmdParameters=config_overrides``) so that the profile's real
requests (8 CPUs, 32 GB for training) are scheduled as a cluster user would send them.

Also a command line for trying the profile by hand (as root)::

    python tests/slurm/cluster.py start /tmp/slurm   # prints the SLURM_CONF to export
    python tests/slurm/cluster.py stop /tmp/slurm
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DAEMONS = ("slurmd", "slurmctld", "munged")
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
CLIENTS = ("srun", "sbatch", "squeue", "sinfo", "scancel", "scontrol", "sacct")
REQUIRED_BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol")


def missing_requirement() -> str | None:
    """Why a local cluster cannot be started here, or None when it can."""
    missing = [name for name in REQUIRED_BINARIES if shutil.which(name) is None]
    if missing:
        return (
            f"Slurm/munge binaries not found ({', '.join(missing)}): "
            "install them with `apt-get install -y slurm-wlm munge` (the CI script does)"
        )
    if os.geteuid() != 0:
        return "starting slurmctld/slurmd needs root (the CI container runs as root)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _memory_mb() -> int:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise RuntimeError("MemTotal not found in /proc/meminfo")


@dataclass(frozen=True)
class SingleNodeSlurm:
    """A running cluster: its folder and the environment its clients need."""

    root: Path
    node: str
    cpus: int
    memory_mb: int

    @property
    def env(self) -> dict[str, str]:
        """The caller's environment with this cluster's config and client wrappers first."""
        path = f"{self.root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, "SLURM_CONF": str(self.root / "slurm.conf"), "PATH": path}

    def run(self, *command: str, timeout: float = 30) -> str:
        """Run a Slurm client command against this cluster and return its stdout."""
        return subprocess.run(
            command, env=self.env, check=True, capture_output=True, text=True, timeout=timeout
        ).stdout


def _slurm_conf(root: Path, node: str, cpus: int, memory_mb: int, gpus: int) -> str:
    gres = f" Gres=gpu:{gpus}" if gpus else ""
    return f"""\
ClusterName=deeprs-test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=3600
SlurmctldTimeout=30
SlurmdTimeout=30
GresTypes=gpu
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb}{gres} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


FAKE_GPU_FILES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/urandom")


def _write_client_wrappers(root: Path) -> None:
    """``root/bin/srun`` etc. that set SLURM_CONF themselves.

    Inside a job the executor's jobstep plugin drops every ``SLURM_*`` variable before it
    calls ``srun``, SLURM_CONF included; a real cluster keeps its config at the compiled-in
    /etc/slurm/slurm.conf and does not notice, this one is found through these wrappers.
    """
    folder = root / "bin"
    folder.mkdir(exist_ok=True)
    for client in CLIENTS:
        wrapper = folder / client
        real = shutil.which(client, path=SYSTEM_PATH)
        wrapper.write_text(f'#!/bin/sh\nSLURM_CONF={root / "slurm.conf"} exec {real} "$@"\n')
        wrapper.chmod(0o755)


def _gres_conf(node: str, gpus: int) -> str:
    """Fake GPUs: Slurm counts one GPU per distinct device file."""
    if gpus > len(FAKE_GPU_FILES):
        raise ValueError(f"at most {len(FAKE_GPU_FILES)} fake GPUs")
    return "".join(f"NodeName={node} Name=gpu File={path}\n" for path in FAKE_GPU_FILES[:gpus])


def _start_munge(root: Path) -> None:
    munge = root / "munge"
    munge.mkdir(mode=0o700)
    key = munge / "munge.key"
    subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, timeout=30)
    key.chmod(0o400)
    subprocess.run(
        [
            "munged",
            "--force",
            f"--key-file={key}",
            f"--socket={munge / 'munge.socket'}",
            f"--pid-file={root / 'run' / 'munged.pid'}",
            f"--log-file={root / 'log' / 'munged.log'}",
            f"--seed-file={munge / 'munged.seed'}",
        ],
        check=True,
        timeout=30,
    )


def _wait_until(predicate, timeout: float, what: str, root: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    logs = "\n".join(
        f"--- {path.name}\n{path.read_text()[-2000:]}" for path in sorted((root / "log").glob("*"))
    )
    raise RuntimeError(f"local Slurm: {what} not reached within {timeout:.0f} s\n{logs}")


def start(
    root: Path,
    gpus: int = 1,
    cpus: int | None = None,
    memory_mb: int | None = None,
    timeout: float = 90,
) -> SingleNodeSlurm:
    """Write the configs into the empty folder ``root`` and start the three daemons.

    ``cpus`` and ``memory_mb`` default to the machine's; larger values are advertised as
    they are (the jobs then share the real cores).
    """
    root = Path(root).resolve()
    for sub in ("run", "log", "state", "spool"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    node = socket.gethostname().split(".")[0]
    cpus = cpus or os.cpu_count() or 1
    memory_mb = memory_mb or _memory_mb() - 512
    cluster = SingleNodeSlurm(root=root, node=node, cpus=cpus, memory_mb=memory_mb)
    (root / "slurm.conf").write_text(_slurm_conf(root, node, cpus, memory_mb, gpus))
    (root / "spool" / node).mkdir(exist_ok=True)
    (root / "gres.conf").write_text(_gres_conf(node, gpus))
    _write_client_wrappers(root)
    env = cluster.env
    _start_munge(root)
    subprocess.run(["slurmctld", "-i"], env=env, check=True, timeout=60)
    subprocess.run(["slurmd"], env=env, check=True, timeout=60)

    def node_idle() -> bool:
        try:
            state = cluster.run("sinfo", "--noheader", "--format=%T", timeout=10).strip()
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            return False
        return state == "idle"

    try:
        _wait_until(node_idle, timeout, "an idle node", root)
    except BaseException:
        stop(root)
        raise
    return cluster


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop(root: Path, timeout: float = 30) -> None:
    """Cancel every job, then stop slurmd, slurmctld and munged by their pid files."""
    root = Path(root).resolve()
    env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
    if _pid(root / "run" / "slurmctld.pid"):
        subprocess.run(["scancel", "--full", "--user=root"], env=env, timeout=30, check=False)
    for daemon in DAEMONS:
        pid = _pid(root / "run" / f"{daemon}.pid")
        if pid is None or not _alive(pid):
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


@contextmanager
def single_node_slurm(root: Path, **sizes: int) -> Iterator[SingleNodeSlurm]:
    """A running cluster for the ``with`` block; always stopped afterwards."""
    cluster = start(root, **sizes)
    try:
        yield cluster
    finally:
        stop(root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("root", type=Path, help="folder for configs, sockets, spool and logs")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs the node advertises")
    parser.add_argument(
        "--cpus", type=int, help="CPUs the node advertises (default: the machine's)"
    )
    parser.add_argument("--memory-mb", type=int, help="memory the node advertises")
    args = parser.parse_args(argv)
    if args.action == "stop":
        stop(args.root)
        return 0
    reason = missing_requirement()
    if reason:
        print(f"cannot start a local Slurm: {reason}", file=sys.stderr)
        return 1
    cluster = start(args.root, gpus=args.gpus, cpus=args.cpus, memory_mb=args.memory_mb)
    print(f"export SLURM_CONF={cluster.root / 'slurm.conf'} PATH={cluster.root / 'bin'}:$PATH")
    return 0


if __name__ == "__main__":
    sys.exit(main())
