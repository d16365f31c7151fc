"""The layering contract of pyproject.toml (import-linter): each layer of eqkern imports only the
layers below it. The second test shows that the same check does fail on an upward import."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lint(cwd: Path, config: Path) -> subprocess.CompletedProcess:
    # lint-imports reads the packages from sys.path: run it where they are importable.
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(config)!r}, no_cache=True))")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"})


def test_eqkern_layers_are_kept():
    proc = _lint(ROOT, ROOT / "pyproject.toml")
    print(proc.stdout[-3000:], proc.stderr[-2000:])
    assert proc.returncode == 0, "an eqkern module imports a layer above it (see the output)"
    assert "1 kept, 0 broken" in proc.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    pkg = tmp_path / "layered"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "high.py").write_text("X = 1\n")
    (pkg / "low.py").write_text("from layered.high import X\n")  # the violation
    config = tmp_path / "contract.toml"
    config.write_text(textwrap.dedent("""\
        [tool.importlinter]
        root_package = "layered"
        [[tool.importlinter.contracts]]
        name = "high above low"
        type = "layers"
        layers = ["layered.high", "layered.low"]
    """))
    proc = _lint(tmp_path, config)
    print(proc.stdout[-2000:])
    assert proc.returncode != 0
    assert "layered.low -> layered.high" in proc.stdout
