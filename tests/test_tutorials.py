"""The tutorials in ``tutorials/``: stored without outputs, up to date with their
generator, and executed end to end (nbclient, kernel "python3" on this interpreter)."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import nbformat
import pytest

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"

#: Every tutorial with the number of figures it must display.
EXPECTED = {
    "01_quickstart.ipynb": 2,
    "02_attribution_side_by_side.ipynb": 2,
    "03_registers.ipynb": 1,
    "04_concepts_clever_hans.ipynb": 2,
    "05_corloc.ipynb": 1,
    "06_faithfulness_lens.ipynb": 3,
}


def _builder():
    spec = importlib.util.spec_from_file_location("build_notebooks", TUTORIALS / "build_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def test_the_tutorials_are_all_there():
    assert sorted(p.name for p in TUTORIALS.glob("*.ipynb")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_stored_without_outputs_and_up_to_date(name):
    text = (TUTORIALS / name).read_text(encoding="utf-8")
    nb = nbformat.reads(text, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, name
    assert text == _builder().render(name), f"{name} differs from tutorials/build_notebooks.py; rerun it"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_tutorial_runs(name, tmp_path):
    from nbclient import NotebookClient

    nb = nbformat.read(TUTORIALS / name, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys\nprint(sys.executable)"))
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", allow_errors=False,
        resources={"metadata": {"path": str(tmp_path)}},  # files the tutorial writes go to tmp_path
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    print(f"{name}: {elapsed:.1f} s")

    # the kernel ran on this interpreter (the one with captum-nave installed)
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.get("output_type") == "stream")
    assert os.path.realpath(printed.strip()) == os.path.realpath(sys.executable)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    figures = sum(1 for o in outputs if "image/png" in o.get("data", {}))
    assert figures == EXPECTED[name], f"{name}: {figures} figures displayed, expected {EXPECTED[name]}"
