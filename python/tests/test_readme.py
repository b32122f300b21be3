"""The README's Python blocks run as written, on a generated BAM named in.bam."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT, generate


def readme_python_blocks():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_readme_python_blocks_run(bamgen, tmp_path):
    blocks = readme_python_blocks()
    assert len(blocks) == 2
    generate(bamgen, tmp_path / "in.bam", records=5000, seed=2)
    for block in blocks:
        run = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True)
        assert run.returncode == 0, block + run.stderr
        assert run.stdout.strip(), block
    assert (tmp_path / "in_dataset" / "_SUCCESS").exists()
