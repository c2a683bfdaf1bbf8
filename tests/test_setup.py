"""Set-up on a stock Debian 12: build.py starts on the standard library alone, a user without root
gets the exact root commands and nothing changes, and every entry point started with Debian's own
python3 (which has none of the project's packages) runs inside the project's environment."""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, TOOLS
from memtracer.build.bootstrap import APT_SOURCES_FILE, BACKPORTS_PACKAGES, BUILD_PACKAGES
from memtracer.record import CPL_SHIFT, RECORD_DTYPE, STORE_BIT, VALID_BYTE
from memtracer.environment import VENV_DIR, VENV_PYTHON, missing_modules

DEBIAN_PYTHON = "/usr/bin/python3"
# What build.py and memory_tracer.py need of the repository before the environment exists.
BOOTSTRAP_FILES = ["build.py", "memory_tracer.py", "setup.cfg", "memtracer"]


def debian_python(*args, cwd=REPO, **kwargs):
    """Debian's interpreter as a stock user starts it: no PYTHONPATH, no virtual environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([DEBIAN_PYTHON, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, **kwargs)


def test_debian_python_lacks_the_packages():
    # The premise of every test below: without the re-execution these commands would fail.
    missing = debian_python("-c", "import memtracer.environment as e; print(' '.join(e.missing_modules()))")
    assert missing.returncode == 0 and "qemu.qmp" in missing.stdout.split()
    assert missing_modules() == []   # while pytest itself runs inside the environment
    assert sys.prefix == str(VENV_DIR) or os.path.realpath(sys.prefix) == os.path.realpath(VENV_DIR)


def test_build_help_needs_no_site_packages():
    result = debian_python("-S", "-I", REPO / "build.py", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: build.py") and "--run_tests" in result.stdout


@pytest.fixture
def bare_copy():
    """The files build.py needs, without build/: a checkout where nothing is built yet, readable
    by `nobody` (pytest's own temporary folders are not)."""
    with tempfile.TemporaryDirectory(prefix="memory_tracer_bare_") as folder:
        yield make_bare_copy(Path(folder))


def make_bare_copy(folder):
    folder.chmod(0o755)
    copy = folder / "repo"
    copy.mkdir()
    for name in BOOTSTRAP_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, copy / name)
    for path in [copy, *copy.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return copy


def listing(tree):
    return sorted((str(p.relative_to(tree)), p.stat().st_mtime_ns) for p in tree.rglob("*"))


def test_build_without_root_prints_the_root_commands_and_changes_nothing(bare_copy):
    # The apt source entry hidden in a private mount namespace, as on a machine never set up, and
    # build.py started as `nobody` with Debian's python3 and no site packages.
    before = listing(bare_copy)
    script = (f"mount --bind {bare_copy.parent / 'empty'} {APT_SOURCES_FILE.parent} && "
              f"exec setpriv --reuid=nobody --regid=nogroup --clear-groups {DEBIAN_PYTHON} -S -I build.py")
    (bare_copy.parent / "empty").mkdir()
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            cwd=bare_copy, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("build.py: build.py needs root to install Debian packages")
    assert f"cat > {APT_SOURCES_FILE} <<'EOF'" in result.stderr
    assert "apt-get install -y -t bookworm-backports " + " ".join(BACKPORTS_PACKAGES) in result.stderr
    assert "apt-get install -y " + " ".join(BUILD_PACKAGES) in result.stderr
    assert "python3-venv" in BUILD_PACKAGES
    assert listing(bare_copy) == before      # no build/, no venv, nothing written
    assert APT_SOURCES_FILE.exists()         # and the real machine's entry was never touched


def test_memory_tracer_without_an_environment_says_to_build(bare_copy):
    result = debian_python("memory_tracer.py", "--help", cwd=bare_copy)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"memory_tracer.py: the Python packages {', '.join(missing_modules_of_debian_python())} are not "
        f"importable and the project's environment {bare_copy / 'build' / 'venv'} does not exist; "
        "run `python3 build.py` first."]
    assert not (bare_copy / "build").exists()


def missing_modules_of_debian_python():
    result = debian_python("-c", "import memtracer.environment as e; print(' '.join(e.missing_modules()))")
    return result.stdout.split()


@pytest.mark.parametrize("command", [
    ["memory_tracer.py", "--help"],
    ["-m", "memtracer.snapshot", "--help"],
    ["bench/run.py", "--help"],
], ids=["memory_tracer", "snapshot", "bench"])
def test_entry_points_run_inside_the_environment_from_debian_python(command):
    result = debian_python(*command)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ")


def test_python_tool_started_by_debian_python_runs_inside_the_environment(tmp_path):
    # count.py replaying raw records: 3 loads and 2 stores of 4 bytes at CPL 3.
    records = np.zeros(5, dtype=RECORD_DTYPE)
    records["info"] = [3 << CPL_SHIFT | 2] * 3 + [3 << CPL_SHIFT | 2 | STORE_BIT] * 2
    records["valid"] = VALID_BYTE
    records["virt_addr"] = np.arange(5) * 4 + 0x1000
    raw = tmp_path / "five.raw"
    raw.write_bytes(records.tobytes())
    result = debian_python(REPO / "analysis_tools" / "python" / "count.py", raw)
    direct = subprocess.run([TOOLS / "count", raw], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "num_of_records: 5" in result.stdout
    assert result.stdout.split("analysis output")[-1] == direct.stdout.split("analysis output")[-1]


def test_environment_interpreter_is_debians():
    assert VENV_PYTHON.exists()
    config = (VENV_DIR / "pyvenv.cfg").read_text()
    assert "home = /usr/bin" in config
