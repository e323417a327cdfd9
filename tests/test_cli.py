"""The command line's promise for every bad input: exit code 2 and one line on stderr that
names the file and the key, before Ray starts (``run``) or training does (``train``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from lejepa_tune.cli import _minutes, main
from ranks import free_port

# A port at which nothing answers: the tracking server or database a user forgot to start.
CLOSED = free_port()
# A valid search space (the table's ``--set`` cases break it one key at a time).
SPACE = "name: s\nsearch:\n  loss.lam: {type: loguniform, low: 0.01, high: 0.5}\n"
NOT_UTF8 = b"name: s\n\xff\xfe\x00\x81 binary\n"


def space(case_id, text, key, fragment, command="validate", names="space.yaml", files=None):
    """A search-space file that ``command`` reads."""
    return pytest.param([command, "{tmp}/space.yaml"], {"space.yaml": text, **(files or {})}, names, key, fragment, id=case_id)


def overrides(case_id, command, sets, key, fragment):
    """``--set`` overrides on the valid space."""
    argv = [command, "{tmp}/space.yaml", *(a for s in sets for a in ("--set", s))]
    return pytest.param(argv, {"space.yaml": SPACE}, "space.yaml (with --set)", key, fragment, id=case_id)


def train(case_id, sets, key, fragment, config=None, marks=()):
    """``lejepa-tune train`` with a config file (``config``) or the defaults."""
    argv = ["train", *(["{tmp}/cfg.yaml"] if config is not None else []), *(a for s in sets for a in ("--set", s))]
    names = ("cfg.yaml" if config is not None else "<defaults>") + (" (with --set)" if sets else "")
    files = {"cfg.yaml": config} if config is not None else {}
    return pytest.param(argv, files, names, key, fragment, id=case_id, marks=marks)


CASES = [
    # (a) search-space files
    space("space-not-utf8", NOT_UTF8, None, "not a UTF-8 text file"),
    space("space-top-level-list", "- name: s\n", None, "expected a mapping at the top level, got list"),
    space("space-malformed-yaml", "name: s\nsearch: {loss.lam: {type: uniform\n", None, "malformed YAML (line"),
    space("space-unknown-section", "name: s\nsearches: {}\n", "searches", "unknown key"),
    space("space-no-name", "search: {}\n", "name", "non-empty name"),
    pytest.param(["validate", "{tmp}/spaces"], {"spaces/x.yaml": SPACE}, "spaces", None, "is a directory", id="space-is-a-directory"),
    space("base-is-a-directory", "name: s\nbase: configs\n", "base", "configs: is a directory", files={"configs/x.yaml": ""}),
    space("base-file-missing", "name: s\nbase: nope.yaml\n", "base", "nope.yaml: no such file"),
    space("base-file-not-utf8", "name: s\nbase: base.yaml\n", "base", "base.yaml: not a UTF-8 text file", files={"base.yaml": NOT_UTF8}),
    space("base-file-top-level-list", "name: s\nbase: base.yaml\n", "base", "expected a mapping at the top level", files={"base.yaml": "- 1\n"}),
    space("base-file-bad-value", "name: s\nbase: base.yaml\n", "optim.lr", "a finite number", names="base.yaml", files={"base.yaml": "optim: {lr: .inf}\n"}),
    space("base-local-larger-than-global", "name: s\nbase: {views: {n_local: 2, local_size: 64}}\n", "base.views.local_size", "must not exceed views.global_size"),
    space("base-unknown-backbone", "name: s\nbase: {model: {backbone: vit_nonexistent}}\n", "base.model.backbone", "not a timm model"),
    space("search-local-views-the-vit-cannot-take", "name: s\nsearch:\n  views.n_local: {type: choice, values: [0, 2]}\n", "base.views.local_size",
          "vit_tiny_patch16_224 does not take 16x16 views", command="run"),
    space("search-impossible-range", "name: s\nsearch:\n  loss.lam: {type: uniform, low: 0.5, high: 0.1}\n", "search.loss.lam", "impossible range"),
    space("run-base-missing-folder", "name: s\nbase: {data: {dataset: 'folder:{tmp}/nowhere'}}\n", "base.data.dataset", "no such directory", command="run"),
    space("search-high-not-finite", "name: s\nsearch:\n  optim.lr: {type: uniform, low: 0.001, high: .inf}\n", "search.optim.lr.high", "a finite number"),
    space("search-choice-not-finite", "name: s\nsearch:\n  optim.lr: {type: choice, values: [0.001, 1e400]}\n", "search.optim.lr", "a finite number"),
    space("search-unknown-backbone-choice", "name: s\nsearch:\n  model.backbone: {type: choice, values: [vit_tiny_patch16_224, vit_nonexistent]}\n", "search.model.backbone", "'vit_nonexistent' is not a timm model"),
    space("search-batch-indivisible", "name: s\nsearch:\n  train.batch_size: {type: int, low: 32, high: 64}\nresources: {num_workers: 2}\n", "search.train.batch_size", "33 is not divisible by resources.num_workers (2)"),
    space("search-batch-too-large", "name: s\nsearch:\n  train.batch_size: {type: choice, values: [64, 4096]}\n", "search.train.batch_size", "4096 exceeds the 1437 training images"),
    space("search-data-cap-below-batch", "name: s\nsearch:\n  data.max_train_samples: {type: choice, values: [16, 1000]}\n", "base.train.batch_size", "64 exceeds the 16 training images of 'digits' (data.max_train_samples: 16)"),
    space("search-local-larger-than-global", "name: s\nbase: {views: {n_local: 2, global_size: 64}}\nsearch:\n  views.local_size: {type: choice, values: [16, 48]}\n  views.global_size: {type: choice, values: [32, 64]}\n", "search.views.local_size", "trials with views.local_size=48, views.global_size=32 would be invalid"),
    space("base-zero-epochs", "name: s\nbase: {train: {epochs: 0}}\n", "base.train.epochs", "a sweep's trials train at least 1 epoch"),
    space("search-zero-epochs", "name: s\nsearch:\n  train.epochs: {type: int, low: 0, high: 4}\n", "search.train.epochs", "at least 1 epoch", command="run"),
    space("search-epochs-with-asha", "name: s\ntune: {scheduler: asha}\nsearch:\n  train.epochs: {type: int, low: 2, high: 4}\n",
          "search.train.epochs", "not with tune.scheduler: asha (its rungs compare trials at equal epochs of one length", command="run"),
    space("point-outside-range", SPACE + "tune: {points_to_evaluate: [{loss.lam: 0.9}]}\n", "tune.points_to_evaluate[0].loss.lam", "0.9 is outside the searched loguniform [0.01, 0.5]"),
    space("point-off-step", "name: s\nsearch:\n  model.proj_dim: {type: qint, low: 16, high: 64, step: 16}\ntune: {points_to_evaluate: [{model.proj_dim: 20}]}\n", "tune.points_to_evaluate[0].model.proj_dim", "outside the searched qint"),
    space("point-unsearched-key", SPACE + "tune: {points_to_evaluate: [{optim.lr: 0.001}]}\n", "tune.points_to_evaluate[0].optim.lr", "not a searched key"),
    space("max-concurrent-trials-0", SPACE + "tune: {max_concurrent_trials: 0}\n", "tune.max_concurrent_trials", "null or an integer > 0"),
    space("max-failures-negative", SPACE + "tune: {max_failures: -1}\n", "tune.max_failures", "an integer >= 0"),
    space("cpus-per-worker-0", SPACE + "resources: {cpus_per_worker: 0}\n", "resources.cpus_per_worker", "a number > 0"),
    space("unknown-scheduler", SPACE + "tune: {scheduler: hyperband}\n", "tune.scheduler", "'asha'"),
    space("mode-against-metric", SPACE + "tune: {metric: train/loss, mode: max}\n", "tune.mode", "expected min"),
    space("metric-of-other-regularizer", SPACE + "tune: {metric: train/spectral, mode: min}\n", "tune.metric", "unknown label-free metric"),
    space("criterion-unknown", SPACE + "selection: {criterion: best}\n", "selection.criterion", "unknown criterion 'best'"),
    # (b) --set overrides on validate and run
    overrides("set-lr-inf", "validate", ["optim.lr=1e400"], "base.optim.lr", "a finite number, got inf"),
    overrides("run-set-lr-inf", "run", ["optim.lr=1e400"], "base.optim.lr", "a finite number, got inf"),
    overrides("set-search-high-inf", "validate", ["search.loss.lam.high=1e400"], "search.loss.lam.high", "a finite number"),
    overrides("set-search-low-inf", "run", ["search.loss.lam.low=-.inf"], "search.loss.lam.low", "a finite number"),
    overrides("set-metric-reads-labels", "validate", ["tune.metric=eval/linear_acc"], "tune.metric", "reads labels"),
    overrides("run-set-metric-reads-labels", "run", ["tune.metric=eval/linear_acc"], "tune.metric", "reads labels"),
    overrides("set-criterion-reads-labels", "validate", ["selection.criterion=eval/linear_acc"], "selection.criterion", "reads labels"),
    overrides("run-set-criterion-metric-key", "run", ["selection.criterion=labelfree/backbone/gmi"], "selection.criterion", "is named 'backbone/gmi'"),
    overrides("set-missing-folder", "validate", ["data.dataset=folder:{tmp}/nowhere"], "base.data.dataset", "no such directory"),
    overrides("run-set-missing-folder", "run", ["data.dataset=folder:{tmp}/nowhere"], "base.data.dataset", "no such directory"),
    overrides("set-unknown-backbone", "validate", ["model.backbone=vit_nonexistent"], "base.model.backbone", "not a timm model"),
    overrides("run-set-unknown-backbone", "run", ["model.backbone=vit_nonexistent"], "base.model.backbone", "not a timm model"),
    overrides("set-workers-split-batch", "validate", ["resources.num_workers=3"], "base.train.batch_size", "64 is not divisible by resources.num_workers (3)"),
    overrides("run-set-batch-too-large", "run", ["train.batch_size=4096"], "base.train.batch_size", "4096 exceeds the 1437 training images"),
    overrides("set-cap-below-batch", "validate", ["data.max_train_samples=32"], "base.train.batch_size", "(data.max_train_samples: 32)"),
    overrides("set-labelfree-too-large", "validate", ["labelfree.num_images=4096"], "base.labelfree.num_images", "4096 exceeds the 1437 training images"),
    overrides("set-negative-resamples", "validate", ["labelfree.resamples=-1"], "base.labelfree.resamples", "an integer >= 0"),
    overrides("set-local-larger-than-global", "validate", ["views.n_local=2", "views.local_size=64"], "base.views.local_size", "must not exceed"),
    overrides("set-point-outside-range", "validate", ["tune.points_to_evaluate=[{loss.lam: 0.9}]"], "tune.points_to_evaluate[0].loss.lam", "outside the searched"),
    overrides("run-set-zero-epochs", "run", ["train.epochs=0"], "base.train.epochs", "at least 1 epoch (with 0, each only measures its untrained encoder), got 0"),
    overrides("set-max-concurrent-0", "run", ["tune.max_concurrent_trials=0"], "tune.max_concurrent_trials", "> 0"),
    overrides("set-without-equals", "validate", ["optim.lr"], "optim.lr", "expected dotted.key=value"),
    overrides("set-bad-yaml-value", "run", ["optim.lr=[0.1"], "optim.lr", "not valid YAML"),
    overrides("set-base-directory", "validate", ["base={tmp}"], "base", "is a directory"),
    overrides("set-not-a-section", "validate", ["base.optim.lr.x=1"], "optim.lr", "is not a section"),
    pytest.param(["run", "{tmp}/space.yaml", "--num-samples", "0"], {"space.yaml": SPACE}, "space.yaml (with --set)", "tune.num_samples", "> 0", id="run-num-samples-0"),
    # (c) lejepa-tune train
    train("train-not-utf8", [], None, "not a UTF-8 text file", config=NOT_UTF8),
    train("train-top-level-list", [], None, "expected a mapping at the top level", config="- 1\n"),
    train("train-bad-value-in-file", [], "optim.lr", "a number > 0", config="optim: {lr: -3}\n"),
    train("train-inf-in-file", [], "optim.lr", "a finite number", config="optim: {lr: .inf}\n"),
    train("train-set-lr-inf", ["optim.lr=1e400"], "optim.lr", "a finite number"),
    train("train-set-unknown-key", ["optim.lrr=1"], "optim.lrr", "unknown key"),
    train("train-set-without-equals", ["optim.lr"], "optim.lr", "expected dotted.key=value"),
    train("train-batch-too-large", ["train.batch_size=4096"], "train.batch_size", "4096 exceeds the 1437 training images"),
    train("train-labelfree-too-large", ["labelfree.num_images=4096"], "labelfree.num_images", "exceeds the 1437 training images"),
    train("train-unknown-backbone", ["model.backbone=vit_nonexistent"], "model.backbone", "not a timm model"),
    train("train-missing-folder", ["data.dataset=folder:{tmp}/nowhere"], "data.dataset", "no such directory"),
    train("train-local-larger-than-global", ["views.n_local=2", "views.local_size=64"], "views.local_size", "must not exceed"),
    train("train-global-size-the-vit-cannot-take", ["views.global_size=24"], "views.global_size", "does not take 24x24 views"),
    train("train-cuda-without-gpu", ["train.device=cuda"], "train.device", "no CUDA device",
          marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")),
    # (d) where a sweep writes, checked before Ray starts
    pytest.param(["run", "{tmp}/space.yaml", "--tracking-uri", "foo://bar"], {"space.yaml": SPACE}, None, "--tracking-uri",
                 "foo://bar: MLflow has no store for the scheme 'foo' (it has ", id="run-tracking-uri-unknown-scheme"),
    pytest.param(["run", "{tmp}/space.yaml", "--tracking-uri", f"http://127.0.0.1:{CLOSED}"], {"space.yaml": SPACE}, None, "--tracking-uri",
                 f"nothing answers at 127.0.0.1:{CLOSED}", id="run-tracking-server-down"),
    pytest.param(["run", "{tmp}/space.yaml", "--tracking-uri", f"postgresql://mlflow:secret@127.0.0.1:{CLOSED}/mlflow"], {"space.yaml": SPACE}, None,
                 "--tracking-uri", f"postgresql://mlflow:***@127.0.0.1:{CLOSED}/mlflow: nothing answers", id="run-tracking-database-down-password-masked"),
    pytest.param(["run", "{tmp}/space.yaml", "--tracking-uri", "sqlite:///{tmp}/space.yaml/mlflow.db"], {"space.yaml": SPACE}, None, "--tracking-uri",
                 "MLflow cannot track there", id="run-tracking-sqlite-below-a-file"),
    space("space-tracking-uri-unknown-scheme", SPACE + "tracking: {tracking_uri: 'foo://bar'}\n", "tracking.tracking_uri", "no store for the scheme 'foo'",
          command="run"),
    pytest.param(["run", "{tmp}/space.yaml", "--storage-path", "{tmp}/space.yaml/sweeps"], {"space.yaml": SPACE}, None, "--storage-path",
                 "space.yaml is a file, not a directory", id="run-storage-below-a-file"),
    pytest.param(["report", "lambda_sweep", "--tracking-uri", f"http://user:secret@127.0.0.1:{CLOSED}"], {}, None, "--tracking-uri",
                 f"http://127.0.0.1:{CLOSED}: nothing answers", id="report-tracking-server-down"),
    pytest.param(["select", "lambda_sweep", "--export", "{tmp}/out", "--tracking-uri", "foo://bar"], {}, None, "--tracking-uri",
                 "no store for the scheme 'foo'", id="select-tracking-uri-unknown-scheme"),
    pytest.param(["run", "{tmp}/space.yaml", "--address", f"127.0.0.1:{CLOSED}"], {"space.yaml": SPACE}, None, "--address",
                 f"no Ray cluster answers at 127.0.0.1:{CLOSED}", id="run-address-nothing-there"),
    pytest.param(["run", "{tmp}/space.yaml", "--address", "127.0.0.1:99999"], {"space.yaml": SPACE}, None, "--address",
                 "not a valid port", id="run-address-bad-port"),
    train("train-output-below-a-file", ["train.output_dir={tmp}/cfg.yaml/out"], "train.output_dir", "cfg.yaml is a file, not a directory",
          config="train: {epochs: 1}\n"),
    pytest.param(["train", "--output-dir", "{tmp}/afile"], {"afile": "x"}, None, "--output-dir", "afile: is a file, not a directory",
                 id="train-output-dir-is-a-file"),
    pytest.param(["report", "{tmp}", "--output-dir", "{tmp}/afile/report"], {"afile": "x"}, None, "--output-dir",
                 "afile is a file, not a directory", id="report-output-below-a-file"),
    pytest.param(["select", "{tmp}", "--export", "{tmp}/afile"], {"afile": "x"}, None, "--export", "afile: is a file, not a directory",
                 id="select-export-is-a-file"),
    # usage errors: one line too
    pytest.param(["run", "{tmp}/space.yaml", "--num-samples", "many"], {"space.yaml": SPACE}, None, None, "argument --num-samples", id="usage-bad-int"),
    pytest.param(["validate"], {}, None, None, "required: space", id="usage-missing-space"),
    pytest.param(["report", "{tmp}", "--out", "{tmp}/r"], {}, None, None, "unrecognized arguments: --out", id="usage-abbreviated-option"),
]


@pytest.mark.parametrize("argv,files,names,key,fragment", CASES)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, files, names, key, fragment):
    """``names``: the file the message starts with (relative to tmp_path, or ``<defaults>``);
    ``key``: the dotted key it names, ``None`` for errors about a whole file or the command
    line; ``fragment``: what it says is wrong."""
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.replace("{tmp}", str(tmp_path)).encode())
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    outputs = tmp_path / "outputs"  # a run's sweeps, a training run's outputs: never created
    if argv[0] == "run" and "--storage-path" not in argv:
        argv += ["--storage-path", str(outputs)]
    elif argv[0] == "train" and "--output-dir" not in argv and not any(a.startswith("train.output_dir=") for a in argv):
        argv += ["--output-dir", str(outputs)]

    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    line = err.rstrip("\n")
    assert line.startswith("lejepa-tune: error: "), line
    if names is not None:
        shown = names if names.startswith("<") else f"{tmp_path / names}"
        assert line.startswith(f"lejepa-tune: error: {shown}: "), line
    if key is not None:
        assert f": {key}: " in line, line
    assert fragment in line, line
    assert not outputs.exists()


def test_validate_warns_of_a_label_free_set_small_for_the_backbone_and_still_passes(tmp_path, capsys):
    (tmp_path / "space.yaml").write_text(SPACE)
    assert main(["validate", str(tmp_path / "space.yaml")]) == 0
    assert capsys.readouterr().err == ""  # the defaults: 256 images of 2 views for 96 features
    assert main(["validate", str(tmp_path / "space.yaml"), "--set", "labelfree.num_images=64"]) == 0
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"warning: {tmp_path / 'space.yaml'} (with --set): labelfree.num_images: 64 images with 2 views give 64 ")
    assert line.endswith("set labelfree.num_images to at least 192")


def test_a_sweeps_time_is_rounded_before_it_is_split_into_minutes():
    assert _minutes(179.6) == "3 min 0 s"
    assert _minutes(179.4) == "2 min 59 s"
    assert _minutes(59.5) == "1 min 0 s" and _minutes(0.2) == "0 min 0 s"


def test_why_ray_could_not_join_a_cluster_that_answers_is_one_line():
    """A token the cluster refused (Ray's cause holds the attempt's traceback as text) says what
    to set; any other failure says Ray's own words, on one line. (A real refused token:
    tests/test_cluster.py.)"""
    from lejepa_tune.sweep import _join_refused

    try:
        try:
            raise RuntimeError("Failed to connect to GCS. Last connection error: Traceback ...\nray.exceptions.AuthenticationError: "
                               "RPC error: InvalidAuthToken: Authentication token is missing or incorrect.")
        except RuntimeError as cause:
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379") from cause
    except ConnectionError as err:
        assert _join_refused(err).startswith("the Ray cluster did not take this process's token (none, or not its own): set RAY_AUTH_MODE=token")
    assert _join_refused(ConnectionError("Failed to connect\nto Ray cluster at 10.0.0.1:6379")) == (
        "Ray could not join the cluster (Failed to connect to Ray cluster at 10.0.0.1:6379)")


def console(tmp_path, before: str, *argv: str) -> subprocess.CompletedProcess:
    """``lejepa-tune ARGV`` as the installed command runs it (``cli.console``), in a fresh
    process that first runs the Python code ``before``; its output piped, so block-buffered."""
    code = f"import sys\n{before}\nsys.argv = ['lejepa-tune', *{list(argv)!r}]\nfrom lejepa_tune.cli import console\nconsole()\n"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)


def test_the_command_skips_the_teardown_but_not_the_exit_handlers_the_output_or_a_running_thread(tmp_path):
    """The command ends with ``os._exit``, after what a normal exit must do: main's exit code,
    the exit handlers run, the buffered output written; and where a thread still runs, it exits
    the normal way, which waits for it."""
    handler = "import atexit; atexit.register(lambda: print('exit handler ran'))"
    done = console(tmp_path, handler, "validate")  # a usage error: no space given
    assert done.returncode == 2 and "required: space" in done.stderr, done.stderr
    assert done.stdout == "exit handler ran\n"

    # A thread that main starts as it returns, and leaves running.
    thread = ("import threading, time, lejepa_tune.cli as cli; run = cli.main\n"
              "cli.main = lambda: (run(), threading.Thread(target=lambda: (time.sleep(1), print('thread finished'))).start())[0]")
    waited = console(tmp_path, thread, "validate")
    assert waited.returncode == 2 and waited.stdout == "thread finished\n", waited.stderr


def test_a_tracking_server_that_is_not_mlflows_is_refused_in_one_line_before_ray_starts(tmp_path, capsys):
    """A web server at the tracking URI that is not MLflow's (Python's own file server): one
    request, refused in one line, exit code 2, and no sweep directory made."""
    import functools
    import http.server
    import threading

    class Files(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # the server's own log is not the command's output
            pass

    handler = functools.partial(Files, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (tmp_path / "space.yaml").write_text(SPACE)
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        code = main(["run", str(tmp_path / "space.yaml"), "--tracking-uri", uri, "--storage-path", str(tmp_path / "sweeps")])
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"lejepa-tune: error: --tracking-uri: {uri}: MLflow cannot track there (") and "error code" in err, err
    assert not (tmp_path / "sweeps").exists()


def test_a_deleted_mlflow_experiment_of_the_sweeps_name_is_refused_in_one_line_before_ray_starts(tmp_path, capsys, mlflow_uri):
    """MLflow keeps a deleted experiment's name and refuses runs in it: said before the sweep
    starts, with how to restore it, and no sweep directory made."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    client.delete_experiment(client.create_experiment("s"))
    (tmp_path / "space.yaml").write_text(SPACE)
    code = main(["run", str(tmp_path / "space.yaml"), "--tracking-uri", mlflow_uri, "--storage-path", str(tmp_path / "sweeps")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"lejepa-tune: error: {tmp_path / 'space.yaml'}: name: the MLflow experiment 's' was deleted at {mlflow_uri}"), err
    assert "mlflow experiments restore --experiment-id" in err
    assert not (tmp_path / "sweeps").exists()


HUNG = "--tracking-uri: {uri}: the server accepted a connection but sent no answer in {seconds} s (MLFLOW_HTTP_REQUEST_TIMEOUT=SECONDS waits longer)"


@pytest.mark.parametrize("wait, error", [
    # Waits out the whole default: five seconds of the quick loop's minute, so with the slow tests.
    pytest.param(None, HUNG.replace("{seconds}", "5"), id="default-5s", marks=pytest.mark.slow),
    pytest.param("1", HUNG.replace("{seconds}", "1"), id="env-1s"),
    pytest.param("soon", "MLFLOW_HTTP_REQUEST_TIMEOUT: a whole number of seconds above 0, got 'soon'", id="env-not-a-number"),
    pytest.param("0", "MLFLOW_HTTP_REQUEST_TIMEOUT: a whole number of seconds above 0, got '0'", id="env-0"),
])
def test_a_tracking_server_that_accepts_but_never_answers_is_refused_in_seconds(wait, error, tmp_path, capsys, monkeypatch):
    """A server that accepts connections and sends nothing (hung): one line after the probe's
    5 s, or the seconds MLFLOW_HTTP_REQUEST_TIMEOUT gives (a bad value of it: one line that
    names it), exit code 2, no sweep directory; MLflow's own client would retry for many
    minutes."""
    import socket
    import threading
    import time

    listener = socket.create_server(("127.0.0.1", 0))
    held = []

    def accept_and_hold() -> None:
        while True:
            try:
                held.append(listener.accept())
            except OSError:  # closed: the test is over
                return

    threading.Thread(target=accept_and_hold, daemon=True).start()
    (tmp_path / "space.yaml").write_text(SPACE)
    uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
    if wait is None:
        monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", wait)
    start = time.monotonic()
    try:
        code = main(["run", str(tmp_path / "space.yaml"), "--tracking-uri", uri, "--storage-path", str(tmp_path / "sweeps")])
    finally:
        listener.close()
    err = capsys.readouterr().err
    assert code == 2 and err == f"lejepa-tune: error: {error.replace('{uri}', uri)}\n", err
    assert time.monotonic() - start < 30 and not (tmp_path / "sweeps").exists()
    assert bool(held) == error.startswith("--tracking-uri")  # a bad MLFLOW_HTTP_REQUEST_TIMEOUT is refused before connecting
