"""Run untrusted Python (model-written code) in an isolated, resource-limited process.

Isolation, per program (DESIGN section 5):

- ``unshare`` (util-linux, on every Debian) gives a fresh PID, network, IPC, mount, UTS and cgroup
  namespace; when the caller is not root it adds a user namespace. The init process
  (``_sandbox_init.py``, PID 1 there) builds a new root filesystem: a read-only tmpfs that holds only
  the system libraries (``/usr``, ``/lib*``, ``/bin``), the interpreter's prefix, ``/dev/null``-like
  devices, a fresh ``/proc`` and a size-capped writable ``/tmp``, then ``pivot_root``s into it. The
  host's ``/tmp`` (Ray's sockets), ``/dev/shm``, ``/home``, ``/root``, the project, run directories
  and checkpoints do not exist inside: a root-owned 0644 checkpoint is readable by any uid, so file
  permissions alone would not hide it; an allow-list root does.
- The program runs as a fresh unprivileged uid (a random one in ``UID_RANGE`` as root, so
  ``RLIMIT_NPROC`` counts only this program; behind a nested user namespace otherwise) with no
  supplementary groups, an empty capability bounding set and ``no_new_privs``.
- rlimits: address space (``memory_mb``), CPU seconds, file size, open files, processes, no core.
- Its environment is built from nothing: ``PATH``, ``LANG``, ``TMPDIR=/tmp``. No ``RAY_*``, ``HOME``,
  tokens. The network namespace has only a down loopback.
- stdout and stderr are read by the parent and capped; a wall-clock deadline kills the whole tree
  (PID 1 kills everything left; the parent kills PID 1 as a backstop, which ends the namespace).

Before the first program a probe program checks these properties from the inside and the module
refuses to run (``SandboxUnavailable``) when one fails, unless the user opts out with
``configure(allow_unsafe=True)`` or ``ALIGN_SANDBOX_ALLOW_UNSAFE=1``: then programs run as plain
subprocesses with only rlimits, the scrubbed environment, a temp working directory and the deadline.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

UID_RANGE = (1_700_000_000, 1_701_000_000)
UNSAFE_ENV = "ALIGN_SANDBOX_ALLOW_UNSAFE"
_INIT = str(Path(__file__).with_name("_sandbox_init.py"))
_PROGRAM_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "TMPDIR": "/tmp",
}
_SETUP_ALLOWANCE_S = 10.0  # parent's backstop on top of the program's own deadline (covers start-up)


class SandboxUnavailable(RuntimeError):
    """Isolation does not work on this machine; the message lists what failed and how to opt out."""


@dataclasses.dataclass(frozen=True)
class Result:
    """Outcome of one program. ``returncode`` is the program's exit status (``-N``: killed by signal N;
    None: the sandbox failed before the program ran, see ``error``)."""

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    duration_s: float
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    cpu_s: float | None = None
    max_rss_mb: float | None = None
    isolated: bool = True
    side_output: bytes = b""
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Exited with status 0 within its time."""
        return self.returncode == 0 and not self.timed_out and self.error is None

    @property
    def status(self) -> str:
        """``ok``; ``timeout`` (past its wall-clock or CPU limit); ``memory`` (ended by a
        ``MemoryError``: its address-space limit); ``killed`` (ended by another signal); ``error`` (a
        non-zero exit, or the sandbox failed before the program ran, see ``error``)."""
        if self.error is not None or self.returncode is None:
            return "error"
        if self.timed_out or self.returncode == -signal.SIGXCPU:
            return "timeout"
        if self.returncode == 0:
            return "ok"
        tail = self.stderr.rstrip().rsplit("\n", 1)[-1]
        if tail.startswith("MemoryError"):
            return "memory"
        return "killed" if self.returncode < 0 else "error"


@dataclasses.dataclass
class _Settings:
    allow_unsafe: bool = False
    mode: str = "auto"  # auto | root | userns | none
    python: str | None = None


_settings = _Settings()
_probe_lock = threading.Lock()
_probe_state: dict = {}  # {"mode": str, "failures": list[str]} once probed


def configure(
    *, allow_unsafe: bool | None = None, mode: str | None = None, python: str | None = None
) -> None:
    """Change how programs run; resets the isolation probe.

    allow_unsafe: run without isolation (with a warning) when the probe fails, instead of refusing.
    mode: ``auto`` (``root`` when running as root, else ``userns``), ``root``, ``userns``, or ``none``
        (no isolation at all; still needs ``allow_unsafe``).
    python: interpreter for programs (default: the base interpreter of the running Python, so programs
        get its standard library and site-packages, never the project's virtual environment).
    """
    if allow_unsafe is not None:
        _settings.allow_unsafe = allow_unsafe
    if mode is not None:
        if mode not in ("auto", "root", "userns", "none"):
            raise ValueError(f"mode must be auto, root, userns or none, not {mode!r}")
        _settings.mode = mode
    if python is not None:
        _settings.python = python
    with _probe_lock:
        _probe_state.clear()


def _python() -> str:
    return os.path.realpath(_settings.python or getattr(sys, "_base_executable", None) or sys.executable)


def _mode() -> str:
    if _settings.mode != "auto":
        return _settings.mode
    return "root" if os.geteuid() == 0 else "userns"


def run(
    code: str,
    *,
    stdin: str = "",
    timeout_s: float,
    memory_mb: int,
    tmp_mb: int = 64,
    max_output_bytes: int = 64 * 1024,
    max_processes: int = 32,
    max_open_files: int = 64,
    side_input: bytes | None = None,
) -> Result:
    """Run ``code`` (a Python program) in the sandbox and return what it did.

    timeout_s: wall-clock limit of the program; its CPU-seconds limit is the same, rounded up
        (``timed_out`` is set when either one stops it).
    memory_mb: address-space limit. tmp_mb: size of its private writable /tmp.
    max_output_bytes: cap on each of stdout and stderr (the rest is read and dropped).
    side_input: when given, the program also has fd 3 (reads these bytes) and fd 4 (writes come back
        as ``Result.side_output``): a channel that is not stdin/stdout, for graders (see code reward).
    Raises SandboxUnavailable when isolation does not work and the user has not opted out.
    """
    mode = _ensure_isolation()
    return _launch(
        code,
        mode=mode,
        stdin=stdin,
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        tmp_mb=tmp_mb,
        max_output_bytes=max_output_bytes,
        max_processes=max_processes,
        max_open_files=max_open_files,
        side_input=side_input,
    )


def _ensure_isolation() -> str:
    """The mode to run in, probing once per process; raises when isolation fails and unsafe is not allowed."""
    with _probe_lock:
        if not _probe_state:
            mode = _mode()
            failures = (
                ["isolation is switched off (mode='none')"] if mode == "none" else check_isolation(mode)
            )
            _probe_state.update(mode=mode, failures=failures)
            allow = _settings.allow_unsafe or os.environ.get(UNSAFE_ENV, "") not in ("", "0")
            if failures and allow:
                warnings.warn(
                    "rewards.sandbox: isolation unavailable, running model-written code UNISOLATED "
                    "(allow_unsafe): " + "; ".join(failures),
                    RuntimeWarning,
                    stacklevel=3,
                )
                _probe_state["mode"] = "none"
            elif failures:
                _probe_state["error"] = (
                    f"rewards.sandbox refuses to run model-written code: isolation ({mode!r} mode) failed "
                    "its probe:\n  - " + "\n  - ".join(failures) + "\nFix the cause (as root the sandbox "
                    "needs `unshare` from util-linux and namespaces; as a user, unprivileged user "
                    "namespaces), or opt out explicitly with rewards.sandbox.configure(allow_unsafe=True) "
                    f"or {UNSAFE_ENV}=1 (programs then run as plain subprocesses)."
                )
        if "error" in _probe_state:
            raise SandboxUnavailable(_probe_state["error"])
        return _probe_state["mode"]


def _launch(
    code,
    *,
    mode,
    stdin,
    timeout_s,
    memory_mb,
    tmp_mb,
    max_output_bytes,
    max_processes,
    max_open_files,
    side_input,
) -> Result:
    isolate = mode != "none"
    uid = random.randrange(*UID_RANGE)
    python = _python()
    prefix = os.path.realpath(sys.base_prefix)
    cfg = {
        "isolate": isolate,
        "userns": mode == "userns",
        "uid": uid,
        "tmp_owner": 0 if mode == "userns" else uid,
        "tmp_mb": int(tmp_mb),
        "python": python,
        "binds": sorted({prefix, os.path.dirname(os.path.dirname(python))} - {"/", "/usr"}),
        "cap_last_cap": _cap_last_cap(),
        "timeout_s": float(timeout_s),
        "env": dict(_PROGRAM_ENV),
        "limits": {
            "memory_mb": int(memory_mb),
            "cpu_s": max(1, int(timeout_s + 0.999)),
            "file_mb": int(tmp_mb),
            "open_files": int(max_open_files),
            "processes": int(max_processes),
        },
        "code": code,
    }
    private = tempfile.mkdtemp(prefix="align-sandbox-")  # 0700: only the caller (and its init) reads it
    if not isolate:
        cfg["workdir"] = os.path.join(private, "work")
        os.mkdir(cfg["workdir"])
    cfg_path = os.path.join(private, "config.json")
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(cfg, f)

    ctl_r, ctl_w = os.pipe()
    child_fds = [ctl_w]
    side_r = side_in_w = None
    args = [python, "-I", "-S", _INIT, cfg_path, str(ctl_w)]
    if side_input is not None:
        side_in_r, side_in_w = os.pipe()
        side_r, side_out_w = os.pipe()
        child_fds += [side_in_r, side_out_w]
        args += [str(side_in_r), str(side_out_w)]
    if isolate:
        ns = ["--pid", "--fork", "--kill-child", "--mount", "--net", "--ipc", "--uts", "--cgroup"]
        ns += ["--propagation", "private"]
        if mode == "userns":
            ns += ["--user", "--map-root-user"]
        args = [_unshare(), *ns, "--", *args]
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=child_fds,
            env={"PATH": _PROGRAM_ENV["PATH"], "LC_ALL": "C.UTF-8"},
            start_new_session=True,
            cwd="/",
        )
    except OSError as e:
        for fd in child_fds + [ctl_r] + [fd for fd in (side_r, side_in_w) if fd is not None]:
            os.close(fd)
        shutil.rmtree(private, ignore_errors=True)
        return Result(None, "", "", False, 0.0, isolated=isolate, error=f"cannot start sandbox: {e}")
    for fd in child_fds:
        os.close(fd)
    if side_in_w is not None:
        os.write(side_in_w, side_input[:60000])  # fits a pipe buffer; then EOF
        os.close(side_in_w)
    try:
        out = _pump(proc, stdin, ctl_r, side_r, max_output_bytes, timeout_s + _SETUP_ALLOWANCE_S)
    finally:
        _kill(proc)
        shutil.rmtree(private, ignore_errors=True)
    duration = time.monotonic() - start
    ctl = out["ctl"]
    status = next((m for m in ctl if "returncode" in m), None)
    error = next((m["error"] for m in ctl if "error" in m), None)
    if status is None and error is None:
        error = (
            f"sandbox init died (status {proc.returncode}): " + out["stderr"].decode(errors="replace")[-500:]
        )
    return Result(
        returncode=status["returncode"] if status else None,
        stdout=out["stdout"].decode(errors="replace"),
        stderr=out["stderr"].decode(errors="replace"),
        timed_out=bool(status and status["timed_out"]) or (status is None and out["deadline"]),
        duration_s=status["duration_s"] if status else duration,
        stdout_truncated=out["stdout_truncated"],
        stderr_truncated=out["stderr_truncated"],
        cpu_s=status["cpu_s"] if status else None,
        max_rss_mb=status["max_rss_mb"] if status else None,
        isolated=isolate,
        side_output=out["side"],
        error=error,
    )


def _pump(proc, stdin: str, ctl_r: int, side_r: int | None, cap: int, backstop_s: float) -> dict:
    """Feed stdin and read stdout/stderr/control/side pipes until all close or the backstop passes."""
    sel = selectors.DefaultSelector()
    bufs = {"stdout": bytearray(), "stderr": bytearray(), "ctl": bytearray(), "side": bytearray()}
    caps = {"stdout": cap, "stderr": cap, "ctl": 1 << 16, "side": 1 << 16}
    dropped = {k: False for k in bufs}
    readers = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr", ctl_r: "ctl"}
    if side_r is not None:
        readers[side_r] = "side"
    for fd in readers:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    data_in = memoryview(stdin.encode())
    w = proc.stdin.fileno()
    if data_in:
        os.set_blocking(w, False)
        sel.register(w, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    deadline = time.monotonic() + backstop_s
    hit_deadline = False
    open_readers = set(readers)
    while open_readers:
        left = deadline - time.monotonic()
        if left <= 0:
            hit_deadline = True
            break
        for key, _ in sel.select(timeout=min(left, 1.0)):
            fd = key.fd
            if fd == w:
                try:
                    data_in = data_in[os.write(w, data_in[:65536]) :]
                except BlockingIOError:
                    continue
                except BrokenPipeError:
                    data_in = data_in[:0]
                if not data_in:
                    sel.unregister(w)
                    proc.stdin.close()
                continue
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            name = readers[fd]
            if not chunk:
                sel.unregister(fd)
                open_readers.discard(fd)
                continue
            room = caps[name] - len(bufs[name])
            bufs[name] += chunk[: max(room, 0)]
            dropped[name] |= len(chunk) > room
    sel.close()
    if not proc.stdin.closed:
        try:
            proc.stdin.close()
        except OSError:
            pass
    if ctl_r in open_readers or hit_deadline:
        _kill(proc)
    os.close(ctl_r)
    if side_r is not None:
        os.close(side_r)
    ctl = []
    for line in bytes(bufs["ctl"]).splitlines():
        try:
            ctl.append(json.loads(line))
        except ValueError:
            pass
    return {
        "stdout": bytes(bufs["stdout"]),
        "stderr": bytes(bufs["stderr"]),
        "side": bytes(bufs["side"]),
        "ctl": ctl,
        "stdout_truncated": dropped["stdout"],
        "stderr_truncated": dropped["stderr"],
        "deadline": hit_deadline,
    }


def _kill(proc: subprocess.Popen) -> None:
    """Kill the launcher's process group (unshare and PID 1; PID 1's death ends the namespace)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    for f in (proc.stdout, proc.stderr, proc.stdin):
        if f is not None and not f.closed:
            f.close()


def _unshare() -> str:
    path = shutil.which("unshare", path="/usr/bin:/bin:/usr/sbin:/sbin")
    if path is None:
        raise FileNotFoundError("`unshare` (util-linux) not found")
    return path


def _cap_last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return 40


# -- probe ------------------------------------------------------------------------------------------

_PROBE = r"""
import json, os, resource, socket
r = {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups()}
status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
r["caps"] = {k: int(status[k].strip(), 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
r["no_new_privs"] = status.get("NoNewPrivs", "0").strip()
r["ns"] = {}
for k in ("pid", "net", "ipc", "mnt"):
    try:
        r["ns"][k] = os.readlink("/proc/self/ns/" + k)
    except OSError as e:
        r["ns"][k] = "unreadable: %s" % e
r["ifaces"] = [n for _, n in socket.if_nameindex()]
r["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
r["env"] = sorted(os.environ)
r["writable"] = [d for d in ("/", "/usr", "/etc", "/dev", "/proc", "/tmp") if os.access(d, os.W_OK)]
r["visible"] = [p for p in VISIBLE if os.path.exists(p)]
r["nproc"] = resource.getrlimit(resource.RLIMIT_NPROC)[0]
r["as"] = resource.getrlimit(resource.RLIMIT_AS)[0]
print(json.dumps(r))
"""


def check_isolation(mode: str | None = None) -> list[str]:
    """Run the probe program in ``mode`` (default: the configured one); return what is not isolated
    (an empty list means every check passed)."""
    mode = mode or _mode()
    parent_ns = {}
    for k in ("pid", "net", "ipc", "mnt"):
        try:
            parent_ns[k] = os.readlink(f"/proc/self/ns/{k}")
        except OSError:
            parent_ns[k] = None
    # Paths that exist here and must not exist inside: the working directory (the project), the
    # interpreter's environment when it is not the base one, /tmp content, and /root or /home.
    here = {os.getcwd(), sys.prefix, "/root", "/home", "/run", "/var", "/mnt", "/srv", "/opt"}
    marker = tempfile.NamedTemporaryFile(prefix="align-probe-", delete=False)  # noqa: SIM115
    marker.close()
    here.add(marker.name)
    own = {
        "/",
        "/tmp",
        "/etc",
        "/dev",
        "/proc",
        "/usr",
        "/bin",
        "/sbin",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
    }
    allowed = {"/usr", os.path.realpath(sys.base_prefix)}
    visible = sorted(p for p in here if os.path.exists(p) and p not in own and not _related(p, allowed))
    code = f"VISIBLE = {visible!r}\n" + _PROBE
    try:
        res = _launch(
            code,
            mode=mode,
            stdin="",
            timeout_s=20.0,
            memory_mb=512,
            tmp_mb=4,
            max_output_bytes=1 << 16,
            max_processes=32,
            max_open_files=64,
            side_input=None,
        )
    except OSError as e:
        return [f"cannot start the sandbox: {e}"]
    finally:
        os.unlink(marker.name)
    if res.error or res.returncode != 0:
        return [
            f"probe program did not run: {res.error or ''} rc={res.returncode} {res.stderr[-800:]}".strip()
        ]
    try:
        r = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return [f"probe printed no report: {res.stdout[-300:]!r}"]
    failures = []
    if r["uid"] == 0 or r["euid"] == 0 or r["gid"] == 0 or 0 in r["groups"]:
        failures.append(f"runs as uid/gid 0 (uid={r['uid']}, gid={r['gid']}, groups={r['groups']})")
    held = {k: v for k, v in r["caps"].items() if v}
    if held:
        failures.append(f"holds capabilities {held}")
    if r["no_new_privs"] != "1":
        failures.append("no_new_privs is not set")
    for k, v in r["ns"].items():
        if parent_ns.get(k) is None or v == parent_ns[k] or v.startswith("unreadable"):
            failures.append(f"{k} namespace not separate ({v})")
    if set(r["ifaces"]) - {"lo"}:
        failures.append(f"network interfaces visible: {r['ifaces']}")
    if len(r["pids"]) > 3:
        failures.append(f"sees {len(r['pids'])} processes (no private PID namespace)")
    if set(r["env"]) - set(_PROGRAM_ENV):
        failures.append(f"environment not scrubbed: {sorted(set(r['env']) - set(_PROGRAM_ENV))[:10]}")
    if set(r["writable"]) != {"/tmp"}:
        failures.append(f"writable places: {r['writable']} (expected only /tmp)")
    if r["visible"]:
        failures.append(f"host paths visible inside: {r['visible']}")
    if r["nproc"] != 32 or r["as"] != 512 * 1024 * 1024:
        failures.append(f"rlimits not applied (nproc={r['nproc']}, as={r['as']})")
    return failures


def _related(path: str, roots: set[str]) -> bool:
    """True when `path` is one of `roots`, lies below one, or is an ancestor of one (bind points)."""
    for root in roots - {"/"}:
        if path == root or path.startswith(root.rstrip("/") + "/") or root.startswith(path.rstrip("/") + "/"):
            return True
    return False
