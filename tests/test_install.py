"""The project as users install it, not editable: a wheel built from the source tree and
``pip install .``, each into a fresh venv, give a working ``online-gim`` whose presets are package
data (found through ``importlib.resources``).

The fresh venvs get the dependencies (torch and the rest, about 5 GB) from this test venv instead
of copies: a ``.pth`` file adds a folder of links to this venv's installed distributions, every one
but online-gim itself, so that pip sees the requirements satisfied (``--no-index``: nothing is
downloaded) and the program imports its own installed files only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from online_gim.config import preset_names

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT.parent / "shared" / "data" / "librispeech-mini"
FOLDERS = {"online_gim": "online_gim", "streams": "online_gim.streams", "services": "online_gim.services"}
"""The top-level folders of code -> the package each is installed as (``pyproject.toml`` maps the last two)."""
DATA_PACKAGES = {"online_gim.presets", "online_gim.services.static"}
"""Packages of data files: ``configs/`` (mapped in ``pyproject.toml``) and the dashboard's ``services/static/``."""
OLD_NAMES = ("streams", "services")
"""The folder names, which must not be importable once installed (generic names that other distributions use)."""


def setuptools_table() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_pyproject_lists_every_package_of_the_source_tree():
    found = {
        ".".join((package, *init.parent.relative_to(ROOT / folder).parts))
        for folder, package in FOLDERS.items()
        for init in (ROOT / folder).rglob("__init__.py")
    }
    assert set(setuptools_table()["packages"]) == found | DATA_PACKAGES


def test_pyproject_installs_every_folder_inside_online_gim():
    mapped = {package: folder for folder, package in FOLDERS.items() if package != folder}
    assert setuptools_table()["package-dir"] == {"online_gim.presets": "configs", **mapped}
    assert {package.split(".")[0] for package in setuptools_table()["packages"]} == {"online_gim"}


def test_presets_are_found_through_the_package():
    assert preset_names() == sorted(path.stem for path in (ROOT / "configs").glob("*.yaml"))


# ---------------------------------------------------------------------- installed, not editable


def source_copy(destination: Path) -> Path:
    """The source tree without the venv, caches and build outputs (a build writes into its tree)."""
    ignore = shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", "build", "dist", ".pytest_cache",
                                    ".hypothesis", ".cache", ".notes", "runs")
    shutil.copytree(ROOT, destination, ignore=ignore, symlinks=True)
    return destination


def fresh_venv(path: Path, dependencies: Path) -> Path:
    """A venv without pip whose site-packages reach ``dependencies`` through a ``.pth`` file; its python."""
    venv.EnvBuilder(with_pip=False).create(path)
    python = path / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "test-venv-dependencies.pth").write_text(f"{dependencies}\n")
    return python


@pytest.fixture(scope="module")
def dependencies(tmp_path_factory) -> Path:
    """Links to every distribution installed in this venv except online-gim (and its editable hook)."""
    folder = tmp_path_factory.mktemp("dependencies")
    paths = sysconfig.get_paths()
    own = ("online_gim", "__editable__")
    for site in dict.fromkeys((paths["purelib"], paths["platlib"])):
        for entry in Path(site).iterdir():
            if not entry.name.startswith(own) and not entry.name.endswith(".pth") and not (folder / entry.name).exists():
                (folder / entry.name).symlink_to(entry)
    return folder


def pip(python: Path, *args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), *args, "--no-index", "--quiet"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def run(program: Path, *args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """Runs an installed program outside the source tree, with nothing on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run([str(program), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
    assert result.returncode == 0, f"{program.name} {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def where_imported(python: Path, cwd: Path) -> dict:
    code = ("import importlib.util, json, online_gim, online_gim.streams, online_gim.services; "
            "from online_gim.config import presets_dir, preset_names; "
            "print(json.dumps({'online_gim': online_gim.__file__, 'streams': online_gim.streams.__file__, "
            "'services': online_gim.services.__file__, 'presets': str(presets_dir()), 'names': preset_names(), "
            f"'old_names': [name for name in {OLD_NAMES!r} if importlib.util.find_spec(name)]}}))")
    return json.loads(run(python, "-c", code, cwd=cwd).stdout)


def assert_installed_in(venv_dir: Path, where: dict) -> None:
    for name in ("online_gim", "streams", "services", "presets"):
        assert Path(where[name]).resolve().is_relative_to(venv_dir.resolve()), (name, where[name])
    assert where["names"] == preset_names()
    assert where["old_names"] == []


@pytest.mark.slow
def test_pip_install_dot_gives_an_installed_package_with_its_presets(tmp_path, dependencies):
    source = source_copy(tmp_path / "src")
    python = fresh_venv(tmp_path / "venv", dependencies)
    pip(python, "install", "--no-build-isolation", str(source))
    where = where_imported(python, cwd=tmp_path)
    assert_installed_in(tmp_path / "venv", where)
    assert Path(where["presets"]).name == "presets" and (Path(where["presets"]) / "clapp_eprop.yaml").is_file()


@pytest.mark.slow
@pytest.mark.timeout(1800)  # about 6 min on the shared 2-core machine under load, mostly `eval`
@pytest.mark.skipif(not MINI.is_dir(), reason=f"shared LibriSpeech mini not found at {MINI}")
def test_a_built_wheel_in_a_fresh_venv_listens_evaluates_and_benchmarks(tmp_path, dependencies, synth_corpus_dir, small_config):
    source = source_copy(tmp_path / "src")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
         "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("online_gim-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"online_gim/presets/{name}.yaml" for name in preset_names()} <= names
    assert {"online_gim/services/static/index.html", "online_gim/streams/ring_buffer.py",
            "online_gim/services/cli/__init__.py", "online_gim/audio_files.py"} <= names
    (dist_info,) = {name.split("/")[0] for name in names} - {"online_gim"}  # nothing else at the top
    assert dist_info.endswith(".dist-info")
    assert zipfile.ZipFile(wheel).read(f"{dist_info}/top_level.txt").decode().split() == ["online_gim"]

    venv_dir = tmp_path / "venv"
    python = fresh_venv(venv_dir, dependencies)
    pip(python, "install", str(wheel))
    work = tmp_path / "work"
    work.mkdir()
    assert_installed_in(venv_dir, where_imported(python, cwd=work))
    program = venv_dir / "bin" / "online-gim"

    run(program, "listen", "--source", "synth", "--root", str(synth_corpus_dir), "--max-windows", "2", "--no-http",
        "--quiet", "--summary-json", "listen.json", cwd=work)
    assert json.loads((work / "listen.json").read_text())["windows_processed"] == 2

    run(program, "eval", "--corpus", str(MINI), "--methods", "random,mfcc,clapp_eprop", "--train-minutes", "0.05",
        "--max-frames", "2000", "--curve-methods", "", "--json", "eval.json", "--quiet", cwd=work)
    evaluation = json.loads((work / "eval.json").read_text())
    assert "clapp_eprop" in json.dumps(evaluation) and "mfcc" in json.dumps(evaluation)

    bench = run(program, "bench", "--json", "--config", str(small_config), "--windows", "2", cwd=work)
    assert json.loads(bench.stdout)["rtf_learn"] > 0
