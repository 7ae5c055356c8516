"""odediff.images: grids and curves written to disk."""


def test_writing_a_loss_curve_leaves_the_matplotlib_backend_alone(tmp_path):
    import subprocess
    import sys

    code = (
        "import matplotlib; matplotlib.use('svg'); from odediff import images; "
        "images.save_curves({'loss': ([1, 2], [1.0, 0.5])}, 'c.png'); print(matplotlib.get_backend())"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "svg" and (tmp_path / "c.png").stat().st_size > 0
