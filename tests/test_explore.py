"""The notes' experiments (ddimkit.explore and ``ddimkit explore``) on a tiny, briefly trained model.

The model is barely trained, so the assertions are about what the math guarantees for any network
(identities, determinism, exact endpoints, the schedule's own values), plus what holds for this model.
"""

import dataclasses
import json
import math

import pytest
import torch

import ddimkit as dk
from ddimkit import explore as ex
from ddimkit.cli import explore as explore_cli
from ddimkit.metrics import reconstruction_mse

from ddimkit.cli import main as cli_main_fn
from ddimkit.cli.main import build_parser


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("explore") / "run"
    dk.train(dk.TrainConfig(model="tiny", data="mnist-5k", out=str(out), steps=4, batch_size=8, sample_every=0,
                            num_sample_images=0, save_every=0), progress=False)
    return out


@pytest.fixture(scope="module")
def pipe(run_dir):
    return dk.load(run_dir, device="cpu")


@pytest.fixture
def cli():
    return cli_main_fn


def _written(out, name, pngs=None):
    pngs = pngs or [f"{name}.png"]
    for f in [*pngs, f"{name}.json", f"{name}.md"]:
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert (out / f"{name}.md").read_text().count("|---") >= 1
    return json.loads((out / f"{name}.json").read_text())


def test_schedule_values_match_the_schedules(tmp_path):
    numbers = ex.schedule(tmp_path, num_train_timesteps=100)
    assert _written(tmp_path, "schedule") == numbers
    assert set(numbers["schedules"]) == set(ex.SCHEDULES)
    for name, row in numbers["schedules"].items():
        ab = dk.NoiseSchedule.from_name(name, 100).alphas_cumprod
        assert row["sqrt_alpha_bar_first"] == pytest.approx(math.sqrt(ab[0]), rel=1e-12)
        assert row["sqrt_alpha_bar_last"] == pytest.approx(math.sqrt(ab[-1]), rel=1e-12)
        assert row["sqrt_one_minus_alpha_bar_last"] == pytest.approx(math.sqrt(1 - ab[-1]), rel=1e-12)
        assert row["log_snr_first"] == pytest.approx(math.log(ab[0] / (1 - ab[0])), rel=1e-9)
        t = row["t_snr_1"]  # the first t with SNR <= 1; None where SNR stays above 1 (scaled_linear, T = 100)
        assert ab[t] <= 0.5 < (ab[t - 1] if t else 1.0) if t is not None else ab[-1] > 0.5


def test_variance_precision_reproduces_the_notes_float32_numbers():
    v = ex.variance_precision(dk.NoiseSchedule.linear())
    # The DDIM note prints 0.01999996 (DDIM's _get_variance) and 0.01999998 (DDPM's) at t = 999.
    assert round(v["sigma2_last_t"]["ddim_float32"], 8) == 0.01999996
    assert round(v["sigma2_last_t"]["ddpm_float32"], 8) == 0.01999998
    assert v["sigma2_ddim_vs_ddpm_float64"] < 1e-10  # the same number on paper
    assert 1e-6 < v["sigma2_ddim_float32_vs_float64"] < 1e-2  # float32 loses digits, but only a few
    assert v["one_minus_alpha_ne_beta_float32_count"] > 0  # 1 - (1 - β) != β


def test_noising_with_and_without_a_model(pipe, tmp_path):
    numbers = ex.noising(pipe, tmp_path, num=4)
    _written(tmp_path, "noising")
    rows = numbers["rows"]
    assert [r["t"] for r in rows] == [0, 333, 666, 999] and numbers["indices"] == [0, 1666, 3333, 4999]
    ab = pipe.schedule.alphas_cumprod
    assert rows[1]["sqrt_alpha_bar"] == pytest.approx(math.sqrt(ab[333]), rel=1e-12)
    assert rows[0]["corr_ddpm"] > 0.99 and abs(rows[-1]["corr_ddpm"]) < 0.2
    assert rows[0]["corr_toy"] == pytest.approx(1.0, abs=1e-6) and abs(rows[-1]["corr_toy"]) < 0.2
    alone = ex.noising(None, tmp_path / "alone", num=3)
    assert alone["schedule"] == "linear" and alone["data"] == "mnist-5k"


def test_trajectory_records_both_samplers(pipe, tmp_path):
    numbers = ex.trajectory(pipe, tmp_path, seed=3, ddpm_steps=10, ddim_steps=5, points=3)
    _written(tmp_path, "trajectory", ["trajectory-ddpm.png", "trajectory-ddim.png"])
    for sampler, steps in (("ddpm", 10), ("ddim", 5)):
        pts = numbers[sampler]["points"]
        grid = dk.timesteps(pipe.schedule, steps).tolist()
        assert len(pts) == 3 and [pts[0]["i"], pts[-1]["i"]] == [0, steps - 1]
        assert [p["t"] for p in pts] == [grid[p["i"]] for p in pts] and pts[-1]["t"] == 0
        assert pts[-1]["x0_rms_to_final"] < 1e-6  # the last step returns x̂0 itself


def test_eta_one_equals_ddpm_unless_clipping_keeps_eps(pipe, tmp_path):
    # DDIM(η=1) is DDPM on any grid (respaced DDPM on a sub-grid); 20 steps keep the test fast.
    numbers = ex.eta_vs_ddpm(pipe, tmp_path, seed=33, num=1, steps=20)
    _written(tmp_path, "eta-vs-ddpm")
    no_clip, clip, rederived = numbers["rows"]
    assert no_clip["clip_sample"] is None and no_clip["max_abs_diff"] <= 1e-4
    assert clip["clip_sample"] == 1.0 and clip["max_abs_diff"] > 1e-2  # x̂0 of this model leaves [-1, 1]
    assert rederived["eps_from_clipped_x0"] and rederived["max_abs_diff"] <= 1e-4  # one process again
    assert "0.01999996" in (tmp_path / "eta-vs-ddpm.md").read_text()


def test_steps_grid_starts_every_cell_from_the_seed(pipe, tmp_path):
    numbers = ex.steps_grid(pipe, tmp_path, seed=77, etas=(0.0, 1.0), steps=(2, 5))
    _written(tmp_path, "steps-grid")
    cells = {(r["eta"], r["steps"]): r for r in numbers["rows"]}
    assert set(cells) == {(0.0, 2), (0.0, 5), (1.0, 2), (1.0, 5)}
    assert cells[0.0, 5]["rms_to_most_steps"] == 0 and cells[0.0, 2]["rms_to_most_steps"] > 0
    # A cell is what pipe.sample gives from a fresh generator with the seed.
    again = pipe.sample(1, steps=2, eta=1.0, generator=torch.Generator().manual_seed(77))
    again5 = pipe.sample(1, steps=5, eta=1.0, generator=torch.Generator().manual_seed(77))
    assert cells[1.0, 2]["rms_to_most_steps"] == pytest.approx(float(reconstruction_mse(again, again5)
                                                                     .sqrt()), rel=1e-6)


def test_determinism_eta_zero_ignores_the_generator(pipe, tmp_path):
    numbers = ex.determinism(pipe, tmp_path, etas=(0.0, 0.5, 1.0), steps=5)
    _written(tmp_path, "determinism")
    diffs = {r["eta"]: r["max_abs_diff"] for r in numbers["rows"]}
    assert diffs[0.0] == 0 and diffs[0.5] > 0 and diffs[1.0] > 0
    assert numbers["generator_seeds"] == [8, 9]


def test_reconstruction_runs_on_the_tiny_model(pipe, tmp_path):
    numbers = ex.reconstruction(pipe, tmp_path, num=3, steps=(2, 10), refine=2)
    _written(tmp_path, "reconstruction")
    assert {(r["refine"], r["steps"]) for r in numbers["rows"]} == {(0, 2), (0, 10), (2, 2), (2, 10)}
    assert numbers["indices"] == [0, 2500, 4999]
    # A network trained for 4 steps has an ε̂ that changes wildly with x: its round-trip error need not fall
    # with more steps or with refinement (it did and did not, for different builds), so only sanity is checked.
    for r in numbers["rows"]:
        assert 0 < r["mse"] < 1 and r["psnr"] == pytest.approx(-10 * math.log10(r["mse"]), abs=6)


def test_reconstruction_error_falls_with_steps_and_refinement(oracle, tmp_path):
    numbers = ex.reconstruction(oracle, tmp_path, num=3, steps=(5, 20), refine=3)
    mse = {(r["refine"], r["steps"]): r["mse"] for r in numbers["rows"]}
    # Plain inversion takes ε̂ at the lower point: a first-order error that shrinks with smaller steps.
    assert mse[0, 20] < 0.5 * mse[0, 5]
    # Fixed-point refinement solves each step for ε̂ at the upper point: near-exact for a smooth ε̂.
    assert mse[3, 5] < 0.2 * mse[0, 5] and mse[3, 20] < 1e-5
    text = (tmp_path / "reconstruction.md").read_text()
    assert "3 fixed-point iterations" in text and "PSNR" in text


def test_interpolation_slerp_keeps_the_norm_and_lerp_does_not(pipe, tmp_path):
    numbers = ex.interpolation(pipe, tmp_path, alphas=(0.0, 0.5, 1.0), steps=4, refine=1)
    _written(tmp_path, "interpolation")
    mid = numbers["seed_pair"]["rows"][1]
    assert mid["alpha"] == 0.5 and mid["norm_slerp"] > 0.95 and mid["norm_lerp"] < 0.8
    assert 80 < numbers["seed_pair"]["angle_degrees"] < 100  # independent noises are nearly orthogonal
    pair = numbers["image_pair"]
    assert pair["indices"] == [0, 4999] and pair["refine"] == 1 and pair["endpoint_mse"] >= 0
    # The endpoints of the seed rows are the plain decodes of the seeds' noises.
    noise = dk.randn((1, *pipe.image_shape), torch.Generator().manual_seed(77))
    decoded = pipe.reconstruct(noise, steps=4)
    std0 = numbers["seed_pair"]["rows"][0]["image_std_slerp"]
    assert std0 == pytest.approx(float(decoded.std()), rel=1e-5)


def test_interpolation_of_inverted_images_starts_and_ends_at_them(oracle, tmp_path):
    numbers = ex.interpolation(oracle, tmp_path, alphas=(0.0, 0.5, 1.0), steps=20, refine=3, images=(7, 4000))
    pair = numbers["image_pair"]
    assert pair["indices"] == [7, 4000] and pair["endpoint_mse"] < 1e-5


def test_without_a_dataset(pipe, tmp_path):
    bare = dataclasses.replace(pipe, config={})
    numbers = ex.interpolation(bare, tmp_path, alphas=(0.0, 1.0), steps=2)
    assert numbers["image_pair"] is None and "pass --data" in (tmp_path / "interpolation.md").read_text()
    with pytest.raises(ValueError, match="names no dataset"):
        ex.reconstruction(bare, tmp_path, num=2, steps=(2,))
    with pytest.raises(ValueError, match="cannot load the images"):
        ex.reconstruction(pipe, tmp_path, data="npz:/no/such/file.npz", num=2, steps=(2,))
    with pytest.raises(ValueError, match="unknown experiment"):
        ex.run("nope", pipe, tmp_path)
    with pytest.raises(ValueError, match="needs a model"):
        ex.run("steps-grid", None, tmp_path)


def _error(cli, capsys, argv, *match):
    code = cli(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for m in match:
        assert m in err, err


def test_cli_runs_experiments(cli, run_dir, tmp_path, capsys):
    assert cli(["explore", "schedule", "--out", str(tmp_path), "--timesteps", "50"]) == 0
    assert json.loads((tmp_path / "schedule.json").read_text())["num_train_timesteps"] == 50
    assert cli(["explore", "determinism", "--ckpt", str(run_dir), "--out", str(tmp_path), "--steps", "2",
                "--etas", "0,1", "--seeds", "3,4", "--no-clip"]) == 0
    numbers = json.loads((tmp_path / "determinism.json").read_text())
    assert numbers["steps"] == 2 and numbers["generator_seeds"] == [3, 4] and len(numbers["rows"]) == 2
    assert "determinism.png" in capsys.readouterr().out


def test_cli_maps_options_to_keywords(cli):
    parser = build_parser()

    def options(*argv):
        args = parser.parse_args(["explore", *argv, "--out", "x"])
        return explore_cli.experiment_options(args.name, args)

    assert options("steps-grid", "--clip-range", "2", "--steps", "5,10") == {
        "clip_sample": 2.0, "steps": [5, 10], "progress": True}
    assert options("trajectory", "--no-clip", "--steps", "7")["clip_sample"] is None
    assert options("interpolation", "--images", "3,9", "--steps", "7") == {"images": [3, 9], "steps": 7,
                                                                          "progress": True}
    assert options("schedule", "--timesteps", "10") == {"num_train_timesteps": 10}


def test_cli_errors_are_one_line(cli, run_dir, tmp_path, capsys):
    out = str(tmp_path)
    _error(cli, capsys, ["explore", "nope", "--out", out], "unknown experiment 'nope'", "steps-grid")
    _error(cli, capsys, ["explore", "steps-grid", "--out", out], "needs a model", "--ckpt")
    _error(cli, capsys, ["explore", "schedule", "--ckpt", str(run_dir), "--out", out], "takes no --ckpt")
    _error(cli, capsys, ["explore", "reconstruction", "--ckpt", str(run_dir), "--out", out, "--etas", "0"],
           "--etas does not apply to reconstruction")
    _error(cli, capsys, ["explore", "determinism", "--ckpt", str(run_dir), "--out", out, "--steps", "5,10"],
           "one --steps value")
    _error(cli, capsys, ["explore", "reconstruction", "--ckpt", str(run_dir), "--out", out, "--data",
                         "npz:/no/such.npz", "--steps", "2"], "cannot load the images")
