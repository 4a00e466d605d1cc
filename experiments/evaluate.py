"""Apply a trained model that a workdir declares to images in a .npy file.

    python -m experiments.evaluate --workdir runs/mlp --images digits.npy --out labels.npy [--model NAME] [--seed K]

Images: uint8 in 0..255 or float in [0, 1], shape (N, 28, 28), (N, 28, 28, 1) or (N, 784).
Images are processed in batches, so memory stays bounded for any N.

What it can apply is what the workdir declares: every experiment that saves trained params
(`trained.save_params`) declares them beside them, in NAME/model.json (`trained.declaration`):
the model block that builds them, the model's role, one record per run (seed, traced
hyperparameters such as noise_level, diverged, and columns such as noise_accuracy's curve), the
params set whose output feeds them (if any), whether they are the workdir's primary model, and a
one-line description. Evaluate reads only that:

- `--model NAME` picks a declared params set (default: the only one, else the primary one);
  `--curve X` picks the one whose runs declare curve X (noise_accuracy's clean, noisy, denoised);
- `--level L` keeps the runs declared at noise level L (required when the runs declare levels);
  `--seed K` is the K-th of the runs kept (0 by default), checked against them;
- the role decides what is written: a classifier's predicted labels (int64, shape (N,)), a
  denoiser's denoised images or a VAE's reconstructions (its decoded posterior mean), both float32
  in [0, 1] in the layout of the input; a run whose declaration names an input reads what the
  same run of that input made of the images (noise_accuracy's denoised classifiers read images
  denoised by the autoencoder of their run):

    python -m experiments.evaluate --workdir runs/denoise --images noisy.npy --out denoised.npy --level 0.4
    python -m experiments.evaluate --workdir runs/noise_accuracy --images x.npy --curve denoised --level 0.5

A workdir whose params declare nothing (older code wrote them) is applied through its config's
`model` block when that builds its primary params; otherwise one line says to run its experiment
on it again, which declares them (resuming from its checkpoints). Errors are one line, exit 2,
listing what the workdir declares; a missing, damaged or diverged run's params exit 1. A model
computes in the dtype its declaration names and the matmul precision of its experiment (config.json).
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

from mnist_jax import rehearsal, trained
from mnist_jax import workdir as workdir_lib
from mnist_jax.checkpoint import CheckpointError
from mnist_jax.config import ArgumentParser, ConfigError
from mnist_jax.data import IMAGE_SHAPE, preprocess_images
from mnist_jax.precision import matmul_precision, of_config

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
    result is filled in place, so the output is held once). Fewer images than a batch are one
    batch of their own size, so a handful of images costs a handful."""
    batch = min(batch, x.shape[0])
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
    fn = rehearsal.jit(lambda xb: jnp.argmax(model.apply(params, preprocess_images(xb)), axis=-1))
    return in_batches(fn, x, dtype=np.int64)


ROLE_NOUN = {"classifier": "classifier", "denoiser": "autoencoder", "generative": "VAE"}


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
    fn = rehearsal.jit(lambda xb: jax.nn.sigmoid(model.apply(params, preprocess_images(xb))))
    return in_batches(fn, x, dtype=np.float32)


def reconstruct_images(model, params, x: np.ndarray) -> np.ndarray:
    """A VAE's reconstructions of images x: the decoded posterior mean, pixel probabilities in [0, 1]."""
    def fn(xb):
        mean, _ = model.apply(params, preprocess_images(xb), method=model.encode)
        return jax.nn.sigmoid(model.apply(params, mean, method=model.decode))

    return in_batches(rehearsal.jit(fn), x, dtype=np.float32)


def declared_models(workdir: pathlib.Path, config: dict) -> dict[str, dict]:
    """{name: declaration} of the trained params the workdir declares (`trained.declarations`);
    for a workdir whose params declare nothing, the primary params its config's `model` block
    builds (`trained.inferred_declarations`). ConfigError in one line when there is nothing to apply."""
    declared = trained.declarations(workdir)
    if declared:
        return declared
    inferred = trained.inferred_declarations(workdir, config, finished_metrics(workdir))
    if inferred:
        return inferred
    undeclared = trained.undeclared_params(workdir)
    experiment = config.get("experiment")
    if undeclared:
        raise ConfigError(f"--workdir {str(workdir)!r}: its trained params ({', '.join(undeclared)}) declare no model "
                          f"(an older mnist-jax made it); run python -m experiments.{experiment} --workdir {workdir} "
                          "again with its config to declare them (it resumes from its checkpoints)")
    raise ConfigError(f"--workdir {str(workdir)!r}: experiment {experiment!r} saves no trained model that evaluate "
                      "can apply (it keeps only its statistics)")


def choose(declared: dict[str, dict], args) -> str:
    """The name of the declared params set the user asks for: `--model NAME`, or `--curve X` (the
    one whose runs declare curve X), else the only one, else the primary one."""
    names = ", ".join(declared)
    if args.model is not None and args.curve is not None:
        raise ConfigError("--model and --curve both choose the model: give one of them")
    if args.model is not None:
        if args.model not in declared:
            raise ConfigError(f"--model {args.model}: this workdir declares {names}")
        return args.model
    if args.curve is not None:
        curves = {r["curve"]: name for name, d in declared.items() for r in d["runs"] if "curve" in r}
        if args.curve not in curves:
            listed = ", ".join(repr(c) for c in curves) if curves else f"none (its models: {names})"
            raise ConfigError(f"--curve {args.curve!r}: this workdir declares the curves {listed}")
        return curves[args.curve]
    primary = [name for name, d in declared.items() if d.get("primary")]
    if len(declared) == 1 or len(primary) == 1:
        return next(iter(declared)) if len(declared) == 1 else primary[0]
    raise ConfigError(f"this workdir declares several models ({names}): choose one with --model")


def selected_runs(name: str, declared: dict, level: float | None) -> tuple[list[int], str]:
    """(indices into the declared runs that --level selects, what they are in words)."""
    runs, noun = declared["runs"], ROLE_NOUN.get(declared.get("role"), "model")
    if not any("noise_level" in r for r in runs):
        if level is not None:
            raise ConfigError(f"--level: {name} ({declared['description']}) was trained without noise levels")
        return list(range(len(runs))), name
    return level_runs(runs, level, noun), f"{name} at noise level {level:g}"


def apply_declared(workdir: pathlib.Path, declared: dict[str, dict], name: str, run: int, x: np.ndarray,
                   shown: int) -> np.ndarray:
    """Run `run` of the params set `name` applied to images x, as its role says: a classifier's
    labels, a denoiser's denoised images, a VAE's reconstructions. A set whose declaration names an
    input reads the images that run `run` of that set made of x."""
    decl = declared[name]
    upstream = decl.get("input")
    if upstream is not None:
        if upstream not in declared:
            raise CheckpointError(f"{name} of {str(workdir)!r} reads the output of {upstream}, which the workdir "
                                  "does not declare: it is damaged; run the experiment again on it")
        x = apply_declared(workdir, declared, upstream, run, x, shown)
    model, params = trained.restore_declared(workdir, name, decl, run, shown)
    role = decl.get("role")
    if role == "classifier":
        return predict_labels(model, params, x)
    if role == "denoiser":
        return denoise_images(model, params, x)
    if role == "generative":
        if getattr(model, "conditional", False):
            raise ConfigError(f"--model {name} is a conditional VAE: it needs labels, which evaluate does not take")
        return reconstruct_images(model, params, x)
    raise ConfigError(f"--model {name}: its model ({decl['description']}) is no classifier, denoiser or VAE, "
                      "which are what evaluate applies")


def apply_workdir(workdir: pathlib.Path, config: dict, x: np.ndarray, args) -> tuple[np.ndarray, str]:
    """(result, one-line summary) of the trained model the workdir declares, chosen by the
    arguments (`choose`, `selected_runs`), applied to x."""
    declared = declared_models(workdir, config)
    name = choose(declared, args)
    runs, what = selected_runs(name, declared[name], args.level)
    if not 0 <= args.seed < len(runs):
        raise ConfigError(f"--seed {args.seed}: this workdir has runs 0..{len(runs) - 1} of {what}")
    out = apply_declared(workdir, declared, name, runs[args.seed], x, args.seed)
    head = f"{len(out)} images; {what} (run {args.seed}, {declared[name]['description']})"
    if out.dtype == np.int64:
        return out, f"{head} predicts 0-9: {np.bincount(out, minlength=10).tolist()}"
    return out, f"{head} made images of mean intensity {out.mean():.4f}"


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
    parser.add_argument("--model", help="the declared trained model to apply (default: the only one, or the primary one)")
    parser.add_argument("--seed", type=int, default=0, help="position of the run to use among those selected")
    parser.add_argument("--level", type=float, help="select the runs trained at this noise level (models that declare one)")
    parser.add_argument("--curve", help="the model whose runs declare this curve (noise_accuracy: clean, noisy or denoised)")
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
