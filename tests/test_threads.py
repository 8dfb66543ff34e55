"""Thread counts: the default (fc.set_num_threads, then --threads, then OMP_NUM_THREADS, then
the CPUs this process may use), and children forked after a multi-threaded kernel ran
(libgomp's pool does not survive a fork: they run on 1 thread and refuse more).

Each case runs as a script in a subprocess, in its own process group that is killed after a
timeout, so a child that hangs fails its test instead of hanging the suite. The scripts pin
the counts they compare (OMP_NUM_THREADS, the affinity mask), so they pass on 1- and 2-core
hosts alike.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import fastconv as fc

TIMEOUT = 240  # seconds for a whole script; each wait inside a script is shorter
needs_openmp = pytest.mark.skipif(not fc._kernels.build_info()["openmp"],
                                  reason="a build without OpenMP runs every kernel on 1 thread: no pool, no counts")


def run_script(tmp_path, code, omp_num_threads=None):
    """Run `code` as a script in tmp_path; its last stdout line parsed as JSON."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["OMP_WAIT_POLICY"] = "passive"  # the tests share the CPUs with each other
    if omp_num_threads is not None:
        env["OMP_NUM_THREADS"] = omp_num_threads
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the script and every child it forked or spawned
        out, err = proc.communicate()
        pytest.fail(f"the script hung for {TIMEOUT} s\nstdout:\n{out}\nstderr:\n{err}")
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    return json.loads(out.strip().splitlines()[-1])


# -- the default count ----------------------------------------------------------------------------

needs_affinity = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity")

# One CPU in the affinity mask, so that "the CPUs this process may use" is 1 on any host.
DEFAULT_COUNT = """
    import json, os, warnings
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import fastconv as fc
        from fastconv import _kernels
        again = _kernels._resolve_num_threads()  # a second resolution warns no more
    print(json.dumps({"threads": fc.get_num_threads(), "again": again,
                      "warnings": [str(w.message) for w in caught if "OMP_NUM_THREADS" in str(w.message)]}))
"""


@needs_affinity
@pytest.mark.parametrize("value, expected", [(None, 1), ("", 1), ("3", 3), (" 2 ", 2), ("4,2", 4)])
def test_default_is_omp_num_threads_else_the_affinity_mask(tmp_path, value, expected):
    got = run_script(tmp_path, DEFAULT_COUNT, omp_num_threads=value)
    assert got == {"threads": expected, "again": expected, "warnings": []}


@needs_affinity
@pytest.mark.parametrize("value", ["abc", "0", "-1", "1025", ",2"])
def test_malformed_omp_num_threads_warns_once_and_uses_the_cpus(tmp_path, value):
    got = run_script(tmp_path, DEFAULT_COUNT, omp_num_threads=value)
    assert got["threads"] == got["again"] == 1
    assert len(got["warnings"]) == 1, got
    assert f"fastconv ignores OMP_NUM_THREADS={value!r}" in got["warnings"][0]
    assert "a whole number in [1, 1024]" in got["warnings"][0]


@needs_openmp
def test_set_num_threads_and_the_threads_option_beat_omp_num_threads(tmp_path):
    got = run_script(tmp_path, """
        import json
        import fastconv as fc
        from fastconv.tools import cli
        default = fc.get_num_threads()
        code = cli.main(["train", "--sanity", "--threads", "2", "--no-plots", "--out", "run"])
        after_cli = fc.get_num_threads()
        fc.set_num_threads(3)
        print(json.dumps([default, code, after_cli, fc.get_num_threads()]))
    """, omp_num_threads="1")
    assert got == [1, 0, 2, 3]


# -- fork -------------------------------------------------------------------------------------------

# Shared by the fork scripts: a 2-thread parent, and a layer step whose results the parent
# computes on 1 thread (results are deterministic for a given thread count; conv2d_backward's
# dweight is not the same bits across counts).
FORK_PRELUDE = """
    import concurrent.futures, json, multiprocessing as mp, os
    import numpy as np
    import fastconv as fc

    def step(seed):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((4, 3, 12, 12)).astype(np.float32)
        fc.manual_seed(seed)
        model = fc.Sequential(fc.Conv2d(3, 8, 3, padding=1), fc.ReLU(), fc.MaxPool2d(2))
        y = model(x)
        dx = model.backward(np.ones_like(y))
        return [fc.get_num_threads(), y, dx] + [p.grad for p in model.parameters()]

    def sgemm():
        a = np.ones((256, 256), np.float32)
        return float(fc._kernels.sgemm(a, a)[0, 0])

    def refuses_more_threads():
        try:
            fc.set_num_threads(2)
        except RuntimeError as e:
            fc.set_num_threads(1)
            return str(e)
        return None

    def same(got, expected):
        return got[0] == 1 and all(np.array_equal(g, e) for g, e in zip(got[1:], expected[1:]))
"""


@needs_openmp
def test_issue_reproducer_forked_pool_child_runs(tmp_path):
    got = run_script(tmp_path, """
        import json, multiprocessing as mp, numpy as np, fastconv as fc
        def work(_):
            A = np.ones((512, 512), np.float32); return float(fc._kernels.sgemm(A, A)[0, 0])
        if __name__ == "__main__":
            fc.set_num_threads(2)
            parent = work(0)
            with mp.get_context("fork").Pool(1) as p:
                print(json.dumps([parent, p.map_async(work, [1]).get(timeout=60)]))
    """)
    assert got == [512.0, [512.0]]


@needs_openmp
def test_children_forked_after_a_threaded_kernel_use_one_thread(tmp_path):
    got = run_script(tmp_path, FORK_PRELUDE + """
    def child_report(_):
        report = {"threads": fc.get_num_threads(), "sgemm": sgemm(), "refused": refuses_more_threads()}
        pid = os.fork()  # a grandchild inherits the broken pool too
        if pid == 0:
            os._exit(0 if fc.get_num_threads() == 1 and sgemm() == 256.0 else 3)
        report["grandchild"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        return report

    if __name__ == "__main__":
        fc.set_num_threads(2)
        sgemm()  # libgomp's pool starts here
        with mp.get_context("fork").Pool(1) as pool:
            via_pool = pool.apply_async(child_report, (0,)).get(timeout=60)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(w, json.dumps(child_report(0)).encode())
            os._exit(0)
        os.close(w)
        via_os_fork = json.loads(os.read(r, 1 << 16))
        os.waitpid(pid, 0)
        print(json.dumps({"pool": via_pool, "os.fork": via_os_fork, "parent": fc.get_num_threads()}))
    """)
    assert got["parent"] == 2
    for how in ("pool", "os.fork"):
        report = got[how]
        assert report["threads"] == 1 and report["sgemm"] == 256.0 and report["grandchild"] == 0, (how, report)
        for words in ("cannot run kernels on 2 threads", "forked", "GNU OpenMP's thread pool does not survive",
                      "'spawn' or 'forkserver'"):
            assert words in report["refused"], (how, report["refused"])


@needs_openmp
def test_dataloader_style_fork_workers_run_layers_forward_and_backward(tmp_path):
    got = run_script(tmp_path, FORK_PRELUDE + """
    if __name__ == "__main__":
        fc.set_num_threads(1)
        expected = [step(seed) for seed in range(4)]
        fc.set_num_threads(2)
        threaded = [step(seed) for seed in range(4)]  # starts the pool, then the workers fork
        fork = mp.get_context("fork")
        with fork.Pool(2) as pool:
            pooled = pool.map_async(step, range(4)).get(timeout=60)
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=fork) as ex:
            executed = list(ex.map(step, range(4), timeout=60))
        print(json.dumps({"pool": [same(g, e) for g, e in zip(pooled, expected)],
                          "executor": [same(g, e) for g, e in zip(executed, expected)],
                          "parent": [t[0] for t in threaded]}))
    """)
    assert got == {"pool": [True] * 4, "executor": [True] * 4, "parent": [2] * 4}


@needs_openmp
def test_fork_before_any_threaded_kernel_keeps_the_thread_count(tmp_path):
    got = run_script(tmp_path, FORK_PRELUDE + """
    def child(_):
        return fc.get_num_threads(), sgemm()

    if __name__ == "__main__":
        fc.set_num_threads(1)
        sgemm()  # one thread: no pool
        fc.set_num_threads(2)
        with mp.get_context("fork").Pool(1) as pool:
            print(json.dumps(pool.apply_async(child, (0,)).get(timeout=60)))
    """)
    assert got == [2, 256.0]


@needs_openmp
def test_spawn_and_forkserver_children_keep_the_full_thread_count(tmp_path):
    got = run_script(tmp_path, FORK_PRELUDE + """
    def child(_):
        return fc.get_num_threads(), sgemm(), refuses_more_threads()

    if __name__ == "__main__":
        sgemm()  # at OMP_NUM_THREADS=2: the parent's pool exists
        out = {}
        for method in ("spawn", "forkserver"):
            with mp.get_context(method).Pool(1) as pool:
                out[method] = pool.apply_async(child, (0,)).get(timeout=120)
        print(json.dumps(out))
    """, omp_num_threads="2")
    assert got == {"spawn": [2, 256.0, None], "forkserver": [2, 256.0, None]}


@needs_openmp
def test_mpi_ranks_default_to_omp_num_threads_else_their_share_of_the_cpus(tmp_path):
    from test_mpi import mpirun

    script = tmp_path / "ranks.py"
    script.write_text(textwrap.dedent("""
        import json, os
        from fastconv.train.distributed import MPIDataParallel
        dp = MPIDataParallel()
        os.environ.pop("OMP_NUM_THREADS", None)
        share = dp.default_threads()
        os.environ["OMP_NUM_THREADS"] = "3"
        row = [share, dp.default_threads(), max(1, len(os.sched_getaffinity(0)) // dp.size)]
        rows = dp.comm.gather(row, root=0)  # one print: the ranks' lines could interleave
        if dp.rank == 0:
            print(json.dumps(rows))
    """))
    ranks = json.loads(mpirun(sys.executable, str(script), cwd=tmp_path).strip().splitlines()[-1])
    assert len(ranks) == 2 and all((share, from_env) == (expected, 3) for share, from_env, expected in ranks), ranks
