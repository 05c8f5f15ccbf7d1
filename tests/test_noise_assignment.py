"""Noise assignment (Immiscible Diffusion): the exact least-distance pairing of a batch's images and noise."""

import itertools

import pytest
import torch

import ddimkit as dk
from ddimkit.checkpoint import read_checkpoint
from ddimkit.noise_assignment import assign_noise
from ddimkit.train import TrainConfig, draw_batch


def _total(x0, noise):
    return float((x0 - noise).pow(2).sum())


@pytest.mark.parametrize("seed", range(4))
def test_assignment_is_the_least_total_distance_of_all_pairings(seed):
    """Against every one of the 6! pairings: the assignment's total ‖x0_i − ε_i‖² is the least."""
    g = torch.Generator().manual_seed(seed)
    x0, noise = torch.rand(6, 1, 3, 3, generator=g) * 2 - 1, torch.randn(6, 1, 3, 3, generator=g)
    best = min(_total(x0, noise[list(p)]) for p in itertools.permutations(range(6)))
    got = assign_noise(x0, noise)
    assert _total(x0, got) == pytest.approx(best, rel=1e-6)
    assert _total(x0, got) < _total(x0, noise)  # with these draws the identity pairing is not optimal
    # a reordering of the same draws: each row of the result is one row of the input, used once
    used = sorted(int((noise == row).all(dim=(1, 2, 3)).nonzero()) for row in got)
    assert used == list(range(6))


def test_assignment_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        assign_noise(torch.zeros(4, 1, 2, 2), torch.zeros(3, 1, 2, 2))


def test_draw_batch_reorders_the_same_noise_after_the_flips():
    """The option changes which image gets which draw, nothing else: the images (flipped as before), t and
    the set of noise draws are those of a run without it, and the pairing is the assignment of the final
    (flipped) images."""
    images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
    s = dk.NoiseSchedule.linear()
    plain = draw_batch(TrainConfig(batch_size=16, flip=True), 5, images, s, None)
    paired = draw_batch(TrainConfig(batch_size=16, flip=True, noise_assignment="batch"), 5, images, s, None)
    assert torch.equal(plain[0], paired[0]) and torch.equal(plain[3], paired[3])
    assert torch.equal(paired[1], assign_noise(plain[0], plain[1]))
    assert _total(paired[0], paired[1]) < _total(plain[0], plain[1])
    assert sorted(plain[1].flatten().tolist()) == sorted(paired[1].flatten().tolist())


def test_noise_assignment_option_is_stored_and_checked(tmp_path, capsys):
    from ddimkit.cli import main

    assert TrainConfig().noise_assignment == "none"
    assert main(["train", "--model", "tiny", "--out", str(tmp_path / "a"), "--steps", "2", "--batch-size", "8",
                 "--sample-every", "0", "--noise-assignment", "batch"]) == 0
    assert read_checkpoint(tmp_path / "a")["config"]["train"]["noise_assignment"] == "batch"
    with pytest.raises(ValueError, match="noise_assignment must be one of none, batch"):
        TrainConfig(noise_assignment="knn")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["train", "--out", str(tmp_path / "b"), "--noise-assignment", "knn"])
    assert e.value.code != 0 and "invalid choice" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_sample_warns_when_a_stochastic_sampler_meets_an_assigned_model(tmp_path, capsys):
    """η > 0 and DDPM assume noise independent of the image; `sample` says so for a model trained with it,
    and says nothing for η = 0 or for a model trained with independent noise."""
    from ddimkit.cli import main

    for name, option in (("assigned", "batch"), ("plain", "none")):
        assert main(["train", "--model", "tiny", "--out", str(tmp_path / name), "--steps", "1", "--batch-size",
                     "4", "--sample-every", "0", "--noise-assignment", option]) == 0
    capsys.readouterr()
    for name, extra, warned in (("assigned", ["--eta", "1"], True), ("assigned", ["--sampler", "ddpm"], True),
                                ("assigned", [], False), ("plain", ["--eta", "1"], False)):
        assert main(["sample", "--ckpt", str(tmp_path / name), "--num", "1", "--steps", "2", *extra,
                     "--out", str(tmp_path / "s.png")]) == 0
        assert ("trained with noise assignment" in capsys.readouterr().err) is warned, (name, extra)
