"""End-to-end tests of training and evaluation on the tiny synthetic data set.

These train a tiny model for a few steps (seconds each; marked slow). Runs that must
be interrupted, or need several devices or processes, run `train.py` in
subprocesses.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import REPO, override

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfds")
    from dlset_jax.data import pipeline

    pipeline.load_source("synthetic_prostate/tiny", d, "train")
    return str(d)


def tiny_config(data_dir, **overrides):
    sys.path.insert(0, str(REPO / "configs"))
    import tiny

    config = tiny.get_config()
    config.data.data_dir = data_dir
    return override(config, **overrides)


def run_train(workdir, data_dir, *args, env=None, wait=True, devices=None):
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        f"--config={REPO}/configs/tiny.py",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        *args,
    ]
    full_env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
    if devices:
        flags = full_env.get("XLA_FLAGS", "")
        full_env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    if not wait:
        return subprocess.Popen(
            cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def refused_run(workdir, data_dir, *args, config="tiny.py"):
    """train.py that must stop with a message: no traceback. Returns stdout + stderr."""
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        f"--config={REPO}/configs/{config}",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        *args,
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu")
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout + proc.stderr


def final_params(workdir):
    from dlset_jax import checkpoint

    ck = checkpoint.Checkpointer(str(workdir), read_only=True)
    variables = ck.restore_variables()
    step = ck.latest_step()
    ck.close()
    import jax

    return step, jax.tree.map(np.asarray, variables)


def assert_trees_close(a, b, rtol=1e-6, atol=1e-6):
    import jax

    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def test_train_checkpoint_resume_evaluate(tmp_path, data_dir):
    from dlset_jax import evaluate, train_lib

    workdir = str(tmp_path / "run")
    config = tiny_config(data_dir, **{"train.num_steps": 2})
    result = train_lib.train_and_evaluate(config, workdir)
    # every test object scored once, the summary is the records' mean, with the polygon
    from dlset_jax.data import pipeline

    n_test = len(pipeline.ObjectSource(pipeline.load_split(config, "test")))
    assert len(result["records"]) == n_test == 2
    assert result["scalars"]["dsc"] == pytest.approx(np.mean([r["dsc"] for r in result["records"]]))
    assert all(0.5 < r["baseline_dsc"] <= 1 for r in result["records"])
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
    # A second run with more steps resumes from step 2 instead of starting over.
    config = tiny_config(data_dir, **{"train.num_steps": 4})
    train_lib.train_and_evaluate(config, workdir)
    step, _ = final_params(workdir)
    assert step == 4
    out = os.path.join(workdir, "eval", "test")
    for name in ("results.json", "table.md", "fmeasure.png", "overlays.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    with open(os.path.join(out, "results.json")) as f:
        saved = json.load(f)
    assert len(saved["records"]) >= 2 and "dsc" in saved["records"][0]
    assert "DSC (%)" in open(os.path.join(out, "table.md")).read()
    assert any(f.startswith("events") for f in os.listdir(os.path.join(workdir, "tensorboard")))
    # eval.py's library entry restores the saved config and scores another split.
    res = evaluate.evaluate_workdir(workdir, split="validation")
    assert res["split"] == "validation" and len(res["records"]) >= 1


def test_extra_training_sets_are_mixed_in_and_reported(tmp_path, data_dir):
    from dlset_jax import train_lib
    from dlset_jax.data import pipeline

    workdir = str(tmp_path / "mix")
    config = tiny_config(
        data_dir,
        **{
            "train.num_steps": 2,
            "data.extra_sets": ("synthetic_fundus/tiny",),
            "data.extra_share": 0.5,
            "data.image_kinds": ("grey", "rgb"),
        },
    )
    train_lib.train_and_evaluate(config, workdir)
    # the extra set was built, and its test split scored with the run's threshold
    fundus_test = pipeline.ObjectSource(
        pipeline.load_source("synthetic_fundus/tiny", data_dir, "test")
    )
    with open(os.path.join(workdir, "eval", "synthetic_fundus-test", "results.json")) as f:
        saved = json.load(f)
    assert sorted(r["id"] for r in saved["records"]) == sorted(
        fundus_test[i]["id"] for i in range(len(fundus_test))
    )
    assert os.path.isfile(os.path.join(workdir, "eval", "test", "table.md"))


@pytest.mark.parametrize(
    "sig, every",
    [(signal.SIGTERM, 1000), (signal.SIGTERM, 1), (signal.SIGINT, 1000)],
)  # every=1: the signal finds its step already saved; SIGINT: a Ctrl-C
def test_sigterm_saves_a_checkpoint(tmp_path, data_dir, sig, every):
    workdir = tmp_path / "term"
    proc = run_train(
        workdir,
        data_dir,
        "--config.train.num_steps=400",
        f"--config.train.checkpoint_every={every}",
        wait=False,
    )
    deadline = time.time() + 300
    out = ""
    while time.time() < deadline:
        line = proc.stdout.readline()
        out += line
        if line.startswith("step "):
            break
    proc.send_signal(sig)
    rest, _ = proc.communicate(timeout=300)
    out += rest
    assert proc.returncode == 0, out
    assert "preempted at step" in out
    step, _ = final_params(workdir)
    assert 2 <= step < 400


# One set of arguments for the reference run, the data-parallel runs and the resumed
# run. SGD at a small rate, no warm-up: parameter differences then stay proportional
# to gradient differences. (Adam's normalised step magnifies rounding in near-zero
# gradients, and the warm-up motion loss has gradients ~ 1/|M| where the predicted
# motion is near zero, which turns reduction-order rounding into visible changes.)
# Augmented: the random transforms must not depend on the device count or a restart.
PARALLEL_ARGS = [
    "--config.train.num_steps=6",
    "--config.train.checkpoint_every=2",
    "--config.train.keep_checkpoints=5",
    "--config.data.augment=true",
    "--config.train.batch_size=4",
    "--config.train.log_every=1",
    "--config.eval.batch_size=4",
    "--config.optim.name=sgd",
    "--config.optim.learning_rate=0.001",
    "--config.loss.warmup_epochs=0",
]


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory, data_dir):
    """The reference for the data-parallel and multi-process runs: one device."""
    workdir = tmp_path_factory.mktemp("one_device")
    out = run_train(workdir, data_dir, *PARALLEL_ARGS, devices=1)
    assert "devices: 1" in out
    return workdir, out


def test_exact_resume_after_sigkill(tmp_path, data_dir, one_device_run):
    """Killed after its first checkpoints and restarted, a run ends where the
    uninterrupted one (`one_device_run`, the same arguments) ends: the same parameters,
    the data iterator, the optimiser's momentum and the random state restored."""
    killed = tmp_path / "killed"
    proc = run_train(killed, data_dir, *PARALLEL_ARGS, wait=False, devices=1)
    ck_dir = killed / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (ck_dir / "2" / "commit_success.txt").exists() or (ck_dir / "4").exists():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step_partial, _ = final_params(killed)
    assert step_partial < 6
    out = run_train(killed, data_dir, *PARALLEL_ARGS, devices=1)
    assert f"resumed from step {step_partial}" in out, out
    step_ref, p_ref = final_params(one_device_run[0])
    step_res, p_res = final_params(killed)
    assert step_ref == step_res == 6
    assert_trees_close(p_ref, p_res)


def _losses(out):
    return np.array(
        [l.split("| loss ")[1].split()[0] for l in out.splitlines() if l.startswith("step ")], float
    )


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_of_two_devices_match_one_device(tmp_path, data_dir, one_device_run):
    """Data parallel over 4 devices in 2 processes (2 CPU devices each) trains the
    model one device trains: the same losses and final parameters."""
    args = PARALLEL_ARGS
    port = _free_port()
    workdir = tmp_path / "multi"
    procs = [
        run_train(
            workdir,
            data_dir,
            *args,
            "--config.distributed.initialize=true",
            f"--config.distributed.coordinator_address=127.0.0.1:{port}",
            "--config.distributed.num_processes=2",
            f"--config.distributed.process_id={i}",
            "--config.distributed.cpu_collectives=gloo",
            wait=False,
            devices=2,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, o in zip(procs, outs):
        assert p.returncode == 0, o
    assert "devices: 4 (cpu), processes: 2" in outs[0], outs[0]
    one = one_device_run[1]
    assert len(_losses(one)) == 6
    np.testing.assert_allclose(_losses(one), _losses(outs[0]), rtol=1e-5)
    assert_trees_close(
        final_params(one_device_run[0])[1], final_params(workdir)[1], rtol=1e-4, atol=1e-5
    )
    assert os.path.exists(workdir / "eval" / "test" / "results.json")


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.train.nonsense=1", "--config.train.nonsense: no such config field"),
        ("--config.train.num_step=1", 'Did you mean "num_steps"'),
        ("--config.optim.learning_rate=-0.1", "optim.learning_rate must be > 0"),
        ("--config.data.resolution=36", "divisible by model.output_stride"),
        ("--config.data.build=false", "is not built"),
        ("--config.data.name=nope", "unknown data set 'nope"),
    ],
)
def test_bad_config_stops_before_compute(tmp_path, override, message):
    empty = tmp_path / "empty_tfds"
    more = () if "build" in override else ("--config.data.build=false",)
    assert message in refused_run(tmp_path / "w", empty, override, *more)
    assert not (tmp_path / "w" / "checkpoints").exists()


def _eval_cli(*args):
    proc = subprocess.run(
        [sys.executable, str(REPO / "eval.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_eval_cli_uses_the_saved_config(tmp_path, data_dir):
    """A baseline (heatmap-only, no boundary loss) run evaluated with and without
    `--config configs/default.py` gives the same table; overriding its inputs is refused."""
    workdir = tmp_path / "baseline"
    run_train(
        workdir,
        data_dir,
        "--config.train.num_steps=2",
        "--config.data.guidance=heatmap",
        "--config.loss.boundary=none",
    )
    code, plain, err = _eval_cli(f"--workdir={workdir}")
    assert code == 0, err
    code, with_config, err = _eval_cli(
        f"--workdir={workdir}", f"--config={REPO}/configs/default.py"
    )
    assert code == 0, err
    assert "DSC (%)" in plain and plain == with_config
    saved = json.loads((workdir / "eval" / "test" / "results.json").read_text())
    assert saved["config"]["data"]["guidance"] == "heatmap"
    code, _, err = _eval_cli(
        f"--workdir={workdir}",
        f"--config={REPO}/configs/default.py",
        "--config.data.guidance=heatmap+cm",
    )
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eval.py: error: "), err
    assert "--config.data.guidance cannot be overridden" in lines[0]
    for carrier in ((), (f"--config={REPO}/configs/default.py",)):  # parsed in two places
        code, _, err = _eval_cli(f"--workdir={workdir}", *carrier, "--config.eval.nope=1")
        assert code == 2 and err.strip().splitlines() == [
            "eval.py: error: --config.eval.nope: no such config field; the schema is "
            "dlset_jax/config.py"
        ], err


def test_bad_user_data_is_one_line_naming_the_file(tmp_path):
    """A user's folder with an image that has no mask: the file named, no traceback,
    nothing trained."""
    from PIL import Image

    manual = tmp_path / "mine"
    (manual / "images").mkdir(parents=True)
    (manual / "masks").mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(manual / "images" / "lonely.png")
    out = refused_run(
        tmp_path / "w",
        tmp_path / "tfds",
        "--config.data.name=user_segmentation",
        f"--config.data.manual_dir={manual}",
        "--config.data.extra_sets=()",
        "--config.data.extra_share=0",
        config="default.py",
    )
    assert "lonely.png: no mask" in out
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_resuming_with_another_model_is_refused_and_loses_nothing(tmp_path, data_dir):
    workdir = tmp_path / "w"
    run_train(workdir, data_dir, "--config.train.num_steps=2")
    step, params = final_params(workdir)
    out = refused_run(workdir, data_dir, "--config.train.num_steps=4", "--config.model.width=16")
    assert "cannot resume: the checkpoint in" in out
    assert "has shape (4,) in the checkpoint, the model expects (16,)" in out
    again, params_again = final_params(workdir)
    assert again == step
    jax.tree.map(np.testing.assert_array_equal, params, params_again)
