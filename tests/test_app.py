"""``ddimkit app``: its functions called directly, then the page served and driven through gradio_client.

The functions are checked on a tiny, barely trained model (shapes, seeds, counts, errors) and on the Gaussian
oracle, whose ε̂ is exact, for what the math guarantees (inversion round trips, fuse endpoints). Nothing here
depends on how good the shipped models are; with them present they are run through every tab once.
"""

import socket
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ddimkit as dk
from ddimkit import app_functions as af
from ddimkit import pretrained
from ddimkit.app_models import Models, defaults
from ddimkit.cli import main
from ddimkit.metrics import reconstruction_mse

T = 100  # the tiny model's schedule: a DDPM with all T steps stays quick


def _tiny_run(tmp_path_factory, name: str, **kw):
    """A tiny model on the bundled digits, trained for two steps, without a guide unless asked for."""
    out = tmp_path_factory.mktemp("app") / name
    dk.train(dk.TrainConfig(**{**dict(model="tiny", data="mnist-5k", out=str(out), steps=2, batch_size=8,
                                      sample_every=0, num_sample_images=0, save_every=0, num_train_timesteps=T,
                                      autoguidance_at=None), **kw}), progress=False)
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return _tiny_run(tmp_path_factory, "run")  # one network per step; a guided one below


@pytest.fixture(scope="module")
def pipe(run_dir):
    return dk.load(run_dir, device="cpu")


def _digit(d: int) -> np.ndarray:
    """The first bundled MNIST digit of class d."""
    with np.load(Path(dk.__file__).parent / "assets" / "mnist_5k.npz") as z:
        return z["x"][int(np.argmax(z["y"] == d))]


# -- sample, compare, trajectory ---------------------------------------------------------------------------

@pytest.mark.parametrize("sampler,eta", [("ddim", 0.5), ("ddpm", 0.0), ("dpmpp-2m", 0.0)])
def test_sample_is_the_cli_seed_and_counts_evaluations(pipe, sampler, eta):
    grid, info = af.sample_images(pipe, sampler, 6, eta, None, seed=3, count=3)
    expected = pipe.sample(3, sampler=sampler, steps=6, eta=eta, generator=torch.Generator().manual_seed(3))
    assert np.array_equal(grid, af.picture(expected))
    assert grid.dtype == np.uint8 and grid.ndim == 2 and min(grid.shape) >= 256  # gray, enlarged
    assert (info["nfe"], info["forward_passes"], info["count"], info["seed"]) == (6, 6, 3, 3)
    assert info["seconds"] > 0


def test_a_guided_model_counts_both_networks_and_its_scale_is_the_pages(pipe):
    """With autoguidance each step evaluates model and guide: the page reports 2 × steps per image. Its slider
    gives the scale (default: the model's), as ``ddimkit sample --autoguidance-scale`` does."""
    import copy
    from dataclasses import replace

    torch.manual_seed(0)
    guide = copy.deepcopy(pipe.model)
    for p in guide.parameters():
        p.data += 0.01 * torch.randn_like(p)  # a guide that differs from the model, as an earlier EMA does
    guided = replace(pipe, guide=guide, sampling={**pipe.sampling, "autoguidance_scale": 2.0})
    grid, info = af.sample_images(guided, "ddim", 5, 0.0, None, seed=0, count=2)
    assert (info["nfe"], info["forward_passes"]) == (10, 10) and "autoguidance w=2" in info["label"]
    for w in (1.0, 3.0):
        grid_w, info_w = af.sample_images(guided, "ddim", 5, 0.0, None, seed=0, count=2, autoguidance=w)
        expected = guided.sample(2, steps=5, generator=torch.Generator().manual_seed(0), autoguidance_scale=w)
        assert np.array_equal(grid_w, af.picture(expected)) and not np.array_equal(grid_w, grid)
        assert info_w["nfe"] == (5 if w == 1 else 10)
    with pytest.raises(ValueError, match="no guiding network|has none"):
        af.sample_images(pipe, "ddim", 5, 0.0, None, seed=0, count=2, autoguidance=2.0)


def test_compare_starts_every_sampler_from_the_same_noise(pipe):
    runs = af.compare_samplers(pipe, seed=5, count=2)
    assert [(i["sampler"], i["steps"], i["nfe"]) for _, i in runs] == [
        ("ddpm", T, T), ("ddim", 10, 10), ("ddim", 20, 20), ("ddim", 50, 50)]
    noise = dk.randn((2, *pipe.image_shape), torch.Generator().manual_seed(5))
    for _, info in runs:
        assert torch.equal(info["x_T"], noise)
    assert np.array_equal(runs[-1][0], af.sample_images(pipe, "ddim", 50, 0.0, None, 5, 2)[0])
    assert not np.array_equal(runs[0][0], runs[1][0])  # and the samplers did differ


def test_trajectory_keeps_every_step_and_ends_at_the_sample(pipe):
    traj = af.trajectory(pipe, "DDIM", 8, 0.0, None, seed=2)
    assert traj.x_t.shape == traj.x0.shape == (8, 1, 28, 28) and len(traj.timesteps) == 8
    assert traj.timesteps == sorted(traj.timesteps, reverse=True)
    first = pipe.sample(1, steps=8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(traj.final, first)
    # With ᾱ = 1 after the last step, DDIM's output is that step's (clipped) prediction x̂0.
    assert torch.allclose(traj.x0[-1], first[0], atol=1e-5)
    frame, caption = af.trajectory_frame(traj, 3)
    assert frame.shape[1] > 1.8 * frame.shape[0] and f"t = {traj.timesteps[3]}" in caption
    five, two = af.trajectory_strip(traj, points=5), af.trajectory_strip(traj, points=2)
    assert five.shape[1] > 2 * five.shape[0] and two.shape[0] == two.shape[1]  # 5 or 2 columns, 2 rows
    with pytest.raises(ValueError, match="step must be between 0 and 7"):
        af.trajectory_frame(traj, 8)


def test_progress_reports_each_evaluation_and_can_stop_the_work(pipe):
    seen = []
    af.sample_images(pipe, "ddpm", 7, 0, None, 0, 2, progress=lambda d, n, desc: seen.append((d, n)))
    assert seen == [(k, 7) for k in range(1, 8)]

    def stop_after_three(done, total, desc):
        if done == 3:
            raise af.Cancelled()

    calls = []
    with pytest.raises(af.Cancelled):
        af.sample_images(pipe, "ddim", 50, 0, None, 0, 2, progress=lambda *a: (calls.append(a), stop_after_three(*a)))
    assert len(calls) == 3


# -- invert and fuse ---------------------------------------------------------------------------------------

def test_an_rgb_oversized_upload_is_fitted_to_the_model(pipe, tmp_path):
    digit = _digit(4)
    big = np.repeat(np.repeat(digit, 10, 0), 10, 1)  # 280×280
    rgb = np.zeros((300, 280, 3), np.uint8)  # taller than wide: the crop must keep the centre square
    rgb[10:290] = big[..., None]
    Image.fromarray(rgb).save(tmp_path / "big.png")
    x, note = af.fit_image(pipe, str(tmp_path / "big.png"))
    assert x.shape == (1, 1, 28, 28) and note == "fitted from 3×300×280 to 1×28×28"
    def mse_to(d):  # downscaling by 10 blurs a little; a misplaced crop or a wrong digit is far off
        return float(reconstruction_mse(x, dk.data.to_model_range(torch.from_numpy(d)[None, None])))

    assert mse_to(digit) < 5e-3 < 10 * mse_to(digit) < mse_to(np.roll(digit, 2, axis=0))
    same, note = af.fit_image(pipe, digit)
    assert note == "" and torch.equal(same, dk.data.to_model_range(torch.from_numpy(digit)[None, None]))


def test_invert_round_trip_and_refinement(oracle):
    plain = af.invert_image(oracle, af.pick_image(oracle, "MNIST digit 3"), steps=10, refine=0)
    refined = af.invert_image(oracle, af.pick_image(oracle, "MNIST digit 3"), steps=10, refine=3)
    assert refined["mse"] < 1e-4 < plain["mse"] and refined["psnr"] > 40
    assert refined["nfe"] == 10 * (1 + 3) + 10
    assert refined["input"].shape == refined["noise"].shape == refined["reconstruction"].shape
    assert refined["noise"].min() < 64 and refined["noise"].max() > 192  # noise squeezed into view, not clipped


def test_fuse_endpoints_are_the_inputs(oracle):
    pair = af.invert_pair(oracle, af.pick_image(oracle, "MNIST digit 2"), _digit(7), steps=20, refine=3)
    d = af.fuse_decode(oracle, pair, [0.0, 1.0])
    for kind in ("slerp", "lerp"):
        assert float(reconstruction_mse(pair.x, d[kind]).max()) <= 1e-3
    # _decode is Pipeline.reconstruct with progress: the same decode.
    assert torch.allclose(d["slerp"], oracle.reconstruct(pair.z, 20), atol=1e-6)
    strip, info = af.fuse_strip(oracle, pair)
    assert info["endpoint_mse"] <= 1e-3 and strip.shape[1] > 2 * strip.shape[0]
    s, lin, at = af.fuse_at(oracle, pair, 0.5)
    assert s.shape == lin.shape and at["norm_lerp"] < at["norm_slerp"]  # lerp shrinks the noise mid-way


def test_pick_images_and_their_defaults(pipe, oracle):
    assert np.array_equal(af.pick_image(pipe, "MNIST digit 7"), _digit(7))
    sample = af.pick_image(pipe, "model sample, seed 1")
    assert sample.shape == (28, 28) and sample.dtype == np.uint8
    assert np.array_equal(sample, af.pick_image(pipe, "model sample, seed 1"))
    assert af.default_picks(pipe) == ("MNIST digit 2", "MNIST digit 7")
    fashion = dk.Pipeline(oracle.model, oracle.schedule, "epsilon", config={"data": {"spec": "fashion-mnist",
                                                                                       "image_size": 28}})
    assert af.default_picks(fashion)[0].startswith("model sample")
    assert all(af.pick_image(pipe, n).dtype == np.uint8 for n in af.test_image_names())


# -- bad input ---------------------------------------------------------------------------------------------

def _bad_inputs(pipe, tmp_path):
    (tmp_path / "junk.png").write_bytes(b"this is not a png")
    return [
        (lambda: af.sample_images(pipe, "ddim", T + 1), f"more than the model's {T} training timesteps"),
        (lambda: af.sample_images(pipe, "ddim", 0), "steps must be at least 1, got 0"),
        (lambda: af.sample_images(pipe, "ddim", 2.5), "steps must be a whole number"),
        (lambda: af.sample_images(pipe, "ddim", 5, count=1000), "count must be between 1 and 256"),
        (lambda: af.sample_images(pipe, "euler", 5), "unknown sampler 'euler'"),
        (lambda: af.sample_images(pipe, "ddpm", 5, eta=0.5), "η applies to DDIM only"),
        (lambda: af.sample_images(pipe, "ddim", 5, eta=-1), "η must be a number >= 0"),
        (lambda: af.sample_images(pipe, "ddim", 5, spacing="cubic"), "unknown spacing 'cubic'"),
        (lambda: af.sample_images(pipe, "ddim", 5, seed=-1), "seed must be between 0"),
        (lambda: af.invert_image(pipe, _digit(1), 5, refine=11), "fixed-point iterations must be between 0 and 10"),
        (lambda: af.invert_image(pipe, None, 5), "no image: upload one or pick a test image"),
        (lambda: af.invert_image(pipe, str(tmp_path / "junk.png"), 5), "cannot read junk.png as an image"),
        (lambda: af.invert_image(pipe, str(tmp_path / "gone.png"), 5), "no such image: gone.png"),
        (lambda: af.invert_image(pipe, np.zeros((28, 28, 2), np.uint8), 5), "C = 1, 3 or 4; got shape"),
        (lambda: af.invert_image(pipe, np.zeros(28, np.uint8), 5), "must be H×W or H×W×C"),
        (lambda: af.invert_image(pipe, np.zeros((4, 4), np.uint8), 5), "it needs at least 8×8"),
        (lambda: af.invert_image(pipe, np.full((28, 28), 7.0), 5), "uint8 images (or floats in [0, 1])"),
        (lambda: af.pick_image(pipe, "MNIST digit 12"), "unknown test image"),
        (lambda: af.fuse_decode(pipe, af.FusePair(None, torch.zeros(2, 1, 28, 28), 5, []), [1.5]), "α must lie in"),
    ]


def test_bad_input_is_a_readable_value_error(pipe, tmp_path):
    for call, match in _bad_inputs(pipe, tmp_path):
        with pytest.raises(ValueError) as e:
            call()
        assert match in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_models_load_once_and_explain_failures(run_dir, tmp_path):
    on_gpu = Models(device="cuda")  # nothing loads yet: the fast path's settings, as `ddimkit sample` picks them
    assert (on_gpu.precision, on_gpu.compile) == ("bf16", "auto")
    models = Models(device="cpu", keep=1)
    a = models.get(str(run_dir))
    assert models.get(str(run_dir)) is a and models.precision == "fp32"
    d = models.defaults(str(run_dir))
    assert d.steps == 20 and d.count in (16, 9, 4, 1) and d.compare_count in (4, 2, 1)
    with pytest.raises(ValueError, match="cannot load .*no such checkpoint or run folder"):
        models.get(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="choose a model"):
        models.get("  ")
    models.add("other", a)  # keep=1: the first one is dropped and would load again
    assert str(run_dir) not in models._pipes


@pytest.mark.skipif(not pretrained.names(), reason="no shipped models in ddimkit/assets/pretrained")
@pytest.mark.parametrize("name", pretrained.names())
def test_every_tab_runs_on_the_shipped_models(name):
    p = dk.load(pretrained.PREFIX + name, device="cpu")
    assert defaults(p).steps == 20
    grid, info = af.sample_images(p, "DPM-Solver++", 4, count=2)
    assert info["nfe"] == 4 and grid.ndim == 2
    traj = af.trajectory(p, "DDPM", 4)
    assert len(traj.timesteps) == 4
    a, b = af.default_picks(p)
    r = af.invert_image(p, af.pick_image(p, a), steps=4, refine=1)
    assert np.isfinite([r["mse"], r["psnr"]]).all()
    pair = af.invert_pair(p, af.pick_image(p, a), af.pick_image(p, b), steps=4, refine=1)
    assert af.fuse_strip(p, pair)[0].ndim == 2


# -- the command and the served page -----------------------------------------------------------------------

def test_app_without_gradio_says_how_to_install(monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_gradio(name, *args, **kwargs):
        if name == "gradio" or name.startswith("gradio."):
            raise ImportError("No module named 'gradio'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gradio)
    assert main(["app"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install -e '.[app]'" in err, err


def test_app_with_a_missing_checkpoint_or_a_taken_port_is_one_line(tmp_path, capsys):
    pytest.importorskip("gradio")
    assert main(["app", "--ckpt", str(tmp_path / "nope"), "--device", "cpu", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no such checkpoint or run folder" in err, err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["app", "--port", str(taken.getsockname()[1])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot serve on 127.0.0.1" in err, err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def labelled_dir(tmp_path_factory):
    """A class-conditional run with a null label (label dropout) and guidance scale 2 stored as its default."""
    return _tiny_run(tmp_path_factory, "labelled", class_conditional=True, guidance_scale=2.0)


def test_class_menu_and_guidance_are_the_cli_labels_and_scales(labelled_dir, pipe):
    """The page's class menu and classifier-free guidance slider sample what ``ddimkit sample --class-labels K
    --guidance-scale W`` samples; a guided step counts both networks; what a model cannot run is refused in
    words before any work."""
    from ddimkit.app_checks import EVERY_CLASS, NO_CLASS, class_choices

    labelled = dk.load(labelled_dir, device="cpu")
    assert class_choices(labelled) == [EVERY_CLASS, *(f"class {k}" for k in range(10)), NO_CLASS]
    assert class_choices(pipe) == []
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    cases = [(dict(), dict(), 10, ", guidance w=2"),  # the model's defaults: every class in turn, w = 2
             (dict(class_choice="class 3", guidance=1.0), dict(class_labels=3, guidance_scale=1.0), 5, ", class 3"),
             (dict(class_choice="class 3", guidance=4), dict(class_labels=3, guidance_scale=4.0), 10,
              ", class 3, guidance w=4"),
             (dict(class_choice=NO_CLASS), dict(class_labels=labelled.null_label), 10, ", unconditional, guidance w=2")]
    grids = []
    for page, cli, nfe, words in cases:
        grid, info = af.sample_images(labelled, "ddim", 5, 0.0, None, seed=0, count=3, **page)
        assert np.array_equal(grid, af.picture(labelled.sample(3, steps=5, generator=g(), **cli)))
        assert info["nfe"] == nfe and info["label"] == "DDIM η=0" + words
        grids.append(grid)
    assert all(not np.array_equal(a, b) for i, a in enumerate(grids) for b in grids[i + 1:])
    traj = af.trajectory(labelled, "ddim", 5, 0.0, None, seed=0, class_choice="class 3", guidance=4)
    assert torch.equal(traj.final, labelled.sample(1, steps=5, generator=g(), class_labels=3, guidance_scale=4.0))
    runs = af.compare_samplers(labelled, seed=0, count=1, ddim_steps=(5,), class_choice="class 7")
    assert [i["label"] for _, i in runs] == ["DDPM, class 7, guidance w=2", "DDIM η=0, class 7, guidance w=2"]
    for model, kw, match in [(labelled, dict(class_choice="class 10"), "unknown class 'class 10'; choose one of"),
                             (labelled, dict(guidance=-1), "guidance scale must be a number >= 0"),
                             (labelled, dict(guidance="lots"), "guidance scale must be a number >= 0"),
                             (pipe, dict(class_choice="class 1"), "not class-conditional"),
                             (pipe, dict(guidance=2), "guidance needs a class-conditional model")]:
        with pytest.raises(ValueError, match=match):
            af.sample_images(model, "ddim", 5, 0.0, None, seed=0, count=2, **kw)


@pytest.fixture(scope="module")
def server(run_dir):
    pytest.importorskip("gradio")
    from ddimkit.app import launch

    demo = launch(str(run_dir), host="127.0.0.1", port=_free_port(), device="cpu", block=False)
    yield demo, str(run_dir)
    demo.close()


def _call(client, *args, api_name, timeout=60):
    return client.submit(*args, api_name=api_name).result(timeout=timeout)


def test_served_page_works_and_survives_bad_input(server, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    demo, ckpt = server
    client = Client(demo.local_url, verbose=False)
    grid, info = _call(client, ckpt, "DDIM", 5, 0, "model default", 0, 4, 1, api_name="/sample")
    assert Image.open(grid).size[0] >= 256 and "5 network evaluations" in info
    gallery, table = _call(client, ckpt, 1, 1, api_name="/compare")
    assert len(gallery) == 4 and f"| DDPM | {T} |" in table
    strip, frame, caption, step, _ = _call(client, ckpt, "DDPM", 6, 0, 3, api_name="/trajectory")  # no State
    assert step["maximum"] == step["value"] == 6 and "step 6 of 6" in caption
    assert Image.open(strip).size[0] > Image.open(strip).size[1]
    assert "step 2 of 6" in _call(client, 2, api_name="/trajectory_step")[1]
    rgb = np.zeros((120, 90, 3), np.uint8)
    rgb[30:90, 20:70] = 255
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    shown, noise, rec, text = _call(client, ckpt, handle_file(str(tmp_path / "rgb.png")), "MNIST digit 1", 5, 1,
                                    api_name="/invert")
    assert Image.open(shown).size == Image.open(rec).size and "MSE" in text and "PSNR" in text
    strip, s, lin, text = _call(client, ckpt, None, "MNIST digit 2", None, "MNIST digit 7", 5, 1, 0.5,
                                   api_name="/fuse")
    assert "slerp" in text and Image.open(s).size == Image.open(lin).size
    assert "α = 0.3" in _call(client, ckpt, 0.3, api_name="/fuse_alpha")[2]

    (tmp_path / "junk.png").write_bytes(b"\x89PNG but not really")
    for args, api, match in [((str(tmp_path / "nope"), "DDIM", 5, 0, "model default", 0, 4), "/sample", "cannot load"),
                             ((str(tmp_path / "nope"),), "/load_model", "no such checkpoint or run folder"),
                             ((ckpt, handle_file(str(tmp_path / "junk.png")), None, 5, 1), "/invert",
                              "cannot read junk.png as an image"),
                             ((ckpt, None, None, 5, 1), "/invert", "upload an image or pick a test image"),
                             # an API call may send any scale; this model has no guide to run it with
                             ((ckpt, "DDIM", 5, 0, "model default", 0, 4, 2), "/sample", "this model has none"),
                             # the slider (Gradio) or the function refuses it, each in words
                             ((ckpt, "DDIM", T + 1, 0, "model default", 0, 4), "/sample",
                              f"(more than the model's {T} training timesteps|greater than maximum value {T})")]:
        with pytest.raises(AppError, match=match):
            _call(client, *args, api_name=api)
    # Still serving after all that, and the model box loads a model (and sets the sliders to its T).
    about, steps, *_ = _call(client, ckpt, api_name="/load_model")
    assert "1×28×28 images, T = 100" in about and (steps["maximum"], steps["value"]) == (T, 20)
    assert "4 images" in _call(client, ckpt, "DPM-Solver++", 3, 0, "model default", 1, 4, 1, api_name="/sample")[1]


def test_served_page_offers_a_labelled_models_classes(server, labelled_dir):
    """Loading a class-conditional model shows its class menu and guidance slider, and both reach the sampler."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    demo, ckpt = server
    client = Client(demo.local_url, verbose=False)
    labelled = str(labelled_dir)
    klass, cfg = _call(client, labelled, api_name="/load_model")[4:6]
    assert klass["visible"] and klass["value"] == "every class in turn" and "class 9" in str(klass["choices"])
    assert cfg["visible"] and cfg["interactive"] and cfg["value"] == 2
    _, info = _call(client, labelled, "DDIM", 5, 0, "model default", 0, 2, 1, "class 3", 4, api_name="/sample")
    assert "class 3, guidance w=4" in info and "10 network evaluations" in info
    with pytest.raises(AppError, match="not class-conditional"):
        _call(client, ckpt, "DDIM", 5, 0, "model default", 0, 2, 1, "class 3", 1, api_name="/sample")
    assert not _call(client, ckpt, api_name="/load_model")[4]["visible"]  # back to a model without classes


def test_stop_ends_the_work_itself(run_dir):
    """Gradio's cancels= only ends the event; the Stop flag ends the computation at the next evaluation."""
    pytest.importorskip("gradio")
    import gradio as gr

    from ddimkit.app_page import Page as _Page

    page, request = _Page(Models(device="cpu")), types.SimpleNamespace(session_hash="s1")
    errors = []

    def long_job():  # 256 images × 100 DDPM steps: far longer than the test waits
        try:
            page.sample(str(run_dir), "DDPM", T, 0, "model default", 0, 256, 1, request=request, progress=None)
        except gr.Error as e:
            errors.append(e)

    worker = threading.Thread(target=long_job)
    worker.start()
    deadline = time.monotonic() + 15
    while ("s1", "sample") not in page.stops._flags and time.monotonic() < deadline:  # the model loads first
        time.sleep(0.05)
    time.sleep(0.2)
    page.stopper("sample")(request)
    worker.join(timeout=20)
    assert not worker.is_alive() and errors and "stopped" in str(errors[0])
