"""Importing pyserve from a source tree that has no compiled core fails with a message that says
what happened and what to do (never Python's "partially initialized module" puzzle)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pyserve

SRC = Path(pyserve.__file__).resolve().parent


def _source_copy(root: Path) -> Path:
    """A copy of the package's Python files (no extension), as in a fresh clone."""
    shutil.copytree(SRC, root / "pyserve",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))  # fmt: skip
    return root


def _import_in(cwd: Path, prelude: str = "") -> subprocess.CompletedProcess:
    # NOTE: -S leaves site-packages (and an editable install's import hook) out, so the import
    # resolves exactly as from a checkout whose package is not installed in place.
    code = f"import sys; {prelude} import pyserve"
    return subprocess.run([sys.executable, "-S", "-c", code], cwd=cwd, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def test_unbuilt_source_tree_says_to_build(tmp_path):
    out = _import_in(_source_copy(tmp_path))
    assert out.returncode != 0
    err = out.stderr.strip().splitlines()[-1]
    assert err.startswith("ImportError: pyserve cannot load its compiled core"), out.stderr
    assert "not built" in err and "pip install -e ." in err
    assert "circular import" not in out.stderr


def test_source_tree_shadowing_an_installed_package_is_named(tmp_path):
    root = _source_copy(tmp_path / "clone")
    site = tmp_path / "site" / "pyserve"  # an installed copy: it has the compiled core
    site.mkdir(parents=True)
    (site / "__init__.py").write_text("")
    (site / "_core.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    out = _import_in(root, prelude=f"sys.path.append({str(site.parent)!r});")
    err = out.stderr.strip().splitlines()[-1]
    assert "shadows the installed pyserve at " + str(site) in err, out.stderr
    assert "run from another directory" in err and "pip install -e ." in err


def test_installed_package_imports_from_any_directory(tmp_path):
    # The README's dev install: a subprocess started anywhere finds the compiled core.
    out = subprocess.run([sys.executable, "-c", "import pyserve._core, pyserve; print('ok')"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_ray_workers_get_their_own_working_directory_in_a_shadowing_checkout(tmp_path, monkeypatch):
    from pyserve.cluster.cluster import _worker_env

    _source_copy(tmp_path)  # a checkout in the cwd that is not the imported package
    monkeypatch.chdir(tmp_path)
    env = _worker_env({"num_cpus": 1})
    wd = env["runtime_env"]["working_dir"]
    assert env["num_cpus"] == 1 and wd != str(tmp_path) and not any(Path(wd).iterdir())
    assert _worker_env({"runtime_env": {"pip": []}}) == {"runtime_env": {"pip": []}}  # the caller's
    monkeypatch.chdir(SRC.parent)  # the imported package's own checkout (editable install)
    assert "runtime_env" not in _worker_env({})
