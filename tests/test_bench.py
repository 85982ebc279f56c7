"""The benchmark harness, the marked-block writer, and every script under scripts/ at tiny size.

The harness and writer tests are fast. The scripts run end to end in subprocesses (the way a
user runs them) at the smallest sizes their options allow; they compile many programs, so
they are marked slow.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from invariance import benchmarking
from invariance.io import write_marked_blocks

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"


def load_script(name: str):
    """Imports ``scripts/<name>.py`` as a module (its ``main`` is not run)."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A table's command line: the environment switches that were set (the suite's XLA_FLAGS), then
# the command.
COMMAND = r"Command: `(?:\w+=\S+ )*"


def run_script(name: str, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / f"{name}.py"), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc


# ---------------------------------------------------------------------------- the harness


def test_round_orders_are_seeded_fresh_permutations():
    names = ["a", "b", "c", "d"]
    orders = benchmarking.round_orders(names, 30, seed=3)
    assert len(orders) == 30 and all(sorted(o) == names for o in orders)
    assert orders == benchmarking.round_orders(names, 30, seed=3)
    assert orders != benchmarking.round_orders(names, 30, seed=4)
    # A fresh order each round, not one order rotated: every peer gets several neighbours.
    followers = {(o[i], o[i + 1]) for o in orders for i in range(3)}
    assert all(sum(1 for a, _ in followers if a == n) >= 2 for n in names)


def test_interleaved_times_each_peer_once_per_round_in_the_round_order():
    log: list[str] = []
    fns = {n: (lambda n=n: log.append(n)) for n in "abc"}
    before_calls = []
    times = benchmarking.interleaved(
        fns, rounds=5, seed=1, rounds_of={"c": 2}, before=lambda: before_calls.append(1)
    )
    assert log[:6] == ["a", "a", "b", "b", "c", "c"]  # warm-up: two calls each, untimed
    timed = log[6:]
    expected = [
        n for r, order in enumerate(benchmarking.round_orders(list("abc"), 5, 1)) for n in order
    ]
    expected = [n for i, n in enumerate(expected) if n != "c" or i // 3 < 2]
    assert timed == expected
    assert [len(times[n]) for n in "abc"] == [5, 5, 2]
    assert len(before_calls) == len(timed) and all(t >= 0 for v in times.values() for t in v)
    with pytest.raises(ValueError, match="unknown peers"):
        benchmarking.interleaved(fns, rounds=1, rounds_of={"z": 1})
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        benchmarking.interleaved(fns, rounds=0)


def test_medians_combine_and_ratio():
    med = benchmarking.medians({"a": [3.0, 1.0, 2.0], "b": [4.0, 8.0]})
    assert med == {"a": 2.0, "b": 6.0}
    runs = [{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 2.5}, {"a": 2.0, "b": 9.0}]
    assert benchmarking.combine(runs) == {"a": 2.0, "b": 2.5}
    assert benchmarking.ratio({"a": 1.0, "b": 4.0}, "a", "b") == 0.25
    with pytest.raises(ValueError, match="process 1 measured"):
        benchmarking.combine([{"a": 1.0}, {"b": 1.0}])
    with pytest.raises(ValueError, match="no runs"):
        benchmarking.combine([])


def test_fresh_processes_return_results_raise_errors_and_get_their_seed():
    assert benchmarking.in_fresh_process(os.getpid) != os.getpid()
    assert benchmarking.in_fresh_process(divmod, 7, 2) == (3, 1)
    with pytest.raises(ValueError):
        benchmarking.in_fresh_process(int, "not a number")
    seen = []
    out = benchmarking.in_processes(dict, 2, report=lambda p, r: seen.append(p))
    assert out == [{"seed": 0}, {"seed": 1}] and seen == [0, 1]
    with pytest.raises(ValueError, match="processes must be >= 1"):
        benchmarking.in_processes(dict, 0)


_SLEEPER = """
import os, time


def sleep_and_say(pids):
    open(os.path.join(pids, str(os.getpid())), "w").close()
    time.sleep(120)
"""


def test_a_fresh_process_ends_when_its_parent_dies(tmp_path):
    """A killed benchmark leaves no child process timing on (they once kept two cores busy)."""
    pids = tmp_path / "pids"
    pids.mkdir()
    (tmp_path / "sleeper.py").write_text(_SLEEPER)
    code = (
        "import sleeper\nfrom invariance import benchmarking\n"
        f"benchmarking.in_fresh_process(sleeper.sleep_and_say, {str(pids)!r})\n"
    )
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}")
    parent = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.time() + 60
        while not list(pids.iterdir()) and time.time() < deadline:
            time.sleep(0.1)
        (child,) = [int(p.name) for p in pids.iterdir()]
    finally:
        parent.kill()
        parent.wait()
    deadline = time.time() + 10
    while _alive(child) and time.time() < deadline:
        time.sleep(0.1)
    alive = _alive(child)
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive, "the benchmark's child outlived its parent"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_command_line_and_header(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--a=1 --b")
    monkeypatch.delenv("INVARIANCE_CPU_KERNELS", raising=False)
    cmd = benchmarking.command_line("scripts/x.py", ["--reps", "3", "--note", "two words"])
    assert cmd == "XLA_FLAGS='--a=1 --b' python scripts/x.py --reps 3 --note 'two words'"
    monkeypatch.delenv("XLA_FLAGS")  # not a valid flag set for XLA, should jax start now
    import jax

    lines = benchmarking.header(cmd, conditions="load 1.0")
    text = "\n".join(lines)
    assert f"Command: `{cmd}`" in lines[0]
    assert f"jax {jax.__version__}" in text and "commit " in text and "malloc" in text
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", text)
    assert lines[-1] == "Conditions: load 1.0  "
    assert "on " in benchmarking.conditions(0.5, "shared") and text.count("Device:") == 1


# ------------------------------------------------------------------ the marked-block writer


def test_write_marked_blocks_replaces_keeps_and_appends(tmp_path):
    path = tmp_path / "doc.md"
    path.write_text("# T\n\n<!-- a -->\nold a\n<!-- /a -->\ntext\n<!-- b -->\nold b\n<!-- /b -->\n")
    write_marked_blocks(path, {"b": "new b\n", "c": "\n\nnew c"})
    assert path.read_text() == (
        "# T\n\n<!-- a -->\nold a\n<!-- /a -->\ntext\n<!-- b -->\nnew b\n<!-- /b -->\n\n"
        "<!-- c -->\nnew c\n<!-- /c -->\n"
    )
    fresh = tmp_path / "fresh.md"
    write_marked_blocks(fresh, {"a": "A"}, initial="head\n<!-- a -->\n<!-- /a -->\n")
    assert fresh.read_text() == "head\n<!-- a -->\nA\n<!-- /a -->\n"


def test_write_marked_blocks_with_a_function_keeps_or_refuses(tmp_path):
    path = tmp_path / "doc.md"
    original = "<!-- x -->\n1\n<!-- /x -->\n<!-- y -->\n2\n<!-- /y -->\n"
    path.write_text(original)
    write_marked_blocks(path, lambda name: "9" if name == "y" else None)
    assert path.read_text() == "<!-- x -->\n1\n<!-- /x -->\n<!-- y -->\n9\n<!-- /y -->\n"

    def missing(name):
        raise FileNotFoundError(name)

    with pytest.raises(FileNotFoundError):
        write_marked_blocks(path, missing)
    assert path.read_text().endswith("9\n<!-- /y -->\n")  # nothing written


def test_write_marked_blocks_does_what_cli_update_readme_does(tmp_path):
    """The README's results blocks: the one writer gives cli.update_readme's bytes."""
    from invariance import cli

    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "t1.md").write_text("# Heading\n\n| a |\n| --- |\n| 1 |\n")
    readme = "intro\n<!-- results:t1 -->\nstale\n<!-- /results:t1 -->\n<!-- note -->\nkeep\n"
    (tmp_path / "A.md").write_text(readme)
    (tmp_path / "B.md").write_text(readme)
    cli.update_readme(tmp_path / "A.md", tables)

    def body(name):
        if not name.startswith("results:"):
            return None
        lines = (tables / f"{name.split(':', 1)[1]}.md").read_text().splitlines()
        return "\n".join(line for line in lines if not line.startswith("# ")).strip()

    write_marked_blocks(tmp_path / "B.md", body)
    assert (tmp_path / "B.md").read_text() == (tmp_path / "A.md").read_text()


# ------------------------------------------------------------------ bench_train, in process


def test_bench_train_kinds_are_the_study_rows_and_ratios_are_to_max():
    bt = load_script("bench_train")
    kinds = bt.study_kinds()
    assert list(kinds)[0] == "max" and len(kinds) >= 10
    assert all(o["widths"] == (32, 64) for o in kinds.values())
    assert list(bt.select_rows(kinds, "aps,avg")) == ["max", "aps", "avg"]
    with pytest.raises(ValueError, match="valid are max"):
        bt.select_rows(kinds, "nosuch")
    runs = [
        {"times": {"max": 1.0, "aps": 1.2}, "options": {"max": {}, "aps": {}}},
        {"times": {"max": 2.0, "aps": 3.0}, "options": {"max": {}, "aps": {}}},
        {"times": {"max": 1.5, "aps": 3.3}, "options": {"max": {}, "aps": {}}},
    ]
    result = bt.combine_kinds(runs)
    assert result["times"] == {"max": 1.5, "aps": 3.0}
    assert result["per_process"]["aps"] == pytest.approx([1.2, 1.5, 2.2])
    text = bt.render_kinds(result | {"steps": 1, "reps": 1, "processes": 3}, "cmd", "idle")
    assert "| aps | `{}` | 3000.00 | 2.00 | 1.20, 1.50, 2.20 | MISSED |" in text
    assert "| max | `{}` | 1500.00 | 1.00 |" in text and "Conditions: idle" in text


def test_bench_train_writes_its_section_and_keeps_the_others(tmp_path):
    bt = load_script("bench_train")

    def block(name, text):
        return re.search(rf"<!-- {name} -->\n.*?<!-- /{name} -->\n", text, re.S)

    def without(name, text):
        return re.sub(rf"<!-- {name} -->\n.*?<!-- /{name} -->\n", "", text, flags=re.S)

    path = tmp_path / "train.md"
    committed = (REPO / "results/benchmarks/train.md").read_text()
    for start in (committed, without("kinds", committed)):  # kinds replaced, or appended
        path.write_text(start)
        bt.write_sections(path, {"kinds": "## Kinds\n\nrows\n"})
        after = path.read_text()
        assert (
            block("kinds", after).group(0) == "<!-- kinds -->\n## Kinds\n\nrows\n<!-- /kinds -->\n"
        )
        for kept in ("speed", "accuracy"):
            assert block(kept, committed).group(0) in after
        assert without("kinds", after).rstrip("\n") == without("kinds", start).rstrip("\n")
    empty = tmp_path / "new.md"
    bt.write_sections(empty, {"speed": "S\n"})
    assert "<!-- speed -->\nS\n<!-- /speed -->" in empty.read_text()
    assert "Not run yet (`--part kinds`)" in empty.read_text()


def test_bench_train_bad_rows_is_one_line_and_exit_2():
    proc = run_script("bench_train", "--part", "kinds", "--rows", "nosuch", timeout=300)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "no pooling_table row 'nosuch': valid are max, avg" in last


# ------------------------------------------------------------------- scripts, end to end


@pytest.mark.slow
def test_bench_pooling_smoke(tmp_path):
    out = tmp_path / "pooling.md"
    proc = run_script(
        "bench_pooling", "--reps", "1", "--processes", "2", "--batch", "4", "--out", str(out)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert re.search(
        COMMAND + r"python scripts/bench_pooling.py --reps 1 --processes 2 --batch 4", text
    )
    assert "Input (4, 28, 28, 32)" in text and "in each of 2 fresh processes" in text
    assert text.count("| 2 | ") == 8 and text.count("| 1 | ") == 8
    assert "fwd+bwd vs flax.linen.max_pool gradient" in text


@pytest.mark.slow
def test_bench_train_kinds_and_speed_smoke(tmp_path):
    out = tmp_path / "train.md"
    shutil.copy(REPO / "results/benchmarks/train.md", out)
    accuracy = re.search(r"<!-- accuracy -->.*?<!-- /accuracy -->", out.read_text(), re.S)
    args = ["--steps", "1", "--reps", "2", "--processes", "1", "--out", str(out)]
    args += ["--train-examples", "512"]
    proc = run_script("bench_train", "--part", "all", "--rows", "aps", "--epochs", "1", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    kinds = re.search(r"<!-- kinds -->.*?<!-- /kinds -->", text, re.S).group(0)
    assert re.search(r"\| max \| `\{'pool': 'max'\}` \| [\d.]+ \| 1\.00 \|", kinds)
    assert re.search(r"\| aps \| `\{'pool': 'aps'\}` \| [\d.]+ \| [\d.]+ \|", kinds)
    speed = re.search(r"<!-- speed -->.*?<!-- /speed -->", text, re.S).group(0)
    assert "--part all --rows aps" in speed and "ours / flax.linen.max_pool model" in speed
    assert "Top 10 ops" in speed and "conv2 3x3 32->64" in speed
    assert accuracy is None or "Final test accuracy" in text
    assert "1 epochs, 1 seed(s), seed 0; 512 train / 10000 test images" in text


@pytest.mark.slow
def test_bench_measure_smoke(tmp_path):
    out = tmp_path / "measure.md"
    args = ["--images", "32", "--pairs", "2", "--dataset", "synthetic", "--reps", "2"]
    proc = run_script("bench_measure", *args, "--train-examples", "256", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "2 rounds, every part once per round" in text
    cons = re.findall(r"\| ([01]\.\d{4}) \| \d[\d,]* \|", text)
    assert len(cons) == 3 and len(set(cons)) == 1, cons  # ours and both loops agree


@pytest.mark.slow
def test_research_scripts_run_on_the_public_api():
    proc = run_script(
        "measure_my_model",
        *("--dataset", "synthetic", "--train-examples", "256", "--images", "16", "--epochs", "1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| shift_consistency | translate | 3 |" in proc.stdout
    assert proc.stdout.count("| severity_curve | random_mask |") == 3
    assert proc.stdout.count("| one_pixel_flip_rate |") == 1
    proc = run_script(
        "pooling_under_rotation", "--dataset", "synthetic", "--images", "8", "--degrees", "10"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = dict(re.findall(r"^\| ([\w, ]+) \| ([\d.]+) \|$", proc.stdout, re.M))
    assert rows["max"] == rows["max, by hand"] and set(rows) >= {"identity", "aps", "max_blur"}
    proc = run_script("time_my_pooling", "--batch", "4", "--rounds", "1", "--processes", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"^\| max \| .* \| 1\.00 \|$", proc.stdout, re.M)


def test_no_script_imports_a_private_training_name():
    for path in SCRIPTS.glob("*.py"):
        text = path.read_text()
        assert "train._" not in text and "_make_step" not in text, path.name


def test_xla_op_times_names_the_ops_of_a_program():
    import jax
    import jax.numpy as jnp

    f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
    x = jnp.ones((256, 256))
    compiled = f.lower(x).compile()

    def run():
        for _ in range(3):
            out = compiled(x)
        jax.block_until_ready(out)

    run()
    rows = benchmarking.xla_op_times(run, compiled.as_text(), 3)
    assert rows and all(r["ms"] >= 0 for r in rows)
    assert rows == sorted(rows, key=lambda r: -r["ms"])
    assert any("f32[256,256]" in r["what"] or "f32[]" in r["what"] for r in rows), rows


def test_bench_processes_table_gives_throughput_ratios_to_one_process():
    bp = load_script("bench_processes")
    parts = {
        "1 process": {"processes": 1, "pin": True, "rates": [10.0, 8.0, 9.0], "cores": [[0, 1]]},
        "2 pinned": {"processes": 2, "pin": True, "rates": [16.0, 18.0], "cores": [[0], [1]]},
        "2 unpinned": {"processes": 2, "pin": False, "rates": [9.0], "cores": [[0, 1], [0, 1]]},
    }
    args = type("A", (), {"window": 15.0, "reps": 3, "seeds": 3})()
    text = bp.render(parts, args, "python scripts/bench_processes.py", "quiet")
    assert "Command: `python scripts/bench_processes.py`" in text and "Conditions: quiet" in text
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if " | " in line}
    assert rows["1 process"].endswith("| 9.00 | 10.00 / 8.00 / 9.00 | 111 | 1.00x |")
    assert rows["2 pinned"].endswith("| 0; 1 | 17.00 | 16.00 / 18.00 | 118 | 1.89x |")
    assert rows["2 unpinned"].endswith("| 0,1; 0,1 | 9.00 | 9.00 | 222 | 1.00x |")
    with pytest.raises(SystemExit):
        bp.main(["--processes", "1"])  # nothing to compare: refused before any timing


@pytest.mark.slow
def test_bench_processes_smoke(tmp_path):
    out = tmp_path / "processes.md"
    args = ["--window", "0.2", "--reps", "1", "--seeds", "1", "--out", str(out)]
    proc = run_script("bench_processes", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert re.search(
        COMMAND + r"python scripts/bench_processes.py --window 0.2 --reps 1 --seeds 1", text
    )
    rows = re.findall(
        r"^\| (1 process|\d+ pinned|\d+ unpinned) \| (\d+) \| ([\d,; ]+) \|", text, re.M
    )
    assert [r[0].split()[-1] for r in rows] == ["process", "pinned", "unpinned"], text
    pinned = rows[1][2].split("; ")
    assert len(pinned) == int(rows[1][1])
    if len(os.sched_getaffinity(0)) >= len(pinned):
        assert len(set(pinned)) == len(pinned)  # each worker on its own cores
