"""``ddimkit app``: a web page over a model: sample, trajectory, invert, fuse (Gradio; ``pip install -e '.[app]'``).

This module lays out the page; :mod:`ddimkit.app_page` handles its events (every error a message in the page,
never a traceback, and no input takes the server down) and :mod:`ddimkit.app_functions` does the work.

    from ddimkit.app import launch
    launch("pretrained:mnist", port=7860)
"""

from __future__ import annotations

from .app_page import Page, condition_controls  # first: it sets Gradio up for offline use before importing it

import gradio as gr  # noqa: E402

from . import app_functions as af  # noqa: E402
from . import pretrained  # noqa: E402
from .app_models import Models, describe_model  # noqa: E402

__all__ = ["build_app", "launch", "model_choices", "default_model"]

# System fonts: the default theme would ask a font server, which an offline page cannot reach.
THEME = gr.themes.Default(primary_hue="orange", font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "monospace"])
SPACING_CHOICES = ["model default", *af.SPACINGS]


def _png(label: str, **kw) -> gr.Image:
    # PNG, not Gradio's default lossy WebP: these are pixel-exact images.
    return gr.Image(label=label, format="png", type="numpy", interactive=False, **kw)


def _sampler_inputs(T: int, steps: int):
    sampler = gr.Radio(list(af.SAMPLERS), value="DDIM", label="sampler")
    steps = gr.Slider(1, T, value=steps, step=1, label="steps")
    eta = gr.Slider(0, 1, value=0, step=0.05, label="η (DDIM only; 0: deterministic, 1: DDPM-like)")
    sampler.change(lambda s: gr.update(visible=s == "DDIM"), sampler, eta, api_name=False)
    return sampler, steps, eta


def _condition_inputs(pipe, tab: str):
    """The class menu, classifier-free and autoguidance sliders (:func:`ddimkit.app_page.condition_controls`)."""
    guide, klass, cfg = condition_controls(pipe)
    klass = gr.Dropdown(label="class", elem_id=f"{tab}-class", **klass)
    cfg = gr.Slider(0, 10, step=0.5, elem_id=f"{tab}-guidance", **cfg)
    return klass, cfg, gr.Slider(0, 4, step=0.25, elem_id=f"{tab}-autoguidance", **guide)


def _sample_tab(page: Page, model, T: int, d, pipe) -> list:
    with gr.Row():
        with gr.Column(scale=1):
            sampler, steps, eta = _sampler_inputs(T, d.steps)
            spacing = gr.Dropdown(SPACING_CHOICES, value="model default", label="grid spacing")
            with gr.Row():
                seed = gr.Number(0, precision=0, minimum=0, label="seed")
                count = gr.Slider(1, af.MAX_COUNT, value=d.count, step=1, label="count")
            klass, cfg, guide = _condition_inputs(pipe, "sample")
            with gr.Row():
                run, stop = gr.Button("Sample", variant="primary", elem_id="sample-button"), gr.Button("Stop")
        with gr.Column(scale=2):
            grid, info = _png("samples", elem_id="sample-grid"), gr.Markdown()
    with gr.Accordion("Compare: DDPM with all T steps beside DDIM at 10, 20 and 50 steps, same noise", open=False):
        with gr.Row():
            compare_count = gr.Slider(1, 64, value=d.compare_count, step=1, label="count (per sampler)")
            compare = gr.Button("Compare", elem_id="compare-button")
        gallery, table = gr.Gallery(label="same seed, four samplers", columns=4, format="png"), gr.Markdown()
    ev = run.click(page.sample, [model, sampler, steps, eta, spacing, seed, count, guide, klass, cfg], [grid, info],
                   api_name="sample")
    ev2 = compare.click(page.compare, [model, seed, compare_count, guide, klass, cfg], [gallery, table],
                        api_name="compare")
    stop.click(page.stopper("sample"), None, None, cancels=[ev, ev2], api_name=False)
    return [steps, count, guide, klass, cfg, compare_count]


def _trajectory_tab(page: Page, model, T: int, pipe) -> list:
    with gr.Row():
        with gr.Column(scale=1):
            sampler, steps, eta = _sampler_inputs(T, min(50, T))
            seed = gr.Number(0, precision=0, minimum=0, label="seed")
            klass, cfg, guide = _condition_inputs(pipe, "trajectory")
            with gr.Row():
                run, stop = gr.Button("Run", variant="primary", elem_id="trajectory-button"), gr.Button("Stop")
            info = gr.Markdown()
        with gr.Column(scale=2):
            strip = _png("x_t (top) and x̂0 (bottom) from the first step to the last")
            step = gr.Slider(1, min(50, T), value=min(50, T), step=1, label="step")
            frame, caption = _png("x_t | x̂0 at the chosen step"), gr.Markdown()
    traj = gr.State(None)
    ev = run.click(page.trajectory, [model, sampler, steps, eta, seed, guide, klass, cfg],
                   [strip, frame, caption, step, traj, info], api_name="trajectory")
    step.change(page.trajectory_step, [traj, step], [frame, caption], api_name="trajectory_step")
    stop.click(page.stopper("trajectory"), None, None, cancels=[ev], api_name=False)
    return [steps, guide, klass, cfg]


def _image_input(label: str, pick: str):
    upload = gr.File(label=f"{label}: upload an image", file_types=["image"], type="filepath", height=150)
    pick = gr.Dropdown(af.test_image_names(), value=pick, label=f"{label}: or a test image (used without upload)")
    return upload, pick


def _invert_tab(page: Page, model, T: int, d, pick: str) -> list:
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


def _fuse_tab(page: Page, model, T: int, d, picks: tuple) -> list:
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
    page, pipe, d = Page(models), models.get(initial), models.defaults(initial)
    T, picks = pipe.schedule.num_train_timesteps, af.default_picks(pipe)
    with gr.Blocks(title="ddimkit") as demo:
        gr.Markdown("## ddimkit: DDPM, DDIM and DPM-Solver++ on a trained model")
        with gr.Row():
            model = gr.Dropdown(choices or [initial], value=initial, allow_custom_value=True, scale=1,
                                label="model: pretrained:NAME, a run folder, a diffusers folder or a hub id (online)")
            about = gr.Markdown(describe_model(initial, pipe))
        with gr.Tabs():
            with gr.Tab("Sample"):
                sample_steps, count, *sample_conds, compare_count = _sample_tab(page, model, T, d, pipe)
            with gr.Tab("Trajectory"):
                traj_steps, *traj_conds = _trajectory_tab(page, model, T, pipe)
            with gr.Tab("Invert"):
                invert_steps, invert_pick = _invert_tab(page, model, T, d, picks[0])
            with gr.Tab("Fuse"):
                fuse_steps, pick_a, pick_b = _fuse_tab(page, model, T, d, picks)
        model.change(page.load, model, [about, sample_steps, count, *sample_conds, compare_count, traj_steps,
                                        *traj_conds, invert_steps, invert_pick, fuse_steps, pick_a, pick_b],
                     api_name="load_model")
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
