"""rewards.sandbox: each isolation property checked from inside a program, and the probe's refusal."""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from pathlib import Path

import pytest

from rewards import sandbox


def run(code: str, **kw) -> sandbox.Result:
    kw.setdefault("timeout_s", 10.0)
    kw.setdefault("memory_mb", 256)
    return sandbox.run(code, **kw)


def report(code: str, **kw) -> dict:
    """Run a program that prints one JSON object last; return it."""
    res = run(code, **kw)
    assert res.returncode == 0, res
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture
def restore_settings():
    saved = sandbox._settings.__dict__.copy()
    yield
    sandbox._settings.__dict__.update(saved)
    sandbox.configure()  # clears the cached probe


def test_runs_a_program_with_stdin_as_an_unprivileged_user():
    res = run(
        "import os, sys\nprint(sys.stdin.read().upper())\nprint(os.getuid(), os.getppid(), file=sys.stderr)",
        stdin="hi",
    )
    assert res.ok and res.isolated and res.stdout == "HI\n"
    uid, ppid = map(int, res.stderr.split())
    assert uid != 0 and ppid == 1  # its parent is the namespace's init, not anything of ours
    assert run("raise SystemExit(3)").returncode == 3
    assert run("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)").returncode == -15


def test_sees_only_its_own_processes_and_no_capabilities():
    r = report(
        "import json, os\n"
        "s = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
        "print(json.dumps({'pids': [p for p in os.listdir('/proc') if p.isdigit()],"
        " 'eff': s['CapEff'].strip(), 'bnd': s['CapBnd'].strip(), 'nnp': s['NoNewPrivs'].strip()}))"
    )
    assert len(r["pids"]) <= 3  # init, the program (and a transient one)
    assert int(r["eff"], 16) == 0 and int(r["bnd"], 16) == 0 and r["nnp"] == "1"


def test_timeout_kills_a_busy_loop():
    t0 = time.monotonic()
    res = run("while True:\n    pass", timeout_s=1.0)
    assert res.timed_out and res.returncode in (-9, -24)  # wall clock (SIGKILL) or CPU limit (SIGXCPU)
    assert time.monotonic() - t0 < 4.0


def test_timeout_kills_a_fork_bomb_and_an_escaped_daemon():
    marker = f"1000.{secrets.randbelow(10**9)}"
    code = (
        "import os, subprocess\n"
        f"subprocess.Popen(['/usr/bin/sleep', '{marker}'], start_new_session=True)\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        pass\n"
    )
    res = run(code, timeout_s=1.5, max_processes=16)
    assert res.timed_out
    time.sleep(0.2)
    leftovers = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                leftovers.append(pid)
        except OSError:
            pass
    assert leftovers == []


def test_memory_limit():
    res = run("x = bytearray(400 * 1024 * 1024)\nprint('allocated')", memory_mb=128)
    assert res.returncode == 1 and "MemoryError" in res.stderr and "allocated" not in res.stdout


def test_no_network():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        r = report(
            "import json, socket\nout = {}\n"
            f"for host, port in (('127.0.0.1', {port}), ('1.1.1.1', 53)):\n"
            "    try:\n"
            "        socket.create_connection((host, port), timeout=2)\n"
            "        out[host] = 'connected'\n"
            "    except OSError as e:\n"
            "        out[host] = type(e).__name__\n"
            "out['ifaces'] = [n for _, n in socket.if_nameindex()]\n"
            "print(json.dumps(out))"
        )
    finally:
        server.close()
    assert r["127.0.0.1"] != "connected" and r["1.1.1.1"] != "connected"
    assert r["ifaces"] == ["lo"]


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    env = report("import json, os\nprint(json.dumps(dict(os.environ)))")
    assert "RAY_ADDRESS" not in env and "HF_TOKEN" not in env and "HOME" not in env
    assert set(env) <= {"PATH", "LANG", "LC_ALL", "TMPDIR"}


def test_host_files_are_not_reachable(tmp_path):
    ray = tmp_path / "ray" / "session_latest" / "sockets"
    ray.mkdir(parents=True)
    (ray / "raylet").write_text("socket stand-in")  # 0644, like Ray's files
    ckpt = tmp_path / "checkpoints" / "step_1"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_text("weights")
    os.chmod(ckpt / "model.safetensors", 0o644)  # readable by any uid: only the mount namespace hides it
    targets = [str(ray / "raylet"), str(ckpt / "model.safetensors"), os.path.abspath("pyproject.toml")]
    targets += ["/proc/1/environ", "/etc/shadow", "/root/.bashrc"]
    r = report(
        "import json\nout = {}\n"
        f"for p in {targets!r}:\n"
        "    try:\n"
        "        open(p).read()\n"
        "        out[p] = 'read'\n"
        "    except OSError as e:\n"
        "        out[p] = type(e).__name__\n"
        "print(json.dumps(out))"
    )
    assert all(v in ("FileNotFoundError", "PermissionError") for v in r.values()), r
    assert r["/proc/1/environ"] == "PermissionError"  # exists (root-owned init) but not readable


def test_only_its_private_tmp_is_writable_and_it_is_capped():
    r = report(
        "import json\nout = {}\n"
        "for p in ['/x', '/usr/x', '/etc/x', '/dev/x', '/proc/x', '/tmp/x']:\n"
        "    try:\n"
        "        open(p, 'w').write('x')\n"
        "        out[p] = 'wrote'\n"
        "    except OSError as e:\n"
        "        out[p] = type(e).__name__\n"
        "try:\n"
        "    open('/tmp/big', 'wb').write(b'x' * 20 * 1024 * 1024)\n"
        "    out['big'] = 'wrote'\n"
        "except OSError as e:\n"
        "    out['big'] = e.errno\n"
        "print(json.dumps(out))",
        tmp_mb=8,
    )
    assert r.pop("/tmp/x") == "wrote"
    assert r.pop("big") in (27, 28)  # EFBIG (file-size rlimit) or ENOSPC (tmpfs size)
    assert "wrote" not in r.values(), r


def test_output_is_capped():
    res = run(
        "import sys\nsys.stdout.write('x' * 5_000_000)\nsys.stderr.write('y' * 5_000_000)",
        max_output_bytes=1000,
    )
    assert res.ok and len(res.stdout) == 1000 and len(res.stderr) == 1000
    assert res.stdout_truncated and res.stderr_truncated


def test_side_channel():
    res = run("import os\nos.write(4, os.read(3, 100)[::-1])", side_input=b"abc")
    assert res.ok and res.side_output == b"cba"


def test_probe_detects_missing_isolation():
    failures = sandbox.check_isolation("none")  # the probe run as a plain subprocess
    text = "\n".join(failures)
    for what in ("pid namespace", "net namespace", "mnt namespace", "host paths visible"):
        assert what in text
    if os.geteuid() == 0:
        assert "uid/gid 0" in text and "capabilities" in text


def test_refuses_without_isolation_unless_opted_out(monkeypatch, restore_settings):
    monkeypatch.setattr(sandbox, "check_isolation", lambda mode=None: ["forced failure for the test"])
    monkeypatch.delenv(sandbox.UNSAFE_ENV, raising=False)
    sandbox.configure()
    with pytest.raises(sandbox.SandboxUnavailable, match=r"forced failure(.|\n)*allow_unsafe=True"):
        sandbox.run("print(1)", timeout_s=5, memory_mb=256)
    sandbox.configure(allow_unsafe=True)
    with pytest.warns(RuntimeWarning, match="UNISOLATED"):
        res = sandbox.run("print(1)", timeout_s=5, memory_mb=256)
    assert res.ok and res.stdout == "1\n" and not res.isolated


@pytest.mark.skipif(os.geteuid() != 0, reason="as a user the default mode already is userns")
def test_user_namespace_mode_passes_its_probe_and_runs(restore_settings):
    assert sandbox.check_isolation("userns") == []
    sandbox.configure(mode="userns")
    res = run("import os\nprint(os.getuid())")
    assert res.ok and int(res.stdout) != 0


def test_status_names_each_outcome():
    assert run("print(1)").status == "ok"
    assert run("raise SystemExit(3)").status == "error"
    assert run("while True: pass", timeout_s=1.0).status == "timeout"
    assert run("x = bytearray(400 * 1024 * 1024)", memory_mb=128).status == "memory"
    assert run("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)").status == "killed"
