"""Static checks of the GPU image's Dockerfile (no container engine needed).

The Dockerfile is parsed with dockerfile-parse when it is installed (test
extra), else with the small parser below (continuation lines, comments,
instruction + value). Besides the image's structure, ``test_console_commands_
imports_are_installed_by_the_image`` checks that every console command the
package declares has its imports satisfied by what the image installs: the
``pip install`` lines of the Dockerfile, the package's install_requires and
the extras named there (``.[experiments]``), read from the metadata setuptools
builds (``setup.py egg_info``: pyproject.toml + setup.py).
"""

import ast
import configparser
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

try:
    import dockerfile_parse
except ImportError:  # the fallback parser below
    dockerfile_parse = None

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCKERFILE = os.path.join(ROOT, "Dockerfile")
DOCKERIGNORE = os.path.join(ROOT, ".dockerignore")
# The install command the README shows, character for character, plus the
# experiments' extra (the default command is one of them).
INSTALL = "pip install --no-build-isolation ."
INSTALL_EXTRA = 'pip install --no-build-isolation ".[experiments]"'
COMMAND = "expectigrad-demo"
TF_PIN = "tensorflow[and-cuda]==2.21.*"
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|KEY|CREDENTIAL", re.I)
PACKAGES = ("expectigrad_tf", "expectigrad_experiments")  # this distribution's packages
# Import name -> distribution name, where they differ.
IMPORT_TO_DISTRIBUTION = {
    "sklearn": "scikit-learn",
    "tensorflow_datasets": "tensorflow-datasets",
    "tf_keras": "tf-keras",
    "absl": "absl-py",
    "yaml": "pyyaml",
    "PIL": "pillow",
    "cv2": "opencv-python",
    "google.protobuf": "protobuf",
    "dockerfile_parse": "dockerfile-parse",
    "pybind11": "pybind11",
}
# Modules a declared distribution installs as its own dependency, on purpose:
# TensorFlow >= 2.16 requires Keras 3 (checked below against TensorFlow's
# metadata when it is installed).
PROVIDED_BY = {"keras": "tensorflow"}
# Modules that run only on one Keras backend (optimizer.py imports the generic
# backend mixin only when keras.backend.backend() is not "tensorflow"), where
# Keras itself needs that backend's package: their imports of it are not the
# image's to install.
BACKEND_ONLY_IMPORTS = {"expectigrad_tf._backend_generic": {"jax"},
                        "expectigrad_tf._jax_ffi": {"jax", "jaxlib"}}


class _Parsed:
    """The part of dockerfile_parse.DockerfileParser these tests use."""

    def __init__(self, text):
        self.structure = []
        logical = ""
        for line in text.splitlines():
            stripped = line.strip()
            if not logical and stripped.startswith("#"):
                self.structure.append({"instruction": "COMMENT", "value": stripped[1:].strip()})
                continue
            if logical and (not stripped or stripped.startswith("#")):
                continue  # comments and blank lines inside a continued instruction
            if stripped.endswith("\\"):
                logical += stripped[:-1] + " "
                continue
            logical += stripped
            if logical:
                instruction, _, value = logical.partition(" ")
                self.structure.append({"instruction": instruction.upper(),
                                       "value": value.strip()})
            logical = ""
        self.parent_images = [
            [w for w in i["value"].split() if not w.startswith("--")][0]
            for i in self.structure if i["instruction"] == "FROM"]


def _parse_dockerfile(path):
    if dockerfile_parse is not None:
        return dockerfile_parse.DockerfileParser(path=path, cache_content=True)
    with open(path, encoding="utf-8") as f:
        return _Parsed(f.read())


@pytest.fixture(scope="module")
def parsed():
    return _parse_dockerfile(DOCKERFILE)


def test_fallback_parser_agrees_with_dockerfile_parse():
    if dockerfile_parse is None:
        pytest.skip("dockerfile-parse is not installed (test extra)")
    real = dockerfile_parse.DockerfileParser(path=DOCKERFILE, cache_content=True)
    with open(DOCKERFILE, encoding="utf-8") as f:
        ours = _Parsed(f.read())

    def key(p):
        return [(i["instruction"], " ".join(i["value"].split())) for i in p.structure
                if i["instruction"] != "COMMENT"]

    assert key(ours) == key(real) and len(key(real)) > 5
    assert ours.parent_images == real.parent_images


@pytest.fixture(scope="module")
def stages(parsed):
    """[(FROM value, [instructions])] in order; comments dropped."""
    out = []
    for ins in parsed.structure:
        if ins["instruction"] == "COMMENT":
            continue
        if ins["instruction"] == "FROM":
            out.append((ins["value"], []))
        elif out:
            out[-1][1].append(ins)
        else:
            assert ins["instruction"] == "ARG", f"{ins['instruction']} before the first FROM"
    return out


def _normalise(cmd):
    return " ".join(cmd.split())


def _from_image(value):
    words = [w for w in value.split() if not w.startswith("--")]
    return words[0], (words[2] if len(words) >= 3 and words[1].upper() == "AS" else None)


def test_is_multi_stage_with_a_smaller_runtime(stages):
    assert len(stages) >= 2
    final_image, _ = _from_image(stages[-1][0])
    assert "devel" not in final_image, "the final stage should not carry the CUDA toolkit"
    copies = [i["value"] for i in stages[-1][1] if i["instruction"] == "COPY"]
    assert any(c.startswith("--from=") for c in copies), "runtime stage copies the build"


def test_base_images_are_pinned_by_explicit_tag(stages, parsed):
    aliases = set()
    for value, _ in stages:
        image, alias = _from_image(value)
        if image in aliases:  # FROM an earlier stage
            continue
        assert "$" not in image, f"{image}: resolve the tag literally, not through ARG"
        name, sep, tag = image.rpartition(":")
        assert sep and "/" not in tag, f"{image}: no tag"
        assert tag != "latest", f"{image}: 'latest' is not a pin"
        assert re.search(r"\d+\.\d+\.\d+", tag), f"{image}: pin a full version tag"
        if alias:
            aliases.add(alias)
    assert all("latest" not in p for p in parsed.parent_images)


def test_cuda_version_matches_tensorflow(stages):
    versions = set()
    for value, _ in stages:
        image, _ = _from_image(value)
        if image.startswith("nvidia/cuda:"):
            versions.add(image.split(":", 1)[1].split("-", 1)[0])
    assert len(versions) == 1, f"one CUDA version for all stages, got {versions}"
    tf = pytest.importorskip("tensorflow")
    info = tf.sysconfig.get_build_info()
    if not tf.__version__.startswith("2.21.") or "cuda_version" not in info:
        pytest.skip(f"installed TensorFlow {tf.__version__} is not the pinned 2.21")
    assert versions == {info["cuda_version"]}, (
        f"TensorFlow {tf.__version__} is built for CUDA {info['cuda_version']}, "
        f"the image uses {versions}")


def test_final_user_is_not_root(stages):
    users = [i["value"].strip() for i in stages[-1][1] if i["instruction"] == "USER"]
    assert users, "the final stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"final USER is {users[-1]}"
    ins = [i["instruction"] for i in stages[-1][1]]
    assert ins.index("USER") < ins.index("CMD")


def _declared_names(instruction, value):
    if instruction == "ARG":
        return [value.split("=", 1)[0].strip()]
    words = shlex.split(value)
    if words and "=" not in words[0]:  # legacy "ENV NAME value"
        return [words[0]]
    return [w.split("=", 1)[0] for w in words]


def test_no_secret_like_env_or_arg(parsed):
    names = []
    for ins in parsed.structure:
        if ins["instruction"] in ("ENV", "ARG"):
            names += _declared_names(ins["instruction"], ins["value"])
    assert names, "parser found no ENV/ARG at all"
    bad = [n for n in names if SECRET_NAME.search(n)]
    assert not bad, f"secret-like ENV/ARG names: {bad}"


def test_declared_names_parser():
    assert _declared_names("ENV", "A=1 B_TOKEN=2") == ["A", "B_TOKEN"]
    assert _declared_names("ENV", "API_KEY some value") == ["API_KEY"]
    assert _declared_names("ARG", 'X="80;90"') == ["X"]


def _runs(parsed):
    return [_normalise(i["value"]) for i in parsed.structure if i["instruction"] == "RUN"]


def test_install_commands_match_the_readme(parsed):
    runs = _runs(parsed)
    installs = [r for r in runs if re.search(re.escape(INSTALL_EXTRA) + r"(\s|$)", r)]
    assert len(installs) == 1, f"expected `{INSTALL_EXTRA}` in one RUN, got {runs}"
    assert "EXPECTIGRAD_CUDA=1" in installs[0], "the image must build the CUDA kernels"
    assert not any(re.search(r"pip install .*(-e|--editable)\b", r) for r in runs), \
        "a regular install: the runtime stage has only the venv, no sources"
    tf_runs = [r for r in runs if TF_PIN in r]
    assert tf_runs, f"TensorFlow must be pinned as {TF_PIN}"
    assert runs.index(tf_runs[0]) < runs.index(installs[0]), "TensorFlow before the op"
    readme = os.path.join(ROOT, "README.md")
    if os.path.exists(readme):
        text = open(readme, encoding="utf-8").read()
        if "--no-build-isolation" in text:
            assert INSTALL in text, "README's install command differs from the image's"
            assert INSTALL_EXTRA in text, "README does not show the experiments' install"


# ------------------------------------------- what the image installs
def _canonical(name):
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")


def _requirement(text):
    """(canonical name, {extras}) of a requirement string, e.g.
    'tensorflow[and-cuda]==2.21.*' -> ('tensorflow', {'and-cuda'})."""
    m = _REQUIREMENT.match(text)
    assert m, f"not a requirement: {text!r}"
    extras = {_canonical(e) for e in (m.group(2) or "").split(",") if e.strip()}
    return _canonical(m.group(1)), extras


@pytest.fixture(scope="module")
def metadata(tmp_path_factory):
    """The metadata setuptools builds from pyproject.toml + setup.py (nothing
    is compiled): {"requires": {extra or "": [requirement]},
    "console_scripts": {command: "module:function"}, "name": canonical name}."""
    base = tmp_path_factory.mktemp("egg_info")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(base)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (info,) = [base / d for d in os.listdir(base) if d.endswith(".egg-info")]
    requires, section = {"": []}, ""
    path = info / "requires.txt"
    for line in (path.read_text().splitlines() if path.exists() else []):
        line = line.strip()
        if not line:
            continue
        if line.startswith("["):  # "[extra]" or "[extra:marker]"
            section = _canonical(line[1:-1].split(":", 1)[0])
            requires.setdefault(section, [])
        else:
            requires[section].append(line)
    parser = configparser.ConfigParser()
    parser.optionxform = str
    parser.read(info / "entry_points.txt")
    scripts = dict(parser["console_scripts"]) if parser.has_section("console_scripts") else {}
    name = re.search(r"^Name:\s*(\S+)", (info / "PKG-INFO").read_text(), re.M).group(1)
    return {"requires": requires, "console_scripts": scripts, "name": _canonical(name)}


def _pip_install_arguments(run_value):
    """The requirement / path arguments of every ``pip install`` in a RUN
    value (shell words; commands split at &&, ||, ; and |)."""
    commands, current = [], []
    for word in shlex.split(run_value, posix=True):
        if word in ("&&", "||", ";", "|"):
            commands.append(current)
            current = []
        elif word.endswith(";"):
            current.append(word[:-1])
            commands.append(current)
            current = []
        else:
            current.append(word)
    commands.append(current)
    out = []
    for words in commands:
        # [VAR=value ...] [python[3] -m] pip[3] install ARGS
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            words = words[1:]
        if words[:2] in (["python", "-m"], ["python3", "-m"]):
            words = words[2:]
        if not (words and re.match(r"^(.*/)?pip[0-9.]*$", words[0]) and words[1:2] == ["install"]):
            continue
        skip = False
        for a in words[2:]:
            if skip:
                skip = False
            elif a in ("-r", "--requirement", "-c", "--constraint"):
                pytest.fail(f"requirements files are not followed by this test: {run_value}")
            elif a in ("-i", "--index-url", "--extra-index-url", "-f", "--find-links",
                       "--target", "-t", "--prefix", "--root"):
                skip = True
            elif not a.startswith("-"):
                out.append(a)
    return out


def test_pip_install_arguments_parser():
    assert _pip_install_arguments(
        'A=1 B="x" pip install --no-build-isolation ".[experiments]" && cd / '
        '&& python -m pip install -U "numpy>=2" wheel; pip3 install --index-url U foo[bar] '
        '&& echo pip install nothing') == [".[experiments]", "numpy>=2", "wheel", "foo[bar]"]
    assert _requirement("tensorflow[and-cuda]==2.21.*") == ("tensorflow", {"and-cuda"})
    assert _requirement("Scikit_Learn>=1") == ("scikit-learn", set())


def _expand(requirement, metadata, seen):
    """Distributions (canonical names) a requirement of this package
    installs by declaration: its name, and for this package its
    install_requires plus the named extras, recursively."""
    name, extras = _requirement(requirement)
    if name != metadata["name"]:
        return {name}
    out = set()
    for section in [""] + sorted(extras):
        if section in seen:
            continue
        seen.add(section)
        assert section in metadata["requires"], (
            f"the image installs extra [{section}], which the package does not declare "
            f"(pip only warns); declared: {sorted(k for k in metadata['requires'] if k)}")
        for r in metadata["requires"][section]:
            out |= _expand(r.split(";", 1)[0], metadata, seen)
    return out


def _image_distributions(parsed, metadata):
    """The distributions the image installs by declaration (from its pip
    install lines; the local source tree is this package)."""
    installed, local_extras = set(), []
    for ins in parsed.structure:
        if ins["instruction"] != "RUN":
            continue
        for arg in _pip_install_arguments(ins["value"]):
            m = re.match(r"^(\.|\./|/src/?|\.\.?/[^\[]*)(\[[^\]]*\])?$", arg)
            if m:  # the source tree: this package, with its extras
                local_extras.append(m.group(2) or "")
                installed |= _expand(metadata["name"] + (m.group(2) or ""), metadata, set())
            else:
                installed.add(_requirement(arg)[0])
    return installed, local_extras


def test_experiments_extra_is_declared(parsed, metadata):
    """The image installs the package with an extra that exists (a missing
    extra is only a pip warning, not an error), and that extra has the
    demo's scikit-learn."""
    installed, local_extras = _image_distributions(parsed, metadata)
    assert local_extras == ["[experiments]"], local_extras
    assert "scikit-learn" in {_requirement(r)[0] for r in metadata["requires"]["experiments"]}
    assert "scikit-learn" in installed


# ------------------------------------------------ what the commands import
def _module_files():
    """{module name: file} of this distribution's packages in the source tree."""
    out = {}
    for package in PACKAGES:
        for folder, dirs, files in os.walk(os.path.join(ROOT, package)):
            dirs[:] = [d for d in dirs if d not in ("__pycache__", "csrc")]
            rel = os.path.relpath(folder, ROOT).split(os.sep)
            for f in files:
                if f.endswith(".py"):
                    name = rel + ([] if f == "__init__.py" else [f[:-3]])
                    out[".".join(name)] = os.path.join(folder, f)
    return out


def _catches_import_error(handler):
    names = []
    for node in ast.walk(handler.type) if handler.type is not None else []:
        if isinstance(node, ast.Name):
            names.append(node.id)
        elif isinstance(node, ast.Attribute):
            names.append(node.attr)
    return bool({"ImportError", "ModuleNotFoundError"} & set(names))


def _imports(path, module, is_package):
    """[(imported module name, optional)] of every import statement in a
    file, at any depth (functions included: the experiments import their
    heavy dependencies lazily). Optional: inside a ``try`` that catches
    ImportError / ModuleNotFoundError. Relative imports are resolved;
    ``from X import Y`` yields X and X.Y (Y may be a module)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    out = []
    package = module if is_package else module.rpartition(".")[0]

    def visit(node, optional):
        if isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
            guarded = optional or any(_catches_import_error(h) for h in node.handlers)
            for child in node.body:
                visit(child, guarded)
            for child in node.handlers + node.orelse + node.finalbody:
                visit(child, optional)
            return
        if isinstance(node, ast.Import):
            out.extend((a.name, optional) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                target = base + ("." + node.module if node.module else "")
            else:
                target = node.module
            out.append((target, optional))
            out.extend((f"{target}.{a.name}", optional) for a in node.names if a.name != "*")
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            out.append((node.args[0].value, optional))
        for child in ast.iter_child_nodes(node):
            visit(child, optional)

    visit(tree, False)
    return out


def third_party_imports(entry_module, files):
    """Top-level names of the third-party modules that ``entry_module``
    imports, following this distribution's own modules transitively:
    ({name: [importing module]} required, {name: [...]} optional)."""
    required, optional = {}, {}
    todo, seen = [entry_module], set()
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
        parts = mod.split(".")
        todo.extend(".".join(parts[:k]) for k in range(1, len(parts)) if ".".join(parts[:k]) in files)
        path = files[mod]
        for name, is_optional in _imports(path, mod, path.endswith("__init__.py")):
            top = name.split(".")[0]
            if top in PACKAGES:
                if name in files:
                    todo.append(name)
                continue
            if top in sys.stdlib_module_names:
                continue
            if name.startswith("google.protobuf"):
                top = "google.protobuf"
            if top in BACKEND_ONLY_IMPORTS.get(mod, ()):
                continue
            (optional if is_optional else required).setdefault(top, []).append(mod)
    for name in list(optional):
        if name in required:
            del optional[name]
    return required, optional


def _distribution_of(import_name):
    if import_name in IMPORT_TO_DISTRIBUTION:
        return _canonical(IMPORT_TO_DISTRIBUTION[import_name])
    import importlib.metadata

    dists = importlib.metadata.packages_distributions().get(import_name)
    if dists and len(dists) == 1:
        return _canonical(dists[0])
    return _canonical(import_name)


def unsatisfied(required, declared):
    """{import name: (distribution, [importing modules])} not declared."""
    out = {}
    for name, where in sorted(required.items()):
        dist = _distribution_of(name)
        if dist in declared:
            continue
        if name in PROVIDED_BY and _canonical(PROVIDED_BY[name]) in declared:
            continue
        out[name] = (dist, sorted(set(where)))
    return out


def test_import_scanner_finds_lazy_relative_and_undeclared_imports(tmp_path, monkeypatch):
    """The checker itself: a made-up package with a lazy import, a relative
    import chain, an optional import and an undeclared one."""
    pkg = tmp_path / "expectigrad_experiments"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("import json\n")
    (pkg / "cli.py").write_text("import os\nfrom .sub import helper\n"
                                "def main():\n    import numpy as np\n")
    (pkg / "sub" / "helper.py").write_text(
        "from .. import plots\n"
        "try:\n    import tf_keras\nexcept ImportError:\n    tf_keras = None\n")
    (pkg / "plots.py").write_text("def f():\n    import pandas.plotting\n"
                                  "    import sklearn.datasets\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    files = _module_files()
    required, optional = third_party_imports("expectigrad_experiments.cli", files)
    assert set(required) == {"numpy", "pandas", "sklearn"}
    assert set(optional) == {"tf_keras"}
    assert required["pandas"] == ["expectigrad_experiments.plots"]
    missing = unsatisfied(required, {"numpy", "scikit-learn"})
    assert list(missing) == ["pandas"] and missing["pandas"][0] == "pandas"
    assert unsatisfied(required, {"numpy", "scikit-learn", "pandas"}) == {}


def test_provided_by_is_true_of_the_installed_distributions():
    """PROVIDED_BY only names real dependencies (where both are installed)."""
    import importlib.metadata

    for module, dist in PROVIDED_BY.items():
        try:
            requires = importlib.metadata.requires(dist) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        names = {_requirement(r)[0] for r in requires if "extra ==" not in r}
        assert _distribution_of(module) in names, (module, dist, sorted(names))


def test_console_commands_imports_are_installed_by_the_image(parsed, metadata):
    """Every console command of the package imports only what the image
    installs (its pip install lines, install_requires, the extras it names).
    An import of an undeclared package anywhere a command can reach
    (lazy imports in functions included) fails here, not after hours of
    training in the image."""
    scripts = metadata["console_scripts"]
    assert scripts, "the package declares no console commands"
    assert "expectigrad-demo" in scripts
    declared, _ = _image_distributions(parsed, metadata)
    files = _module_files()
    problems = {}
    for command, target in sorted(scripts.items()):
        module, _, function = target.partition(":")
        assert module in files, f"{command}: module {module} is not in the source tree"
        tree = ast.parse(open(files[module], encoding="utf-8").read())
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)} | {
            t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
            if isinstance(t, ast.Name)}
        assert function in defined, f"{command}: {module} defines no {function}"
        required, _ = third_party_imports(module, files)
        assert required, f"{command}: found no third-party imports at all (scanner broken?)"
        missing = unsatisfied(required, declared)
        if missing:
            problems[command] = missing
    assert not problems, (
        "console commands import packages the image does not install (add them to "
        "install_requires or the extra the Dockerfile installs): "
        + "; ".join(f"{c}: " + ", ".join(f"{name} (distribution {dist}, imported in "
                                          f"{', '.join(where)})"
                                          for name, (dist, where) in m.items())
                    for c, m in problems.items()))


def test_no_scripts_paths_or_python_files_run(parsed):
    """The image runs installed commands, not files of the source tree."""
    for ins in parsed.structure:
        if ins["instruction"] in ("RUN", "CMD", "ENTRYPOINT"):
            assert "scripts/" not in ins["value"], ins
            assert not re.search(r"python3?\s+\S+\.py\b", ins["value"]), ins


def test_cmd_runs_the_demo_command(stages):
    cmds = [i["value"] for i in stages[-1][1] if i["instruction"] == "CMD"]
    assert len(cmds) == 1
    argv = json.loads(cmds[0])  # exec form
    assert argv == [COMMAND]
    # The command comes from the install, not from copied sources.
    copies = [i["value"] for i in stages[-1][1] if i["instruction"] == "COPY"]
    assert copies and all(c.startswith("--from=") for c in copies), copies
    # The build stage checks that the installed command runs.
    build_runs = [_normalise(i["value"]) for i in stages[0][1] if i["instruction"] == "RUN"]
    assert any(f"{COMMAND} --help" in r for r in build_runs)


def test_dockerignore_keeps_sources_and_drops_builds():
    lines = {ln.strip() for ln in open(DOCKERIGNORE) if ln.strip() and not ln.startswith("#")}
    assert {".git", "**/*.so", "build"} <= lines
    for needed in ("csrc", "setup.py", "expectigrad_tf", "expectigrad_experiments", "README.md",
                   "*", "**"):
        assert needed not in lines, f".dockerignore drops {needed}"
    # Not needed by the image: the GPU tools (and scripts/, which held them).
    assert {"tools", "scripts"} <= lines
