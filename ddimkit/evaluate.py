"""FID of image sets and of a model's samples; the DDIM paper's Table 1 (FID) and Table 2 (reconstruction) sweeps.

Image sets are named like datasets (``fashion-mnist:test``, ``npz:PATH[:KEY]``, ``folder:PATH``) or given as
files (an ``.npz`` of uint8 images as ``ddimkit sample`` writes, or an ``.npz`` of FID statistics ``mu``/
``sigma``). Statistics of named datasets are cached in ddimkit's cache as ``.npz``.

Sweeps write one row per finished cell to a CSV as they go; a rerun skips the cells already there, so a
long sweep can be interrupted and resumed.
"""

from __future__ import annotations

import csv
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import distributed as D
from . import metrics
from .checkpoint import atomic_write, write_json
from .data import cache_dir, load_images, to_model_range, to_uint8

__all__ = ["ImageSet", "read_image_set", "image_set_stats", "image_set_cache_path", "center_crop", "fid_table",
           "reconstruction_table", "round_trip", "format_table"]


@dataclass
class ImageSet:
    """uint8 images (N, C, H, W), or precomputed statistics, with the name they were read by."""

    name: str
    images: torch.Tensor | None = None
    stats: metrics.FIDStats | None = None


def read_image_set(spec: str, num: int | None = None) -> ImageSet:
    """A dataset spec, an .npz of images or of FID statistics, or a folder → :class:`ImageSet`.

    ``num`` keeps the first ``num`` images (an error if there are fewer).
    """
    p = Path(spec)
    if p.suffix == ".npz" and p.is_file():
        with np.load(p, allow_pickle=False) as z:
            is_stats = "mu" in z and "sigma" in z
        if is_stats:
            if num is not None:
                raise ValueError(f"{spec} holds statistics, not images: --num does not apply")
            return ImageSet(spec, stats=metrics.load_stats(p))
        images = load_images(f"npz:{spec}")
    elif p.is_dir():
        images = load_images(f"folder:{spec}")
    else:
        images = load_images(spec)
    if num is not None:
        if len(images) < num:
            raise ValueError(f"{spec} has {len(images)} images, fewer than the {num} asked for")
        images = images[:num]
    return ImageSet(spec, images=images)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central size×size of images (N, C, H, W) — undoes the padding of smaller training images."""
    h, w = x.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"cannot crop {h}x{w} images to {size}x{size}")
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def _cache_key(spec: str, num: int | None, shape) -> str:
    p = Path(spec)
    ident = spec
    if p.exists():  # a file or folder: its identity includes where it is and when it changed
        st = p.stat()
        ident = f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    raw = f"{ident}|{num}|{tuple(shape)}|{metrics.INCEPTION_SHA256}"
    slug = "".join(c if c.isalnum() else "-" for c in spec)[-40:]
    return f"{slug}-{hashlib.sha256(raw.encode()).hexdigest()[:12]}"


def image_set_cache_path(s: ImageSet, kind: str) -> Path:
    """Where ddimkit's cache keeps what was measured of image set ``s`` (``kind``: ``fid-stats``,
    ``fid-features``): keyed by the set's name (a file's path, size and time), count, shape and Inception."""
    return cache_dir() / kind / f"{_cache_key(s.name, len(s.images), s.images.shape[1:])}.npz"


def image_set_stats(s: ImageSet, model=None, batch_size: int = 50, device=None, use_cache: bool = True,
                    progress: bool = False) -> metrics.FIDStats:
    """FID statistics of an image set, from the cache when the same set was measured before."""
    if s.stats is not None:
        return s.stats
    path = image_set_cache_path(s, "fid-stats")
    # Under a launcher rank 0's cache decides and is the one written: ranks may not share a disk.
    if use_cache and D.on_main(path.is_file):
        return D.on_main(metrics.load_stats, path)
    from .sharded_metrics import sharded_stats  # every process takes its share of the images

    stats = sharded_stats(s.images, model, batch_size=batch_size, device=device, progress=progress)
    if use_cache and D.is_main():
        metrics.save_stats(path, stats.mu, stats.sigma, stats.n)
    return stats


def check_compatible(a: torch.Tensor, b: torch.Tensor, what=("A", "B")):
    """FID compares like with like: same channels and size (the network would hide a mismatch)."""
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"{what[0]} has images of shape {tuple(a.shape[1:])} and {what[1]} {tuple(b.shape[1:])}; "
                         "FID needs the same channels and size on both sides")


# -- sweeps -----------------------------------------------------------------------------------------------

def _row_label(sampler: str, eta) -> str:
    if sampler != "ddim":
        return sampler
    return "σ̂ (large)" if eta == "large" else f"η = {float(eta):g}"


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_rows(path: Path, rows: list[dict], columns: Sequence[str]):
    def write(p):
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(columns))
            w.writeheader()
            w.writerows(rows)

    atomic_write(path, write)


def format_table(rows: list[dict], row_key: str, col_key: str, value_key, fmt: str = "{:.2f}",
                 corner: str = "") -> str:
    """A markdown table with one row per ``row_key`` value and one column per ``col_key`` value.

    ``value_key`` names the cell's field (formatted with ``fmt``), or is a function of the row giving its text.
    """
    row_names = list(dict.fromkeys(r[row_key] for r in rows))
    cols = sorted({int(r[col_key]) for r in rows})
    text = value_key if callable(value_key) else (lambda r: fmt.format(float(r[value_key])))
    cell = {(r[row_key], int(r[col_key])): text(r) for r in rows}
    lines = [f"| {corner} | " + " | ".join(str(c) for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name in row_names:
        lines.append(f"| {name} | " + " | ".join(cell.get((name, c), "–") for c in cols) + " |")
    return "\n".join(lines) + "\n"


FID_COLUMNS = ("sampler", "eta", "steps", "row", "num", "fid", "kid", "kid_std", "cfd", "sample_seconds",
               "images_per_second")


def _sweep_markdown(rows: list[dict], num: int, reference: str) -> str:
    """One table per measure that the rows hold, then the sampling time."""
    has = lambda key: [r for r in rows if r.get(key) not in (None, "")]  # noqa: E731
    parts = []
    if has("fid"):
        parts.append(f"FID ({num} samples vs {reference}; lower is better)\n\n"
                     + format_table(has("fid"), "row", "steps", "fid", corner="S →"))
    if has("kid"):
        parts.append(f"KID ± its standard deviation ({num} samples vs {reference}; lower is better)\n\n"
                     + format_table(has("kid"), "row", "steps",
                                    lambda r: f"{float(r['kid']):.4f} ± {float(r['kid_std']):.4f}", corner="S →"))
    if has("cfd"):
        parts.append(f"Classifier-FD ({num} samples vs {reference}; lower is better)\n\n"
                     + format_table(has("cfd"), "row", "steps", "cfd", corner="S →"))
    parts.append(f"Sampling seconds per cell ({num} images)\n\n"
                 + format_table(rows, "row", "steps", "sample_seconds", "{:.1f}", corner="S →"))
    return "\n".join(parts)


def fid_table(pipe, reference: ImageSet, out: str | Path, steps: Sequence[int], etas: Sequence = (0.0,),
              solvers: Sequence[str] = (), num: int = 1000, batch_size: int | None = None, seed: int = 0,
              inception=None, device=None, keep_samples: bool = True, progress: bool = True,
              use_cache: bool = True, fid: bool = True, kid: bool = True, classifier: str | None = None) -> list[dict]:
    """DDIM Table 1 on a model: FID, KID (± std) and optionally the classifier-FD of ``num`` samples per
    (η, steps) cell against ``reference`` (:class:`ddimkit.scoring.CellScorer`).

    Rows are DDIM with each η (``"large"`` is the σ̂ row) and any extra deterministic ``solvers`` (e.g.
    ``dpmpp-2m``); columns are step counts. Every cell starts from the same seeded noise (under ``torchrun`` or
    ``accelerate launch``: image i from seed ``seed + i``, sampled and measured in shares across processes, rank 0
    writing). Samples of a model that pads smaller images are centre-cropped to the reference's size. Finished
    cells are read back from ``out/fid.csv`` and not recomputed. Writes ``fid.csv``, ``fid.md`` and ``fid.json``.
    ``use_cache`` reads and writes the reference's features in ddimkit's cache (keyed by the pinned Inception
    weights, so pass False with any other feature network). ``fid``/``kid`` off with a ``classifier`` scores
    with the classifier alone, with no Inception.
    """
    from .scoring import CellScorer
    from .sharded_sampling import sample_for_evaluation

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    score = CellScorer(reference, inception, device, fid, kid, classifier, use_cache, progress)
    size = reference.images.shape[-1] if reference.images is not None else None
    csv_path = out / "fid.csv"
    rows = D.on_main(_read_rows, csv_path)  # rank 0's file decides which cells are done
    done = {(r["sampler"], r["eta"], int(r["steps"]), int(r["num"])) for r in rows}
    cells = [("ddim", str(e), s) for e in etas for s in steps] + [(sv, "0", s) for sv in solvers for s in steps]
    T = pipe.schedule.num_train_timesteps
    for sampler, eta, n_steps in cells:
        if n_steps > T:
            raise ValueError(f"{n_steps} steps exceed the model's {T} training timesteps")
        if (sampler, eta, n_steps, num) in done:
            continue
        # Under a launcher each process samples (and measures) its share: ddimkit.sharded_sampling.
        x, seconds = sample_for_evaluation(pipe, num, seed, batch_size, sampler=sampler, steps=n_steps,
                                           eta=eta if eta == "large" else float(eta))
        if size is not None and x.shape[-1] != size:
            x = center_crop(x, size)
        u8 = to_uint8(x)
        if reference.images is not None:
            check_compatible(reference.images, u8, ("the reference", "the samples"))
        if keep_samples:
            from .viz import save_npz

            everything = D.gather(x, "gathering the samples")
            if everything is not None:
                save_npz(everything, out / "samples" / f"{sampler}-eta{eta}-steps{n_steps}.npz")
        scores = score(u8)
        rows.append(dict(sampler=sampler, eta=eta, steps=n_steps, row=_row_label(sampler, eta), num=num,
                         **{k: f"{v:.6g}" for k, v in scores.items()}, sample_seconds=f"{seconds:.2f}",
                         images_per_second=f"{num / seconds:.2f}"))
        if D.is_main():
            _write_rows(csv_path, rows, FID_COLUMNS)
        if progress and D.is_main():
            said = ", ".join(f"{k} {v:.4g}" for k, v in scores.items())
            print(f"{_row_label(sampler, eta)}, {n_steps} steps: {said} ({seconds:.1f} s sampling)", flush=True)
    rows = [r for r in rows if int(r["num"]) == num]
    if D.is_main():
        atomic_write(out / "fid.md", lambda p: p.write_text(_sweep_markdown(rows, num, reference.name)))
        write_json(out / "fid.json", {"reference": reference.name, "num": num, "rows": rows})
    return rows


RECON_COLUMNS = ("steps", "refine", "row", "num", "mse", "psnr", "seconds")


def round_trip(pipe, x0: torch.Tensor, steps: int, refine: int = 0, batch_size: int | None = None,
               progress: bool = False) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Invert images ``x0`` (in [-1, 1]) and decode them again on the same grid.

    Returns the row ``{steps, refine, mse, psnr, noise_std, seconds}`` (MSE per dimension on the [0, 1]
    scale and PSNR, averaged over the images), the noises and the reconstructions.
    """
    t0 = time.perf_counter()
    z = pipe.invert(x0, steps=steps, refine=refine, batch_size=batch_size, progress=progress)
    rec = pipe.reconstruct(z, steps, batch_size=batch_size, progress=progress)
    row = {"steps": steps, "refine": refine, "mse": metrics.mean_reconstruction_mse(x0, rec),
           "psnr": float(metrics.psnr(x0, rec).mean()), "noise_std": float(z.std()),
           "seconds": time.perf_counter() - t0}
    return row, z, rec


def reconstruction_table(pipe, images: ImageSet, out: str | Path, steps: Sequence[int], refines: Sequence[int] = (0,),
                         batch_size: int | None = None, progress: bool = True) -> list[dict]:
    """DDIM Table 2 on a model: per-dimension MSE ([0, 1] scale) of invert → reconstruct, per step count.

    ``refines`` adds rows with fixed-point refinement of the inversion. Resumable like :func:`fid_table`.
    Writes ``reconstruction.csv``, ``reconstruction.md`` and ``reconstruction.json``.
    """
    from .data import fit_images

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    c, h, w = pipe.image_shape
    if images.images is None:
        raise ValueError(f"{images.name} holds statistics; reconstruction needs images")
    if images.images.shape[1] != c:
        raise ValueError(f"{images.name} has {images.images.shape[1]} channels; the model takes {c}")
    x0 = to_model_range(fit_images(images.images, h))
    csv_path = out / "reconstruction.csv"
    rows = _read_rows(csv_path)
    done = {(int(r["steps"]), int(r["refine"]), int(r["num"])) for r in rows}
    for refine in refines:
        for n_steps in steps:
            if (n_steps, refine, len(x0)) in done:
                continue
            result = round_trip(pipe, x0, n_steps, refine, batch_size)[0]
            mse, db, seconds = result["mse"], result["psnr"], result["seconds"]
            label = "DDIM inversion" if refine == 0 else f"DDIM inversion, {refine} fixed-point iterations"
            rows.append(dict(steps=n_steps, refine=refine, row=label, num=len(x0), mse=f"{mse:.6g}",
                             psnr=f"{db:.3f}", seconds=f"{seconds:.2f}"))
            _write_rows(csv_path, rows, RECON_COLUMNS)
            if progress:
                print(f"{label}, {n_steps} steps: MSE {mse:.3e}, PSNR {db:.2f} dB", flush=True)
    rows = [r for r in rows if int(r["num"]) == len(x0)]
    md = (f"Reconstruction error ({len(x0)} images of {images.name}; per-dimension MSE on the [0, 1] scale)\n\n"
          + format_table(rows, "row", "steps", "mse", "{:.2e}", corner="S →")
          + "\nPSNR (dB)\n\n" + format_table(rows, "row", "steps", "psnr", "{:.2f}", corner="S →"))
    atomic_write(out / "reconstruction.md", lambda p: p.write_text(md))
    write_json(out / "reconstruction.json", {"images": images.name, "rows": rows})
    return rows
