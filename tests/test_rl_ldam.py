"""LDAM: stall detection on synthetic reward / gradient-norm series, the layer-group noise, exact resume."""

import io

import pytest
import torch

from parauni.rl.ldam import LDAM, default_layer_groups


def _run(ldam, rewards, grads, name="clipscore"):
    return [ldam.update(e, {name: r}, {name: g})[0] for e, (r, g) in enumerate(zip(rewards, grads, strict=True))]


def test_default_groups_are_thirds():
    assert default_layer_groups(6) == {"shallow": [0, 1], "middle": [2, 3], "deep": [4, 5]}
    g = default_layer_groups(28)
    assert [len(v) for v in g.values()] == [10, 9, 9] and sum(g.values(), []) == list(range(28))


def test_improving_reward_never_fires_even_with_rising_grad_norm():
    decisions = _run(LDAM(["clipscore"], num_layers=6), [0.1 * e for e in range(20)], [1.0 + e for e in range(20)])
    assert not any(d["active"] for d in decisions)
    assert all(d["r_s"] == 0 for d in decisions) and decisions[-1]["g_s"] == 19


def test_stalled_reward_with_rising_grad_fires_when_both_counters_reach_patience():
    rewards = [1.0, 0.9, 0.8, 0.95, 0.7, 0.6, 0.65, 0.5]
    grads = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 6.5]
    decisions = _run(LDAM(["clipscore"], num_layers=6), rewards, grads)
    assert [d["active"] for d in decisions] == [False] * 5 + [True, True, False]
    assert [(d["g_s"], d["r_s"]) for d in decisions] == [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6),
                                                         (0, 7)]
    fired = decisions[5]
    # window = epochs 1..5: G in [2, 6], R in [0.6, 0.95]
    assert fired["gamma"] == pytest.approx(0.1 * ((6.0 - 2.0) + (0.95 - 0.6)))
    assert fired["layers"] == [4, 5] and fired["group"] == "deep" and fired["epoch"] == 5
    assert decisions[6]["gamma"] == pytest.approx(0.1 * ((7.0 - 3.0) + (0.95 - 0.6)))
    assert decisions[7]["layers"] == []


def test_reward_above_window_max_resets_r_s():
    rewards = [1.0, 0.9, 0.9, 0.9, 0.9, 1.01, 0.9]
    decisions = _run(LDAM(["clipscore"], num_layers=6), rewards, [float(e) for e in range(7)])
    assert [d["r_s"] for d in decisions] == [0, 1, 2, 3, 4, 0, 1]
    assert not any(d["active"] for d in decisions)


def test_log_keeps_every_decision_and_one_grad_norm_serves_all_rewards():
    ldam = LDAM(["pickscore", "aesthetic"], num_layers=6)
    for e in range(3):
        ldam.update(e, {"pickscore": 1.0, "aesthetic": 2.0}, 0.5 + e)
    assert len(ldam.log) == 6 and {d["reward"] for d in ldam.log} == {"pickscore", "aesthetic"}
    assert set(ldam.log[0]) >= {"epoch", "reward", "g_s", "r_s", "gamma", "active", "layers"}


def _stall(ldam, names, epochs=6):
    for e in range(epochs):
        ldam.update(e, {n: 1.0 - 0.01 * e for n in names}, {n: 1.0 + e for n in names})


def test_noise_only_on_the_mapped_group_with_std_gamma():
    ldam2 = LDAM(["aesthetic"], num_layers=6)
    assert ldam2.noise(6, (2, 3, 4)) is None
    _stall(ldam2, ["aesthetic"])
    (d,) = ldam2.active
    eps = ldam2.noise(6, (4, 64, 256))  # (L, B, N, D)
    assert eps.shape == (6, 4, 64, 256)
    assert eps[[0, 1, 4, 5]].abs().sum() == 0
    assert eps[2:4].std().item() == pytest.approx(d["gamma"], rel=0.01)
    assert eps[2:4].mean().abs().item() < 0.01 * d["gamma"]
    with pytest.raises(ValueError, match="6 layers"):
        ldam2.noise(5, (1, 2, 3))


def test_missing_reward_value_is_an_error():
    ldam = LDAM(["aesthetic", "pickscore"], num_layers=6)
    with pytest.raises(KeyError, match="pickscore"):
        ldam.update(0, {"aesthetic": 1.0}, 1.0)
    assert not ldam.log and not ldam.history["aesthetic"]["r"]  # nothing recorded from the bad call


def test_rewards_sharing_a_group_add_their_noise():
    groups = {"a": [0], "b": [1, 2]}
    ldam = LDAM(["toy_quality", "toy_alignment"], groups, {"toy_quality": "b", "toy_alignment": "b"}, num_layers=3)
    _stall(ldam, ["toy_quality", "toy_alignment"])
    gammas = [d["gamma"] for d in ldam.active]
    assert len(gammas) == 2
    eps = ldam.noise(3, (8, 32, 128), generator=torch.Generator().manual_seed(0))
    assert eps[0].abs().sum() == 0
    assert eps[1:].var().item() == pytest.approx(sum(g**2 for g in gammas), rel=0.02)


def test_unknown_reward_and_bad_group_errors_name_the_fix():
    with pytest.raises(KeyError, match="reward_to_group"):
        LDAM(["hpsv2"], num_layers=6)
    with pytest.raises(KeyError, match="unknown layer group"):
        LDAM(["hpsv2"], reward_to_group={"hpsv2": "top"}, num_layers=6)
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        LDAM(["clipscore"], {"deep": [5, 6]}, num_layers=6)
    assert LDAM(["hpsv2"], reward_to_group={"hpsv2": "deep"}, num_layers=6).reward_to_group["hpsv2"] == "deep"


def test_state_round_trip_resumes_exactly():
    rewards = [1.0, 0.9, 0.8, 0.95, 0.7, 0.6, 0.65, 0.5, 0.55, 0.4]
    grads = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    full = LDAM(["clipscore"], num_layers=6, seed=3)
    first = _run(full, rewards, grads)
    full.noise(6, (2, 3, 4))

    half = LDAM(["clipscore"], num_layers=6, seed=3)
    _run(half, rewards[:6], grads[:6])
    half.noise(6, (2, 3, 4))  # advances the generator: the resumed copy must continue from here
    buf = io.BytesIO()
    torch.save(half.state_dict(), buf)
    buf.seek(0)
    resumed = LDAM(["clipscore"], num_layers=6, seed=99)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    half_next = [half.update(e, {"clipscore": rewards[e]}, grads[e])[0] for e in range(6, 10)]
    resumed_next = [resumed.update(e, {"clipscore": rewards[e]}, grads[e])[0] for e in range(6, 10)]
    assert resumed_next == half_next == first[6:]
    assert resumed.log == half.log
    assert torch.equal(resumed.noise(6, (2, 3, 4)), half.noise(6, (2, 3, 4)))

    with pytest.raises(ValueError, match="window"):
        LDAM(["clipscore"], num_layers=6, window=4).load_state_dict(half.state_dict())
