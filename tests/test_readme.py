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
