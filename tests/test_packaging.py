"""labkit as a library: version ranges admit the pinned versions, every import is declared, and the
built wheel -- installed, not editable -- carries everything the package reads."""

import ast
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
DECLARED = {group: [Requirement(r) for r in reqs]
            for group, reqs in {"core": PROJECT["dependencies"], **PROJECT["optional-dependencies"]}.items()}
"""pyproject's requirements by group: ``core`` and each extra."""


def pinned_versions() -> dict[str, Version]:
    """constraints.txt as {canonical name: version}."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_constraints_pin_exactly_the_declared_dependencies():
    declared = {canonicalize_name(r.name) for reqs in DECLARED.values() for r in reqs}
    assert set(pinned_versions()) == declared


@pytest.mark.parametrize("group, requirement", [(g, r) for g, reqs in DECLARED.items() for r in reqs], ids=str)
def test_every_declared_range_admits_the_pinned_version_and_is_not_a_pin(group, requirement):
    pinned = pinned_versions()[canonicalize_name(requirement.name)]
    assert requirement.specifier.contains(pinned, prereleases=True), f"{group}: {requirement} excludes the tested {pinned}"
    assert "==" not in {s.operator for s in requirement.specifier}, f"{group}: {requirement} is a pin; pins go in constraints.txt"


def test_the_transformers_range_admits_other_tested_and_later_minors_but_not_the_next_major():
    (spec,) = [r.specifier for r in DECLARED["core"] if r.name == "transformers"]
    versions = ["5.23.0", "5.24.0", "5.25.0", "5.30.0", "6.0.0", "5.22.2"]
    assert [spec.contains(v) for v in versions] == [True, True, True, True, False, False]


def third_party_imports():
    """(file, distribution, imported at module level) for every import of a non-stdlib package in labkit."""
    distributions = importlib.metadata.packages_distributions()
    for path in sorted((ROOT / "labkit").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for top in {name.split(".")[0] for name in names}:
                if top not in sys.stdlib_module_names | {"labkit", "__future__"}:
                    dist = canonicalize_name(distributions.get(top, [top])[0])
                    yield path.relative_to(ROOT).as_posix(), dist, node in tree.body


def test_every_third_party_import_is_declared_module_level_ones_in_core():
    core = {canonicalize_name(r.name) for r in DECLARED["core"]}
    anywhere = {canonicalize_name(r.name) for reqs in DECLARED.values() for r in reqs}
    found = list(third_party_imports())
    assert {"torch", "transformers", "pandas", "datasketch"} <= {dist for _, dist, _ in found}
    assert [(f, d) for f, d, top in found if top and d not in core] == []  # import labkit.x needs only core
    assert [(f, d) for f, d, top in found if d not in anywhere] == []  # imported inside a function: an extra will do


ENV_SCRIPT = r'''
import importlib.metadata as md
import json
import sys

from packaging.requirements import Requirement

import labkit
import labkit.eval
import labkit.memory
from labkit.eval.harness import TASK_TEMPLATE, harness_metrics
from labkit.paths import BASE_DIR

model, tokenizer = labkit.load_base()
text = sys.argv[1]
extras = md.metadata("labkit").get_all("Provides-Extra")
checked, unsatisfied = [], []
for line in md.requires("labkit"):
    req = Requirement(line)
    if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras):
        checked.append(req.name)
        if not req.specifier.contains(md.version(req.name), prereleases=True):
            unsatisfied.append(f"{req} but {md.version(req.name)} is installed")
print(json.dumps({
    "labkit": labkit.__file__,
    "dist_info": str(md.distribution("labkit").locate_file("labkit/__init__.py")),
    "task_template": str(TASK_TEMPLATE),
    "perplexity": labkit.eval.perplexity(model, tokenizer, [text]),
    "bits_per_byte": labkit.eval.bits_per_byte(model, tokenizer, [text]),
    "harness": harness_metrics(BASE_DIR, [text]),
    "memory": labkit.memory.estimate_memory("Qwen2.5-0.5B", method="qlora").breakdown,
    "checked": checked,
    "unsatisfied": unsatisfied,
}))
'''
TEXT = "def read_config(path):\n    with open(path) as f:\n        return json.load(f)\n"


def source_files() -> list[str]:
    """The package's files as the repository has them (tracked or new, not ignored), else as on disk."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "labkit"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        listed = [p.relative_to(ROOT).as_posix() for p in (ROOT / "labkit").rglob("*") if p.is_file()]
    return sorted(f for f in listed if (ROOT / f).is_file() and "__pycache__" not in f)


def run(*args, **kwargs) -> str:
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    assert out.returncode == 0, f"{' '.join(map(str, args))}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.mark.slow
def test_the_installed_wheel_works_outside_the_source_tree(tmp_path, base):
    # Build from a copy so that setuptools' build/ and egg-info stay out of the repository.
    src = tmp_path / "src"
    files = source_files()
    for name in ["pyproject.toml", "README.md", *files]:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist", src)
    (wheel,) = (tmp_path / "dist").glob("labkit-*.whl")
    missing = set(files) - set(zipfile.ZipFile(wheel).namelist())
    assert not missing, f"files under labkit/ left out of the wheel: {sorted(missing)}"

    env = tmp_path / "env"
    run(sys.executable, "-m", "venv", "--without-pip", env)
    python = env / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel)
    # Only now (so pip does not see the editable labkit) the pinned dependencies become visible: a .pth
    # line adds .venv's site-packages to sys.path, and .pth files there (the editable finder) do not run.
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    here = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "deps.pth").write_text("".join(f"{p}\n" for p in here))

    work = tmp_path / "work"  # cwd outside the repository: nothing importable from the source tree
    work.mkdir()
    (work / "check.py").write_text(ENV_SCRIPT)
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", PYTHONNOUSERSITE="1",
                   HF_DATASETS_CACHE=str(tmp_path / "hf-datasets"))
    got = json.loads(run(python, "check.py", TEXT, cwd=work, env=environ).strip().splitlines()[-1])

    for key in ("labkit", "dist_info", "task_template"):
        assert Path(got[key]).is_relative_to(site), f"{key}: {got[key]} is not in the installed wheel"
    assert got["unsatisfied"] == []
    assert sorted(map(canonicalize_name, got["checked"])) == sorted(
        canonicalize_name(r.name) for reqs in DECLARED.values() for r in reqs)
    run(sys.executable, "-m", "pip", "--python", python, "check")
    assert run(env / "bin" / "labkit", "fit", "--help", cwd=work, env=environ).startswith("usage: labkit fit")

    import labkit.eval
    import labkit.memory

    model, tokenizer = base  # the same numbers as the source tree
    assert got["perplexity"] == pytest.approx(labkit.eval.perplexity(model, tokenizer, [TEXT]), rel=1e-6)
    assert got["harness"]["bits_per_byte"] == pytest.approx(got["bits_per_byte"], rel=1e-5)
    assert got["memory"] == labkit.memory.estimate_memory("Qwen2.5-0.5B", method="qlora").breakdown
