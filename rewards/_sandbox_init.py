"""Init process of one sandbox run; standard library only, started as `python -I -S` by rewards.sandbox.

In isolated mode `unshare` has already put this process into fresh PID, network, IPC, mount, UTS and
cgroup namespaces (and, when the caller is not root, a user namespace where it is root); it is PID 1
there. It builds a minimal root filesystem, forks the program with rlimits and no privileges, waits
for it with a wall-clock deadline, and reports the outcome as one JSON line on the control fd, which
the program never holds. When PID 1 exits the kernel kills every process left in the namespace.

    argv: CONFIG_JSON_PATH CONTROL_FD [SIDE_IN_FD SIDE_OUT_FD]
"""

import ctypes
import fcntl
import json
import os
import resource
import signal
import sys
import time

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC = 32, 4096, 16384
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
CLONE_NEWUSER = 0x10000000
PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 4, 24, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

libc = ctypes.CDLL(None, use_errno=True)


def _check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(s):
    return None if s is None else s.encode()


def mount(src, dst, fstype, flags, data=None):
    _check(libc.mount(_b(src), _b(dst), _b(fstype), ctypes.c_ulong(flags), _b(data)), f"mount {dst}")


def _locked_flags(path):
    """Mount flags of `path` that a remount must keep (a user namespace may not clear them)."""
    f = os.statvfs(path).f_flag
    out = 0
    for st, ms in ((1, MS_RDONLY), (2, MS_NOSUID), (4, MS_NODEV), (8, MS_NOEXEC)):
        out |= ms if f & st else 0
    for st, ms in ((1024, MS_NOATIME), (2048, MS_NODIRATIME), (4096, MS_RELATIME)):
        out |= ms if f & st else 0
    return out


def bind_ro(src, dst):
    if os.path.isdir(src):
        os.makedirs(dst, mode=0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), mode=0o755, exist_ok=True)
        open(dst, "a").close()
    mount(src, dst, None, MS_BIND | MS_REC)
    flags = _locked_flags(src) | MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV
    mount(None, dst, None, flags)


def build_root(cfg, code):
    """Mount a read-only tmpfs root holding only system libraries, the interpreter, /dev basics, a
    fresh /proc and a size-capped writable /tmp; pivot into it so nothing else of the host is reachable."""
    new = "/tmp"  # any existing directory works as a mount point: this mount namespace is private
    mount("sandbox", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=0755")
    for d in ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        p = "/" + d
        if os.path.islink(p):
            os.symlink(os.readlink(p), new + p)
        elif os.path.isdir(p):
            bind_ro(p, new + p)
    for p in cfg["binds"]:  # the interpreter's prefix when it is not under /usr
        if os.path.exists(p) and not os.path.exists(new + p):
            bind_ro(p, new + p)
    os.mkdir(new + "/etc", 0o755)
    for p in ("/etc/ld.so.cache", "/etc/localtime"):
        if os.path.isfile(p):
            bind_ro(os.path.realpath(p), new + p)
    os.mkdir(new + "/dev", 0o755)
    for n in ("null", "zero", "full", "random", "urandom"):
        open(f"{new}/dev/{n}", "a").close()
        mount(f"/dev/{n}", f"{new}/dev/{n}", None, MS_BIND)
    for n, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1")):
        os.symlink(target, f"{new}/dev/{n}")
    os.symlink("/proc/self/fd/2", f"{new}/dev/stderr")
    os.mkdir(new + "/proc", 0o555)
    mount("proc", new + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.mkdir(new + "/tmp", 0o700)
    owner = cfg["tmp_owner"]
    opts = f"size={cfg['tmp_mb']}m,nr_inodes=16384,mode=0700,uid={owner},gid={owner}"
    mount("sandbox-tmp", new + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, opts)
    with open(new + "/tmp/main.py", "w", encoding="utf-8") as f:
        f.write(code)
    os.chown(new + "/tmp/main.py", owner, owner)
    os.chdir(new)
    nr = SYS_PIVOT_ROOT.get(os.uname().machine)
    if nr is not None and libc.syscall(nr, b".", b".") == 0:
        _check(libc.umount2(b".", MNT_DETACH), "umount old root")
    else:  # unknown arch or pivot_root refused: chroot; the program has no CAP_SYS_CHROOT to leave it
        os.chroot(".")
    os.chdir("/")
    mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    return "/tmp"


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def drop_privileges(cfg):
    """Become cfg['uid'] with no capabilities (any set), no supplementary groups, no_new_privs."""
    uid = gid = cfg["uid"]
    if cfg["userns"]:
        # We are root only inside a user namespace mapped to the caller. A nested user namespace lets
        # us become a non-zero uid (mapped to the same caller outside) without any helper binary.
        _check(libc.unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} 0 1"), ("gid_map", f"{gid} 0 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    last_cap = cfg["cap_last_cap"]
    for cap in range(last_cap + 1):
        _check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    if not cfg["userns"]:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)  # leaving uid 0 clears the permitted and effective sets
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()  # all zero: no effective, permitted or inheritable capability
    _check(libc.capset(ctypes.byref(hdr), data), "capset")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def set_limits(cfg):
    lim = cfg["limits"]
    mb = 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (lim["memory_mb"] * mb, lim["memory_mb"] * mb))
    resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["file_mb"] * mb, lim["file_mb"] * mb))
    resource.setrlimit(resource.RLIMIT_NOFILE, (lim["open_files"], lim["open_files"]))
    resource.setrlimit(resource.RLIMIT_NPROC, (lim["processes"], lim["processes"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def child(cfg, workdir, err_w, side_fds):
    """Runs in the forked child: everything that can fail is reported on err_w before exec."""
    try:
        os.setsid()
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGALRM, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        # Park every fd we keep above the range we close, then place the side channel at 3 and 4.
        err_w = fcntl.fcntl(err_w, fcntl.F_DUPFD_CLOEXEC, 1000)
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 1001) for fd in side_fds or ()]
        for target, fd in zip((3, 4), high):
            os.dup2(fd, target)
        os.closerange(3 + len(high), err_w)
        os.closerange(err_w + 1, 65536)
        os.chdir(workdir)
        set_limits(cfg)
        if cfg["isolate"]:
            drop_privileges(cfg)
        python = cfg["python"]
        os.execve(python, [python, "-I", "main.py"], cfg["env"])
    except BaseException as e:  # noqa: BLE001 - anything before exec is a sandbox failure
        os.write(err_w, f"{type(e).__name__}: {e}".encode()[:2000])
    finally:
        os._exit(127)


def main():
    cfg_path, ctl_fd = sys.argv[1], int(sys.argv[2])
    side_fds = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 4 else None
    ctl = os.fdopen(ctl_fd, "w", buffering=1)

    def report(**msg):
        ctl.write(json.dumps(msg) + "\n")
        ctl.flush()

    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # nobody may ptrace or read the memory of this process
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
        code = cfg.pop("code")
        if cfg["isolate"]:
            workdir = build_root(cfg, code)
        else:
            workdir = cfg["workdir"]
            with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8") as f:
                f.write(code)
    except BaseException as e:  # noqa: BLE001
        report(error=f"sandbox setup failed: {type(e).__name__}: {e}")
        os._exit(125)

    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        ctl.close()
        os.close(err_r)
        child(cfg, workdir, err_w, side_fds)
    os.close(err_w)
    for fd in side_fds or ():
        os.close(fd)
    msg = b""
    while chunk := os.read(err_r, 4096):
        msg += chunk
    os.close(err_r)
    if msg:
        os.waitpid(pid, 0)
        report(error="sandbox could not start the program: " + msg.decode(errors="replace"))
        os._exit(125)
    start = time.monotonic()
    timed_out = []

    def on_deadline(signum, frame):
        timed_out.append(True)
        _kill_all(cfg, pid)  # the blocked wait4 below then returns with the program's death

    signal.signal(signal.SIGALRM, on_deadline)
    signal.setitimer(signal.ITIMER_REAL, max(cfg["timeout_s"], 0.001))
    _, status, usage = os.wait4(pid, 0)
    signal.setitimer(signal.ITIMER_REAL, 0)
    duration = time.monotonic() - start
    if not cfg["isolate"]:
        _kill_all(cfg, pid)  # leftovers in the program's session; in a namespace our exit does this
    rc = os.waitstatus_to_exitcode(status)
    timed_out = bool(timed_out) or rc == -signal.SIGXCPU  # the CPU-seconds limit is a time-out too
    report(
        returncode=rc,
        timed_out=timed_out,
        duration_s=duration,
        cpu_s=usage.ru_utime + usage.ru_stime,
        max_rss_mb=usage.ru_maxrss / 1024,
    )
    os._exit(0)


def _kill_all(cfg, pid):
    try:
        if cfg["isolate"]:
            os.kill(-1, signal.SIGKILL)  # PID 1 of a namespace: every other process in it
        else:
            os.killpg(pid, signal.SIGKILL)  # the program's own session (setsid in child)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    main()
