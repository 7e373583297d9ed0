"""The training command end to end on tiny data the tests write (ImageFolder PNGs, CIFAR batches, the
digits), exact kill-and-resume, --deterministic, 2 processes x B/2 == 1 process x B under torchrun, and
every bad input. Where the point is the arithmetic of resuming or sharding, the runs are pinned to the CPU
(GPU kernels are not deterministic without --deterministic; results/gpu_check.sh checks that flag there)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from repmlp_lite import create_model, training_run
from repmlp_lite import train as train_module
from repmlp_lite.checkpoint import save_atomic
from repmlp_lite.data import Augmented, cifar_transform, load_cifar, random_resized_crop_box
from repmlp_lite.runtime import Runtime, determinism
from repmlp_lite.train import main

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "small_repmlp_resnet", "--model-kwargs", '{"width": 4, "h": 4}']
DIGITS = [*TINY, "--data", "digits", "--image-size", "16", "--limit-train", "64", "--batch-size", "16"]


def _write_image(path: Path, seed: int, size: int = 16) -> None:
    """Random RGB pixels, saved in the format of ``path``'s suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size + 4, 3), dtype=np.uint8)  # not square
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """2 classes, 4 training and 2 validation images each (16 x 20 pixels; PNG and JPEG)."""
    root = tmp_path_factory.mktemp("imagefolder")
    for split, n in (("train", 4), ("val", 2)):
        for c, name in enumerate(("cat", "dog")):
            for i in range(n):
                suffix = ".png" if name == "cat" else ".jpg"  # both decoders
                _write_image(root / split / name / f"{i}{suffix}", seed=100 * c + 10 * (split == "val") + i)
    return root


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _epochs(out: Path) -> list[dict]:
    """The per-epoch records of ``out/log.jsonl`` (without the start lines and the final one)."""
    return [record for record in _log(out) if "epoch" in record]


def _params(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=False)["model"]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel())


# ---- end to end -------------------------------------------------------------------------------------


def test_digits_end_to_end_deploys_and_checks(tmp_path):
    out = tmp_path / "run"
    final = main([*DIGITS, "--epochs", "2", "--out", str(out)])
    log = _log(out)
    start, epochs = log[0], _epochs(out)
    assert start["run"] == "started" and start["processes"] == 1
    # without --deterministic: deterministic on a CPU, not on a GPU, and the line says why
    assert start["deterministic"] is (start["device"] == "cpu") and start["determinism"]
    assert [r["epoch"] for r in epochs] == [1, 2] and log[1:-1] == epochs and log[-1] == final
    for record in epochs:
        assert {"epoch", "train_loss", "top1", "lr", "images_per_s"} <= record.keys()
        assert np.isfinite(record["train_loss"]) and record["images_per_s"] > 0
    assert epochs[1]["lr"] == 0.0  # the cosine reached its end
    # the check ran in float32 with TF32 off, on the run's device (where a GPU's TF32 convs gave 1e-3)
    assert final["check_precision"] == {
        "device": start["device"], "dtype": "float32", "tf32_convs": False, "tf32_matmuls": False
    }
    assert final["agreement"] == 1.0 and final["max_rel_logit_diff"] < 1e-5
    assert final["top1_deployed"] == pytest.approx(final["top1"], abs=1e-2)
    assert final["model_kwargs"] == {"in_channels": 1, "image_size": 16, "width": 4, "h": 4}
    deployed = create_model("small_repmlp_resnet", deploy=True, num_classes=10, **final["model_kwargs"])
    deployed.load_state_dict(torch.load(out / "deployed.pt"), strict=True)
    assert not list(out.glob(".*.tmp"))  # no temporary file left by the atomic writes


def test_image_folder_end_to_end(image_folder, tmp_path):
    final = main(
        [
            *TINY,
            "--data",
            str(image_folder),
            "--image-size",
            "16",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--out",
            str(tmp_path),
        ]
    )
    assert final["num_classes"] == 2 and final["model_kwargs"]["in_channels"] == 3
    assert final["agreement"] == 1.0


def test_cifar_end_to_end(cifar_dir, tmp_path):
    final = main(
        [*TINY, "--data", str(cifar_dir), "--epochs", "1", "--batch-size", "8", "--out", str(tmp_path)]
    )
    assert final["num_classes"] == 10 and final["model_kwargs"]["image_size"] == 32
    assert final["agreement"] == 1.0


def test_cifar_reads_the_tar_gz_like_the_folder(cifar_dir, tmp_path):
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(cifar_dir / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    folder, archive = load_cifar(cifar_dir), load_cifar(tmp_path)
    assert folder[2] == archive[2] == 10
    for a, b in zip(folder[:2], archive[:2]):
        assert torch.equal(a.tensors[0], b.tensors[0]) and torch.equal(a.tensors[1], b.tensors[1])
    assert folder[0].tensors[0].shape == (16, 3, 32, 32) and folder[0].tensors[0].dtype == torch.uint8


def test_augmentation_is_seeded_by_epoch_and_index(cifar_dir):
    train = Augmented(load_cifar(cifar_dir)[0], cifar_transform, train=True, seed=0)
    first = train[3][0]
    assert first.shape == (3, 32, 32) and torch.equal(first, train[3][0])
    train.set_epoch(1)
    assert not torch.equal(first, train[3][0])
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        left, top, right, bottom = random_resized_crop_box(20, 16, gen)
        assert 0 <= left < right <= 20 and 0 <= top < bottom <= 16


# ---- checkpoints ------------------------------------------------------------------------------------


def test_killed_and_resumed_equals_uninterrupted(tmp_path):
    """SIGKILL at step 7 of 8 (checkpoints every 3 steps: it loses steps 7), resume, compare bit for bit
    (on the CPU: the point is what a checkpoint holds, not a GPU's kernels)."""
    args = [*DIGITS, "--epochs", "2", "--save-every", "3", "--device", "cpu"]
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "repmlp_lite.train", *args, "--out", str(killed), "--kill-after-steps", "7"],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert torch.load(killed / "last.pt", weights_only=False)["step"] == 2  # epoch 2, after step 6 of 8
    main([*args, "--out", str(killed), "--resume"])
    straight = tmp_path / "straight"
    main([*args, "--out", str(straight)])
    diff = _max_diff(_params(killed / "last.pt"), _params(straight / "last.pt"))
    print(f"max |resumed - uninterrupted| over all parameters and buffers: {diff:.3g}")
    assert diff == 0
    assert [r["run"] for r in _log(killed) if "run" in r] == ["started", "resumed"]
    resumed, uninterrupted = _epochs(killed)[1], _epochs(straight)[1]
    assert resumed == {**uninterrupted, "images_per_s": resumed["images_per_s"]}


def test_deterministic_runs_are_bitwise_equal(cifar_dir, tmp_path):
    """--deterministic on the CPU, augmenting in 2 DataLoader workers: two runs end with the same bits, and
    the command puts torch's flags and the environment back as they were."""
    args = [*TINY, "--data", str(cifar_dir), "--epochs", "1", "--batch-size", "8", "--workers", "2"]
    args += ["--device", "cpu", "--deterministic"]
    environment = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    first, second = tmp_path / "first", tmp_path / "second"
    main([*args, "--out", str(first)])
    main([*args, "--out", str(second)])
    a, b = _params(first / "last.pt"), _params(second / "last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    start = _log(first)[0]
    assert start["deterministic"] is True and start["determinism"].startswith("--deterministic")
    assert not torch.are_deterministic_algorithms_enabled()
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == environment


def test_save_atomic_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "last.pt"
    save_atomic({"a": 1}, target)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        save_atomic({"a": Unpicklable()}, target)
    assert torch.load(target) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


# ---- DDP -------------------------------------------------------------------------------------------


def test_two_processes_of_half_the_batch_equal_one_process(tmp_path):
    """One optimiser step (16 images, batch 16) with frozen BN: torchrun 2 x 8 against 1 x 16."""
    # on the CPU with gloo even where a GPU is visible: the point is the arithmetic of the sharding
    args = [*DIGITS, "--limit-train", "16", "--epochs", "1", "--freeze-bn", "--optimizer", "sgd", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    two = tmp_path / "two"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "repmlp_lite.train",
            *args,
            "--out",
            str(two),
        ],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = json.loads(proc.stdout.strip().splitlines()[-1])
    assert final["agreement"] == 1.0 and final["top1"] > 0
    one = tmp_path / "one"
    main([*args, "--out", str(one)])
    torch.manual_seed(0)  # the command seeds with --seed 0 right before it builds the model
    start = create_model("small_repmlp_resnet", num_classes=10, in_channels=1, image_size=16, width=4, h=4)
    moved = _max_diff(_params(one / "last.pt"), start.state_dict())
    diff = _max_diff(_params(two / "last.pt"), _params(one / "last.pt"))
    print(
        f"2 x B/2 vs 1 x B: max |difference| {diff:.3g} (the step moved the parameters by up to {moved:.3g})"
    )
    assert moved > 1e-3 and diff <= 1e-5


# ---- bad input: one line, exit status 2 ------------------------------------------------------------


def _refused(capsys, argv: list[str], status: int = 2) -> str:
    """The one line the command prints before exiting with ``status``, as a terminal shows it (a progress
    bar that erased itself with carriage returns is not there)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == status
    err = capsys.readouterr().err
    shown = [line.rsplit("\r", 1)[-1].strip() for line in err.split("\n")]
    shown = [line for line in shown if line]
    assert len(shown) == 1 and "Traceback" not in err, err
    return shown[0]


def test_refuses_bad_data(capsys, tmp_path, image_folder):
    out = ["--out", str(tmp_path / "run"), "--epochs", "1"]
    assert "no directory" in _refused(capsys, [*TINY, "--data", str(tmp_path / "nowhere"), *out])
    empty = tmp_path / "empty"
    (empty / "train" / "a").mkdir(parents=True)
    (empty / "val" / "a").mkdir(parents=True)
    assert f"class folder {empty / 'train' / 'a'} holds no image" in _refused(
        capsys, [*TINY, "--data", str(empty), *out]
    )
    broken = tmp_path / "broken"
    for split in ("train", "val"):
        for name in ("a", "b"):
            _write_image(broken / split / name / "0.png", seed=1)
    (broken / "train" / "b" / "1.png").write_bytes(b"not a png")
    err = _refused(capsys, [*TINY, "--data", str(broken), "--image-size", "16", "--batch-size", "3", *out])
    assert f"cannot decode image {broken / 'train' / 'b' / '1.png'}" in err


def test_refuses_image_sizes_the_model_cannot_take(capsys, tmp_path):
    out = ["--out", str(tmp_path), "--epochs", "1"]
    err = _refused(capsys, [*DIGITS, "--image-size", "18", *out])
    assert (
        "image_size=18 must be divisible by 4" in err
        and "sizes it takes (4 to 64): 4, 8, 16, 32, 48, 64" in err
    )
    narrow = ["--model-kwargs", '{"channels": [4, 8, 16]}']  # Table 1's pure MLP, narrower: quick to build
    err = _refused(
        capsys, ["--model", "repmlp_pure_mlp_cifar", *narrow, "--data", "digits", "--image-size", "16", *out]
    )
    assert "cannot take 1x16x16 images" in err and "built for 32x32 images" in err


def test_refuses_bad_options(capsys, tmp_path, monkeypatch):
    out = ["--out", str(tmp_path / "run"), "--epochs", "1"]
    assert "no checkpoint" in _refused(capsys, [*DIGITS, *out, "--resume"])
    assert "unknown name 'resnet9'" in _refused(capsys, ["--model", "resnet9", "--data", "digits", *out])
    if not torch.cuda.is_available():
        assert "--sync-bn: torch's SyncBatchNorm runs on GPUs only" in _refused(
            capsys, [*DIGITS, *out, "--sync-bn"]
        )
        assert "--amp fp16 needs a GPU" in _refused(capsys, [*DIGITS, *out, "--amp", "fp16"])
    assert "larger than the training set (64 images)" in _refused(
        capsys, [*DIGITS, *out, "--batch-size", "128"]
    )
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert "not divisible by the 3 processes" in _refused(capsys, [*DIGITS, *out])
    assert "--batch-size 2 is smaller than the 3 processes" in _refused(
        capsys, [*DIGITS, *out, "--batch-size", "2"]
    )


def test_refuses_more_processes_than_gpus_and_a_late_deterministic(capsys, tmp_path, monkeypatch):
    """On GPUs torchrun's local rank r runs on cuda:r: 2 processes on a machine showing 1 GPU are refused
    (the count is faked here, so this runs anywhere); so is --deterministic on a GPU once CUDA has started
    in the process without CUBLAS_WORKSPACE_CONFIG (cuBLAS has read it by then)."""
    out = ["--out", str(tmp_path / "run"), "--epochs", "1"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    err = _refused(capsys, [*DIGITS, *out, "--device", "cuda"])
    assert "torchrun --nproc_per_node 2: 1 GPU is visible here, one per process: start at most 1" in err
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    err = _refused(capsys, [*DIGITS, *out, "--device", "cuda", "--deterministic"])
    assert "--deterministic: CUDA was initialised in this process" in err and "=:4096:8" in err


def test_determinism_line_on_a_gpu_without_the_flag():
    said = determinism(Runtime(0, 1, torch.device("cuda", 0)))  # only the device's type is read
    assert said["deterministic"] is False and "--deterministic" in said["determinism"]


def test_refuses_a_checkpoint_of_other_shapes(capsys, tmp_path):
    out = ["--out", str(tmp_path), "--epochs", "1"]
    main([*DIGITS, *out, "--limit-train", "16"])
    capsys.readouterr()
    wider = ["--model", "small_repmlp_resnet", "--model-kwargs", '{"width": 8, "h": 4}']
    err = _refused(
        capsys, [*wider, "--data", "digits", "--image-size", "16", "--batch-size", "16", *out, "--resume"]
    )
    assert "does not fit the model: key '0.conv.weight' has shape (4, 1, 3, 3), the model (8, 1, 3, 3)" in err
    err = _refused(
        capsys, ["--model", "small_repmlpnet", "--data", "digits", "--image-size", "16", *out, "--resume"]
    )
    assert "is of model 'small_repmlp_resnet', not 'small_repmlpnet'" in err


# ---- bad input found by trying it: each one line, a non-zero status, the last good checkpoint kept ----------


def test_keeps_the_checkpoint_before_the_last_and_goes_on_from_it(capsys, tmp_path):
    """A damaged or foreign last.pt is named, with what is wrong; the one before it (previous.pt) is whole,
    and a run that goes on from it ends where the uninterrupted run did (on the CPU: GPU kernels are not
    deterministic)."""
    args = [*DIGITS, "--limit-train", "32", "--epochs", "2", "--device", "cpu", "--out", str(tmp_path)]
    main(args)
    capsys.readouterr()
    last, previous = tmp_path / "last.pt", tmp_path / "previous.pt"
    assert torch.load(previous, weights_only=False)["epoch"] == 1 and torch.load(last, weights_only=False)["epoch"] == 2
    uninterrupted = _params(last)
    whole = last.read_bytes()
    for damage, what in [
        (whole[: len(whole) // 2], "is not a readable checkpoint (cut short or damaged"),
        (b"not a checkpoint\n", "is not a readable checkpoint (not a file torch.save wrote"),
        (None, "is not a checkpoint of this command (no 'model_name' key in the OrderedDict it holds)"),
    ]:
        if damage is None:
            torch.save(uninterrupted, last)  # a bare state dict, as deployed.pt is
        else:
            last.write_bytes(damage)
        err = _refused(capsys, [*args, "--resume"])
        assert f"--resume: {last} {what}" in err and err.endswith(f"go on from there with --resume {previous}")
    main([*args, "--resume", str(previous)])  # epoch 2 again, from the end of epoch 1
    capsys.readouterr()
    assert _max_diff(_params(last), uninterrupted) <= 1e-6
    assert torch.load(previous, weights_only=False)["epoch"] == 1  # the damaged last.pt was not kept as previous
    last.unlink()
    assert f"no checkpoint {last}" in _refused(capsys, [*args, "--resume"])


def test_refuses_a_resume_with_other_data_settings(capsys, tmp_path):
    out = ["--out", str(tmp_path), "--epochs", "1", "--limit-train", "16"]
    main([*DIGITS, *out])
    capsys.readouterr()
    err = _refused(capsys, [*DIGITS, *out, "--batch-size", "8", "--resume"])
    assert err.endswith("was written with --batch-size 16, this run has --batch-size 8: give --batch-size 16 to go on")


def test_refuses_bad_numbers_before_training(capsys, tmp_path):
    out = ["--out", str(tmp_path / "run"), "--epochs", "1"]
    for option, value, rule in [
        ("--lr", "nan", "--lr must be a finite number above 0, got nan"),
        ("--lr", "-0.1", "--lr must be a finite number above 0, got -0.1"),
        ("--weight-decay", "inf", "--weight-decay must be a finite number at least 0, got inf"),
        ("--label-smoothing", "1", "--label-smoothing must be a finite number at least 0 and below 1, got 1.0"),
        ("--clip-grad", "-1", "--clip-grad must be a finite number at least 0, got -1.0"),
        ("--warmup-epochs", "nan", "--warmup-epochs must be a finite number at least 0, got nan"),
        ("--workers", "-1", "--workers must be 0 or more, got -1"),
        ("--save-every", "-2", "--save-every must be 0 or more, got -2"),
        ("--limit-train", "0", "--limit-train must be a positive integer, got 0"),
        ("--image-size", "0", "--image-size must be a positive integer, got 0"),
        ("--model-kwargs", '{"wide": 8}', "--model-kwargs: small_repmlp_resnet takes no 'wide'; it takes in_channels"),
    ]:
        assert rule in _refused(capsys, [*DIGITS, *out, option, value])
    assert not (tmp_path / "run" / "last.pt").exists()


def test_refuses_an_out_that_is_not_a_directory(capsys, tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("")
    assert f"--out {file} is a file: give a directory" in _refused(capsys, [*DIGITS, "--out", str(file)])
    err = _refused(capsys, [*DIGITS, "--out", str(file / "run")])
    assert f"--out {file / 'run'}: cannot make the run directory (Not a directory)" in err


def test_the_digits_without_scikit_learn_are_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import sklearn.datasets now fails
    err = _refused(capsys, [*DIGITS, "--out", str(tmp_path)])
    assert "--data digits: the digits ship with scikit-learn, which is not installed: pip install" in err


class _NanLossAt(torch.nn.CrossEntropyLoss):
    """Cross-entropy whose value turns NaN from call ``at`` on (a run that diverges)."""

    calls = 0
    at = 3

    def forward(self, logits, target):
        type(self).calls += 1
        loss = super().forward(logits, target)
        return loss * float("nan") if type(self).calls >= self.at else loss


def test_stops_at_a_loss_that_is_not_finite_with_the_last_good_checkpoint(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(training_run.nn, "CrossEntropyLoss", _NanLossAt)
    monkeypatch.setattr(_NanLossAt, "calls", 0)
    args = [*DIGITS, "--epochs", "2", "--save-every", "2", "--out", str(tmp_path)]
    err = _refused(capsys, args, status=1)
    assert err.endswith(
        "the training loss is not finite (nan) at step 3 of 8 (epoch 1) with --lr 0.0125: training stopped there; "
        f"the last checkpoint, {tmp_path / 'last.pt'}, holds the run after step 2"
    )
    assert torch.load(tmp_path / "last.pt", weights_only=False)["step"] == 2
    assert all(v.isfinite().all() for v in _params(tmp_path / "last.pt").values() if v.is_floating_point())


def test_never_writes_weights_that_are_not_finite(capsys, tmp_path, monkeypatch):
    """Weights that turn infinite at a step whose loss was still finite stop the run before they are saved."""
    make = training_run.make_optimizer

    def poisoned(model, *args):
        optimizer = make(model, *args)
        steps = []

        def after_step(opt, *_):
            steps.append(1)
            if len(steps) == 3:
                next(model.parameters()).data.fill_(float("inf"))

        optimizer.register_step_post_hook(after_step)
        return optimizer

    monkeypatch.setattr(training_run, "make_optimizer", poisoned)
    err = _refused(capsys, [*DIGITS, "--epochs", "1", "--save-every", "1", "--out", str(tmp_path)], status=1)
    assert "the weights are not finite after step 3 of 4 (epoch 1) with --lr 0.0125" in err
    assert err.endswith(f"the last checkpoint, {tmp_path / 'last.pt'}, holds the run after step 2")
    assert torch.load(tmp_path / "last.pt", weights_only=False)["step"] == 2
    assert torch.load(tmp_path / "previous.pt", weights_only=False)["step"] == 1


def test_a_full_disk_is_one_line(capsys, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    err = _refused(capsys, [*DIGITS, "--epochs", "1", "--out", str(tmp_path)])
    assert f"cannot write the checkpoint {tmp_path / 'last.pt'} (No space left on device)" in err
    assert [p.name for p in tmp_path.iterdir()] == ["log.jsonl"]  # the log's first line; no temporary file left


def test_an_interrupted_run_says_how_to_go_on(capsys, tmp_path, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train_one_epoch", interrupted)
    err = _refused(capsys, [*DIGITS, "--epochs", "1", "--out", str(tmp_path)], status=130)
    assert err.endswith("interrupted; --resume goes on from the last checkpoint in " + str(tmp_path))


def test_bf16_autocast_trains_on_the_cpu(tmp_path):
    final = main([*DIGITS, "--limit-train", "32", "--epochs", "1", "--amp", "bf16", "--out", str(tmp_path)])
    assert final["agreement"] > 0.9  # the check itself runs in float32


def test_help_lists_the_options_but_not_the_test_hook(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    usage = capsys.readouterr().out
    assert "--batch-size" in usage and "--resume" in usage and "--kill-after-steps" not in usage
