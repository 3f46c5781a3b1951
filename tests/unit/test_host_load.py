"""The host CPU's load per timed pass from recorded counter values (hand-computed), the warning thresholds
both ways, the cgroup files' reasons where they are missing, the real meter at the runner's phase
boundaries, and the report's section (an older run without the figures still reports)."""

from __future__ import annotations

import os
import shutil
from collections import namedtuple
from pathlib import Path

from lab.accounting.host_load import INFLATED, host_load_summary, load_warnings, pass_host_load
from lab.hardware.host_cpu import (
    HostCpuMeter,
    busy_idle_s,
    own_cgroup_dir,
    parse_cpu_max,
    parse_cpu_stat,
    read_cgroup,
    tree_cpu_s,
)
from lab.phases import Phases
from lab.records import RunSummary
from lab.report.host_cpu_markdown import host_cpu_section
from lab.report.writer import write_report

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "run-cpu-tiny"

FakeCpuTimes = namedtuple(
    "FakeCpuTimes", "user nice system idle iowait irq softirq steal guest guest_nice"
)  # psutil's Linux fields
FAKE_CPU_TIMES = FakeCpuTimes(100.0, 1.0, 20.0, 500.0, 5.0, 0.0, 2.0, 3.0, 7.0, 0.0)


def reading(busy_s: float, tree_cpu_s: float | None, throttled_usec: int | None = None, nr_throttled: int = 0) -> dict:
    """A recorded boundary reading of the shape `HostCpuMeter.read` writes, on a host of 16 usable CPUs."""
    return {
        "busy_s": busy_s,
        "idle_s": 0.0,
        "scope": "usable CPUs",
        "logical_cpus": 16,
        "tree_cpu_s": tree_cpu_s,
        "cgroup": {
            "usage_usec": 0 if throttled_usec is not None else None,
            "nr_throttled": nr_throttled if throttled_usec is not None else None,
            "throttled_usec": throttled_usec,
            "quota_cpus": 8.0 if throttled_usec is not None else None,
            "reason": None if throttled_usec is not None else "cgroup v1 (no unified cgroup v2 hierarchy)",
        },
    }


def phase(name: str, seconds: float, start: dict, end: dict) -> dict:
    return {"phase": name, "start": 100.0, "end": 100.0 + seconds, "host_cpu_start": start, "host_cpu_end": end}


# A 2 s pass: the 16 CPUs were busy 10 CPU-seconds, 2.4 of them the backend's; the cgroup throttled 10 ms.
PASS = phase("generate", 2.0, reading(1000.0, 50.0, 1_000_000, 4), reading(1010.0, 52.4, 1_010_000, 7))


def test_busy_is_the_total_less_idle_and_iowait_and_guest_is_not_counted_twice():
    busy, idle = busy_idle_s(FAKE_CPU_TIMES)
    assert idle == 505.0
    assert busy == 100.0 + 1.0 + 20.0 + 2.0 + 3.0  # guest (7 s) is already inside user


def test_a_pass_gives_busy_cpus_the_backends_own_and_the_throttling():
    load = pass_host_load(PASS)
    assert load["host_busy_s"] == 10.0 and load["host_busy_cpus"] == 5.0
    assert load["host_busy_pct"] == 100 * 5.0 / 16
    assert abs(load["backend_cpu_s"] - 2.4) < 1e-9 and abs(load["backend_cpus"] - 1.2) < 1e-9
    assert abs(load["other_cpus"] - 3.8) < 1e-9
    assert abs(load["throttled_s"] - 0.01) < 1e-9 and load["throttled_periods"] == 3
    assert load["cpu_quota_cpus"] == 8.0 and load["cgroup_read"]
    assert not pass_host_load(phase("generate", 1.0, reading(0.0, 0.0), reading(1.0, 1.0)))["cgroup_read"]


def test_a_tree_that_lost_a_process_has_no_backend_figure():
    load = pass_host_load(phase("generate", 1.0, reading(0.0, 9.0), reading(2.0, 4.0)))
    assert load["backend_cpu_s"] is None and load["other_cpus"] is None and load["host_busy_cpus"] == 2.0


def test_other_work_above_a_quarter_of_the_cpus_warns_and_below_does_not():
    # 16 CPUs: the threshold is 4 CPUs of other work.
    above = pass_host_load(phase("generate", 1.0, reading(0.0, 0.0), reading(5.1, 1.0)))  # 4.1 other
    below = pass_host_load(phase("generate", 1.0, reading(0.0, 0.0), reading(4.9, 1.0)))  # 3.9 other
    assert len(load_warnings(above)) == 1 and "4.1 of the 16 logical CPUs" in load_warnings(above)[0]
    assert load_warnings(below) == []


def test_throttling_above_one_percent_of_the_pass_warns_and_below_does_not():
    above = pass_host_load(phase("generate", 1.0, reading(0.0, 0.0, 0), reading(1.0, 1.0, 11_000)))
    below = pass_host_load(phase("generate", 1.0, reading(0.0, 0.0, 0), reading(1.0, 1.0, 9_000)))
    assert len(load_warnings(above)) == 1 and "throttled the lab for 0.01 s" in load_warnings(above)[0]
    assert load_warnings(below) == []


def test_the_summary_lists_every_timed_pass_and_an_older_run_says_not_recorded():
    load = phase("load", 5.0, reading(0.0, 0.0), reading(80.0, 5.0))
    summary = host_load_summary([load, dict(PASS, phase="repeat"), PASS])
    assert summary["available"] and [p["phase"] for p in summary["passes"]] == ["repeat", "generate"]
    assert summary["logical_cpus"] == 16 and summary["cgroup_reason"] is None
    old = host_load_summary([{"phase": "generate", "start": 1.0, "end": 2.0}])
    assert old == {"available": False, "reason": "not recorded (a run from before the lab read the host CPU)"}
    assert host_load_summary([])["reason"] == "no timed pass finished"


def test_cpu_stat_and_cpu_max_are_parsed_and_no_quota_is_none():
    stat = parse_cpu_stat("usage_usec 500\nuser_usec 300\nsystem_usec 200\nnr_periods 9\nnr_throttled 2\n")
    assert stat == {"usage_usec": 500, "nr_throttled": 2, "throttled_usec": None}
    assert parse_cpu_max("max 100000\n") is None and parse_cpu_max("250000 100000\n") == 2.5


def test_missing_cgroup_files_are_none_with_the_reason(tmp_path):
    assert own_cgroup_dir(tmp_path / "absent")[1].startswith("no ")  # not Linux
    v1 = tmp_path / "v1"
    v1.mkdir()
    folder, reason = own_cgroup_dir(v1)
    assert folder is None and reason.startswith("cgroup v1")
    cgroup = read_cgroup(folder, reason)
    assert cgroup["throttled_usec"] is None and cgroup["quota_cpus"] is None and cgroup["reason"] == reason


def test_a_cgroup_v2_folder_is_the_processes_own_and_the_root_has_no_quota(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    (tmp_path / "cpu.stat").write_text("usage_usec 10\nnr_throttled 0\nthrottled_usec 0\n")
    own = tmp_path / "lab.slice"
    own.mkdir()
    (own / "cpu.stat").write_text("usage_usec 7\nnr_throttled 1\nthrottled_usec 40\n")
    (own / "cpu.max").write_text("200000 100000\n")
    proc_cgroup = tmp_path / "proc-self-cgroup"
    proc_cgroup.write_text("0::/lab.slice\n")
    folder, reason = own_cgroup_dir(tmp_path, proc_cgroup)
    assert folder == own and reason == ""
    assert read_cgroup(folder, reason) == {
        "usage_usec": 7,
        "nr_throttled": 1,
        "throttled_usec": 40,
        "quota_cpus": 2.0,
        "reason": None,
    }
    root = read_cgroup(tmp_path, "")
    assert root["usage_usec"] == 10 and root["quota_cpus"] is None and "cpu.max" in root["reason"]


def test_the_runner_reads_the_host_cpu_at_each_phase_boundary():
    phases = Phases(host=HostCpuMeter(os.getpid()))
    phases.start("generate")
    sum(i * i for i in range(2_000_000))  # CPU work of this process inside the phase
    phases.end()
    (item,) = phases.items
    start, end = item["host_cpu_start"], item["host_cpu_end"]
    assert end["logical_cpus"] == len(os.sched_getaffinity(0))
    assert end["busy_s"] >= start["busy_s"] and end["tree_cpu_s"] > start["tree_cpu_s"]
    load = pass_host_load(item)
    assert load["host_busy_cpus"] >= 0 and load["backend_cpu_s"] > 0


def test_a_process_that_is_gone_has_no_cpu_seconds():
    assert tree_cpu_s(2**22 + 12345) is None  # above Linux's pid_max default: never a live pid


def test_the_report_shows_each_pass_and_warns_where_other_work_was_high():
    busy = phase("generate", 1.0, reading(0.0, 0.0), reading(9.0, 1.0))  # 8 of 16 CPUs of other work
    run = RunSummary("hf", "batched", status="ok", host_cpu=host_load_summary([PASS, busy]))
    old = RunSummary("vllm", "offline", status="ok")
    text = "\n".join(host_cpu_section([run, old]))
    assert "| 2.000    | 5.00 of 16 (31%)                | 1.20                 | 3.80" in text
    assert "| 0.01 (3)                       | 8.00 " in text and "| -                              | -  " in text
    assert "(hf/batched, pass 2): other work kept 8.0 of the 16 logical CPUs busy" in text and INFLATED in text
    assert "(hf/batched, pass 1)" not in text
    assert "- vllm/offline: n/a: not recorded" in text


def test_an_older_run_still_reports_with_the_host_cpu_marked_not_recorded(tmp_path):
    run_dir = shutil.copytree(FIXTURE, tmp_path / "old")
    report = write_report(run_dir)
    assert "## Host CPU during each timed pass" in report and "n/a: not recorded" in report


def test_the_summary_gives_the_worst_pass_and_how_many_passes_were_warned():
    quiet = phase("repeat", 2.0, reading(0.0, 0.0, 0, 0), reading(3.0, 2.0, 0, 0))  # other work 0.5 CPUs
    busy = phase("repeat", 2.0, reading(0.0, 0.0, 0, 0), reading(12.0, 2.0, 200_000, 3))  # 5 CPUs, 0.2 s
    summary = host_load_summary([quiet, busy])
    assert summary["max_other_cpus"] == 5.0 and summary["max_throttled_s"] == 0.2
    assert summary["warned_passes"] == 1
    unknown = host_load_summary([phase("repeat", 2.0, reading(0.0, None), reading(3.0, None))])
    assert unknown["max_other_cpus"] is None and unknown["max_throttled_s"] is None
