"""What ships around the package: docker/ images, .github/workflows, the README's H100 commands.

None of them can run here (no Docker daemon, no GPU runner), so this checks what can be checked: they
parse, every `trtbuild` command and flag they call exists in the CLI, the GPU image's TensorRT-LLM tag is
inside the range the code supports, the CPU image pins the Makefile's torch, and install_trtbuild.py
keeps the image's packages.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import shlex
import tomllib
from pathlib import Path

import click
import pytest
import yaml
from packaging.specifiers import SpecifierSet

from trtbuild.cli import cli
from trtbuild.errors import TrtbuildError

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = ("docker/Dockerfile", "docker/Dockerfile.cpu")
WORKFLOWS = (".github/workflows/h100.yml", ".github/workflows/ci.yml")
INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
                "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


# --- small parsers ----------------------------------------------------------------------------------

def dockerfile(path: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction: comments dropped, continuation lines joined."""
    out, current = [], ""
    for raw in (ROOT / path).read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue  # Docker drops comment lines, even inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        instruction, _, args = current.partition(" ")
        assert instruction in INSTRUCTIONS, f"{path}: unknown instruction {instruction!r}"
        out.append((instruction, args.strip()))
        current = ""
    assert not current, f"{path}: dangling line continuation"
    return out


def args_of(instructions, name: str) -> list[str]:
    return [args for instruction, args in instructions if instruction == name]


def env_of(instructions) -> dict[str, str]:
    return dict(pair.split("=", 1) for args in args_of(instructions, "ENV") for pair in shlex.split(args))


def arg_defaults(instructions) -> dict[str, str]:
    return dict(args.split("=", 1) for args in args_of(instructions, "ARG") if "=" in args)


def base_image(path: str) -> str:
    instructions = dockerfile(path)
    image = args_of(instructions, "FROM")[0]
    return re.sub(r"\$\{(\w+)\}", lambda m: arg_defaults(instructions)[m.group(1)], image)


def workflow(path: str) -> dict:
    data = yaml.safe_load((ROOT / path).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


def readme_h100() -> str:
    """The shell code blocks of the README's H100 section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## The real model on an H100"):]
    section = section[:section.index("\n## ", 4)]
    return "\n".join(re.findall(r"```bash\n(.*?)```", section, re.S))


STOP = {"|", "||", "&&", ";", ">", ">>", "2>&1", "2>/dev/null"}


def trtbuild_calls(script: str) -> list[list[str]]:
    """The arguments of every trtbuild invocation in a shell script: `trtbuild ARGS`, `$(trtbuild ARGS ...)`
    and `docker run ... trtbuild:<tag> ARGS` (the images' entrypoint is trtbuild)."""
    script = script.replace("\\\n", " ")
    script = re.sub(r"\$\((?![^)]*trtbuild)[^)]*\)", "SUBST", script)  # other commands' substitutions
    calls = []
    for line in script.splitlines():
        line = re.sub(r"\s#.*$", "", line)
        tokens = line.split()
        for i, token in enumerate(tokens):
            is_cli = token == "trtbuild" or token.endswith("$(trtbuild")
            is_image = token.startswith("trtbuild:") and tokens[:2] == ["docker", "run"]
            if not (is_cli or is_image):
                continue
            args = []
            for arg in tokens[i + 1:]:
                if arg in STOP:
                    break
                args.append(arg.strip("\"'"))
            if args:
                calls.append(args)
    return calls


def check_call(args: list[str]) -> str:
    """Fail unless `trtbuild ARGS` names an existing command with existing options; returns the command."""
    ctx = click.Context(cli)
    i = 0
    while i < len(args) and args[i].startswith("-"):
        assert args[i] in ("--workspace", "--version", "--help", "-h"), args
        i += 2 if args[i] == "--workspace" else 1
    if i == len(args):
        return "--version"
    command = cli.get_command(ctx, args[i])
    assert command is not None, f"trtbuild has no command {args[i]!r}: {args}"
    known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}
    for arg in args[i + 1:]:
        if arg.startswith("-"):
            assert arg.split("=")[0] in known, f"trtbuild {args[i]} has no option {arg}: {args}"
    return args[i]


# --- Dockerfiles ------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", DOCKERFILES)
def test_dockerfiles_parse_and_run_trtbuild_on_a_workspace_volume(path):
    instructions = dockerfile(path)
    assert instructions[0][0] in ("ARG", "FROM")
    assert json.loads(args_of(instructions, "ENTRYPOINT")[-1]) == ["trtbuild"]
    assert args_of(instructions, "VOLUME") == ["/workspace"]
    env = env_of(instructions)
    assert env["TRTBUILD_WORKSPACE"] == "/workspace" and env["HF_HOME"].startswith("/workspace/")
    cmd = json.loads(args_of(instructions, "CMD")[-1])
    assert check_call(cmd) == cmd[0]  # the default command exists
    for run in args_of(instructions, "RUN"):
        for call in trtbuild_calls(run):
            check_call(call)


@pytest.mark.parametrize("path", DOCKERFILES)
def test_docker_copies_files_that_exist_and_are_not_ignored(path):
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for args in args_of(dockerfile(path), "COPY"):
        *sources, _ = args.split()
        for source in sources:
            assert (ROOT / source).exists(), f"{path}: COPY {source}: no such file"
            assert not any(fnmatch.fnmatch(source, pattern) or source.startswith(pattern + "/") for pattern in ignored), \
                f"{path}: COPY {source} is excluded by .dockerignore"
    assert ".venv" in ignored and ".git" in ignored


def test_gpu_image_is_a_trtllm_release_inside_the_supported_range():
    from trtbuild import doctor
    from trtbuild.trtllm_backend import check_version

    image = base_image("docker/Dockerfile")
    repository, _, tag = image.partition(":")
    assert repository == "nvcr.io/nvidia/tensorrt-llm/release"
    check_version(tag)  # raises outside 1.2.x
    extra = PYPROJECT["project"]["optional-dependencies"]["tensorrt-llm"][0]
    assert SpecifierSet(extra.removeprefix("tensorrt_llm")).contains(tag), (extra, tag)
    assert f"TensorRT-LLM {tag} release image" in doctor.CONTAINER  # the fix the doctor gives names this image
    with pytest.raises(TrtbuildError):  # the check can fail: the next line's images are outside the range
        check_version("1.3.0rc14")
    with pytest.raises(TrtbuildError):
        check_version("1.1.0")


def test_cpu_image_pins_the_makefiles_torch_from_the_cpu_index():
    instructions = dockerfile("docker/Dockerfile.cpu")
    assert base_image("docker/Dockerfile.cpu") == "python:3.11-slim"
    defaults = arg_defaults(instructions)
    makefile_torch = re.search(r"^TORCH\s*\?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert defaults["TORCH"] == makefile_torch == "torch==2.13.0"
    torch_range = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("torch"))
    assert SpecifierSet(torch_range.removeprefix("torch")).contains("2.13.0+cpu")  # pip keeps it for trtbuild
    assert defaults["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    runs = args_of(instructions, "RUN")
    assert runs[0] == 'pip install --index-url "${TORCH_INDEX_URL}" "${TORCH}"'  # torch first, then trtbuild
    assert "pip install /opt/trtbuild" in runs[1] and "torch.version.cuda is None" in runs[1]


# --- install_trtbuild.py ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def installer():
    spec = importlib.util.spec_from_file_location("install_trtbuild", ROOT / "docker" / "install_trtbuild.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_installer_keeps_the_images_torch_and_adds_only_what_is_missing(installer):
    requires = PYPROJECT["project"]["dependencies"] + ['pytest>=8; extra == "dev"']
    # NGC's torch is a pre-release (2.9.0a0 < 2.9): a plain `pip install .` would replace it
    ngc = {"torch": "2.9.0a0+145a3a7bda.nv25.10", "transformers": "4.57.3", "numpy": "1.26.4",
           "nvidia-modelopt": "0.37.0", "tensorrt-llm": "1.2.1"}
    assert not SpecifierSet(">=2.9").contains(ngc["torch"])
    todo = installer.missing_requirements(requires, ngc)
    names = {re.split(r"[<>=!~;\[ ]", r)[0] for r in todo}
    assert not names & {"torch", "transformers", "numpy", "nvidia-modelopt", "pytest"}
    assert {"mistral-common", "click", "fastapi"} <= names
    assert installer.changed(ngc, dict(ngc, torch="2.13.0")) == ["torch 2.9.0a0+145a3a7bda.nv25.10 -> 2.13.0"]
    assert installer.changed(ngc, {k: v for k, v in ngc.items() if k != "numpy"}) == ["numpy 1.26.4 -> removed"]


def test_installer_installs_with_no_deps_then_under_constraints_and_fails_on_a_change(installer, monkeypatch):
    states = iter([{"torch": "2.9.0a0+x.nv25.10"}, {"torch": "2.9.0a0+x.nv25.10", "mistral-common": "1.13.0"}])
    commands = []
    monkeypatch.setattr(installer, "installed", lambda: next(states))
    monkeypatch.setattr(installer.subprocess, "run", lambda cmd, check: commands.append(cmd))
    monkeypatch.setattr(installer.metadata, "requires", lambda dist: ["torch>=2.9", "mistral-common>=1.13,<1.14"])
    assert installer.main("/opt/trtbuild") == 0
    assert commands[0][-2:] == ["--no-deps", "/opt/trtbuild"]
    assert commands[1][-3] == "--constraint" and commands[1][-1] == "mistral-common<1.14,>=1.13"
    pins = Path(commands[1][-2]).read_text()
    assert pins == "torch==2.9.0a0+x.nv25.10\n"
    states = iter([{"torch": "2.9.0a0+x.nv25.10"}, {"torch": "2.13.0"}])
    monkeypatch.setattr(installer, "installed", lambda: next(states))
    assert installer.main("/opt/trtbuild") == 1


# --- workflows and README -----------------------------------------------------------------------------

def test_h100_workflow_runs_the_pipeline_in_the_container_with_validate_as_the_gate():
    flow = workflow(".github/workflows/h100.yml")
    assert "workflow_dispatch" in flow["on"]
    image_job, job = flow["jobs"]["image"], flow["jobs"]["h100"]
    assert {"self-hosted", "h100"} <= set(job["runs-on"]) and job["needs"] == "image"
    assert "docker build -f docker/Dockerfile" in " ".join(s.get("run", "") for s in image_job["steps"])
    container = job["container"]
    assert container["image"] == "${{ needs.image.outputs.image }}" and "--gpus all" in container["options"]
    assert container["volumes"][0].endswith(":/workspace") and job["env"]["TRTBUILD_WORKSPACE"] == "/workspace"
    steps = job["steps"]
    runs = [s.get("run", "") for s in steps]

    def index(fragment):
        return next(i for i, run in enumerate(runs) if fragment in run)

    order = [index(f) for f in ("trtbuild doctor", "--print-key", "trtbuild compile --profile \"$PROFILE\" --backend",
                                "trtbuild validate", "trtbuild bench", "trtbuild report")]
    assert order == sorted(order)
    validate = steps[index("trtbuild validate")]
    assert "continue-on-error" not in validate and validate["run"].rstrip().endswith('exit "$status"')
    uses = {s["uses"].split("@")[0]: s for s in steps if "uses" in s}
    assert uses["actions/cache/restore"]["with"]["key"] == "${{ steps.keys.outputs.key }}"
    assert uses["actions/cache/save"]["with"]["key"] == "${{ steps.keys.outputs.key }}"
    assert steps[index("--print-key")]["id"] == "keys"
    assert uses["actions/upload-artifact"]["if"] == "always()"
    assert uses["actions/upload-artifact"]["with"]["path"] in runs[index("trtbuild report")]


def test_cpu_workflow_runs_make_test():
    flow = workflow(".github/workflows/ci.yml")
    steps = flow["jobs"]["test"]["steps"]
    assert any(s.get("run", "").startswith("make test") for s in steps)
    assert re.search(r"^test: ", (ROOT / "Makefile").read_text(), re.M)


def test_every_trtbuild_command_and_flag_the_shipped_files_call_exists():
    called = {}
    for path in WORKFLOWS:
        for job in workflow(path)["jobs"].values():
            for step in job["steps"]:
                for call in trtbuild_calls(step.get("run", "")):
                    called.setdefault(path, set()).add(check_call(call))
    for call in trtbuild_calls(readme_h100()):
        called.setdefault("README", set()).add(check_call(call))
    assert called[".github/workflows/h100.yml"] == {"doctor", "compile", "validate", "bench", "report"}
    assert called["README"] == {"doctor", "fetch", "plan", "compile", "validate", "bench", "report", "serve"}
    with pytest.raises(AssertionError):  # the checker does catch a wrong flag
        check_call(["compile", "--print-keys"])


def test_readme_fetches_the_revision_the_profile_pins():
    from trtbuild.config import load_profile

    profile = load_profile("h100-mistral-7b")
    fetch = next(c for c in trtbuild_calls(readme_h100()) if c[0] == "fetch")
    assert fetch[1:] == [profile.model.id, "--revision", profile.model.revision]
    assert "docker build -f docker/Dockerfile -t trtbuild:trtllm-1.2.1 ." in readme_h100()


# --- the engine key the workflow caches by ----------------------------------------------------------

def test_print_key_names_the_engines_compile_makes_without_building(workspace, engine_dirs, tiny_model, capsys,
                                                                    tmp_path):
    from helpers import trtbuild
    from trtbuild.manifest import load_manifest
    from trtbuild.workspace import Workspace

    code, out, err = trtbuild(capsys, workspace, "compile", "--print-key", "--backend", "torch", "--json")
    assert code == 0, err
    engines = json.loads(out)["engines"]
    assert {v: Path(e["engine_dir"]) for v, e in engines.items()} == engine_dirs
    assert all(e["built"] and load_manifest(e["engine_dir"]).key == e["key"] for e in engines.values())

    fresh = Workspace(tmp_path / "ws")  # nothing built there yet; the tiny model as a local checkpoint
    argv = ["compile", "--backend", "torch", "--variant", "fp16", "--model", str(tiny_model.path)]
    code, out, err = trtbuild(capsys, fresh, *argv, "--print-key")
    assert code == 0, err
    variant, key, path = out.split()
    assert variant == "fp16" and len(key) == 64 and not Path(path).exists()
    assert not fresh.engines_dir.exists()  # printing the key built nothing
    code, out, err = trtbuild(capsys, fresh, *argv, "--json")
    assert code == 0, err
    built = json.loads(out)["engines"][0]
    assert built["engine_dir"] == path and load_manifest(path).key == key
    code, out, err = trtbuild(capsys, fresh, *argv, "--print-key", "--json")
    assert json.loads(out)["engines"]["fp16"] == {"key": key, "engine_dir": path, "built": True}
