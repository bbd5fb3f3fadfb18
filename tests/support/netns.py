"""NetLab: a private network of Linux network namespaces for multi-host tests, and everything started in it.

Owns every network object and process it creates, and nothing else:
- one bridge in the root namespace, holding the root namespace's address ``10.231.X.1/24`` (so test clients in
  the root namespace reach every host through the bridge, as clients reach pods through a Service);
- one namespace per host (``add_host``), each with its own loopback and one veth leg on the bridge with its own
  address ``10.231.X.<10+n>``, so nothing two hosts run shares a loopback or a port space;
- the processes started inside those namespaces (``popen``), each with a parent-death SIGKILL.

Faults: ``cut(a, b)`` adds blackhole routes for each other's address in both namespaces (packets vanish, as in a
real partition: no RST, no ICMP) and ``heal(a, b)`` removes them; ``link_down(h)`` / ``link_up(h)`` take a host's
bridge port down and up (it loses every peer at once).

Names carry the creating process's PID (``mmh-<pid>-<host>`` namespaces, ``mmh<pid>b`` / ``mmh<pid>v<n>``
links) so that ``sweep_stale`` can remove what a killed earlier run left behind (only objects whose PID is gone),
and the subnet's third octet X is chosen under a lock among those no address or route on this machine uses, so
two runs never collide. ``close`` (idempotent; also run at interpreter exit) kills every process in the lab's
namespaces, by PID, then deletes the namespaces, the veths and the bridge. Needs root and ``ip`` (iproute2);
``unavailable_reason`` says why a lab cannot be built here.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "mmh"
SUBNET = "10.231"  # 10.231.X.0/24, X picked per lab
FIRST_HOST_OCTET = 10
MAX_HOSTS = 40
LOCK_PATH = "/run/lock/modelmesh-netlab.lock"
IP_TIMEOUT_S = 15.0
_NS_RE = re.compile(rf"^{PREFIX}-(\d+)-[a-z0-9-]+$")
_LINK_RE = re.compile(rf"^{PREFIX}(\d+)[bv]\d*$")

_LIVE: set[NetLab] = set()
_LIVE_LOCK = threading.Lock()


class NetLabError(RuntimeError):
    """An ``ip`` command failed while building or changing the lab; the message carries its stderr."""


def _ip(*args: str, check: bool = True) -> str:
    proc = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S, stdin=subprocess.DEVNULL
    )
    if check and proc.returncode != 0:
        raise NetLabError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def unavailable_reason() -> str | None:
    """Why a NetLab cannot be built on this machine (None when it can): not root, no iproute2, or the kernel
    refuses network namespaces or veth/bridge links (e.g. inside an unprivileged container)."""
    if os.geteuid() != 0:
        return "network namespaces need root (these tests run as root in CI)"
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is not installed"
    probe = f"{PREFIX}-{os.getpid()}-probe"
    try:
        _ip("netns", "add", probe)
    except (NetLabError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        _ip("-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
        _ip("-n", probe, "link", "add", "b0", "type", "bridge")
    except (NetLabError, subprocess.TimeoutExpired) as exc:
        return f"cannot create veth/bridge links: {exc}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def _pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _netns_pids(netns: str) -> list[int]:
    out = _ip("netns", "pids", netns, check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def _kill_netns_processes(netns: str, *, attempts: int = 20) -> None:
    """SIGKILL every process inside ``netns`` (a namespace this module created, so every one is ours)."""
    for _ in range(attempts):
        pids = [p for p in _netns_pids(netns) if p != os.getpid()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def remove(names: list[str]) -> None:
    """Remove namespaces (killing every process in them first) and links, by name (names this module made)."""
    namespaces = set(_ip("netns", "list", check=False).split())
    for name in names:
        if name in namespaces:
            _kill_netns_processes(name)
            _ip("netns", "del", name, check=False)
        else:
            _ip("link", "del", name, check=False)


def owned_by(pid: int) -> list[str]:
    """Namespaces and links whose names carry ``pid`` (what the labs of that process created and still exist)."""
    names = []
    for line in _ip("netns", "list", check=False).splitlines():
        name = line.split()[0] if line.strip() else ""
        m = _NS_RE.match(name)
        if m and int(m.group(1)) == pid:
            names.append(name)
    for line in _ip("-o", "link", "show", check=False).splitlines():
        parts = line.split(":", 2)
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@", 1)[0]
        m = _LINK_RE.match(name)
        if m and int(m.group(1)) == pid:
            names.append(name)
    return names


def sweep_stale() -> list[str]:
    """Remove namespaces and links that an earlier lab left when its process died without cleaning up (only
    names carrying a PID that no longer exists). Returns what was removed."""
    removed = []
    for line in _ip("netns", "list", check=False).splitlines():
        name = line.split()[0] if line.strip() else ""
        m = _NS_RE.match(name)
        if m and not _pid_alive(int(m.group(1))):
            remove([name])
            removed.append(name)
    for line in _ip("-o", "link", "show", check=False).splitlines():
        parts = line.split(":", 2)
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@", 1)[0]
        m = _LINK_RE.match(name)
        if m and not _pid_alive(int(m.group(1))):
            remove([name])
            removed.append(name)
    return removed


@dataclass
class Host:
    """One namespace of the lab: its name, its address on the bridge and the root-side end of its veth."""

    name: str
    netns: str
    ip: str
    veth: str
    procs: list[subprocess.Popen] = field(default_factory=list)

    def __hash__(self) -> int:
        return hash(self.netns)


class NetLab:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.bridge = f"{PREFIX}{self.pid}b"
        self.octet = 0
        self.hosts: dict[str, Host] = {}
        self._cuts: set[tuple[str, str]] = set()
        self._closed = False

    # --- building -----------------------------------------------------------------------------

    @property
    def subnet(self) -> str:
        return f"{SUBNET}.{self.octet}.0/24"

    @property
    def root_ip(self) -> str:
        """The root namespace's address on the bridge (where test clients come from)."""
        return f"{SUBNET}.{self.octet}.1"

    def start(self) -> NetLab:
        with _LIVE_LOCK:
            _LIVE.add(self)
        Path(LOCK_PATH).parent.mkdir(parents=True, exist_ok=True)
        with open(LOCK_PATH, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two labs never pick the same subnet
            self.octet = self._free_octet()
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.root_ip}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        return self

    @staticmethod
    def _free_octet() -> int:
        used_text = _ip("-4", "-o", "addr", "show") + _ip("-4", "route", "show", "table", "all")
        used = {int(m) for m in re.findall(rf"{re.escape(SUBNET)}\.(\d+)\.", used_text)}
        free = [x for x in range(1, 255) if x not in used]
        if not free:
            raise NetLabError(f"no free {SUBNET}.X.0/24 subnet on this machine")
        return random.choice(free)

    def add_host(self, name: str) -> Host:
        """A new namespace ``name`` with loopback up and one veth leg on the bridge with its own address."""
        if not re.fullmatch(r"[a-z0-9-]{1,20}", name) or name in self.hosts:
            raise ValueError(f"bad or duplicate host name {name!r}")
        n = len(self.hosts)
        if n >= MAX_HOSTS:
            raise ValueError(f"a lab holds at most {MAX_HOSTS} hosts")
        host = Host(
            name=name,
            netns=f"{PREFIX}-{self.pid}-{name}",
            ip=f"{SUBNET}.{self.octet}.{FIRST_HOST_OCTET + n}",
            veth=f"{PREFIX}{self.pid}v{n}",
        )
        self.hosts[name] = host
        _ip("netns", "add", host.netns)
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        _ip("link", "set", host.veth, "master", self.bridge)
        _ip("link", "set", host.veth, "up")
        _ip("-n", host.netns, "link", "set", "lo", "up")
        _ip("-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
        _ip("-n", host.netns, "link", "set", "eth0", "up")
        return host

    # --- faults -------------------------------------------------------------------------------

    def cut(self, a: Host, b: Host) -> None:
        """Partition ``a`` and ``b`` both ways (blackhole routes: packets are dropped silently)."""
        for src, dst in ((a, b), (b, a)):
            if (src.netns, dst.ip) not in self._cuts:
                _ip("-n", src.netns, "route", "add", "blackhole", f"{dst.ip}/32")
                self._cuts.add((src.netns, dst.ip))

    def heal(self, a: Host, b: Host) -> None:
        for src, dst in ((a, b), (b, a)):
            if (src.netns, dst.ip) in self._cuts:
                _ip("-n", src.netns, "route", "del", "blackhole", f"{dst.ip}/32")
                self._cuts.discard((src.netns, dst.ip))

    def is_cut(self, a: Host, b: Host) -> bool:
        return (a.netns, b.ip) in self._cuts

    def link_down(self, host: Host) -> None:
        """Take the host's bridge port down: it loses every peer (and the root namespace) at once."""
        _ip("link", "set", host.veth, "down")

    def link_up(self, host: Host) -> None:
        _ip("link", "set", host.veth, "up")

    # --- processes ----------------------------------------------------------------------------

    def popen(
        self, host: Host, argv: list[str], *, log_path: Path, env: dict[str, str], cwd: str | None = None
    ) -> subprocess.Popen:
        """Start ``argv`` inside ``host``'s namespace, output appended to ``log_path``, in its own process
        group, with SIGKILL when this process dies (``setpriv --pdeathsig``; from the main thread only,
        since the signal fires when the forking *thread* exits)."""
        cmd = ["ip", "netns", "exec", host.netns, *argv]
        setpriv = shutil.which("setpriv")
        if setpriv and threading.current_thread() is threading.main_thread():
            cmd = [setpriv, "--pdeathsig", "KILL", "--", *cmd]
        with open(log_path, "ab") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')} in {host.netns} ---\n".encode())
            log.flush()
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        host.procs.append(proc)
        return proc

    def kill_all_in(self, host: Host) -> None:
        """SIGKILL every process in ``host``'s namespace and reap the ones this lab started."""
        _kill_netns_processes(host.netns)
        for proc in host.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        host.procs = [p for p in host.procs if p.poll() is None]

    # --- teardown -----------------------------------------------------------------------------

    def close(self) -> None:
        """Kill every process in the lab's namespaces, delete the namespaces, veths and bridge. Idempotent;
        every step runs even if an earlier one failed."""
        if self._closed:
            return
        self._closed = True
        for host in self.hosts.values():
            with contextlib.suppress(Exception):
                self.kill_all_in(host)
        for host in self.hosts.values():
            _ip("netns", "del", host.netns, check=False)
            _ip("link", "del", host.veth, check=False)  # normally gone with its peer
        _ip("link", "del", self.bridge, check=False)
        self._cuts.clear()
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def leftovers(self) -> list[str]:
        """Namespaces or links of this lab that still exist (empty after ``close``)."""
        names = set(_ip("netns", "list", check=False).split())
        links = _ip("-o", "link", "show", check=False)
        left = [h.netns for h in self.hosts.values() if h.netns in names]
        left += [
            n
            for n in (self.bridge, *(h.veth for h in self.hosts.values()))
            if f" {n}:" in links or f" {n}@" in links
        ]
        return left

    def __enter__(self) -> NetLab:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


@atexit.register
def close_all() -> None:
    """Close every lab of this process that is still open."""
    with _LIVE_LOCK:
        labs = list(_LIVE)
    for lab in labs:
        with contextlib.suppress(Exception):
            lab.close()
