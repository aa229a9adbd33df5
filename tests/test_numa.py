"""numa.apply_placement in real processes: set before exec, inherited by threads and grandchildren.

Every call that changes affinity or memory policy runs in a child process, never in pytest's own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


from llm_supervisor.host import numa
from llm_supervisor.cpulist import format_cpulist

REPO = str(Path(__file__).resolve().parent.parent)

# The trampoline: pin, then exec argv[2:] (what the guard does between fork and exec).
TRAMPOLINE = (
    "import os, sys; sys.path.insert(0, {repo!r}); from llm_supervisor.host import numa; "
    "r = numa.apply_placement({cpus!r}, {nodes!r}, {policy!r}); "
    "open(sys.argv[1], 'w').write(r); os.execvp(sys.argv[2], sys.argv[2:])"
)

# The exec'd program: starts threads and a grandchild, reports, then waits for stdin to close.
ENGINE = r"""
import json, os, subprocess, sys, threading
sys.path.insert(0, sys.argv[1])
from llm_supervisor.host import numa
stop = threading.Event()
threads = [threading.Thread(target=stop.wait) for _ in range(3)]
for t in threads:
    t.start()
grandchild = subprocess.run([sys.executable, "-c",
    "import os, sys, json; sys.path.insert(0, sys.argv[1]); from llm_supervisor.host import numa; "
    "print(json.dumps([sorted(os.sched_getaffinity(0)), numa.get_mempolicy()]))", sys.argv[1]],
    capture_output=True, text=True, check=True)
print(json.dumps({"pid": os.getpid(), "affinity": sorted(os.sched_getaffinity(0)),
                  "policy": numa.get_mempolicy(), "grandchild": json.loads(grandchild.stdout)}), flush=True)
sys.stdin.read()
stop.set()
"""


def test_format_cpulist():
    assert format_cpulist([0, 1, 2, 5]) == "0-2,5"
    assert format_cpulist([]) == ""
    assert format_cpulist({7}) == "7"
    assert format_cpulist([3, 1, 2, 2, 10, 11, 64]) == "1-3,10-11,64"


def test_node_mask_uses_libnuma_maxnode():
    mask, maxnode = numa._node_mask([0])
    assert list(mask) == [1] and maxnode == 65
    mask, maxnode = numa._node_mask([1, 65])
    assert list(mask) == [2, 2] and maxnode == 129


def test_pinned_before_exec_reaches_threads_and_grandchild(tmp_path):
    cpu = max(os.sched_getaffinity(0))
    result_file = tmp_path / "placement.txt"
    code = TRAMPOLINE.format(repo=REPO, cpus=[cpu], nodes=[0], policy="bind")
    proc = subprocess.Popen([sys.executable, "-c", code, str(result_file), sys.executable, "-c", ENGINE, REPO],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        report = json.loads(proc.stdout.readline())
        pid = report["pid"]
        assert pid == proc.pid  # exec kept the process
        assert os.sched_getaffinity(pid) == {cpu}
        tasks = sorted(Path(f"/proc/{pid}/task").iterdir())
        assert len(tasks) >= 4  # main thread + 3
        for task in tasks:
            status = (task / "status").read_text()
            line = next(ln for ln in status.splitlines() if ln.startswith("Cpus_allowed_list:"))
            assert line.split()[1] == str(cpu), f"thread {task.name}: {line}"
        assert report["affinity"] == [cpu]
        assert report["grandchild"][0] == [cpu]
        applied = result_file.read_text()
        assert applied.startswith(f"cpus {cpu}, mempolicy ")
        if applied == f"cpus {cpu}, mempolicy bind:0":
            assert report["policy"] == ["bind", [0]]
            assert report["grandchild"][1] == ["bind", [0]]
            assert "bind:0" in Path(f"/proc/{pid}/numa_maps").read_text()
        else:  # a seccomp profile without CAP_SYS_NICE: CPUs only, and said so
            assert applied.endswith("CPUs only")
            assert report["policy"][0] == "default"
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == 0


REFUSALS = r"""
import errno, json, os, sys
sys.path.insert(0, sys.argv[1])
from llm_supervisor.host import numa
cpu = max(os.sched_getaffinity(0))
out = {}
out["bad_cpu"] = numa.apply_placement([4095], None, "none")
out["affinity_after_bad_cpu"] = sorted(os.sched_getaffinity(0))
out["absent_node"] = numa.apply_placement([cpu], [63], "bind")
out["policy_after_absent_node"] = numa.get_mempolicy()
numa.set_mempolicy = lambda mode, nodes: errno.EPERM
out["eperm"] = numa.apply_placement([cpu], [0], "preferred")
out["affinity_after_eperm"] = sorted(os.sched_getaffinity(0))
out["no_nodes"] = numa.apply_placement(None, None, "bind")
out["cpu"] = cpu
print(json.dumps(out))
"""


def test_refusals_keep_what_worked():
    before = sorted(os.sched_getaffinity(0))
    proc = subprocess.run([sys.executable, "-c", REFUSALS, REPO], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    cpu = out["cpu"]
    assert out["bad_cpu"] == "cpus 4095 not set (EINVAL): CPUs unchanged, mempolicy none"
    assert out["affinity_after_bad_cpu"] == before
    # node 63 does not exist here: the kernel says EINVAL, the CPUs stay pinned
    assert out["absent_node"] == f"cpus {cpu}, mempolicy refused (EINVAL): CPUs only"
    assert out["policy_after_absent_node"][0] == "default"
    assert out["eperm"] == f"cpus {cpu}, mempolicy not permitted (EPERM): CPUs only"
    assert out["affinity_after_eperm"] == [cpu]
    assert out["no_nodes"] == "cpus unchanged, mempolicy none"


def test_probe_in_a_child():
    proc = subprocess.run([sys.executable, "-c",
                           "import sys; sys.path.insert(0, sys.argv[1]); from llm_supervisor.host import numa; "
                           "print(numa.probe_mempolicy(0)); print(numa.get_mempolicy())", REPO],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    probe, after = proc.stdout.splitlines()
    assert probe in ("(True, 'ok')", "(False, 'EPERM')")
    assert after.startswith("('default'")  # the probe puts the default policy back


def test_numa_is_stdlib_only():
    """It runs between fork and exec: importing it must pull in nothing from site-packages."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); before = set(sys.modules); "
            "import llm_supervisor.host.numa; new = set(sys.modules) - before; "
            "print('\\n'.join(sorted(m for m in new if not m.startswith(('llm_supervisor', '_')))))")
    proc = subprocess.run([sys.executable, "-c", code, REPO], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    allowed = set(sys.stdlib_module_names)
    assert [m for m in proc.stdout.split() if m.split(".")[0] not in allowed] == []
