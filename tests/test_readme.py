"""The README's code stays true: its API tour runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_api_tour_runs():
    text = README.read_text(encoding="utf-8")
    m = re.search(r"## A short tour of the API\n\n```python\n(.*?)```", text, re.S)
    assert m, "README has no API tour"
    namespace: dict = {}
    exec(compile(m.group(1), "README tour", "exec"), namespace)
    rows = namespace["rows"]
    assert rows and all(r["protocol"] == "one_pixel_flip_rate" for r in rows)


def test_readme_command_lines_parse():
    """Every ``invariance ...`` line of the README's command-line block names real
    subcommands and flags (parsed by the CLI's own parser, nothing run)."""
    import shlex

    from invariance import cli

    text = README.read_text(encoding="utf-8")
    m = re.search(r"## The command line\n\n```bash\n(.*?)```", text, re.S)
    assert m, "README has no command-line block"
    lines = m.group(1).replace("\\\n", " ").splitlines()
    commands = [shlex.split(line, comments=True) for line in lines if line.startswith("invariance")]
    assert len(commands) >= 8
    parser = cli._parser()
    for words in commands:
        args = parser.parse_args(words[1:])  # argparse exits (SystemExit) on a stale flag
        assert args.command in cli.COMMANDS, words


def test_readme_results_blocks_are_the_committed_tables():
    """Every ``<!-- results:DIR/NAME -->`` block of the README holds results/DIR/NAME.md as
    ``invariance reproduce --update-readme`` copies it: no README table drifts from its rows."""
    from invariance.cli import readme_table

    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- results:(\S+) -->\n(.*?)\n<!-- /results:\1 -->", text, re.S)
    assert blocks, "README has no results blocks"
    for name, body in blocks:
        assert "/" in name, f"results:{name} names no results folder (results:DIR/NAME)"
        assert body == readme_table(README.parent / "results" / f"{name}.md"), name
