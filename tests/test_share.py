"""Shared trainings: a cell that would train what a finished cell trained takes its models."""

import hashlib
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from test_train import small_config as train_config

from invariance import sweep
from invariance.train import adopt_training, train, training_identity
from invariance.train._share import SHARED_FILE


def small_config(workdir, **overrides):
    """test_train's SmallCNN(4, 8) on synthetic images, 2 epochs, in ``workdir``."""
    return train_config(workdir=str(workdir), **overrides)


def _digests(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_identity_ignores_how_a_run_is_executed_and_an_empty_augmentation():
    a = small_config("/a")
    b = small_config("/b", progress=True, log_every_steps=7, keep_checkpoints=5)
    b.augment = {}
    assert training_identity(a) == training_identity(b)
    assert training_identity(a) == training_identity(json.loads(a.to_json()))
    for change in ({"learning_rate": 1e-2}, {"num_epochs": 3}, {"vmap_seeds": 1}):
        assert training_identity(small_config("/a", **change)) != training_identity(a), change
    c = small_config("/a")
    c.augment = {"translate": 3}
    assert training_identity(c) != training_identity(a)


@pytest.fixture(scope="module")
def donor(tmp_path_factory):
    """A finished 2-epoch run, and an unfinished one (stopped after epoch 1) of another lr."""
    root = tmp_path_factory.mktemp("share")
    done = train(small_config(root / "done"))
    train(small_config(root / "half", learning_rate=1e-2, stop_after_epochs=1))
    return root, done


def test_an_adopted_run_restores_the_donor_models_and_trains_nothing(donor, tmp_path):
    root, done = donor
    before = _digests(root / "done")
    cfg = small_config(tmp_path / "new", log_every_steps=3)
    cfg.augment = {}  # "no augmentation" spelled another way: the same training
    got = adopt_training(tmp_path / "new", cfg, [root / "half", root / "done"])
    assert got == root / "done"
    assert json.loads((tmp_path / "new" / SHARED_FILE).read_text())["epoch"] == 2
    result = train(cfg)
    same = jax.tree_util.tree_map(np.array_equal, result.variables, done.variables)
    assert all(jax.tree_util.tree_leaves(same))
    assert result.history == done.history  # the donor's epochs, seconds included: none ran
    assert _digests(root / "done") == before  # the donor is never written
    assert json.loads((tmp_path / "new" / "config.json").read_text())["workdir"] == cfg.workdir
    # Taken again from the run that took them: the record names the run that trained them.
    third = small_config(tmp_path / "third")
    assert adopt_training(tmp_path / "third", third, [tmp_path / "new"]) == tmp_path / "new"
    trained_in = json.loads((tmp_path / "third" / SHARED_FILE).read_text())["trained_in"]
    assert (tmp_path / "third" / trained_in).resolve() == (root / "done").resolve()


def test_no_adoption_of_another_training_an_unfinished_one_or_over_own_checkpoints(donor, tmp_path):
    root, _ = donor
    other = small_config(tmp_path / "a", learning_rate=1e-2)  # the unfinished run's training
    assert adopt_training(tmp_path / "a", other, [root / "done", root / "half"]) is None
    assert not (tmp_path / "a").exists()
    own = small_config(tmp_path / "b")
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)  # a run of its own: resumed, not replaced
    assert adopt_training(tmp_path / "b", own, [root / "done"]) is None
    assert adopt_training(tmp_path / "c", own, [tmp_path / "missing"]) is None
    odd = tmp_path / "odd"  # a finished checkpoint under a config that no longer validates
    shutil.copytree(root / "done", odd)
    cfg = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**cfg, "augment": {"nosuch": 1}}))
    assert adopt_training(tmp_path / "d", own, [odd]) is None


def _finished_cells(workdir, *names, train_dir=True):
    """Finished cells of a trivial study in ``workdir`` (a ``train`` folder in each)."""

    def cell_fn(config, folder):
        (Path(folder) / "rows.jsonl").write_text('{"a": 1}\n')
        if train_dir:
            (Path(folder) / "train").mkdir()

    cfgs = [{"name": "study", "cell_name": n, "experiment": "x", "x": n} for n in names]
    result = sweep.run_sweep(cfgs, workdir, cell_fn=cell_fn, progress=False)
    assert not result.failed
    return [sweep.cell_dir(workdir, c) for c in cfgs]


def test_donors_are_the_finished_cells_of_the_workdir_and_of_the_shared_ones(tmp_path):
    a1, a2 = _finished_cells(tmp_path / "a", "a1", "a2")
    (b1,) = _finished_cells(tmp_path / "b", "b1")
    (c1,) = _finished_cells(tmp_path / "c", "c1")
    (d1,) = _finished_cells(tmp_path / "d", "d1", train_dir=False)
    assert sweep.trained_donors(a1) == [a2 / "train"]  # no shared_training.json: its own
    sweep.record_shared_training(tmp_path, [tmp_path / n for n in "abd"])
    assert sweep.trained_donors(a1) == [a2 / "train", b1 / "train"]
    assert sweep.trained_donors(b1) == [a1 / "train", a2 / "train"]
    assert sweep.trained_donors(d1) == [a1 / "train", a2 / "train", b1 / "train"]
    assert sweep.trained_donors(c1) == []  # not one of the shared workdirs
    (a2 / "rows.jsonl").write_text('{"a": 2}\n')  # damaged: no longer a finished cell
    assert sweep.trained_donors(a1) == [b1 / "train"]


def test_a_reproduce_trains_a_model_two_studies_ask_for_once(tmp_path):
    """The downsampling study's plain max row is the pooling table's max model: its cell
    takes the finished training (same rows for accuracy, the donor's training time)."""
    from invariance import config as C
    from invariance.experiment import run_cell

    studies = {}
    for name, label in (("pooling_table", "max"), ("downsample_input", "max pool (28 -> 14)")):
        over = {"progress": False, "measure.protocols": []}
        _, cells = C.resolve(name, profile="tiny", overrides=over)
        studies[name] = [c for c in cells if c.cell_name == label]
    sweep.record_shared_training(tmp_path, [tmp_path / n for n in studies])
    results = sweep.run_sweeps(
        [(cells, tmp_path / n) for n, cells in studies.items()], cell_fn=run_cell, progress=False
    )
    assert not any(r.failed for r in results)
    (donor,), (taker,) = (r.folders for r in results)
    shared = json.loads((taker / "train" / SHARED_FILE).read_text())
    assert (taker / "train" / shared["trained_in"]).resolve() == (donor / "train").resolve()
    rows = [sweep.read_rows(f) for f in (donor, taker)]
    for key in ("test_accuracy", "train_seconds", "seed_index"):
        assert [r[key] for r in rows[0]] == [r[key] for r in rows[1]], key
    assert not (donor / "train" / SHARED_FILE).exists()
