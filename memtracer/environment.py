"""The project's own virtual environment, build/venv: setup.cfg's pinned packages live there and
never in the system's Python (Debian's python3 is externally managed and refuses pip).

Standard library only: build.py uses it before the environment exists, and every entry point
(memory_tracer.py, the Python analysis tools, `python3 -m memtracer.snapshot`, bench/run.py) calls
use_project_environment() first, so that any python3 on PATH runs them inside it."""
import configparser
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .layout import BUILD_DIR, REPO_DIR

VENV_DIR = BUILD_DIR / "venv"
VENV_PYTHON = VENV_DIR / "bin" / "python3"
# What was installed into the environment, to skip pip when setup.cfg has not changed since.
INSTALLED_LIST = VENV_DIR / "memory_tracer-requirements.txt"
# A .pth file in the environment makes the repository importable from any directory.
PATH_FILE_NAME = "memory_tracer_repository.pth"
# Set for the one re-execution, so a broken environment stops with a message instead of looping.
REEXEC_MARK = "MEMORY_TRACER_REEXECUTED"
# Debian's interpreter: the environment is made with it, whatever python3 started build.py.
SYSTEM_PYTHON = Path("/usr/bin/python3")
BUILD_EXTRAS = ("build", "test")


def pinned_requirements(extras=()):
    """setup.cfg's pinned packages ('name==version'): install_requires plus the named extras."""
    config = configparser.ConfigParser()
    config.read(REPO_DIR / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines()
    for extra in extras:
        lines += config["options.extras_require"][extra].splitlines()
    return [line.strip() for line in lines if line.strip()]


def module_name(requirement):
    """The importable name of a pinned package: its name, lower case, '-' as '_' (true of ours)."""
    return requirement.partition("==")[0].lower().replace("-", "_")


def missing_modules():
    missing = []
    for name in map(module_name, pinned_requirements()):
        try:
            found = importlib.util.find_spec(name) is not None
        except ImportError:          # a dotted name whose parent package is absent
            found = False
        if not found:
            missing.append(name)
    return missing


def in_project_environment():
    return Path(sys.prefix).resolve() == VENV_DIR.resolve()


def use_project_environment():
    """Make sure this process can import the project's packages: nothing to do inside the
    environment or where they are importable anyway; otherwise re-execute this same command with
    the environment's interpreter, or, where there is no environment yet, stop with one line."""
    if in_project_environment():
        os.environ.pop(REEXEC_MARK, None)   # the tools this process starts decide for themselves
        return
    missing = missing_modules()
    if not missing:
        return
    program = os.path.basename(sys.argv[0]) or "python3"
    if not VENV_PYTHON.exists():
        sys.exit(f"{program}: the Python packages {', '.join(missing)} are not importable and the "
                 f"project's environment {VENV_DIR} does not exist; run `python3 build.py` first.")
    if os.environ.get(REEXEC_MARK):
        sys.exit(f"{program}: the project's environment {VENV_DIR} lacks {', '.join(missing)}; "
                 "run `python3 build.py` again.")
    os.environ[REEXEC_MARK] = "1"
    os.execv(VENV_PYTHON, [str(VENV_PYTHON), *this_command()])


def this_command():
    """The arguments that start this process again under another interpreter: the module for
    `python3 -m NAME`, the script otherwise (interpreter flags such as -S or -I are left out)."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is not None:
        return ["-m", spec.name, *sys.argv[1:]]
    if not sys.argv[0] or sys.argv[0] == "-c":
        sys.exit("python3: the project's packages are not importable here; run it with "
                 f"{VENV_PYTHON}.")
    return sys.argv


def reexecute_in_project_environment(script):
    """build.py's hand-over once the environment exists: the rest runs with its interpreter."""
    os.environ[REEXEC_MARK] = "1"
    os.execv(VENV_PYTHON, [str(VENV_PYTHON), str(script), *sys.argv[1:]])


def make_project_environment(step, run):
    """Create build/venv with Debian's python3 and install the pinned packages (runtime, build
    and test) into it; a second call with an unchanged setup.cfg does nothing."""
    wanted = "\n".join(pinned_requirements(BUILD_EXTRAS)) + "\n"
    if VENV_PYTHON.exists() and INSTALLED_LIST.exists() and INSTALLED_LIST.read_text() == wanted:
        step(f"Python packages: already installed in {VENV_DIR}")
        return
    if not VENV_PYTHON.exists():
        base = SYSTEM_PYTHON if SYSTEM_PYTHON.exists() else Path(sys.executable)
        step(f"Python environment: creating {VENV_DIR} with {base}")
        shutil.rmtree(VENV_DIR, ignore_errors=True)   # a half-made one from an interrupted run
        run([str(base), "-m", "venv", str(VENV_DIR)])
    step(f"Python packages: installing {' '.join(wanted.split())} into {VENV_DIR}")
    run([str(VENV_PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q",
         *wanted.split()])
    site_packages = subprocess.run(
        [str(VENV_PYTHON), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        stdout=subprocess.PIPE, text=True, check=True).stdout.strip()
    (Path(site_packages) / PATH_FILE_NAME).write_text(f"{REPO_DIR}\n")
    INSTALLED_LIST.write_text(wanted)
