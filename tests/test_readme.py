"""The README's Python quick start runs as written (offline default model)."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_quick_start_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python blocks"
    scope: dict = {}
    exec(compile(blocks[0], "README.md[quick start]", "exec"), scope)
    seg, scores, res = scope["seg"], scope["scores"], scope["res"]
    assert seg.shape == (4, 1, 224, 224) and seg.dtype == torch.int64
    assert int(seg.max()) <= 4
    # FeatureAblation gives one score per NAVE segment (constant inside each segment)
    for i in range(4):
        for k in seg[i].unique():
            vals = scores[i][:, seg[i, 0] == k]
            assert torch.allclose(vals, vals.flatten()[0].expand_as(vals))
    assert res.grid == (224, 224)


def test_readme_commands_match_ci():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    test_cmd = 'pip install -e ".[test]" && python -m pytest -n 2'
    assert test_cmd in text
    assert 'pip install -e ".[test]"' in ci and "python -m pytest -n 2" in ci
    assert "pip install . && captum-nave explain" in text
