"""No secret in any URI, anywhere: the one masking function (:mod:`search.config.secrets`) on
every form a secret takes, and the MLflow tracking URI through the real CLI: a server that
does not answer is one masked line and exit status 2 in seconds; a password in ``--mlflow``
and in the spec's ``tracking.mlflow`` is looked for in everything printed or written.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from searching import files_containing, load, run_cli, sqlite_url, write_spec
from services import free_port

from search.config import parse_spec
from search.config.secrets import mask_secrets, without_secrets
from search.study.keys import SPEC_TEXT

SECRET = "SECRETPW-h3x"  # a password a test hands in; it must appear nowhere afterwards


# --------------------------------------------------------------------------- the masking function


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (f"http://user:{SECRET}@mlflow.example:5000", "http://user:***@mlflow.example:5000"),
        (f"https://user:{SECRET}@mlflow.example/path", "https://user:***@mlflow.example/path"),
        (f"postgresql://alice:{SECRET}@db:5432/optuna", "postgresql://alice:***@db:5432/optuna"),
        (f"http://:{SECRET}@host", "http://:***@host"),  # a password without a user name
        (f"http://u:{SECRET}:x/y@host:1/p", "http://u:***@host:1/p"),  # ':' and '/' in the password
        (f"http://u:{SECRET}@x@host", "http://u:***@host"),  # a raw '@' in the password
        (f"https://host/api?token={SECRET}&page=2", "https://host/api?token=***&page=2"),
        (f"https://host/api?access_token={SECRET}", "https://host/api?access_token=***"),
        (f"https://acct.blob.example/c?sv=2024&sig={SECRET}", "https://acct.blob.example/c?sv=2024&sig=***"),
        (f"https://b.s3.example/k?X-Amz-Signature={SECRET}", "https://b.s3.example/k?X-Amz-Signature=***"),
        (f"https://host/?api_key={SECRET}#frag", "https://host/?api_key=***#frag"),
        (f"https://host/?client_secret={SECRET};x=1", "https://host/?client_secret=***;x=1"),
        (f"API request to http://u:{SECRET}@h:9/api failed", "API request to http://u:***@h:9/api failed"),
        (f"two: http://a:{SECRET}@h1 and http://b:{SECRET}@h2", "two: http://a:***@h1 and http://b:***@h2"),
        (f"tracking: {{mlflow: 'http://u:{SECRET}@h:5000'}}\n", "tracking: {mlflow: 'http://u:***@h:5000'}\n"),
    ],
)
def test_every_form_of_a_uri_secret_is_masked(text: str, masked: str) -> None:
    assert mask_secrets(text) == masked
    assert SECRET not in mask_secrets(text)


@pytest.mark.parametrize(
    "text",
    [
        "http://mlflow.example:5000",
        "http://user@mlflow.example:5000",  # a user name alone is no secret
        "file:mlruns",
        "sqlite:///studies/x.db",
        "https://host/api/2.0/runs?experiment_id=3&max_results=1000",
        "journal:///tmp/a=b/study.log",
        "",
        "no uri here: user@example.com, a:b, key, =, ==, ://, @@",
        "http://[::1]:5000/path",
        "ünïcode://ü:ß",  # odd input stays as it is unless it has the shape of a secret
    ],
)
def test_text_without_a_secret_is_unchanged(text: str) -> None:
    assert mask_secrets(text) == text


def test_masking_is_idempotent() -> None:
    once = mask_secrets(f"http://u:{SECRET}@h?token={SECRET}")
    assert mask_secrets(once) == once == "http://u:***@h?token=***"


def test_a_spec_without_secrets_keeps_everything_but_the_secret() -> None:
    text = (
        "study: {name: tracked}\n"
        f"tracking: {{mlflow: 'http://user:{SECRET}@mlflow.example:5000', tensorboard: runs/tb}}\n"
        "model: {stages: [{blocks: {range: [1, 2]}, width: 16}]}\n"
    )
    spec = parse_spec(text, "tracked.yaml")
    clean = without_secrets(spec)
    assert SECRET not in clean.text and SECRET not in repr(clean)
    assert clean.tracking.mlflow == "http://user:***@mlflow.example:5000"
    assert clean.tracking.tensorboard == "runs/tb"
    assert (clean.space, clean.study, clean.source) == (spec.space, spec.study, spec.source)
    assert parse_spec(clean.text, "stored").tracking.mlflow == clean.tracking.mlflow  # the stored text still parses


# --------------------------------------------------------------------------- an MLflow server that does not answer


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port on 127.0.0.1 that takes connections and never answers (a hung server)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


@pytest.mark.parametrize("where", ["flag, refused", "spec, refused", "flag, no answer"])
def test_an_unusable_mlflow_server_is_one_masked_line_and_exit_2_in_seconds(
    tmp_path: Path, tiny_imagefolder: Path, silent_port: int, where: str
) -> None:
    port = silent_port if "no answer" in where else free_port()
    uri = f"http://user:{SECRET}@127.0.0.1:{port}"
    spec = write_spec(tmp_path, "unreached", n_trials=2, epochs=1)
    args = ["run", str(spec), "--data-dir", str(tiny_imagefolder)]
    if where.startswith("spec"):
        spec.write_text(spec.read_text() + f"tracking: {{mlflow: '{uri}'}}\n")
    else:
        args += ["--mlflow", uri]
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "search.cli", *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"MLflow tracking URI http://user:***@127.0.0.1:{port} cannot be used" in lines[0]
    assert ("Connection refused" if "refused" in where else "timed out") in lines[0]
    # MLflow's own retries take minutes (7 tries, backoff up to 2 min; 120 s a request): the
    # bound leaves room for the imports on a loaded machine, not for one retry.
    assert elapsed < 60, f"{elapsed:.0f} s: MLflow's retries were not bounded"
    assert SECRET not in result.stdout + result.stderr
    assert files_containing(tmp_path, SECRET) == ([spec] if where.startswith("spec") else [])
    assert not (tmp_path / "studies").exists()  # checked before the study or Ray


# --------------------------------------------------------------------------- a real MLflow server


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real ``mlflow server`` on a free port of 127.0.0.1, its store in the test's folder.
    It asks for no credentials, so a password in the URI travels (as basic auth) unchecked."""
    pytest.importorskip("mlflow")
    port, store = free_port(), tmp_path / "mlflow-server"
    store.mkdir()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        + ["--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--default-artifact-root", str(store / "art")],
        cwd=store,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("mlflow server did not start") from None
                time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)


@pytest.mark.slow
def test_a_tracking_password_is_printed_stored_and_handed_to_ray_nowhere(
    tmp_path: Path, tiny_imagefolder: Path, mlflow_server: str
) -> None:
    """The flag's password (used) and the spec's (stored with the spec text, then overridden by
    the flag) are found in no file under the test's folder: the study database, the study's
    folder (``ray.log``, Tune's ``experiment_state-*.json`` and ``tuner.pkl``, model folders),
    the MLflow server's store; nor in what the run printed, nor in Ray's session logs."""
    from mlflow.tracking import MlflowClient

    flag_secret, spec_secret = SECRET + "-flag", SECRET + "-spec"
    spec = write_spec(tmp_path, "secret_tracking", n_trials=2, epochs=2)
    spec.write_text(spec.read_text() + f"tracking: {{mlflow: 'http://user:{spec_secret}@{mlflow_server}'}}\n")
    process = run_cli(
        [
            "run",
            str(spec),
            "--data-dir",
            str(tiny_imagefolder),
            "--mlflow",
            f"http://user:{flag_secret}@{mlflow_server}",
        ],
        cwd=tmp_path,
    )
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output

    client = MlflowClient(tracking_uri=f"http://{mlflow_server}")
    experiment = client.get_experiment_by_name("secret_tracking")
    assert experiment and client.search_runs([experiment.experiment_id]), "the tracker wrote through the URI"
    stored = load(sqlite_url(tmp_path, "secret_tracking"), "secret_tracking").user_attrs[SPEC_TEXT]
    assert f"http://user:***@{mlflow_server}" in stored
    tune = tmp_path / "studies" / "secret_tracking" / "ray" / "tune"
    assert (tune / "tuner.pkl").is_file() and list(tune.glob("experiment_state-*.json"))  # looked at, below
    assert flag_secret not in output and spec_secret not in output
    assert files_containing(tmp_path, flag_secret) == []
    assert files_containing(tmp_path, spec_secret) == [spec]  # the user's own file, nothing of ours
    recent = [p for p in Path("/tmp/ray").glob("session_*/logs") if p.stat().st_mtime > time.time() - 3600]
    assert not [f for logs in recent for secret in (flag_secret, spec_secret) for f in files_containing(logs, secret)]


def test_a_study_stored_with_a_password_in_its_spec_is_masked_by_the_next_run(tmp_path: Path) -> None:
    """Studies written before the spec was masked kept its tracking URI in clear: the next run's
    :func:`create_study` masks the stored text, and a new study never stores it."""
    from search.engine.samplers import create_study

    text = (
        "study: {name: old}\n"
        f"tracking: {{mlflow: 'http://user:{SECRET}@mlflow.example:5000'}}\n"
        "model: {stages: [{blocks: {range: [1, 2]}, width: 16}]}\n"
    )
    spec = parse_spec(text, "old.yaml")
    storage = f"sqlite:///{tmp_path / 'old.db'}"
    create_study(spec, storage).set_user_attr(SPEC_TEXT, text)  # as an earlier version stored it
    assert SECRET in load(storage, "old").user_attrs[SPEC_TEXT]
    assert create_study(spec, storage).user_attrs[SPEC_TEXT] == mask_secrets(text)
    new = parse_spec(text.replace("name: old", "name: new"), "new.yaml")
    assert SECRET not in create_study(new, storage).user_attrs[SPEC_TEXT]
