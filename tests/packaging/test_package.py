"""What the distribution declares and ships: packages, console commands, extras.

* the metadata setuptools builds from setup.py (``setup.py egg_info`` into a
  scratch folder: nothing is compiled);
* the pure-Python layout of a regular, non-editable install (``setup.py
  build_py`` into a scratch folder, the files a wheel holds apart from the
  compiled extensions), whose six commands and ``python -m`` modules must
  work from a neutral directory with only that folder on ``sys.path``;
* no ``sys.path`` edits or load-by-path in the packages' sources.
"""

import configparser
import importlib
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ("expectigrad_tf", "expectigrad_experiments")
# command -> (module, function, a flag its --help shows)
COMMANDS = {
    "expectigrad-demo": ("expectigrad_experiments.demo", "main", "--epochs"),
    "expectigrad-reddi": ("expectigrad_experiments.reddi", "console_main", "--stoch-runs"),
    "expectigrad-train-image": ("expectigrad_experiments.train_image", "console_main", "--task"),
    "expectigrad-momentum-study": ("expectigrad_experiments.momentum_study", "console_main",
                                   "--betas"),
    "expectigrad-translate": ("expectigrad_experiments.translate.trainer", "main", "--problem"),
    "expectigrad-benchmark": ("expectigrad_experiments.benchmark.cli", "console_main",
                              "--from-json"),
}
# python -m NAME -> a flag its --help shows
MODULES = {
    "expectigrad_experiments.demo": "--epochs",
    "expectigrad_experiments.reddi": "--stoch-runs",
    "expectigrad_experiments.train_image": "--task",
    "expectigrad_experiments.momentum_study": "--betas",
    "expectigrad_experiments.translate": "--problem",
    "expectigrad_experiments.translate.plot": "--copy-json",
    "expectigrad_experiments.benchmark": "--from-json",
}
EXPERIMENTS_EXTRA = {"scikit-learn", "matplotlib", "tensorflow-datasets", "sacrebleu"}
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")


def _setup_py(*args, cwd=ROOT):
    proc = subprocess.run([sys.executable, "setup.py", "-q", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def egg_info(tmp_path_factory):
    base = tmp_path_factory.mktemp("egg_info")
    _setup_py("egg_info", "--egg-base", str(base))
    (info,) = [base / d for d in os.listdir(base) if d.endswith(".egg-info")]
    return info


def test_entry_points_are_the_six_commands(egg_info):
    parser = configparser.ConfigParser()
    parser.optionxform = str  # keep the names' case
    parser.read(egg_info / "entry_points.txt")
    scripts = dict(parser["console_scripts"])
    assert scripts == {name: f"{mod}:{func}" for name, (mod, func, _) in COMMANDS.items()}


def test_packages_declared(egg_info):
    top_level = set((egg_info / "top_level.txt").read_text().split())
    assert top_level == set(PACKAGES)
    sources = (egg_info / "SOURCES.txt").read_text().splitlines()
    assert not [s for s in sources if s.startswith("scripts/")], "scripts/ is not a package"
    for name in ("expectigrad_experiments/__init__.py", "expectigrad_experiments/optimizers.py",
                 "expectigrad_experiments/data.py", "expectigrad_experiments/report.py",
                 "expectigrad_experiments/translate/trainer.py",
                 "expectigrad_experiments/benchmark/cli.py"):
        assert name in sources, name
    for path in egg_info.iterdir():
        assert "expectigrad_tf_scripts" not in path.read_text(), path.name


def test_every_folder_of_the_package_is_a_package():
    """find_packages only finds folders with an __init__.py: a folder of
    modules without one would be left out of a regular install."""
    for pkg in PACKAGES:
        for folder, dirs, files in os.walk(os.path.join(ROOT, pkg)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            if any(f.endswith(".py") for f in files):
                assert "__init__.py" in files, folder


def test_experiments_extra(egg_info):
    sections, current = {}, None
    for line in (egg_info / "requires.txt").read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            current = line.strip("[]")
        elif line:
            sections.setdefault(current, set()).add(re.split(r"[<>=!~ ;]", line)[0])
    assert EXPERIMENTS_EXTRA <= sections.get("experiments", set())
    assert "tensorflow" in sections[None]


# A regular install's files (build_py), run from a neutral directory with only
# that folder ahead of site-packages: the editable install's finder comes after
# the path entries, so every import below must resolve inside the folder.
_RUN_ALL = r"""
import importlib, io, os, runpy, sys, contextlib
lib = os.path.realpath(sys.argv[1])
commands = eval(sys.argv[2])
modules = eval(sys.argv[3])
failures = []

def help_of(call):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            call()
            code = 0
        except SystemExit as e:
            code = e.code
    return code, out.getvalue()

for name, (mod, func, flag) in commands.items():
    m = importlib.import_module(mod)
    if not os.path.realpath(m.__file__).startswith(lib + os.sep):
        failures.append(f"{mod} imported from {m.__file__}, not from {lib}")
    sys.argv = [name, "--help"]
    code, out = help_of(getattr(m, func))
    if code not in (0, None) or flag not in out:
        failures.append(f"{name} --help: exit {code!r}, {flag} missing: {out[-300:]!r}")
for mod, flag in modules.items():
    sys.argv = [mod, "--help"]
    code, out = help_of(lambda: runpy.run_module(mod, run_name="__main__", alter_sys=True))
    if code not in (0, None) or flag not in out:
        failures.append(f"python -m {mod} --help: exit {code!r}, {flag} missing: {out[-300:]!r}")
print("FAILURES:", failures)
sys.exit(1 if failures else 0)
"""


@pytest.fixture(scope="module")
def built_lib(tmp_path_factory):
    lib = tmp_path_factory.mktemp("build_lib")
    _setup_py("build_py", "--build-lib", str(lib))
    return lib


def test_regular_install_layout_runs_every_command(built_lib, tmp_path):
    for pkg in PACKAGES:
        assert (built_lib / pkg / "__init__.py").is_file()
    for mod, _, _ in COMMANDS.values():
        assert (built_lib / (mod.replace(".", os.sep) + ".py")).is_file(), mod
    env = dict(ENV, PYTHONPATH=str(built_lib))
    proc = subprocess.run(
        [sys.executable, "-c", _RUN_ALL, str(built_lib), repr(COMMANDS), repr(MODULES)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def test_installed_entry_points_load():
    """The environment's own install (editable here) declares the same
    commands, and each resolves to a callable."""
    from importlib.metadata import entry_points

    eps = {ep.name: ep for ep in entry_points(group="console_scripts")
           if ep.value.startswith(("expectigrad_experiments", "expectigrad_tf"))}
    assert set(eps) == set(COMMANDS), "reinstall: pip install --no-build-isolation -e ."
    for name, ep in eps.items():
        mod, func, _ = COMMANDS[name]
        assert ep.value == f"{mod}:{func}"
        assert callable(ep.load())


# ------------------------------------------------------------ path hacks
PATH_HACK = re.compile(
    r"sys\.path\s*(\.\s*(insert|append|extend|remove|pop|clear)\b|\[[^\]]*\]\s*=|\+?=)"
    r"|spec_from_file_location|SourceFileLoader|imp\.load_source|__import__\(\s*os\.path")


def test_path_hack_pattern_finds_what_it_should():
    for bad in ("sys.path.insert(0, here)", "sys.path.append(d)", "sys.path += [d]",
                "sys.path = [d] + sys.path", "sys.path[:0] = [d]",
                "importlib.util.spec_from_file_location('m', p)"):
        assert PATH_HACK.search(bad), bad
    for ok in ("if d not in sys.path:", "print(sys.path)", "os.path.join(a, b)"):
        assert not PATH_HACK.search(ok), ok


@pytest.mark.parametrize("package", PACKAGES)
def test_no_sys_path_edits_or_load_by_path(package):
    """The imported packages' sources neither edit sys.path nor load modules
    by file path: every import is a regular (relative or absolute) one."""
    folder = os.path.dirname(importlib.import_module(package).__file__)
    hits, checked = [], 0
    for base, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(base, name)
            checked += 1
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if PATH_HACK.search(line.split("#", 1)[0]):
                        hits.append(f"{os.path.relpath(path, folder)}:{lineno}: {line.strip()}")
    assert checked >= 3, f"no sources found in {folder}"
    assert not hits, "\n".join(hits)
