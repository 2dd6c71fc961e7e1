"""The thread/process budget (stream.cpus): what a run gets when the user leaves it open."""

from __future__ import annotations

from stream import cpus
from stream.cpus import Budget


def test_a_file_gets_one_single_threaded_infer_process_per_core():
    # one thread per process costs the least CPU per frame and lets inference take any core left free
    assert cpus.budget(live=False, cores=1) == Budget(1, 1)
    assert cpus.budget(live=False, cores=2) == Budget(2, 1)
    assert cpus.budget(live=False, cores=4) == Budget(4, 1)


def test_past_four_cores_files_add_threads_not_processes():
    assert cpus.budget(live=False, cores=8) == Budget(4, 2)
    assert cpus.budget(live=False, cores=16) == Budget(4, 4)


def test_a_live_source_gets_one_worker_with_a_thread_per_core():
    assert cpus.budget(live=True, cores=2) == Budget(1, 2)
    assert cpus.budget(live=True, cores=1) == Budget(1, 1)


def test_what_the_user_sets_is_kept_and_the_rest_fits_around_it():
    assert cpus.budget(live=False, threads=1, cores=2) == Budget(1, 1)  # --threads alone: one worker
    assert cpus.budget(live=False, threads=3, cores=2) == Budget(1, 3)
    assert cpus.budget(live=True, workers=2, cores=8) == Budget(2, 4)  # --workers: cores split among them
    assert cpus.budget(live=False, workers=3, cores=2) == Budget(3, 1)
    assert cpus.budget(live=False, workers=2, threads=2, cores=2) == Budget(2, 2)
    assert cpus.budget(live=False, workers=0, cores=2) == Budget(0, 2)  # remote workers only


def test_default_budget_never_pins_on_a_small_machine():
    # a pinned single infer thread left the second core idle half the time (issue 11)
    for n in (1, 2, 3, 4):
        b = cpus.budget(live=False, cores=n)
        assert cpus.plan(b.threads, b.workers, list(range(n))) is None


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_is_read_in_cores(tmp_path):
    write(tmp_path / "cpu.max", "150000 100000\n")
    assert cpus.cgroup_quota(tmp_path) == 1.5
    write(tmp_path / "cpu.max", "max 100000\n")
    assert cpus.cgroup_quota(tmp_path) is None


def test_cgroup_v1_quota_is_read_in_cores(tmp_path):
    write(tmp_path / "cpu" / "cpu.cfs_quota_us", "200000\n")
    write(tmp_path / "cpu" / "cpu.cfs_period_us", "100000\n")
    assert cpus.cgroup_quota(tmp_path) == 2.0
    write(tmp_path / "cpu" / "cpu.cfs_quota_us", "-1\n")
    assert cpus.cgroup_quota(tmp_path) is None


def test_no_cgroup_files_means_no_quota(tmp_path):
    assert cpus.cgroup_quota(tmp_path / "nothing") is None


def test_usable_cores_are_the_affinity_mask_capped_by_the_quota():
    assert cpus.usable_cores(list(range(64)), quota=2.0) == 2
    assert cpus.usable_cores(list(range(64)), quota=1.5) == 2  # rounded up
    assert cpus.usable_cores(list(range(64)), quota=0.5) == 1
    assert cpus.usable_cores([0, 3], quota=None) == 2
    assert cpus.usable_cores([0, 1, 2, 3], quota=16.0) == 4  # the quota never adds cores


def test_this_machine_counts_what_this_process_may_run_on():
    n = cpus.usable_cores()
    assert 1 <= n <= len(cpus.available())
