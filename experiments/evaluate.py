"""Apply a trained model of a workdir to images in a .npy file.

    python -m experiments.evaluate --workdir runs/mlp --images digits.npy --out labels.npy [--seed K]

Images: uint8 in 0..255 or float in [0, 1], shape (N, 28, 28), (N, 28, 28, 1) or (N, 784).
A classifier's workdir writes the predicted labels, int64 of shape (N,). `--seed K` picks the
K-th trained run of the workdir (0 by default). Images are processed in batches, so memory
stays bounded for any N.

A denoising autoencoder workdir (experiments.denoise) needs `--level L`, the training noise
level of the autoencoder to apply, and `--seed K` picks the K-th seed trained at that level:

    python -m experiments.evaluate --workdir runs/denoise --images noisy.npy --out denoised.npy --level 0.4

It writes the denoised images, float32 in [0, 1], in the layout of the input. A VAE workdir
(experiments.vae, unconditional) writes its reconstructions (the decoded posterior mean) the
same way. A noise_accuracy workdir applies the classifier of `--curve clean` (default),
`noisy` or `denoised` (these two with the `--level` they were trained at; `denoised` runs the
images through that run's autoencoder first):

    python -m experiments.evaluate --workdir runs/noise_accuracy --images x.npy --curve denoised --level 0.5

`--seed` is checked against the runs the workdir really has (its metrics' runs table). The model
computes in the compute dtype and matmul precision its experiment trained with (its config.json).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import models, trained
from mnist_jax import workdir as workdir_lib
from mnist_jax.checkpoint import CheckpointError
from mnist_jax.config import ArgumentParser, ConfigError
from mnist_jax.data import IMAGE_SHAPE, preprocess_images
from mnist_jax.precision import compute_dtype_of, matmul_precision, of_config

BATCH = 2048


def load_images(path: str) -> np.ndarray:
    """Images of a .npy file as (N, 28, 28, 1), uint8 or float32 in [0, 1]; ConfigError if unusable."""
    try:
        x = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ConfigError(f"--images {path!r}: no such file") from None
    except ValueError as err:
        raise ConfigError(f"--images {path!r}: not a plain numeric .npy array ({err})") from None
    except OSError as err:
        raise ConfigError(f"--images {path!r}: cannot be read as .npy ({err})") from None
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "uif":
        raise ConfigError(f"--images: expected uint8 or float images, got dtype {getattr(x, 'dtype', type(x))}")
    if x.ndim == 2 and x.shape[1] == 784:
        x = x.reshape(-1, 28, 28, 1)
    elif x.ndim == 3 and x.shape[1:] == (28, 28):
        x = x[..., None]
    elif not (x.ndim == 4 and x.shape[1:] == IMAGE_SHAPE):
        raise ConfigError(f"--images: expected shape (N, 28, 28), (N, 28, 28, 1) or (N, 784), got {x.shape}")
    if x.shape[0] == 0:
        raise ConfigError("--images: the array holds no images (N = 0)")
    if x.dtype.kind == "f":
        if not np.all(np.isfinite(x)):
            raise ConfigError("--images: float images contain NaN or infinite values")
        if x.min() < 0 or x.max() > 1:
            raise ConfigError(f"--images: float images must be in [0, 1], got values in [{x.min()}, {x.max()}]")
        return x.astype(np.float32)
    if x.dtype != np.uint8:
        if x.min() < 0 or x.max() > 255:
            raise ConfigError(f"--images: integer images must be in 0..255, got values in [{x.min()}, {x.max()}]")
        x = x.astype(np.uint8)
    return x


def in_batches(fn, x: np.ndarray, batch: int = BATCH, dtype=None) -> np.ndarray:
    """fn over x in fixed-size batches (the last one padded): one compile, bounded memory (the
    result is filled in place, so the output is held once)."""
    out = None
    for start in range(0, x.shape[0], batch):
        chunk = x[start:start + batch]
        n = chunk.shape[0]
        if n < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), chunk.dtype)])
        y = np.asarray(fn(chunk))[:n]
        if out is None:
            out = np.empty((x.shape[0], *y.shape[1:]), dtype or y.dtype)
        out[start:start + n] = y
    return out


def predict_labels(model, params, x: np.ndarray) -> np.ndarray:
    """Predicted classes (N,) int64 of images x, batched."""
    fn = jax.jit(lambda xb: jnp.argmax(model.apply(params, preprocess_images(xb)), axis=-1))
    return in_batches(fn, x, dtype=np.int64)


def level_runs(records: list[dict], level: float | None, what: str) -> list[int]:
    """Indices (into `records`) of the runs trained at noise `level`; ConfigError naming the
    trained levels when --level is missing or matches none."""
    run_levels = np.asarray([r["noise_level"] for r in records], np.float64)
    trained = ", ".join(f"{v:g}" for v in dict.fromkeys(run_levels.tolist()))
    if level is None:
        raise ConfigError(f"--level is required for {what} (trained levels: {trained})")
    runs = np.flatnonzero(np.abs(run_levels - level) < 1e-6)
    if runs.size == 0:
        raise ConfigError(f"--level {level:g}: no {what} was trained at that level (trained levels: {trained})")
    return [int(i) for i in runs]


def finished_metrics(workdir: pathlib.Path) -> dict:
    if not (workdir / "metrics.json").exists():
        raise CheckpointError(f"{str(workdir)!r} has no metrics.json: its experiment did not finish")
    return trained.read_json(workdir / "metrics.json")


def denoise_images(model, params, x: np.ndarray) -> np.ndarray:
    """Images x denoised by the autoencoder, float32 (N, 28, 28, 1) in [0, 1], batched."""
    fn = jax.jit(lambda xb: jax.nn.sigmoid(model.apply(params, preprocess_images(xb))))
    return in_batches(fn, x, dtype=np.float32)


def reconstruct_images(model, params, x: np.ndarray) -> np.ndarray:
    """A VAE's reconstructions of images x: the decoded posterior mean, pixel probabilities in [0, 1]."""
    def fn(xb):
        mean, _ = model.apply(params, preprocess_images(xb), method=model.encode)
        return jax.nn.sigmoid(model.apply(params, mean, method=model.decode))

    return in_batches(jax.jit(fn), x, dtype=np.float32)


def apply_workdir(workdir: pathlib.Path, config: dict, x: np.ndarray, args) -> tuple[np.ndarray, str]:
    """(result, one-line summary) of the trained model of an experiment's workdir applied to x."""
    experiment_name = config.get("experiment")
    block = config.get("model") if isinstance(config.get("model"), dict) else None
    dtype = compute_dtype_of(config)  # the trained model computes as it did in training
    role = models.role(models.from_config(block, dtype)) if block and "kind" in block else None
    if experiment_name == "noise_accuracy":
        return apply_noise_accuracy(workdir, config, x, args)
    if (workdir / "metrics.json").exists() and not (workdir / "params").is_dir():
        raise ConfigError(f"--workdir {str(workdir)!r}: experiment {experiment_name!r} saves no trained model that "
                          "evaluate can apply (it keeps only its statistics)")
    if args.level is not None and role != "denoiser":
        raise ConfigError("--level applies to denoising workdirs (experiments.denoise, experiments.noise_accuracy) only")
    if role == "denoiser":
        metrics = finished_metrics(workdir)
        records = metrics.get("runs") or [{"noise_level": v} for v in metrics["noise_level"]]
        runs = level_runs(records, args.level, "autoencoder")
        model, params = trained.restore_run(workdir, config["model"], args.seed, runs=runs, compute_dtype=dtype)
        out = denoise_images(model, params, x)
        return out, (f"{len(out)} images denoised by the autoencoder trained at noise level {args.level:g} "
                     f"(seed index {args.seed}); mean intensity {out.mean():.4f}")
    if role == "generative":
        if config["model"].get("conditional"):
            raise ConfigError("--workdir holds a conditional VAE: it needs labels, which evaluate does not take")
        model, params = trained.restore_run(workdir, config["model"], args.seed, compute_dtype=dtype)
        out = reconstruct_images(model, params, x)
        return out, f"{len(out)} images reconstructed by VAE run {args.seed}; mean intensity {out.mean():.4f}"
    if role == "classifier":
        model, params = trained.restore_run(workdir, config["model"], args.seed, compute_dtype=dtype)
        labels = predict_labels(model, params, x)
        counts = np.bincount(labels, minlength=10)
        return labels, f"{len(labels)} images; predicted label counts 0-9: {counts.tolist()}"
    raise ConfigError(f"--workdir {str(workdir)!r}: experiment {experiment_name!r} saves no trained model that "
                      "evaluate can apply")


def apply_noise_accuracy(workdir: pathlib.Path, config: dict, x: np.ndarray, args) -> tuple[np.ndarray, str]:
    """Labels of a noise_accuracy workdir's classifier of `--curve` (clean by default; noisy and
    denoised need the --level they were trained at; denoised images go through that run's
    autoencoder first)."""
    curve = args.curve or "clean"
    if curve not in ("clean", "noisy", "denoised"):
        raise ConfigError(f"--curve {curve!r}: expected 'clean', 'noisy' or 'denoised'")
    records = [r for r in finished_metrics(workdir)["runs"] if r["curve"] == curve]
    if curve == "clean":
        if args.level is not None:
            raise ConfigError("--level: the clean classifier was trained without noise (use --curve noisy or denoised)")
        runs = list(range(len(records)))
    else:
        runs = level_runs(records, args.level, f"{curve} classifier")
    kind = config["classifier"]["kind"]
    block, _ = models.split_block({"kind": kind, **config["classifier"][kind]})
    dtype = compute_dtype_of(config)
    model, params = trained.restore_run(workdir, block, args.seed, f"{curve}_params", runs=runs, compute_dtype=dtype)
    if records[runs[args.seed]]["diverged"]:
        trained.check_not_diverged(True, params, args.seed)
    if curve == "denoised":
        dae, dparams = trained.restore_run(workdir, config["denoiser"]["model"], args.seed, "denoiser_params",
                                           runs=runs, compute_dtype=dtype)
        x = denoise_images(dae, dparams, x)
    labels = predict_labels(model, params, x)
    counts = np.bincount(labels, minlength=10)
    at = "" if curve == "clean" else f" trained at noise level {args.level:g}"
    return labels, f"{len(labels)} images; the {curve} classifier{at} (seed index {args.seed}) predicts 0-9: {counts.tolist()}"


def check_out(text: str) -> pathlib.Path:
    """The --out path, checked before any compute: a .npy file name in an existing, writable folder."""
    out = pathlib.Path(text)
    if out.suffix != ".npy":
        raise ConfigError(f"--out {text!r}: the file name must end in .npy")
    if out.is_dir():
        raise ConfigError(f"--out {text!r} is a folder; name a .npy file")
    folder = out.parent
    if not folder.is_dir():
        raise ConfigError(f"--out {text!r}: the folder {str(folder)!r} does not exist")
    try:  # a real write, not os.access: root passes that check where writing still fails
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".mnist_jax_probe_"):
            pass
    except OSError:
        raise ConfigError(f"--out {text!r}: cannot write there (permission denied)") from None
    if out.exists() and not os.access(out, os.W_OK):
        raise ConfigError(f"--out {text!r}: cannot write there (permission denied)")
    return out


def save_npy(out: pathlib.Path, array: np.ndarray) -> None:
    """np.save to exactly `out`, through a temporary name and a rename (never a half-written file)."""
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, out)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--images", required=True, help=".npy file of images")
    parser.add_argument("--out", help=".npy file for the result (default: print a summary only)")
    parser.add_argument("--seed", type=int, default=0, help="index of the trained run to use")
    parser.add_argument("--level", type=float, help="denoising workdirs: the noise level the model was trained at")
    parser.add_argument("--curve", help="noise_accuracy workdirs: the classifier of curve clean (default), noisy or denoised")
    try:
        args = parser.parse_args(argv)
        workdir = pathlib.Path(args.workdir)
        out = check_out(args.out) if args.out else None
        state = workdir_lib.committed_state(workdir)  # finishes a commit a kill interrupted
        if state is not None and state["unfinished_run"]:
            print(f"note: {args.workdir} also holds an unfinished run; these are the results of the last finished one",
                  file=sys.stderr)
        if not (workdir / "config.json").exists():
            raise ConfigError(f"--workdir {args.workdir!r} holds no config.json: not an experiment workdir")
        config = trained.read_json(workdir / "config.json")
        x = load_images(args.images)
        with matmul_precision(of_config(config)[1]):  # the products as the experiment computed them
            result, summary = apply_workdir(workdir, config, x, args)
        if result.dtype == np.float32:
            result = result.reshape(np.load(args.images, mmap_mode="r").shape)
        if out:
            save_npy(out, result)
        print(summary)
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
