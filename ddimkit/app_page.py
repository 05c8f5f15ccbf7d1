"""The web app's event handlers (:mod:`ddimkit.app` lays out the page and wires them).

The work is done by :mod:`ddimkit.app_functions` (plain functions, tested directly); a handler runs it and
turns whatever goes wrong into a message in the page: a ``ValueError`` or ``OSError`` becomes a ``gr.Error``
with its text, anything else a one-line ``gr.Error`` (the traceback goes to the server's log), and Stop ends
the running job at its next network evaluation. No input takes the server down.
"""

from __future__ import annotations

import contextlib
import html
import logging
import os
import threading
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline use: no telemetry, no version check

import gradio as gr  # noqa: E402
import torch  # noqa: E402

from . import app_functions as af  # noqa: E402
from .app_checks import class_choices  # noqa: E402
from .app_models import Models, describe_model  # noqa: E402

__all__ = ["Page", "condition_controls"]

log = logging.getLogger(__name__)


def _one_line(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, OSError) and e.filename and e.strerror:
        text = f"{e.filename}: {e.strerror}"
    return html.escape(" ".join(text.split()), quote=False)  # gr.Error renders HTML; a name is not markup


@contextlib.contextmanager
def _in_page():
    """Show errors in the page as one readable gr.Error, never a traceback."""
    try:
        yield
    except gr.Error:
        raise
    except af.Cancelled:
        raise gr.Error("stopped", print_exception=False) from None
    except (ValueError, OSError) as e:
        raise gr.Error(_one_line(e), print_exception=False) from None
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        raise gr.Error("out of GPU memory: ask for fewer images or steps", print_exception=False) from None
    except Exception as e:
        log.exception("ddimkit app: unexpected error")
        raise gr.Error(f"unexpected {type(e).__name__}: {_one_line(e)}", print_exception=False) from None


class _Stops:
    """A Stop flag per browser session and tab. Gradio's ``cancels=`` ends an event in the page but cannot
    interrupt a function running in a worker thread; the flag, checked at every network evaluation, ends
    the work itself."""

    def __init__(self):
        self._flags: dict[tuple, threading.Event] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def running(self, request, tab: str, progress):
        """Arm a fresh flag for (session, tab) and yield the ``progress(done, total, desc)`` that checks it."""
        key, flag = (getattr(request, "session_hash", None), tab), threading.Event()
        with self._lock:
            self._flags[key] = flag
        try:
            yield _reporter(progress, flag)
        finally:
            with self._lock:
                if self._flags.get(key) is flag:
                    del self._flags[key]

    def stop(self, request, tab: str):
        with self._lock:
            flag = self._flags.get((getattr(request, "session_hash", None), tab))
        if flag is not None:
            flag.set()


def _reporter(progress, flag: threading.Event, every: float = 0.1):
    """Forward progress to Gradio at most every ``every`` seconds (a 1000-step DDPM would otherwise send
    1000 messages); raise Cancelled once Stop was pressed."""
    last = [0.0]

    def report(done: int, total: int, desc: str):
        if flag.is_set():
            raise af.Cancelled()
        now = time.monotonic()
        if progress is not None and (now - last[0] >= every or done >= total):
            last[0] = now
            progress((done, total), desc=desc, unit="evaluations")

    return report


def _image(pipe, upload, pick) -> tuple:
    """The upload if there is one, else the picked test image; and what it was, for messages."""
    if upload:
        return upload, "the upload"
    if not pick:
        raise ValueError("upload an image or pick a test image")
    return af.pick_image(pipe, pick), pick


class Page:
    """The page's event handlers: each takes the model's name and the inputs, returns the outputs."""

    def __init__(self, models: Models):
        self.models, self.stops = models, _Stops()

    def load(self, name):
        with _in_page():
            pipe, d = self.models.get(name), self.models.defaults(name)
            T = pipe.schedule.num_train_timesteps
            a, b = af.default_picks(pipe)
            steps = gr.update(maximum=T, value=d.steps)
            conds = [gr.update(**c) for c in condition_controls(pipe)]
            return (describe_model(name, pipe), steps, gr.update(value=d.count), *conds,
                    gr.update(value=d.compare_count), gr.update(maximum=T, value=min(50, T)), *conds,
                    gr.update(maximum=T, value=d.invert_steps), gr.update(value=a),
                    gr.update(maximum=T, value=d.invert_steps), gr.update(value=a), gr.update(value=b))

    def sample(self, name, sampler, steps, eta, spacing, seed, count, guide=None, klass=None, cfg=None,
               request: gr.Request = None, progress=gr.Progress()):
        # An API call may leave out the conditions (the model's defaults) or send any; the library refuses
        # what the model cannot run (a guideless model's sliders sit at 1, a class menu is hidden without classes).
        with _in_page(), self.stops.running(request, "sample", progress) as report:
            sampler, pipe = af.SAMPLERS.get(sampler, sampler), self.models.get(name)
            grid, i = af.sample_images(pipe, sampler, steps, eta if sampler == "ddim" else 0.0, spacing, seed, count,
                                       report, guide, klass, cfg)
            return grid, (f"{i['count']} images · {i['label']}, {i['steps']} steps ({i['spacing']} spacing) · "
                          f"seed {i['seed']} · **{i['seconds']:.2f} s** · **{i['nfe']} network evaluations** per "
                          f"image ({i['forward_passes']} batched forward passes)")

    def compare(self, name, seed, count, guide=None, klass=None, cfg=None, request: gr.Request = None,
                progress=gr.Progress()):
        with _in_page(), self.stops.running(request, "sample", progress) as report:
            runs = af.compare_samplers(self.models.get(name), seed, count, progress=report, autoguidance=guide,
                                       class_choice=klass, guidance=cfg)
            gallery = [(img, f"{i['label']}, {i['steps']} steps: {i['seconds']:.2f} s") for img, i in runs]
            rows = "".join(f"| {i['label']} | {i['steps']} | {i['nfe']} | {i['seconds']:.2f} |\n" for _, i in runs)
            return gallery, ("| sampler | steps | network evaluations per image | seconds |\n|---|---|---|---|\n"
                             + rows + f"\nAll four start from the same noise, drawn from seed {int(seed)}.")

    def trajectory(self, name, sampler, steps, eta, seed, guide=None, klass=None, cfg=None,
                   request: gr.Request = None, progress=gr.Progress()):
        with _in_page(), self.stops.running(request, "trajectory", progress) as report:
            sampler = af.SAMPLERS.get(sampler, sampler)
            traj = af.trajectory(self.models.get(name), sampler, steps, eta if sampler == "ddim" else 0.0,
                                 None, seed, report, guide, klass, cfg)
            n = len(traj.timesteps)
            frame, caption = af.trajectory_frame(traj, n - 1)
            return (af.trajectory_strip(traj), frame, caption, gr.update(maximum=n, value=n), traj,
                    f"{traj.info['label']}, {n} steps, seed {int(seed)}: {traj.info['seconds']:.2f} s")

    def trajectory_step(self, traj, step):
        with _in_page():
            if traj is None:
                raise ValueError("press Run first: the slider moves over the steps of a sampled trajectory")
            return af.trajectory_frame(traj, min(int(step), len(traj.timesteps)) - 1)

    def invert(self, name, upload, pick, steps, refine, request: gr.Request, progress=gr.Progress()):
        with _in_page(), self.stops.running(request, "invert", progress) as report:
            pipe = self.models.get(name)
            image, source = _image(pipe, upload, pick)
            r = af.invert_image(pipe, image, steps, refine, report)
            if r["note"]:
                gr.Warning(f"{html.escape(source, quote=False)}: {r['note']}")
            return r["input"], r["noise"], r["reconstruction"], (
                f"MSE **{r['mse']:.3g}** (per dimension, [0, 1] scale) · PSNR **{r['psnr']:.1f} dB** · noise std "
                f"{r['noise_std']:.3f} · {r['nfe']} network evaluations · {r['seconds']:.2f} s")

    def fuse(self, name, up_a, pick_a, up_b, pick_b, steps, refine, alpha, request: gr.Request,
             progress=gr.Progress()):
        with _in_page(), self.stops.running(request, "fuse", progress) as report:
            pipe = self.models.get(name)
            (a, _), (b, _) = _image(pipe, up_a, pick_a), _image(pipe, up_b, pick_b)
            pair = af.invert_pair(pipe, a, b, steps, refine, report)
            for note in pair.notes:
                gr.Warning(note)
            strip, info = af.fuse_strip(pipe, pair, progress=report)
            s, lin, at = af.fuse_at(pipe, pair, alpha, report)
            text = (f"Noises {info['angle_degrees']:.1f}° apart · α = 0 and 1 give back the inputs with MSE "
                    f"{info['endpoint_mse']:.2g} · " + _norms(at))
            return strip, s, lin, text, (name, pair)

    def fuse_alpha(self, state, name, alpha, request: gr.Request, progress=gr.Progress()):
        with _in_page(), self.stops.running(request, "fuse", progress) as report:
            if state is None:
                raise ValueError("press Fuse first: the α slider moves between two inverted images")
            made_by, pair = state
            if made_by != name:
                raise ValueError("the model changed since Fuse was pressed; press Fuse again")
            s, lin, at = af.fuse_at(self.models.get(name), pair, alpha, report)
            return s, lin, _norms(at)

    def stopper(self, tab: str):
        def stop(request: gr.Request):
            self.stops.stop(request, tab)

        return stop


def _norms(at: dict) -> str:
    return (f"at α = {at['alpha']:g}: |z|/√D = {at['norm_slerp']:.3f} (slerp), {at['norm_lerp']:.3f} (lerp)")


def condition_controls(pipe) -> tuple[dict, dict, dict]:
    """The settings of the three conditioning controls for ``pipe``: autoguidance w (its default scale, or
    fixed at 1 without a guide), and for a class-conditional model its class menu and classifier-free
    guidance scale (fixed at 1 without a null label); both hidden for a model without classes."""
    has, choices, null = pipe.guide is not None, class_choices(pipe), pipe.null_label is not None
    both = "other values evaluate both networks"
    guide = dict(value=pipe.autoguidance(), interactive=has,
                 label=f"autoguidance w (1: the network alone, 0: the guide alone; {both})" if has
                 else "autoguidance: this model has no guide (train with --autoguidance-at)")
    klass = dict(choices=choices or [""], value=choices[0] if choices else "", visible=bool(choices))
    cfg = dict(value=pipe.sampling["guidance_scale"] if null else 1.0, interactive=null, visible=bool(choices),
               label=f"classifier-free guidance w (1: the class alone, 0: unconditional; {both})" if null
               else "classifier-free guidance: this model has no null label (train with --label-dropout)")
    return guide, klass, cfg
