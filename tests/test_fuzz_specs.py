"""A property-based fuzzer (hypothesis) over the spec loader and the CLI.

Specs: random YAML documents, random text, and random mutations of every spec in
``spaces/`` (a key deleted or added, a value of another type, extreme numbers, unicode,
deep structures, wrong distribution forms, a line repeated). Property: the file is either
a valid spec, whose every sampled config torch accepts (built and run on the ``meta``
device, with its optimizer) or refuses through the same check a run uses, or the CLI
exits with status 2 and one line naming the file (and the key path where there is one);
never a traceback, never a hang.

Flags: random values for every command's flags, from one table; the same property.

The default suite runs a few hundred examples; ``pytest -m fuzz`` runs ``FUZZ_SLOW_EXAMPLES``
(about 10 minutes; left out of the default suite by ``addopts``).
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search.cli import main
from search.config import InvalidValue, SpecError, TorchvisionResNetConfig, TrialConfig, load_spec, random_samples
from search.models import build_model
from search.models.geometry import check_fits
from search.train import build_optimizer, param_groups

SPACES = {p.name: yaml.safe_load(p.read_text()) for p in sorted((Path(__file__).parents[1] / "spaces").glob("*.yaml"))}
DEFAULT_EXAMPLES = 300
FUZZ_SLOW_EXAMPLES = 20_000
SECONDS_PER_EXAMPLE = 5.0  # generous: the machine is shared; a hang is minutes

EXTREMES = [0, -1, 1, 2**31, 2**63, -(2**63), 10**30, 1e308, -1e308, 1e-308, 5e-324, float("inf"), float("nan")]
DISTRIBUTIONS = [
    {"range": [5]},
    {"range": [10, 1]},
    {"range": [0, 1], "log": True},
    {"range": [1, 4], "step": -1},
    {"range": [1, "a"]},
    {"range": [1.5, 2.5]},
    {"choice": []},
    {"choice": 3},
    {"choice": [1, 1]},
    {"choice": [{"name": "sgd"}, {"name": "sgd"}]},
    {"choice": [None, 1]},
    {"choice": [[1, 2], [3]]},
    {"range": [1, 8], "choice": [1]},
    {"choice": [{"name": "adam", "betas": {"range": [0.5, 1.5]}}]},
]
KEYS = ["study", "data", "model", "train", "budget", "resources", "name", "stages", "width", "blocks", "lr", "choice"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(EXTREMES),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner, max_size=4),
    ),
    max_leaves=12,
)
hostile_values = st.one_of(
    values,
    st.sampled_from(DISTRIBUTIONS),
    st.integers(20, 60).map(lambda depth: _nested(depth)),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=30),
)


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def _paths(node: Any, here: tuple = ()) -> list[tuple]:
    """Every position in a document: mapping keys and list indices, outermost first."""
    out = [here]
    if isinstance(node, dict):
        for key, child in node.items():
            out += _paths(child, (*here, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            out += _paths(child, (*here, index))
    return out


def _parent(document: Any, path: tuple) -> Any:
    for key in path[:-1]:
        document = document[key]
    return document


@st.composite
def mutated_spaces(draw: st.DrawFn) -> str:
    """A spec of ``spaces/`` with one to three random mutations, as YAML text."""
    document = copy.deepcopy(SPACES[draw(st.sampled_from(sorted(SPACES)))])
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(document)[1:]))
        parent, key = _parent(document, path), path[-1]
        kind = draw(st.sampled_from(["delete", "replace", "add"]))
        if kind == "delete":
            del parent[key]
        elif kind == "replace":
            parent[key] = copy.deepcopy(draw(hostile_values))  # sampled_from hands out shared objects
        elif isinstance(parent[key], dict):
            added = copy.deepcopy(draw(hostile_values))
            parent[key][draw(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)))] = added
        if not document:
            break
    text = yaml.safe_dump(document, allow_unicode=True, sort_keys=False)
    lines = text.splitlines()
    if draw(st.booleans()) and lines:  # a line repeated: a duplicate key (or a repeated list item)
        at = draw(st.integers(0, len(lines) - 1))
        lines.insert(at, lines[at])
    return "\n".join(lines) + "\n"


documents = st.one_of(
    mutated_spaces(),
    mutated_spaces(),
    values.map(lambda v: yaml.safe_dump(v, allow_unicode=True)),
    st.dictionaries(st.sampled_from(KEYS[:6] + ["schema_version", "provenance"]), values, max_size=6).map(
        lambda v: yaml.safe_dump(v, allow_unicode=True)
    ),
    st.text(max_size=200),
)


def check_spec_file(path: Path, capsys: pytest.CaptureFixture) -> str:
    """The property for one file; returns ``valid`` or ``refused``."""
    start = time.monotonic()
    try:
        spec = load_spec(path)
    except SpecError as error:
        message = str(error)
        assert "\n" not in message and message.startswith(f"{path}"), message
        assert main(["count", str(path)]) == 2  # and through the CLI: exit 2, one line
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("resnet-search: error: ") and "Traceback" not in err, err
        outcome = "refused"
    else:
        outcome = "valid"
    elapsed = time.monotonic() - start  # the loader's time (and the CLI's): the meta check below is the test's
    assert elapsed < SECONDS_PER_EXAMPLE, f"{outcome} after {elapsed:.1f} s: {path.read_text()[:400]!r}"
    if outcome == "valid":
        image_size = spec.data.input_size or 32
        configs = [spec.fixed()] if spec.is_fixed else list(random_samples(spec.space, 2, seed=0))
        for config in configs:
            try_on_meta(config, image_size)
    return outcome


def try_on_meta(config: TrialConfig, image_size: int) -> None:
    """What torch would do with a config, at no cost: shapes on the ``meta`` device."""
    try:
        check_fits(config, image_size)  # a run rejects such a sample untrained
    except InvalidValue:
        return
    model_config = config.model
    if isinstance(model_config, TorchvisionResNetConfig):
        model_config = replace(model_config, weights=None)  # a spec's weights file is not ours to load
    with torch.device("meta"):
        model = build_model(model_config, image_size)
        output = model(torch.empty(2, 3, image_size, image_size))
        logits = output[0] if isinstance(output, tuple) else output
        assert logits.shape == (2, config.model.num_classes)
        groups = param_groups(model, config.train.optimizer.weight_decay, config.train.decay_norm_and_bias)
        build_optimizer(groups, config.train.optimizer, torch.device("meta"))


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=examples == DEFAULT_EXAMPLES,  # the default suite sees the same examples every run
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
        database=None,
    )


def run_spec_fuzz(examples: int, tmp_path: Path, capsys: pytest.CaptureFixture) -> dict[str, int]:
    seen = {"valid": 0, "refused": 0}
    path = tmp_path / "fuzzed.yaml"

    @fuzz_settings(examples)
    @given(text=documents)
    def one(text: str) -> None:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        seen[check_spec_file(path, capsys)] += 1

    one()
    return seen


def test_fuzzed_specs_are_valid_or_one_line_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    seen = run_spec_fuzz(DEFAULT_EXAMPLES, tmp_path, capsys)
    assert seen["valid"] and seen["refused"]  # both sides of the property were exercised


@pytest.mark.slow
@pytest.mark.fuzz
def test_fuzzed_specs_many(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    seen = run_spec_fuzz(FUZZ_SLOW_EXAMPLES, tmp_path, capsys)
    with capsys.disabled():
        print(f"\nspec fuzz: {sum(seen.values())} cases, {seen}, failures: 0, {time.monotonic() - start:.0f} s")


# --------------------------------------------------------------------------- every command's flags, one table

words = st.one_of(
    st.sampled_from(["", "0", "-1", "1", "70000", "1,,2", "0,1,2", "../x", "/etc/passwd", "nan", "1e9", "2" * 30]),
    st.text(max_size=10).filter(lambda word: not word.startswith("-")),  # not a flag of its own (--help)
    st.integers().map(str),
)
# command -> its flags that take a value (flags that start work, such as train's spec, are left out)
FLAGS: dict[str, list[str]] = {
    "count": ["--samples"],
    "train": ["--epochs", "--seeds", "--out", "--device", "--data-dir"],
    "run": ["--storage", "--address", "--data-dir"],
    "studies": ["--storage"],
    "dashboard": ["--storage", "--study", "--port", "--host"],
    "export": ["--storage", "--study", "--top", "--out"],
    "retrain": ["--storage", "--study", "--top", "--seeds", "--epochs", "--out", "--device"],
    "report": ["--storage", "--study", "--out"],
    "predict": ["--top-k", "--max-pixels", "--device"],
    "evaluate": ["--out", "--split", "--device", "--data-dir"],
    "export-model": ["--format", "--out"],
}
MODEL_COMMANDS = ("predict", "evaluate", "export-model")  # their first argument is a model folder


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    command = draw(st.sampled_from(sorted(FLAGS)))
    args = [command]
    if command in ("count", "train", "run"):
        args.append(draw(st.sampled_from(["missing.yaml", "", "/", "spec.yaml"])))
    if command in MODEL_COMMANDS:  # never a model folder: no command gets as far as its work
        args.append(draw(st.sampled_from(["missing", "", "/", "spec.yaml"])))
    if command == "predict":
        args.append(draw(st.sampled_from(["image.png", "", "/", "spec.yaml"])))
    for flag in draw(st.lists(st.sampled_from(FLAGS[command]), max_size=3, unique=True)):
        args += [flag, draw(words)]
    return args


def run_flag_fuzz(examples: int, tmp_path: Path, capsys: pytest.CaptureFixture) -> int:
    (tmp_path / "spec.yaml").write_text("- not a spec\n")  # so that no command gets as far as training
    count = 0

    @fuzz_settings(examples)
    @given(args=command_lines())
    def one(args: list[str]) -> None:
        nonlocal count
        start = time.monotonic()
        try:
            code = main(args)
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        err = capsys.readouterr().err
        assert code == 2, (args, code, err)
        assert err.count("\n") == 1 and ": error: " in err and "Traceback" not in err, (args, err)
        assert time.monotonic() - start < SECONDS_PER_EXAMPLE, args
        count += 1

    one()
    return count


def test_fuzzed_flags_are_one_line_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_flag_fuzz(100, tmp_path, capsys) == 100


@pytest.mark.slow
@pytest.mark.fuzz
def test_fuzzed_flags_many(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    cases = run_flag_fuzz(2_000, tmp_path, capsys)
    with capsys.disabled():
        print(f"\nflag fuzz: {cases} cases, failures: 0")
