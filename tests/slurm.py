"""A real single-node Slurm (with munge) for the tests: start, submit, wait, stop by pid (the Debian
packages come from ``.ci/setup-system.sh``; the tests install nothing).

Everything lives in a private state folder: munge key and socket, ``slurm.conf``, spool and state
folders, logs and pid files; daemons listen on free ports, so nothing of a system Slurm is touched.
The daemons run in the foreground under :class:`subprocess.Popen` (munged as the ``munge`` user via
``setpriv``), and :meth:`SlurmCluster.stop` ends exactly those pids. Settings follow
what was measured on these machines: linuxproc proctrack, no task plugin, cons_tres, no accounting,
``config_overrides`` so the node advertises more CPUs than it has, ``MinJobAge`` so finished jobs
stay visible to ``scontrol``.

With ``nodes=N`` the cluster has several compute nodes, each an emulated node of
``mpiopt.testing.cluster`` (its own network, UTS, PID, IPC and mount namespaces; hostname = NodeName;
address 198.18.0.k on a bridge). ``slurmctld`` runs in the switch namespace (hostname = the switch's
name, address 198.18.0.254), one ``slurmd`` per node inside that node's namespaces, with spool, log and
pid paths per node (``%n`` in ``slurm.conf``); munged runs once in the root namespace and every daemon
reaches it through its socket file (a path-named Unix socket is not tied to a network namespace). The
client commands (``sbatch``, ``scontrol``, ...) run in the switch namespace, the only place that reaches
the controller; jobs see the same file system (shared storage). ``ip netns exec`` remounts ``/sys``, which
hides ``/sys/fs/cgroup``, and Debian's slurmd 22.05 then refuses to start ("No filesystem mounted on
/sys/fs/cgroup", then "can't stat /sys/fs/cgroup/systemd/", "Unable to initialize cgroup plugin",
"slurmd initialization failed") although no cgroup plugin is configured: each node therefore mounts a
tmpfs on ``/sys/fs/cgroup`` and the named ``systemd`` v1 hierarchy under it, inside its own mount
namespace (gone with the node).
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "munged", "munge")
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
                "BOOT_FAIL", "DEADLINE"}


def _run(cmd: list[str], timeout: float, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def missing_binaries() -> list[str]:
    search = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [b for b in BINARIES if shutil.which(b, path=search) is None]


def unavailable_reason() -> str | None:
    """Why Slurm cannot be run here (binaries missing), or None. The tests never install it: run
    ``.ci/setup-system.sh`` as root (CI does)."""
    missing = missing_binaries()
    if missing:
        return (f"Slurm is not installed ({', '.join(missing)} missing): run .ci/setup-system.sh as root "
                f"(apt-get install {' '.join(PACKAGES)})")
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sbin(name: str) -> str:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or name


class SlurmCluster:
    """One controller and one compute node on this machine, advertising ``cpus`` CPUs."""

    # first_job_id: large ids like a real cluster's. (Step 0 of some jobs, e.g. ids 3 and 1003, failed in
    # MPI_Init under srun --mpi=pmi2 with the PyPI MPICH: UCX "failed to unpack address"; the job
    # scripts launch such a run again, see MPIOPT_START_RETRIES.)
    def __init__(self, cpus: int = 16, base: str | None = None, first_job_id: int = 1000, nodes: int | None = None,
                 memory: int = 64000, slurmd_timeout: int = 10):
        """``nodes=None``: one node, this host. ``nodes=N``: N emulated nodes of ``cpus`` CPUs each.
        ``memory``: RealMemory (MB) each node advertises (so the scripts' memory requests fit)."""
        self.first_job_id = first_job_id
        self.cpus = cpus
        self.memory = memory
        self.slurmd_timeout = slurmd_timeout
        self.n_nodes = nodes
        self.net = None                       # the emulated network (mpiopt.testing.cluster.Cluster)
        self.root = Path(tempfile.mkdtemp(prefix="mpiopt-slurm-", dir=base))
        self.root.chmod(0o755)
        self.node = socket.gethostname().split(".")[0]
        self.nodes = [self.node]
        self.client: list[str] = []            # prefix of the client commands (the controller's namespace)
        self.conf = self.root / "slurm.conf"
        self.munge_dir = self.root / "munge"
        self.socket = self.munge_dir / "munge.socket.2"
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        for k in [k for k in self.env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))]:
            if k != "SLURM_CONF":
                del self.env[k]

    # -- start / stop -------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> None:
        """Start munged, slurmctld and the slurmd(s) and wait until every node is idle."""
        try:
            if self.n_nodes is not None:
                from mpiopt.testing.cluster import Cluster
                self.net = Cluster(nodes=self.n_nodes).start()
                self.nodes = list(self.net.nodes)
                self.client = ["ip", "netns", "exec", self.net.switch]
            self._start_munge(timeout)
            self._write_conf()
            ctld = [_sbin("slurmctld"), "-D", "-f", str(self.conf)]
            if self.net is not None:  # the controller's hostname must be its SlurmctldHost
                ctld = [*self.client, "unshare", "--uts", "--fork", "--kill-child", "sh", "-c",
                        f"hostname {self.net.switch} && exec {shlex.join(ctld)}"]
            self._spawn("slurmctld", ctld)
            self._wait(lambda: self._cmd(["scontrol", "ping"], check=False).stdout.count("UP") > 0,
                       timeout, "slurmctld to answer scontrol ping")
            for node in self.nodes:
                self.start_node(node, wait=False)
            self._wait(self._node_ready, timeout, f"nodes {', '.join(self.nodes)} to become idle")
        except BaseException:
            self.stop()
            raise

    def _cmd(self, cmd: list[str], timeout: float = 30, check: bool = True, env: dict | None = None,
             cwd=None) -> subprocess.CompletedProcess:
        """A client command (sbatch, scontrol, ...) where it reaches the controller."""
        p = subprocess.run([*self.client, *cmd], capture_output=True, text=True, timeout=timeout,
                           env=env or self.env, cwd=cwd)
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
        return p

    # -- compute nodes ------------------------------------------------------------------------------
    def start_node(self, node: str, wait: bool = True, timeout: float = 60) -> None:
        """Start the slurmd of ``node`` (inside its emulated node when there are several)."""
        slurmd = [_sbin("slurmd"), "-D", "-f", str(self.conf), "-N", node]
        if self.net is None:
            self._spawn("slurmd", slurmd)
        else:
            subprocess.run(["ip", "-n", node, "link", "set", "eth0", "up"], check=True)
            boot = ("mount -t tmpfs cgroup_root /sys/fs/cgroup && mkdir /sys/fs/cgroup/systemd && "
                    "mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd")
            # sh stays PID 1 of the node: killing it ends every process of the node
            self._spawn(f"slurmd:{node}", [
                "ip", "netns", "exec", node, "unshare", "--ipc", "--pid", "--uts", "--fork", "--mount-proc",
                "--kill-child", "sh", "-c", f"hostname {node} && {boot} && {shlex.join(slurmd)}"])
        if wait:
            self._wait(lambda: self.node_state(node).startswith(("idle", "mixed", "allocated")), timeout,
                       f"node {node} to become idle")

    def kill_node(self, node: str) -> None:
        """A node failing as a whole: its link goes down (peers get no reset, as with a power loss), then
        every process of the node (its slurmd, job steps and ranks) is killed with SIGKILL."""
        if self.net is None:
            raise RuntimeError("kill_node needs an emulated multi-node cluster (nodes=N)")
        subprocess.run(["ip", "-n", node, "link", "set", "eth0", "down"], check=True)
        for _ in range(50):
            pids = [int(x) for x in subprocess.run(["ip", "netns", "pids", node], capture_output=True,
                                                   text=True).stdout.split()]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        p = self.procs.pop(f"slurmd:{node}", None)
        if p is not None:
            p.wait(timeout=10)

    def node_state(self, node: str) -> str:
        out = self._cmd(["sinfo", "-h", "-n", node, "-N", "-o", "%T"], check=False).stdout.strip().lower()
        return out.splitlines()[0] if out else ""

    def _start_munge(self, timeout: float) -> None:
        self.munge_dir.mkdir(mode=0o700)
        key = self.munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        try:
            shutil.chown(self.munge_dir, "munge", "munge")
            shutil.chown(key, "munge", "munge")
            user = ["setpriv", "--reuid=munge", "--regid=munge", "--init-groups"]
        except (LookupError, PermissionError):  # no munge user (should not happen with the package)
            user = []
        self._spawn("munged", [*user, _sbin("munged"), "-F", "--force", f"--socket={self.socket}",
                               f"--key-file={key}", f"--pid-file={self.munge_dir / 'munged.pid'}",
                               f"--log-file={self.munge_dir / 'munged.log'}",
                               f"--seed-file={self.munge_dir / 'munged.seed'}"])

        def roundtrip() -> bool:
            if not self.socket.exists():
                return False
            cred = _run(["munge", "-n", "-S", str(self.socket)], 10, check=False)
            if cred.returncode != 0:
                return False
            back = subprocess.run(["unmunge", "-S", str(self.socket)], input=cred.stdout, capture_output=True,
                                  text=True, timeout=10)
            return back.returncode == 0
        self._wait(roundtrip, timeout, "munged to answer a munge/unmunge round trip")

    def _write_conf(self) -> None:
        for d in ("ctld", "spool", "log"):
            (self.root / d).mkdir()
        r = self.root
        self.ctld_port, self.slurmd_port = _free_port(), _free_port()
        if self.net is None:
            kind, ctld_host = "single-node", f"{self.node}(127.0.0.1)"
            node_lines = (f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory} "
                          "State=UNKNOWN")
            per_node = ""
        else:
            from mpiopt.testing.cluster import SWITCH_ADDR
            kind, ctld_host = f"{len(self.nodes)}-node", f"{self.net.switch}({SWITCH_ADDR})"
            node_lines = "\n".join(f"NodeName={n} NodeAddr={a} CPUs={self.cpus} RealMemory={self.memory} "
                                   "State=UNKNOWN" for n, a in zip(self.nodes, self.net.addrs))
            per_node = "-%n"   # spool, pid and log file per node
            for n in self.nodes:
                (r / f"spool-{n}").mkdir()
        self.conf.write_text(f"""\
# {kind} test Slurm written by tests/slurm.py
ClusterName=mpiopt-test
SlurmctldHost={ctld_host}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
AuthType=auth/munge
AuthInfo=socket={self.socket}
CredType=cred/munge
StateSaveLocation={r}/ctld
SlurmdSpoolDir={r}/spool{per_node}
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd{per_node}.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd{per_node}.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=300
KillWait=15
MpiDefault=none
JobRequeue=1
FirstJobId={self.first_job_id}
SlurmctldTimeout=30
SlurmdTimeout={self.slurmd_timeout if self.net is not None else 60}
MessageTimeout=5
InactiveLimit=0
{node_lines}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
""")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = self.root / f"{name}.out"
        self.logs[name] = log
        with open(log, "wb") as fh:
            self.procs[name] = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=self.env,
                                                start_new_session=True)

    def _check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}:\n{self.log_tail(name)}")

    def _wait(self, ok, timeout: float, what: str) -> None:
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            self._check_alive()
            if ok():
                return
            time.sleep(0.2)
        raise TimeoutError(f"timed out after {timeout}s waiting for {what}\n{self.diagnostics()}")

    def _node_ready(self) -> bool:
        out = self._cmd(["sinfo", "-h", "-N", "-o", "%T"], check=False).stdout.strip().lower().split()
        return len(out) == len(self.nodes) and all(s.startswith(("idle", "mixed", "allocated")) for s in out)

    def stop(self, timeout: float = 15) -> None:
        """End the daemons this object started, by pid (TERM, then KILL), slurmd first; then the
        emulated nodes (the harness kills what still runs in them and deletes their namespaces)."""
        slurmds = [n for n in self.procs if n.startswith("slurmd")]
        for name in (*slurmds, "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            try:
                # a daemon inside an emulated node runs under unshare --fork, which ignores SIGTERM;
                # SIGKILL to it kills its child (--kill-child), the node's PID 1, so the whole node
                p.send_signal(signal.SIGKILL if self.net is not None else signal.SIGTERM)
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
            except ProcessLookupError:
                pass
        # job processes left behind by slurmd (a job killed mid-run): they carry our SLURM_CONF path
        self._kill_leftover_jobs()
        if self.net is not None:
            self.net.stop()

    def _kill_leftover_jobs(self) -> None:
        mine = str(self.conf).encode()
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            try:
                env = (d / "environ").read_bytes()
            except OSError:
                continue
            if b"SLURM_CONF=" + mine + b"\0" in env:
                try:
                    os.kill(int(d.name), signal.SIGKILL)
                except OSError:
                    pass

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # -- jobs ------------------------------------------------------------------------------------
    def sbatch(self, script: str | os.PathLike, *args: str, env: dict | None = None,
               cwd: str | os.PathLike | None = None) -> int:
        """Submit ``script`` (extra sbatch ``args`` before it); returns the job id."""
        e = dict(self.env, **(env or {}))
        p = self._cmd(["sbatch", "--parsable", *args, str(script)], check=False, env=e, cwd=cwd)
        if p.returncode != 0:
            raise RuntimeError(f"sbatch {script} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        return int(p.stdout.strip().split(";")[0].split("_")[0])

    def scontrol(self, *args: str, check: bool = True) -> str:
        return self._cmd(["scontrol", *args], check=check).stdout

    def scancel(self, *args: str) -> None:
        self._cmd(["scancel", *args])

    def jobs(self, job_id: int) -> list[dict[str, str]]:
        """``scontrol show job`` records of a job (several for an array), as dicts."""
        out = self._cmd(["scontrol", "-o", "show", "job", str(job_id)], check=False).stdout
        recs = []
        for line in out.splitlines():
            rec: dict[str, str] = {}
            for item in line.split():
                if "=" in item:
                    k, v = item.split("=", 1)
                    rec.setdefault(k, v)
            if rec:
                recs.append(rec)
        return recs

    def state(self, job_id: int) -> str:
        recs = self.jobs(job_id)
        return recs[0]["JobState"] if recs else "UNKNOWN"

    def wait(self, job_id: int, timeout: float = 120, n_tasks: int = 1) -> list[dict[str, str]]:
        """Poll until every record of the job is in a final state; returns the records."""
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            self._check_alive()
            recs = self.jobs(job_id)
            if len(recs) >= n_tasks and all(r.get("JobState") in FINAL_STATES for r in recs):
                return recs
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} not finished after {timeout}s: {self.jobs(job_id)}\n{self.diagnostics()}")

    def start_requeued_now(self, job_id: int, restarts: int = 1, timeout: float = 60) -> None:
        """Wait until the job is pending again after a requeue, then make it eligible at once
        (Slurm holds a requeued batch job back for about two minutes through its begin time)."""
        def pending() -> bool:
            recs = self.jobs(job_id)
            return bool(recs) and recs[0].get("JobState") == "PENDING" and int(recs[0].get("Restarts", 0)) >= restarts
        self._wait(pending, timeout, f"job {job_id} to be pending after its requeue")
        # Not at once: a batch job started again within the second its old credential was revoked is
        # killed as "non-startable" (Job credential revoked) and ends FAILED.
        time.sleep(3)
        self.scontrol("update", f"JobId={job_id}", "StartTime=now")

    def wait_for(self, ok, timeout: float, what: str) -> None:
        self._wait(ok, timeout, what)

    # -- diagnostics -------------------------------------------------------------------------------
    def log_tail(self, name: str, n: int = 30) -> str:
        paths = [self.logs.get(name), self.root / "log" / f"{name}.log", self.munge_dir / f"{name}.log"]
        out = []
        for pth in paths:
            if pth is not None and pth.exists():
                out += pth.read_text(errors="replace").splitlines()[-n:]
        return "\n".join(out)

    def diagnostics(self) -> str:
        names = ["munged", "slurmctld", *(["slurmd"] if self.net is None else [f"slurmd-{n}" for n in self.nodes])]
        return "\n".join(f"--- {n} ---\n{self.log_tail(n)}" for n in names)


def running_cluster(why_root: str, extra_check=None, start_timeout: float = 60, **kwargs):
    """Generator for a module fixture: a started :class:`SlurmCluster` (``kwargs``), stopped and
    cleaned up afterwards. Missing root, a failed ``extra_check()`` (a reason or None) or Slurm not
    installed (``.ci/setup-system.sh``) skip the tests with the reason, except under CI (``CI`` set),
    where they fail."""
    import pytest
    in_ci = bool(os.environ.get("CI"))

    def need(reason: str | None) -> None:
        if reason:
            pytest.fail(f"CI: {reason}") if in_ci else pytest.skip(reason)
    if os.geteuid() != 0:
        need(why_root)
    if extra_check is not None:
        need(extra_check())
    need(unavailable_reason())
    cluster = SlurmCluster(**kwargs)
    cluster.start(timeout=start_timeout)
    try:
        yield cluster
    finally:
        cluster.stop()
        cluster.cleanup()
