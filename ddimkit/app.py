"""``ddimkit app``: a web page over a model: sample, trajectory, invert, fuse (Gradio; ``pip install -e '.[app]'``).

The work is done by :mod:`ddimkit.app_functions` (plain functions, tested directly); this module lays out the
page and turns whatever goes wrong into a message in it: a ``ValueError`` or ``OSError`` becomes a
``gr.Error`` with its text, anything else a one-line ``gr.Error`` (the traceback goes to the server's log),
and Stop ends the running job at its next network evaluation. No input takes the server down.

    from ddimkit.app import launch
    launch("pretrained:mnist", port=7860)
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
from . import pretrained  # noqa: E402
from .app_models import Models, describe_model  # noqa: E402

__all__ = ["build_app", "launch", "model_choices", "default_model"]

log = logging.getLogger(__name__)
# System fonts: the default theme would ask a font server, which an offline page cannot reach.
THEME = gr.themes.Default(primary_hue="orange", font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "monospace"])
SPACING_CHOICES = ["model default", *af.SPACINGS]


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


class _Page:
    """The page's event handlers: each takes the model's name and the inputs, returns the outputs."""

    def __init__(self, models: Models):
        self.models, self.stops = models, _Stops()

    def load(self, name):
        with _in_page():
            pipe, d = self.models.get(name), self.models.defaults(name)
            T = pipe.schedule.num_train_timesteps
            a, b = af.default_picks(pipe)
            steps = gr.update(maximum=T, value=d.steps)
            return (describe_model(name, pipe), steps, gr.update(value=d.count), gr.update(**_guide(pipe)),
                    gr.update(value=d.compare_count),
                    gr.update(maximum=T, value=min(50, T)), gr.update(maximum=T, value=d.invert_steps),
                    gr.update(value=a), gr.update(maximum=T, value=d.invert_steps), gr.update(value=a),
                    gr.update(value=b))

    def sample(self, name, sampler, steps, eta, spacing, seed, count, guide, request: gr.Request,
               progress=gr.Progress()):
        with _in_page(), self.stops.running(request, "sample", progress) as report:
            sampler, pipe = af.SAMPLERS.get(sampler, sampler), self.models.get(name)
            grid, i = af.sample_images(pipe, sampler, steps, eta if sampler == "ddim" else 0.0, spacing, seed, count,
                                       report, guide)  # a guideless model's slider sits at 1; other values are refused
            return grid, (f"{i['count']} images · {i['label']}, {i['steps']} steps ({i['spacing']} spacing) · "
                          f"seed {i['seed']} · **{i['seconds']:.2f} s** · **{i['nfe']} network evaluations** per "
                          f"image ({i['forward_passes']} batched forward passes)")

    def compare(self, name, seed, count, request: gr.Request, progress=gr.Progress()):
        with _in_page(), self.stops.running(request, "sample", progress) as report:
            runs = af.compare_samplers(self.models.get(name), seed, count, progress=report)
            gallery = [(img, f"{i['label']}, {i['steps']} steps: {i['seconds']:.2f} s") for img, i in runs]
            rows = "".join(f"| {i['label']} | {i['steps']} | {i['nfe']} | {i['seconds']:.2f} |\n" for _, i in runs)
            return gallery, ("| sampler | steps | network evaluations per image | seconds |\n|---|---|---|---|\n"
                             + rows + f"\nAll four start from the same noise, drawn from seed {int(seed)}.")

    def trajectory(self, name, sampler, steps, eta, seed, request: gr.Request, progress=gr.Progress()):
        with _in_page(), self.stops.running(request, "trajectory", progress) as report:
            sampler = af.SAMPLERS.get(sampler, sampler)
            traj = af.trajectory(self.models.get(name), sampler, steps, eta if sampler == "ddim" else 0.0,
                                 None, seed, report)
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


def _png(label: str, **kw) -> gr.Image:
    # PNG, not Gradio's default lossy WebP: these are pixel-exact images.
    return gr.Image(label=label, format="png", type="numpy", interactive=False, **kw)


def _sampler_inputs(T: int, steps: int):
    sampler = gr.Radio(list(af.SAMPLERS), value="DDIM", label="sampler")
    steps = gr.Slider(1, T, value=steps, step=1, label="steps")
    eta = gr.Slider(0, 1, value=0, step=0.05, label="η (DDIM only; 0: deterministic, 1: DDPM-like)")
    sampler.change(lambda s: gr.update(visible=s == "DDIM"), sampler, eta, api_name=False)
    return sampler, steps, eta


def _guide(pipe) -> dict:
    """The autoguidance slider's settings for ``pipe``: its default scale, or fixed at 1 without a guide."""
    has = pipe.guide is not None
    return dict(value=pipe.autoguidance(), interactive=has,
                label="autoguidance w (1: the network alone, one network per step instead of two)" if has
                else "autoguidance: this model has no guide (train with --autoguidance-at)")


def _sample_tab(page: _Page, model, T: int, d, pipe) -> list:
    with gr.Row():
        with gr.Column(scale=1):
            sampler, steps, eta = _sampler_inputs(T, d.steps)
            spacing = gr.Dropdown(SPACING_CHOICES, value="model default", label="grid spacing")
            with gr.Row():
                seed = gr.Number(0, precision=0, minimum=0, label="seed")
                count = gr.Slider(1, af.MAX_COUNT, value=d.count, step=1, label="count")
            guide = gr.Slider(0, 4, step=0.25, elem_id="autoguidance", **_guide(pipe))
            with gr.Row():
                run, stop = gr.Button("Sample", variant="primary", elem_id="sample-button"), gr.Button("Stop")
        with gr.Column(scale=2):
            grid, info = _png("samples", elem_id="sample-grid"), gr.Markdown()
    with gr.Accordion("Compare: DDPM with all T steps beside DDIM at 10, 20 and 50 steps, same noise", open=False):
        with gr.Row():
            compare_count = gr.Slider(1, 64, value=d.compare_count, step=1, label="count (per sampler)")
            compare = gr.Button("Compare", elem_id="compare-button")
        gallery, table = gr.Gallery(label="same seed, four samplers", columns=4, format="png"), gr.Markdown()
    ev = run.click(page.sample, [model, sampler, steps, eta, spacing, seed, count, guide], [grid, info],
                   api_name="sample")
    ev2 = compare.click(page.compare, [model, seed, compare_count], [gallery, table], api_name="compare")
    stop.click(page.stopper("sample"), None, None, cancels=[ev, ev2], api_name=False)
    return [steps, count, guide, compare_count]


def _trajectory_tab(page: _Page, model, T: int) -> list:
    with gr.Row():
        with gr.Column(scale=1):
            sampler, steps, eta = _sampler_inputs(T, min(50, T))
            seed = gr.Number(0, precision=0, minimum=0, label="seed")
            with gr.Row():
                run, stop = gr.Button("Run", variant="primary", elem_id="trajectory-button"), gr.Button("Stop")
            info = gr.Markdown()
        with gr.Column(scale=2):
            strip = _png("x_t (top) and x̂0 (bottom) from the first step to the last")
            step = gr.Slider(1, min(50, T), value=min(50, T), step=1, label="step")
            frame, caption = _png("x_t | x̂0 at the chosen step"), gr.Markdown()
    traj = gr.State(None)
    ev = run.click(page.trajectory, [model, sampler, steps, eta, seed], [strip, frame, caption, step, traj, info],
                   api_name="trajectory")
    step.change(page.trajectory_step, [traj, step], [frame, caption], api_name="trajectory_step")
    stop.click(page.stopper("trajectory"), None, None, cancels=[ev], api_name=False)
    return [steps]


def _image_input(label: str, pick: str):
    upload = gr.File(label=f"{label}: upload an image", file_types=["image"], type="filepath", height=150)
    pick = gr.Dropdown(af.test_image_names(), value=pick, label=f"{label}: or a test image (used without upload)")
    return upload, pick


def _invert_tab(page: _Page, model, T: int, d, pick: str) -> list:
    with gr.Row():
        with gr.Column(scale=1):
            upload, choice = _image_input("image", pick)
            steps = gr.Slider(1, T, value=d.invert_steps, step=1, label="S: inversion steps")
            refine = gr.Slider(0, af.MAX_REFINE, value=d.refine, step=1, label="k: fixed-point iterations per step")
            with gr.Row():
                run, stop = gr.Button("Invert", variant="primary", elem_id="invert-button"), gr.Button("Stop")
        with gr.Column(scale=2):
            with gr.Row():
                shown, noise, rec = _png("input, fitted"), _png("noise x_T"), _png("reconstruction")
            info = gr.Markdown()
    ev = run.click(page.invert, [model, upload, choice, steps, refine], [shown, noise, rec, info], api_name="invert")
    stop.click(page.stopper("invert"), None, None, cancels=[ev], api_name=False)
    return [steps, choice]


def _fuse_tab(page: _Page, model, T: int, d, picks: tuple) -> list:
    with gr.Row():
        with gr.Column(scale=1):
            up_a, pick_a = _image_input("A", picks[0])
            up_b, pick_b = _image_input("B", picks[1])
            steps = gr.Slider(1, T, value=d.invert_steps, step=1, label="inversion steps")
            refine = gr.Slider(0, af.MAX_REFINE, value=d.refine, step=1, label="fixed-point iterations per step")
            with gr.Row():
                run, stop = gr.Button("Fuse", variant="primary", elem_id="fuse-button"), gr.Button("Stop")
        with gr.Column(scale=2):
            strip = _png("slerp (top) and lerp (bottom) at α = 0, ¼, ½, ¾, 1: the ends are the inputs")
            alpha = gr.Slider(0, 1, value=0.5, step=0.05, label="α")
            with gr.Row():
                s, lin = _png("slerp at α"), _png("lerp at α")
            info = gr.Markdown()
    pair = gr.State(None)
    ev = run.click(page.fuse, [model, up_a, pick_a, up_b, pick_b, steps, refine, alpha], [strip, s, lin, info, pair],
                   api_name="fuse")
    ev2 = alpha.release(page.fuse_alpha, [pair, model, alpha], [s, lin, info], api_name="fuse_alpha")
    stop.click(page.stopper("fuse"), None, None, cancels=[ev, ev2], api_name=False)
    return [steps, pick_a, pick_b]


def build_app(models: Models, initial: str, choices: list[str] | None = None) -> gr.Blocks:
    """The page, opened on the model ``initial`` (loaded now); ``choices`` are offered in the model box,
    where any other checkpoint can be typed."""
    page, pipe, d = _Page(models), models.get(initial), models.defaults(initial)
    T, picks = pipe.schedule.num_train_timesteps, af.default_picks(pipe)
    with gr.Blocks(title="ddimkit") as demo:
        gr.Markdown("## ddimkit: DDPM, DDIM and DPM-Solver++ on a trained model")
        with gr.Row():
            model = gr.Dropdown(choices or [initial], value=initial, allow_custom_value=True, scale=1,
                                label="model: pretrained:NAME, a run folder, a diffusers folder or a hub id (online)")
            about = gr.Markdown(describe_model(initial, pipe))
        with gr.Tabs():
            with gr.Tab("Sample"):
                sample_steps, count, guide, compare_count = _sample_tab(page, model, T, d, pipe)
            with gr.Tab("Trajectory"):
                (traj_steps,) = _trajectory_tab(page, model, T)
            with gr.Tab("Invert"):
                invert_steps, invert_pick = _invert_tab(page, model, T, d, picks[0])
            with gr.Tab("Fuse"):
                fuse_steps, pick_a, pick_b = _fuse_tab(page, model, T, d, picks)
        model.change(page.load, model, [about, sample_steps, count, guide, compare_count, traj_steps, invert_steps,
                                        invert_pick, fuse_steps, pick_a, pick_b], api_name="load_model")
    return demo


def model_choices(ckpt: str | None = None) -> list[str]:
    """The shipped models, and ``ckpt`` if it is another."""
    names = [pretrained.PREFIX + n for n in pretrained.names()]
    return names + ([ckpt] if ckpt and ckpt not in names else [])


def default_model() -> str:
    """``pretrained:mnist`` if shipped, else the first shipped model."""
    names = pretrained.names()
    if not names:
        raise ValueError("no shipped models are installed; pass --ckpt (a run folder, diffusers folder or hub id)")
    return pretrained.PREFIX + ("mnist" if "mnist" in names else names[0])


def launch(ckpt: str | None = None, host: str = "127.0.0.1", port: int = 7860, device=None, precision=None,
           compile="auto", ema: bool = True, block: bool = True) -> gr.Blocks:
    """Load ``ckpt`` (default: the shipped MNIST model) and serve the page on ``host:port``.

    The model loads before the server starts, so a missing checkpoint is an error here rather than a page
    that cannot work. ``block=False`` returns the running app (``.close()`` stops it), as the tests use it.
    """
    models = Models(device=device, precision=precision, compile=compile, ema=ema)
    initial = ckpt or default_model()
    demo = build_app(models, initial, model_choices(initial))
    demo.queue(default_concurrency_limit=1)  # the network is the bottleneck: one job at a time per event
    demo.launch(server_name=host, server_port=port, theme=THEME, prevent_thread_lock=not block, show_error=True)
    return demo
