"""The ``invariance`` command: train, measure, sweep, report, reproduce.

    invariance train CONFIG [--profile quick] [--set key=value ...] [--workdir DIR]
    invariance measure RUN_DIR [--set key=value ...]
    invariance sweep CONFIG [--backend local|submitit] [--workdir DIR] [--processes N]
    invariance report DIR [--out DIR]
    invariance reproduce [--profile quick|full] [--out results]

User errors print one line (what is wrong, what is valid) and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["REPRODUCE_CONFIGS", "main"]

# The default study, in the order it runs.
REPRODUCE_CONFIGS = ("seed_figures", "pooling_table", "downsample_input")


class UserError(Exception):
    """An error the user can fix; printed as one line."""


def _parser() -> argparse.ArgumentParser:
    from invariance.config import PROFILES
    from invariance.sweep import BACKENDS

    p = argparse.ArgumentParser(prog="invariance", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, config=True):
        if config:
            sp.add_argument("config", help="a config name in configs/ or a path to one")
            sp.add_argument("--profile", default="quick", choices=PROFILES)
        sp.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config field (dotted key); repeatable",
        )

    t = sub.add_parser("train", help="train the config's model")
    common(t)
    t.add_argument("--workdir", default=None)
    m = sub.add_parser("measure", help="(re)measure a trained cell folder")
    m.add_argument("run_dir")
    common(m, config=False)
    s = sub.add_parser("sweep", help="run every cell of a config's sweep (resumable)")
    common(s)
    s.add_argument("--backend", default="local", choices=BACKENDS)
    s.add_argument("--workdir", default=None, help="default runs/<config>-<profile>")
    s.add_argument("--processes", type=int, default=1)
    s.add_argument("--cluster", default=None, help="submitit cluster: slurm, local or debug")
    s.add_argument(
        "--slurm", default="{}", help='submitit parameters as JSON, e.g. {"timeout_min": 60}'
    )
    r = sub.add_parser("report", help="tables and figures from a sweep's rows")
    r.add_argument("dir")
    r.add_argument("--out", default=None, help="default DIR/report")
    rp = sub.add_parser("reproduce", help="the default study, written to results/")
    rp.add_argument("--profile", default="quick", choices=PROFILES)
    rp.add_argument("--workdir", default=None, help="default runs/reproduce-<profile>")
    rp.add_argument("--out", default=None, help="default results/<profile>")
    rp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    rp.add_argument(
        "--update-readme",
        default=None,
        metavar="README",
        help="also copy the generated tables into README between <!-- results:NAME --> markers",
    )
    return p


def _cmd_train(args) -> int:
    import ml_collections

    from invariance import config as C
    from invariance import train as train_lib

    base, _ = C.resolve(args.config, profile=args.profile, overrides=C.parse_set(args.set))
    tcfg = ml_collections.ConfigDict(base.train.to_dict())
    tcfg.workdir = args.workdir or str(Path("runs") / base.name / f"train-{C.config_hash(tcfg)}")
    result = train_lib.train(tcfg)
    last = result.history[-1] if result.history else {}
    print(
        json.dumps({"run_dir": str(result.run_dir), **{k: last.get(k) for k in last}}, default=str)
    )
    return 0


def _cmd_measure(args) -> int:
    from invariance import config as C
    from invariance.experiment import run_cell
    from invariance.io import atomic_write_json

    folder = Path(args.run_dir)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{folder} holds no config.json: pass a cell folder made by sweep")
    import ml_collections

    cfg = ml_collections.ConfigDict(json.loads(cfg_path.read_text()))
    C.apply_overrides(cfg, C.parse_set(args.set))
    d = C.to_dict(cfg)
    run_cell(d, str(folder))  # training resumes from its last checkpoint: nothing retrains
    atomic_write_json(folder / "config.json", d)
    print(f"rows written to {folder / 'rows.jsonl'}")
    return 0


def _sweep(name: str, profile: str, overrides: list[str], workdir: str | None, **kw) -> Path:
    from invariance import config as C
    from invariance.experiment import run_cell
    from invariance.sweep import run_sweep

    _, cells = C.resolve(name, profile=profile, overrides=C.parse_set(overrides))
    wd = Path(workdir or Path("runs") / f"{cells[0].name}-{profile}")
    run_sweep(cells, wd, cell_fn=run_cell, **kw)
    return wd


def _cmd_sweep(args) -> int:
    try:
        slurm = json.loads(args.slurm)
    except json.JSONDecodeError as e:
        raise UserError(f"--slurm must be a JSON object: {e}") from None
    wd = _sweep(
        args.config,
        args.profile,
        args.set,
        args.workdir,
        backend=args.backend,
        processes=args.processes,
        cluster=args.cluster,
        slurm=slurm,
    )
    print(f"sweep finished in {wd}; tables: invariance report {wd}")
    return 0


def _cmd_report(args) -> int:
    from invariance.report import report

    if not Path(args.dir).is_dir():
        raise UserError(f"no such folder: {args.dir}")
    for p in report(args.dir, args.out):
        print(p)
    return 0


def _cmd_reproduce(args) -> int:
    from invariance.report import report

    root = Path(args.workdir or Path("runs") / f"reproduce-{args.profile}")
    for name in REPRODUCE_CONFIGS:
        print(f"== {name} ({args.profile})", flush=True)
        _sweep(name, args.profile, args.set, str(root / name))
    out = Path(args.out or Path("results") / args.profile)
    for p in report(root, out):
        print(p)
    if args.update_readme:
        update_readme(Path(args.update_readme), out)
    return 0


def update_readme(readme: Path, tables: Path) -> None:
    """Replaces each ``<!-- results:NAME -->`` ... ``<!-- /results:NAME -->`` block of the
    README with the table in ``tables/NAME.md`` (its heading dropped); written atomically."""
    import re

    from invariance.io import atomic_write_text

    text = readme.read_text()

    def body(m: re.Match) -> str:
        name = m.group(1)
        path = tables / f"{name}.md"
        if not path.is_file():
            raise UserError(f"{readme} asks for results:{name} but {path} does not exist")
        lines = path.read_text().splitlines()
        table = "\n".join(line for line in lines if not line.startswith("# ")).strip()
        return f"<!-- results:{name} -->\n{table}\n<!-- /results:{name} -->"

    new = re.sub(r"<!-- results:(\S+) -->.*?<!-- /results:\1 -->", body, text, flags=re.S)
    atomic_write_text(readme, new)


COMMANDS = {
    "train": _cmd_train,
    "measure": _cmd_measure,
    "sweep": _cmd_sweep,
    "report": _cmd_report,
    "reproduce": _cmd_reproduce,
}


def _enable_compilation_cache() -> None:
    """Persists XLA executables under the invariance cache folder (``$INVARIANCE_CACHE_DIR``,
    else ``~/.cache/invariance``): the seeds of a cell and a rerun of a sweep reuse compiled
    programs instead of compiling them again (numbers are unchanged; only time is saved)."""
    import jax

    from invariance.data._cache import cache_dir

    jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``invariance`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    _enable_compilation_cache()
    from invariance.config import ConfigError
    from invariance.data import DataNotFoundError

    try:
        return COMMANDS[args.command](args)
    except (UserError, ConfigError, DataNotFoundError, ValueError, FileNotFoundError) as e:
        msg = " ".join(str(e).split())  # one line
        print(f"invariance: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("invariance: interrupted; finished cells are kept, rerun to resume", file=sys.stderr)
        return 130


def console() -> None:
    """The ``invariance`` console script: :func:`main` in a process restarted with steady glibc
    malloc settings (``invariance.runtime``: ~1.5x faster CPU training steps here)."""
    from invariance import runtime

    runtime.reexec_with_steady_malloc()
    sys.exit(main())


if __name__ == "__main__":
    console()
