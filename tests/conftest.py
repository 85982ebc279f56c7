"""Shared test set-up: deterministic hypothesis, float32 JAX on the CPU."""

import os
import shutil
import tempfile
import warnings
from pathlib import Path

# Tests run on the CPU whatever the machine has, so results are the same everywhere.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Most of the suite's time is XLA compiling small programs, not running them. XLA's backend
# (LLVM) optimisation level 0 halves the compile time (a tiny pooling-table cell: 39 s -> 18.5
# s of its 49 s, measured side by side); the programs run slower, on inputs a few KB big, and
# compute the same IEEE arithmetic (no fast math at any level). Set before JAX starts, so the
# xdist workers and every child process inherit it. INVARIANCE_TEST_XLA_OPT=full keeps XLA's
# default; a level already in XLA_FLAGS is kept.
XLA_TEST_OPT_FLAG = "--xla_backend_optimization_level=0"
if os.environ.get("INVARIANCE_TEST_XLA_OPT") != "full" and (
    "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", "")
):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {XLA_TEST_OPT_FLAG}".strip()

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=30)
settings.load_profile("ci")

#: The checkout the tests run on, and its tests/ folder (child processes import helpers from it).
REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"

MAX_WORKERS = 4  # each worker is a JAX process compiling its own programs (~0.5 GB each)


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (the default in pyproject.toml): one pytest-xdist worker per core, at most
    :data:`MAX_WORKERS` (the workers' time is mostly single-threaded XLA compiles)."""
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


# ----------------------------------------------------------------------------- compiled programs

# Tests compile the same XLA programs again and again: every cell of a tiny study builds its own
# jitted step and protocols, and cells of one architecture (max and max + translate, the seeds of
# a cell) lower to the same program. A JAX persistent compilation cache shared by this session's
# processes (the pytest-xdist workers) compiles each program once; it starts empty, so no test
# depends on an earlier session, and is removed at the end. A cache hit is the same executable:
# no number changes (the rows of augmentation's tiny max and max + translate cells are identical
# either way). test_augmentation_study_tiny, off and on side by side: 223 s -> 178 s.
# INVARIANCE_TEST_XLA_CACHE=off turns it off.
_XLA_CACHE_ENV = "INVARIANCE_TEST_XLA_CACHE"
_OWNED_CACHE = pytest.StashKey[str]()  # the folder this process made (the controller's)


def pytest_configure(config):
    """Points JAX's persistent compilation cache at this session's folder (made by the
    controller, inherited by the xdist workers through the environment)."""
    if os.environ.get(_XLA_CACHE_ENV) == "off":
        return
    if _XLA_CACHE_ENV not in os.environ and not hasattr(config, "workerinput"):
        os.environ[_XLA_CACHE_ENV] = tempfile.mkdtemp(prefix="invariance-test-xla-")
        config.stash[_OWNED_CACHE] = os.environ[_XLA_CACHE_ENV]
    import jax

    jax.config.update("jax_compilation_cache_dir", os.environ[_XLA_CACHE_ENV])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def pytest_unconfigure(config):
    """Removes the session's compilation cache (the controller's, after its workers ended)."""
    folder = config.stash.get(_OWNED_CACHE, None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop(_XLA_CACHE_ENV, None)


# ----------------------------------------------------------------------------- the fast selection

# Tests left out of the inner loop, ``python -m pytest -m fast`` (CONTRIBUTING.md, "Tests"): a
# whole file, or a test function of one with all its parametrisations. Chosen by timing the
# not-slow suite in one process (``-n 0 -m "not slow"``) and leaving out every test function
# that took 6 s or more, all parameters together; the two files are mostly such tests (training,
# the compiled CPU kernel). The times below were measured on the 2-core VM while other jobs kept
# it at a load of ~10 (that run took 28 min; the whole suite, slow tests included, takes about
# 7.4 min in one process on the quiet VM), so read them relative to each other. The tests kept
# took 188 s of that run's 1652; `-m fast` (483 tests after later merges) took 101-174 s with
# -n auto at a load of 6-10.
NOT_FAST: tuple[str, ...] = (
    "tests/test_train.py",  # 405 s
    "tests/test_cpu_kernel.py",  # 147 s
    # Timed on the quiet VM after the last merges (-m fast --durations, -n auto):
    "tests/test_studies.py",  # 26-66 s a test (tiny studies trained end to end)
    "tests/test_readme.py",  # 29 s (the README tour trains 2 seeds)
    # Sweeps over a real process pool (spawned workers import JAX): 9 s and 2 x 5 s, loaded VM.
    "tests/test_processes.py::test_each_pool_worker_runs_on_its_own_share_of_the_cores",
    "tests/test_processes.py::test_several_sweeps_run_as_one_queue_and_keep_their_own_results",
    "tests/test_processes.py::test_a_bug_in_a_pool_cell_stops_the_sweep_like_the_serial_path",
    "tests/test_pooling_formulations.py",  # 2-6 s a parameter, ~70 parameters
    "tests/test_augment.py::test_train_step_applies_augment_and_keeps_plain_runs_unchanged",
    "tests/test_augment.py::test_resume_with_another_augment_is_refused",  # 6 s
    "tests/test_models.py::test_strided_conv_patch_product_is_the_convolution",  # 4-5 s
    "invariance/models/__init__.py::invariance.models",  # 8 s
    "tests/test_cli.py::test_a_user_error_exits_the_real_process_with_status_2",  # 9 s
    "tests/test_bench.py::test_bench_train_bad_rows_is_one_line_and_exit_2",  # 8 s
    "tests/test_faults.py::test_diverging_cell_is_recorded_and_the_others_go_on",  # 71 s
    "tests/test_faults.py::test_failed_attempt_keeps_the_runs_config_json",  # 59 s
    "tests/test_faults.py::test_pool_workers_end_when_their_parent_dies",  # 9 s
    # 2.3-5 s each in -m fast (measured 2026-12-01, 2 workers):
    "tests/test_augment.py::test_augment_vmaps_over_seeds_like_separate_calls",
    "tests/test_transforms.py::test_rotate_jit_and_vmap_over_images_and_angles",
    "tests/test_augment.py::test_translate_stays_within_range_and_varies_per_image",
    "tests/test_runtime.py::test_reexec_sets_the_settings_and_keeps_a_users_value",
    "tests/test_transforms.py::test_rotate_translate_jit_and_vmap_over_images_and_transforms",
    "tests/test_runtime.py::test_a_module_is_reexecuted_as_a_module",
    "tests/test_models.py::test_aps_with_index_matches_aps_pool_and_reuses_an_index",
    "tests/test_faults_pooling.py::test_lp_pool_p_inf_is_max_abs_like_torch",
    "tests/test_models.py::test_pool_mixed_starts_at_half_and_strided_conv_is_a_conv",
    "tests/test_faults_pooling.py::test_lp_pool_zero_window_has_value_and_gradient_zero_like_torch",
    "tests/test_metrics.py::test_distance_edge_cases_and_finite_gradients",
    "tests/test_faults_api.py::test_metrics_propagate_nan",
    "tests/test_store.py",  # 29 s: a tiny reproduce, then reruns and reports of its store
    "tests/test_bench.py::test_a_fresh_process_ends_when_its_parent_dies",  # 4 s
    "tests/test_bench.py::test_fresh_processes_return_results_raise_errors_and_get_their_seed",
    # 36 s:
    "tests/test_faults.py::test_remeasure_keeps_identities_and_the_report_shows_the_difference",
    # 9 s:
    "tests/test_faults.py::test_wheel_carries_the_configs_and_finds_them_outside_a_checkout",
    "tests/test_faults_api.py::test_feature_protocols_refuse_nan_features",  # 9 s
    "tests/test_faults_api.py::test_protocols_refuse_nan_logits",  # 12 s
    "tests/test_faults_api.py::test_traced_options_keep_working_under_jit_and_vmap",  # 14 s
    "tests/test_faults_pooling.py::test_lp_pool_matches_torch_on_signed_inputs",  # 11 s
    # Timed in the -m fast run (-n auto, load ~12), where it took 261 s:
    "tests/test_data.py::test_real_fashion_mnist_from_the_shipped_copy",
    "tests/test_measure.py::test_chunked_equals_unchunked",  # 92 s
    "tests/test_measure.py::test_circular_networks_are_exactly_shift_consistent",  # 15 s
    "tests/test_measure.py::test_default_chunk_counts_the_transforms_evaluated_at_once",  # 6 s
    "tests/test_measure.py::test_default_chunk_counts_the_views_of_each_image",  # 13 s
    "tests/test_measure.py::test_pooling_stability_rows",  # 13 s
    "tests/test_measure.py::test_severity_zero_is_identity",  # 15 s
    "tests/test_measure.py::test_shift_consistency_matches_loop",  # 11 s
    "tests/test_measure.py::test_spatial_grid_tiny",  # 7 s
    "tests/test_metrics.py::test_gradients_match_finite_differences",  # 7 s
    "tests/test_metrics.py::test_other_metrics_jit_and_vmap",  # 7 s
    "tests/test_metrics.py::test_pair_metrics_jit_and_vmap",  # 9 s
    "tests/test_models.py::test_circular_aps_gap_cnn_is_exactly_shift_invariant",  # 16 s
    "tests/test_models.py::test_circular_max_or_blur_cnn_is_not_shift_invariant",  # 7 s
    "tests/test_models.py::test_downsample_input_shapes_and_resizes",  # 9 s
    "tests/test_models.py::test_every_model_accepts_the_training_call",  # 31 s
    "tests/test_models.py::test_jit_equals_eager",  # 7 s
    "tests/test_models.py::test_param_counts_differ_between_heads_as_expected",  # 28 s
    "tests/test_models.py::test_pool_matches_the_library",  # 7 s
    "tests/test_models.py::test_probe_shapes",  # 19 s
    "tests/test_models.py::test_resnet_aps_circular_is_exactly_shift_invariant",  # 10 s
    "tests/test_models.py::test_resnet_features_and_shapes",  # 10 s
    "tests/test_models.py::test_resnet_tiny_train_step",  # 95 s
    "tests/test_models.py::test_small_cnn_every_kind_trains",  # 49 s
    # 7 s:
    "tests/test_models.py::test_stochastic_samples_in_training_and_is_deterministic_in_evaluation",
    "tests/test_pooling.py::test_against_flax_linen",  # 15 s
    "tests/test_pooling.py::test_against_numpy_loop",  # 13 s
    "tests/test_pooling.py::test_against_torch_semantics",  # 16 s
    "tests/test_pooling.py::test_aps_output_shifts_circularly_with_its_input",  # 8 s
    "tests/test_pooling.py::test_blur_pool_against_loop",  # 15 s
    "tests/test_pooling.py::test_check_grads",  # 47 s
    "tests/test_pooling.py::test_jit_equals_eager_and_vmap_equals_loop",  # 90 s
    "tests/test_pooling.py::test_max_grad_goes_to_first_max_like_torch",  # 15 s
    "tests/test_pooling.py::test_max_blur_pool_is_the_layers_max_blur",  # 86 s in -m fast, -n auto
    "tests/test_pooling.py::test_max_grad_with_padding_and_uncovered_rows",  # 12 s
    "tests/test_pooling.py::test_output_shape_matches_output_size",  # 30 s
    # 58 s:
    "tests/test_pooling_formulations.py::test_pad_hw_mode_equals_jnp_pad_value_and_gradient",
    "tests/test_traces.py::test_protocol_traces_its_step_once_over_padded_chunks",  # 17 s
    "tests/test_transforms.py::test_fill_extreme_is_per_image",  # 8 s
    "tests/test_transforms.py::test_fill_in_rotate_and_traced_numeric_fill",  # 7 s
    "tests/test_transforms.py::test_gaussian_noise_jit_and_vmap_over_images_and_sigmas",  # 14 s
    "tests/test_transforms.py::test_gaussian_noise_std_mean_and_zero_sigma",  # 8 s
    "tests/test_transforms.py::test_occlude_jit_and_vmap_over_positions_is_an_occlusion_map",  # 6 s
    "tests/test_transforms.py::test_random_mask_jit_and_vmap_over_images_and_ratios",  # 13 s
    "tests/test_transforms.py::test_random_mask_masks_exact_count_on_every_channel",  # 8 s
    "tests/test_transforms.py::test_rotate_matches_scipy_bilinear",  # 8 s
)


@pytest.hookimpl(tryfirst=True)  # before -m / -k deselect, so that -m fast sees the marks
def pytest_collection_modifyitems(config, items):
    """Marks every collected test ``fast`` except the ``slow`` ones and those in
    :data:`NOT_FAST`. On a whole-suite run, warns about a ``NOT_FAST`` entry that names no
    collected test (renamed or removed: update the list)."""
    seen = set()
    for item in items:
        name = item.nodeid.split("[", 1)[0]
        path = name.split("::", 1)[0]
        seen.update((name, path))
        if name not in NOT_FAST and path not in NOT_FAST and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.fast)
    stale = [n for n in NOT_FAST if n not in seen]
    if stale and config.args_source == pytest.Config.ArgsSource.TESTPATHS:
        warnings.warn(pytest.PytestWarning(f"NOT_FAST names no test: {stale}"), stacklevel=1)


# ----------------------------------------------------------------------------- jit / vmap checker


def _check_jit_vmap(fn, *batch, atol=0.0, rtol=0.0):
    """dm_pix's pattern: ``fn`` per element of ``batch`` (arrays sharing a leading axis) gives
    the same under ``jax.jit`` as eagerly, and ``jax.vmap(fn)`` (eager and jitted) equals the
    stacked loop. Returns the stacked loop (a pytree like ``fn``'s output)."""
    import jax
    import numpy as np

    n = len(batch[0])
    jitted = jax.jit(fn)
    loop = []
    for i in range(n):
        args = [b[i] for b in batch]
        eager = fn(*args)
        jax.tree.map(
            lambda a, e: np.testing.assert_allclose(a, e, rtol=rtol, atol=atol),
            jitted(*args),
            eager,
        )
        loop.append(eager)
    want = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *loop)
    for got in (jax.vmap(fn)(*batch), jax.jit(jax.vmap(fn))(*batch)):
        jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=rtol, atol=atol), got, want)
    return want


@pytest.fixture
def check_jit_vmap():
    """The shared "jit == eager, vmap == loop" checker: ``check_jit_vmap(fn, *batch, atol=,
    rtol=)``; see :func:`_check_jit_vmap`."""
    return _check_jit_vmap


# ----------------------------------------------------------------------------- child processes


def _child_env(*paths, **variables):
    """The environment of a Python child process a test starts: this process's, with
    ``PYTHONPATH`` = this checkout (its ``invariance``), tests/ (the test modules, whose helpers
    a child script imports as ``from test_train import small_config``), then ``paths`` (e.g. a
    tmp folder holding a module the test wrote), then any ``PYTHONPATH`` already set; and the
    environment ``variables`` set on top (strings)."""
    entries = [str(REPO), str(TESTS), *map(str, paths)]
    if os.environ.get("PYTHONPATH"):
        entries.append(os.environ["PYTHONPATH"])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(entries), **variables}


@pytest.fixture(scope="session")
def child_env():
    """``child_env(*paths, **variables)``: the environment for ``subprocess.run(..., env=)`` of
    a Python child, importing this checkout and tests/ without ``sys.path`` edits in the
    child's script; see :func:`_child_env`."""
    return _child_env


# ----------------------------------------------------------------------------- tiny reproduce


@pytest.fixture(scope="session")
def tiny_reproduce(tmp_path_factory):
    """One ``invariance reproduce --profile tiny --processes 2 --workdir runs --out results``,
    run by the real CLI in a child process, shared by the end-to-end test (test_cli) and the
    store tests (test_store). Returns ``(root, completed process, seconds)``; ``root/runs``
    is the workdir and ``root/results`` the stores and tables. Tests that use it belong to
    ``xdist_group("tiny_reproduce")``, so one worker makes it once."""
    import subprocess
    import sys
    import time

    root = tmp_path_factory.mktemp("tiny-reproduce")
    env = dict(os.environ, JAX_PLATFORMS="cpu", INVARIANCE_CACHE_DIR=str(root / "cache"))
    args = ["reproduce", "--profile", "tiny", "--workdir", "runs", "--out", "results"]
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "invariance.cli", *args, "--processes", "2"],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=root,
    )
    return root, proc, time.time() - t0
