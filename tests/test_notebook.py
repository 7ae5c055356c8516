"""examples/quickstart.ipynb runs top to bottom, and is kept in git without outputs."""

import nbformat
import pytest

from helpers import REPO

NOTEBOOK = REPO / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, "strip the notebook's outputs before committing"


@pytest.mark.long
def test_quickstart_notebook_executes(tmp_path):
    nbclient = pytest.importorskip("nbclient", reason="the notebook test needs the test extra (nbclient, ipykernel)")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # a shorter training loop, set after the cell tagged "parameters" as papermill would
    (at,) = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell("train_steps = 40"))
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for o in outputs)
