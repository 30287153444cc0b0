"""A real one-node SLURM cluster on this machine, for tests that submit with sbatch.

`LocalSlurm(workdir)` starts its own munged, slurmctld and slurmd (Slurm 22.05, from
`scripts/ensure-slurm.sh`), with a slurm.conf written from `slurm/local/slurm.conf.in`,
its own munge key and socket, and free ports, all under `workdir`; so it touches
nothing of the machine's own munge or Slurm, and two clusters can run side by side.
`stop()` cancels every job, then ends the daemons by pid (SIGTERM, then SIGKILL).

    with LocalSlurm(tmp_path) as slurm:
        job = slurm.sbatch(["--wrap", "hostname"], cwd=tmp_path)
        slurm.wait([job], timeout=30)
        assert slurm.state(job) == "COMPLETED"

Client commands (sbatch, squeue, scancel, scontrol, srun) reach this cluster through
`SLURM_CONF`: pass `slurm.env` to any subprocess that calls them. Accounting is off,
so `sacct` does not work; `scontrol show job` keeps finished jobs for MinJobAge
(300 s), which is what `jobs()` and `state()` read.

The daemons run in the foreground as children of this process: this process holds
their pids and reaps them, and none of them is left as an orphan when it stops.

`TwoNodeSlurm(workdir)` is the same with two compute nodes, node1 and node2, each slurmd in
a network and UTS namespace of its own (see its docstring); `pids` then names
'slurmd.node1' and 'slurmd.node2'.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENSURE = REPO / "scripts" / "ensure-slurm.sh"
TEMPLATE = REPO / "slurm" / "local" / "slurm.conf.in"

# Unix socket paths (munge's, slurmstepd's) must fit in sun_path (108 bytes).
_MAX_SOCKET_PATH = 100


class LocalSlurm:
    """A one-node SLURM cluster whose files all lie under `workdir` (see the module docstring)."""

    def __init__(self, workdir: Path, *, start_timeout: float = 30.0):
        self.workdir = Path(workdir).resolve()
        self.dir = self.workdir / "slurm"
        self.conf = self.dir / "slurm.conf"
        self.start_timeout = start_timeout
        path = os.environ.get("PATH", "")
        for extra in ("/usr/sbin", "/sbin"):
            if extra not in path.split(os.pathsep):
                path = f"{path}{os.pathsep}{extra}" if path else extra
        self.env: dict[str, str] = {**os.environ, "PATH": path, "SLURM_CONF": str(self.conf)}
        self._procs: dict[str, subprocess.Popen] = {}
        self._outs: list = []

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> LocalSlurm:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        """Start munged, slurmctld and slurmd; return once the node is idle.

        Raises RuntimeError with the reason and the tail of the daemons' logs when
        SLURM cannot be installed or started; whatever it had started is stopped.
        """
        if self._procs:
            raise RuntimeError("LocalSlurm.start: this cluster is already running")
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)

    def _start(self) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("LocalSlurm needs root: slurmd runs jobs as root (SlurmUser=root)")
        done = subprocess.run(["bash", str(ENSURE)], env=self.env, capture_output=True, text=True)
        if done.returncode != 0:
            reason = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
            raise RuntimeError(f"SLURM is not available: {reason[0]}")
        socket_path = self.dir / "munge" / "munge.socket.2"
        if len(str(socket_path)) > _MAX_SOCKET_PATH:
            raise RuntimeError(f"LocalSlurm: workdir {self.workdir} is too long for a unix socket path "
                               f"({socket_path}); use a shorter one")
        if self.dir.exists():
            shutil.rmtree(self.dir)
        munge = self.dir / "munge"
        for sub in (munge, self.dir / "state", self.dir / "spool"):
            sub.mkdir(parents=True)
        # Only root talks to this munged; its warning that others cannot reach the socket is expected.
        munge.chmod(0o700)

        self._start_munged(munge)
        host = socket.gethostname().split(".")[0]
        port_ctld, port_d = _free_ports(2)
        self.conf.write_text(_fill(TEMPLATE.read_text(), {
            "NAME": f"test{port_ctld}",
            "HOST": host,
            "CPUS": str(os.cpu_count() or 1),
            "MEM": str(_real_memory_mb()),
            "DIR": str(self.dir),
            "PORT_CTLD": str(port_ctld),
            "PORT_D": str(port_d),
        }))
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        self._spawn("slurmd", ["slurmd", "-D", "-N", host, "-f", str(self.conf)])
        self._wait_until_idle()

    def _start_munged(self, munge: Path) -> None:
        key = munge / "munge.key"
        if shutil.which("mungekey", path=self.env["PATH"]):
            self.run(["mungekey", "--create", "--keyfile", str(key)])
        elif shutil.which("create-munge-key", path=self.env["PATH"]):  # munge before 0.5.14
            self.run(["create-munge-key", "-f", str(key)])
        else:
            key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        socket_path = munge / "munge.socket.2"
        self._spawn("munged", [
            "munged", "--foreground", "--force",
            f"--key-file={key}", f"--socket={socket_path}", f"--pid-file={munge / 'munged.pid'}",
            f"--log-file={munge / 'munged.log'}", f"--seed-file={munge / 'munged.seed'}",
        ])
        self._poll(lambda: socket_path.is_socket(), 10.0, "munged did not create its socket")

    def _spawn(self, name: str, argv: list[str]) -> None:
        out = open(self.dir / f"{name}.out", "wb")
        self._outs.append(out)
        self._procs[name] = subprocess.Popen(argv, env=self.env, cwd=self.dir, stdin=subprocess.DEVNULL,
                                             stdout=out, stderr=subprocess.STDOUT)

    def _wait_until_idle(self) -> None:
        last = ""

        def idle() -> bool:
            nonlocal last
            done = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True, text=True)
            last = (done.stdout + done.stderr).strip()
            return done.returncode == 0 and last == "idle"

        self._poll(idle, self.start_timeout, lambda: f"the node did not become idle (sinfo: {last!r})")

    def _poll(self, ready, timeout: float, failure) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with status {proc.returncode} while starting\n"
                                       + self.logs())
            if ready():
                return
            if time.monotonic() > deadline:
                reason = failure() if callable(failure) else failure
                raise RuntimeError(f"{reason} within {timeout:g} s\n" + self.logs())
            time.sleep(0.1)

    def stop(self) -> None:
        """Cancel all jobs, then end slurmd, slurmctld and munged (SIGTERM, 10 s, SIGKILL).

        Safe to call more than once and after a failed start.
        """
        atexit.unregister(self.stop)
        procs, self._procs = self._procs, {}
        try:
            if _alive(procs.get("slurmctld")):
                self._cancel_all()
            for name in ("slurmd", "slurmctld", "munged"):
                if name in procs:
                    _terminate(procs[name])
            self._kill_leftover_steps()
        finally:
            for out in self._outs:
                out.close()
            self._outs = []

    def _cancel_all(self) -> None:
        jobs = self._ids_in_queue()
        if not jobs:
            return
        subprocess.run(["scancel", *sorted(jobs)], env=self.env, capture_output=True)
        # scancel sends SIGTERM, then SIGKILL after KillWait (5 s).
        deadline = time.monotonic() + 15.0
        while self._ids_in_queue() and time.monotonic() < deadline:
            time.sleep(0.2)

    def _ids_in_queue(self) -> set[str]:
        try:
            done = subprocess.run(["squeue", "-h", "-o", "%A"], env=self.env, capture_output=True, text=True,
                                  timeout=10)
        except subprocess.TimeoutExpired:
            return set()
        return set(done.stdout.split()) if done.returncode == 0 else set()

    def _kill_leftover_steps(self) -> None:
        """SIGKILL any slurmstepd of this cluster (they outlive slurmd) and the processes under it."""
        mine = f"SLURM_CONF={self.conf}".encode()
        for pid in _pids():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() != "slurmstepd":
                    continue
                if mine not in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    continue
            except OSError:
                continue
            for victim in [*_descendants(pid), pid]:
                try:
                    os.kill(victim, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    @property
    def pids(self) -> dict[str, int]:
        """Pids of the running daemons: {'munged': ..., 'slurmctld': ..., 'slurmd': ...}."""
        return {name: proc.pid for name, proc in self._procs.items() if proc.poll() is None}

    # -- client helpers ------------------------------------------------------------------------

    def run(self, args: list[str], cwd: Path | None = None) -> str:
        """Run a Slurm client command against this cluster; return its stdout, raise RuntimeError on failure."""
        done = subprocess.run(args, env=self.env, cwd=cwd, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed with status {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def sbatch(self, args: list[str], cwd: Path) -> int:
        """Submit with `sbatch --parsable ARGS` from `cwd`; return the job id (an array's job id for arrays)."""
        out = self.run(["sbatch", "--parsable", *args], cwd=cwd).strip()
        return int(out.split(";")[0])

    def wait(self, job_ids: list[int | str], timeout: float) -> None:
        """Return once none of `job_ids` (jobs, arrays or array tasks) is pending, running or completing.

        Raises TimeoutError naming the jobs still in the queue.
        """
        wanted = {str(j) for j in job_ids}
        deadline = time.monotonic() + timeout
        while True:
            out = self.run(["squeue", "-h", "-r", "-o", "%i %A %F %K %T"])
            left = []
            for line in out.splitlines():
                name, job, array_job, task, state = line.split()
                if {job, array_job, f"{array_job}_{task}"} & wanted:
                    left.append(f"{name} ({state})")
            if not left:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs still in the queue after {timeout:g} s: {', '.join(left)}")
            time.sleep(0.5)

    def jobs(self, job_id: int | str) -> list[dict[str, str]]:
        """`scontrol show job` records of a job, or of each task of an array (`JobState`, `ExitCode`, ...)."""
        out = self.run(["scontrol", "show", "job", "-o", str(job_id)])
        return [_parse_record(line) for line in out.splitlines() if line.strip()]

    def state(self, job_id: int | str) -> str:
        """JobState of one job or array task ('123' or '123_4'), e.g. 'COMPLETED', 'CANCELLED', 'FAILED'."""
        records = self.jobs(job_id)
        if len(records) != 1:
            raise ValueError(f"job {job_id} has {len(records)} records (an array?): use jobs() or 'JOBID_TASK'")
        return records[0]["JobState"]

    def logs(self, lines: int = 40) -> str:
        """The last `lines` lines of each daemon's log, for failure messages."""
        parts = []
        # Foreground daemons write to their .out what they log before (or instead of) their log file.
        for log, out in ((None, "munged.out"), ("slurmctld.log", "slurmctld.out"), ("slurmd.log", "slurmd.out")):
            path = self.dir / log if log else None
            if path is None or not path.exists() or path.stat().st_size == 0:
                path = self.dir / out
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path} ---\n" + "\n".join(text))
        return "\n".join(parts) or f"(no daemon logs under {self.dir})"


def _fill(template: str, values: dict[str, str]) -> str:
    text = template
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    unfilled = sorted(set(re.findall(r"@[A-Z_]+@", text)))
    if unfilled:
        raise RuntimeError(f"{TEMPLATE}: placeholders without values: {', '.join(unfilled)}")
    return text


def _free_ports(n: int) -> list[int]:
    """n distinct TCP ports that were free a moment ago (the kernel picks them)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _real_memory_mb() -> int:
    """RealMemory for slurm.conf: 90% of MemTotal, so slurmd never reports less than configured."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return max(1, int(line.split()[1]) * 9 // 10 // 1024)
    return 1


def _parse_record(line: str) -> dict[str, str]:
    # One-line records are 'Key=value Key=value ...'; values may hold '=' (TRES=cpu=1,mem=1M).
    return dict(re.findall(r"(\S+?)=(.*?)(?= \S+?=|$)", line.strip()))


def _alive(proc: subprocess.Popen | None) -> bool:
    return proc is not None and proc.poll() is None


def _terminate(proc: subprocess.Popen, grace: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid in _pids():
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class TwoNodeSlurm(LocalSlurm):
    """A SLURM cluster of two compute nodes on this machine, each `slurmd` in its own network
    and UTS namespace with its own host name (`node1`, `node2`).

    The namespaces are made with `unshare --net --uts` (root); each gets one end of a veth pair
    whose other end is on a bridge of this (the host's) namespace, where slurmctld listens: the
    bridge has 10.A.B.1/24 and the nodes .2 and .3, with A.B taken from the controller's port, so
    two clusters do not share a subnet. The mount tree is shared (no `--mount`): both nodes see the
    same files (a shared file system), and the munge socket under `workdir` serves both slurmd (a
    Unix socket bound to a path is reached through the file system, whatever the network
    namespace). Client commands run here, in the host's namespace, through `self.env` as with
    `LocalSlurm`. The partition places a job on the least loaded node (LLN), so two one-CPU jobs
    land on two nodes; `jobs()` gives each job's `NodeList` (no accounting: no sacct). Each node
    has its own spool folder and TmpFS under `workdir`: Slurm's PMIx plugin makes
    `spmix_appdir_<job>.<step>` in TmpFS, and two nodes sharing /tmp would both make it (the
    second step fails with "File exists"). `stop()` also deletes the bridge and the veth pairs.
    """

    NODES = ("node1", "node2")

    def __init__(self, workdir: Path, *, start_timeout: float = 30.0):
        super().__init__(workdir, start_timeout=start_timeout)
        self._links: list[str] = []
        self.addresses: dict[str, str] = {}

    def _start(self) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("TwoNodeSlurm needs root: network namespaces, a bridge, slurmd as root")
        for tool in ("unshare", "ip", "nsenter", "hostname"):
            if shutil.which(tool, path=self.env["PATH"]) is None:
                raise RuntimeError(f"TwoNodeSlurm: {tool} is not on PATH (util-linux, iproute2)")
        done = subprocess.run(["bash", str(ENSURE)], env=self.env, capture_output=True, text=True)
        if done.returncode != 0:
            reason = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
            raise RuntimeError(f"SLURM is not available: {reason[0]}")
        socket_path = self.dir / "munge" / "munge.socket.2"
        if len(str(socket_path)) > _MAX_SOCKET_PATH:
            raise RuntimeError(f"TwoNodeSlurm: workdir {self.workdir} is too long for a unix socket path "
                               f"({socket_path}); use a shorter one")
        if self.dir.exists():
            shutil.rmtree(self.dir)
        munge = self.dir / "munge"
        for sub in (munge, self.dir / "state", self.dir / "spool"):
            sub.mkdir(parents=True)
        munge.chmod(0o700)
        self._start_munged(munge)

        port_ctld, port_d = _free_ports(2)
        net = f"10.{port_ctld >> 8}.{port_ctld & 255}"
        bridge = f"llbr{port_ctld}"
        self._ip(["link", "add", bridge, "type", "bridge"])
        self._links.append(bridge)
        self._ip(["addr", "add", f"{net}.1/24", "dev", bridge])
        self._ip(["link", "set", bridge, "up"])
        self.controller_address = f"{net}.1"
        self.addresses = {node: f"{net}.{i + 2}" for i, node in enumerate(self.NODES)}

        host = socket.gethostname().split(".")[0]
        cpus = os.cpu_count() or 1
        text = _fill(TEMPLATE.read_text(), {
            "NAME": f"two{port_ctld}", "HOST": host, "CPUS": str(cpus), "MEM": str(_real_memory_mb()),
            "DIR": str(self.dir), "PORT_CTLD": str(port_ctld), "PORT_D": str(port_d),
        })
        self.conf.write_text(_two_node_conf(text, self.dir, host, self.controller_address, self.addresses, cpus))
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        for i, node in enumerate(self.NODES):
            (self.dir / "spool" / node).mkdir()
            (self.dir / "tmp" / node).mkdir(parents=True)
            go = self.dir / f"{node}.go"
            # The namespace exists once unshare has exec'd sh; sh names the node, waits for its
            # network (configured from here), then becomes slurmd: the pid stays the daemon's.
            self._spawn(f"slurmd.{node}", [
                "unshare", "--net", "--uts", "--", "sh", "-c",
                'hostname "$1" && while [ ! -e "$2" ]; do sleep 0.05; done && shift 2 && exec "$@"',
                "sh", node, str(go), "slurmd", "-D", "-N", node, "-f", str(self.conf)])
            self._connect(self._procs[f"slurmd.{node}"], bridge, f"llv{port_ctld}{i}",
                          self.addresses[node])
            go.touch()
        self._wait_until_idle()

    def _ip(self, args: list[str], netns_pid: int | None = None) -> None:
        argv = ["ip", *args] if netns_pid is None else ["nsenter", "-t", str(netns_pid), "-n", "ip", *args]
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"TwoNodeSlurm: `{' '.join(argv)}` failed: {done.stderr.strip()}")

    def _connect(self, proc: subprocess.Popen, bridge: str, link: str, address: str) -> None:
        """Give the network namespace of `proc` an eth0 at `address`, the other end of which is on
        `bridge`. Waits until unshare has made the namespace: the peer must never land in ours."""
        pid, ours = proc.pid, os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 10.0
        while proc.poll() is None and os.readlink(f"/proc/{pid}/ns/net") == ours:
            if time.monotonic() > deadline:
                raise RuntimeError(f"TwoNodeSlurm: process {pid} did not enter a new network namespace")
            time.sleep(0.02)
        if proc.poll() is not None:
            raise RuntimeError(f"TwoNodeSlurm: unshare exited with status {proc.returncode}\n" + self.logs())
        self._ip(["link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", str(pid)])
        self._links.append(link)
        self._ip(["link", "set", link, "master", bridge, "up"])
        self._ip(["addr", "add", f"{address}/24", "dev", "eth0"], pid)
        self._ip(["link", "set", "eth0", "up"], pid)
        self._ip(["link", "set", "lo", "up"], pid)

    def _wait_until_idle(self) -> None:
        last = ""
        want = sorted(f"{node} idle" for node in self.NODES)

        def idle() -> bool:
            nonlocal last
            done = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], env=self.env, capture_output=True,
                                  text=True)
            last = (done.stdout + done.stderr).strip()
            return done.returncode == 0 and sorted(last.splitlines()) == want

        self._poll(idle, self.start_timeout, lambda: f"the nodes did not become idle (sinfo: {last!r})")

    def stop(self) -> None:
        """Cancel all jobs, end both slurmd, slurmctld and munged, delete the bridge and veth pairs."""
        atexit.unregister(self.stop)
        procs, self._procs = self._procs, {}
        try:
            if _alive(procs.get("slurmctld")):
                self._cancel_all()
            for name in [*(f"slurmd.{n}" for n in self.NODES), "slurmctld", "munged"]:
                if name in procs:
                    _terminate(procs[name])
            self._kill_leftover_steps()
        finally:
            for out in self._outs:
                out.close()
            self._outs = []
            links, self._links = self._links, []
            for link in reversed(links):  # deleting one end of a veth pair deletes both
                subprocess.run(["ip", "link", "del", link], env=self.env, capture_output=True)

    def logs(self, lines: int = 40) -> str:
        parts = [super().logs(lines)]
        for node in self.NODES:
            for path in (self.dir / f"slurmd.{node}.log", self.dir / f"slurmd.{node}.out"):
                if path.exists() and path.stat().st_size:
                    text = path.read_text(errors="replace").splitlines()[-lines:]
                    parts.append(f"--- {path} ---\n" + "\n".join(text))
                    break
        return "\n".join(parts)


def _two_node_conf(text: str, directory: Path, host: str, controller: str, addresses: dict[str, str],
                   cpus: int) -> str:
    """The one-node slurm.conf made into a two-node one: the controller on the bridge's address,
    per-node spool, pid and log files (%n: the node's name), one NodeName line per node, and a
    partition over both that places jobs on the least loaded node."""
    out = []
    for line in text.splitlines():
        key = line.split("=", 1)[0]
        if key == "SlurmctldHost":
            line = f"SlurmctldHost={host}({controller})"
        elif key == "SlurmdSpoolDir":
            # and a node-local TmpFS: Slurm's PMIx plugin makes spmix_appdir_<job>.<step> there,
            # which two nodes sharing /tmp would both try to create
            line = f"{line}/%n\nTmpFS={directory}/tmp/%n"
        elif key in ("SlurmdPidFile", "SlurmdLogFile"):
            stem, ext = line.rsplit(".", 1)
            line = f"{stem}.%n.{ext}"
        elif key == "NodeName":
            memory = line.split("RealMemory=")[1].split()[0]
            line = "\n".join(f"NodeName={node} NodeAddr={address} CPUs={cpus} RealMemory={memory} State=UNKNOWN"
                             for node, address in addresses.items())
        elif key == "PartitionName":
            line = (f"PartitionName=debug Nodes={','.join(addresses)} Default=YES MaxTime=INFINITE State=UP "
                    "OverSubscribe=FORCE LLN=YES")
        out.append(line)
    return "\n".join(out) + "\n"
