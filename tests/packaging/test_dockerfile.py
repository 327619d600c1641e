"""Static checks of the GPU image's Dockerfile (parsed with dockerfile-parse)."""

import json
import os
import re
import shlex

import pytest

dockerfile_parse = pytest.importorskip(
    "dockerfile_parse", reason="pip install dockerfile-parse (test extra)"
)

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


@pytest.fixture(scope="module")
def parsed():
    return dockerfile_parse.DockerfileParser(path=DOCKERFILE, cache_content=True)


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


def test_experiments_extra_is_declared():
    """The extra the image installs exists in setup.py, with the demo's
    scikit-learn (a missing extra is only a pip warning, not an error)."""
    text = open(os.path.join(ROOT, "setup.py"), encoding="utf-8").read()
    m = re.search(r'"experiments"\s*:\s*\[([^\]]*)\]', text)
    assert m, "setup.py declares no 'experiments' extra"
    assert "scikit-learn" in m.group(1)


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
