"""The README's example runs as written."""

import os
import re

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def test_readme_example_builds_fits_saves_and_loads(tmp_path, monkeypatch):
    text = open(README, encoding="utf-8").read()
    example = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert (tmp_path / "copy.keras").exists()
    assert tuple(namespace["logits"].shape) == (2000, 6, 13)
