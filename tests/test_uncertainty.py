"""Uncertainty measures: values against hand-computed cases and torchmetrics, and a real OOD measurement."""

import math

import pytest
import torch
from torchmetrics.functional.classification import multiclass_calibration_error

from ugmm.nn import log_joint, log_joint_all, uGMMNet
from ugmm.uncertainty import (
    add_gaussian_noise,
    calibration_bins,
    expected_calibration_error,
    log_marginal,
    noise_images,
    ood_auroc,
    predictive_entropy,
    rotate_images,
)

# confidences 0.65 (right), 0.85 (wrong), 0.95 (right): no value on a bin edge
PROBS = torch.tensor([[0.65, 0.35], [0.15, 0.85], [0.95, 0.05]])
TARGETS = torch.tensor([0, 0, 0])


def test_ece_hand_computed():
    # 2 bins: all in [0.5, 1]: mean conf 0.81667, accuracy 2/3 -> 0.15
    assert expected_calibration_error(PROBS, TARGETS, n_bins=2) == pytest.approx(0.15)
    # 5 bins: [0.6, 0.8) holds 0.65 (gap 0.35); [0.8, 1] holds 0.85, 0.95 (conf 0.9, acc 0.5, gap 0.4)
    assert expected_calibration_error(PROBS, TARGETS, n_bins=5) == pytest.approx((0.35 + 2 * 0.4) / 3)
    bins = calibration_bins(PROBS, TARGETS, n_bins=5)
    assert bins.count.tolist() == [0, 0, 0, 1, 2]
    assert bins.accuracy[3:].tolist() == [1.0, 0.5]
    torch.testing.assert_close(bins.confidence[3:], torch.tensor([0.65, 0.9], dtype=torch.float64))
    # a perfectly confident, always right classifier is calibrated; a confident, always wrong one is not
    assert expected_calibration_error(torch.eye(3), torch.arange(3)) == 0.0
    assert expected_calibration_error(torch.eye(3), torch.tensor([1, 2, 0])) == pytest.approx(1.0)


def test_ece_matches_torchmetrics():
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(3 * torch.randn(500, 10, generator=g), dim=1)
    targets = torch.randint(10, (500,), generator=g)
    for n_bins in (5, 15):
        want = multiclass_calibration_error(probs, targets, num_classes=10, n_bins=n_bins).item()
        assert expected_calibration_error(probs, targets, n_bins) == pytest.approx(want, abs=1e-6)


def test_ece_errors():
    with pytest.raises(ValueError, match="shape"):
        expected_calibration_error(torch.rand(4), torch.zeros(4))
    with pytest.raises(ValueError, match="targets"):
        expected_calibration_error(torch.rand(4, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(PROBS, TARGETS, n_bins=0)


def test_predictive_entropy():
    h = predictive_entropy(torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, -math.inf, -math.inf, -math.inf]]))
    torch.testing.assert_close(h, torch.tensor([math.log(4), 0.0]))
    h2 = predictive_entropy(torch.tensor([[math.log(0.25), math.log(0.75)]]))
    assert h2.item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), rel=1e-6)
    # (S, B) log-joints along dim 0 equal the transposed (B, S) ones; logits are shift invariant
    scores = torch.randn(3, 5)
    torch.testing.assert_close(predictive_entropy(scores, dim=0), predictive_entropy(scores.T + 100.0))


def test_ood_auroc_hand_computed():
    assert ood_auroc(torch.tensor([3.0, 4.0, 5.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert ood_auroc(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])) == 0.0
    # pairs (in, out): (1,2) (1,4) (3,2) (3,4): in wins once -> 1/4
    assert ood_auroc(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 4.0])) == pytest.approx(0.25)
    assert ood_auroc(torch.tensor([1.0]), torch.tensor([1.0])) == pytest.approx(0.5)
    # -inf is the lowest score, not an error
    assert ood_auroc(torch.tensor([0.0, -1.0]), torch.tensor([-math.inf, -2.0])) == 1.0
    with pytest.raises(ValueError, match="NaN"):
        ood_auroc(torch.tensor([math.nan]), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="at least one"):
        ood_auroc(torch.tensor([]), torch.tensor([0.0]))


def test_log_marginal_equals_sum_over_labels():
    net = uGMMNet(4, 1, hidden=[5]).eval()
    x = torch.randn(6, 3)
    states = torch.arange(3.0)
    full = torch.cat([x, torch.zeros(6, 1)], dim=1)
    want = torch.logsumexp(torch.stack([log_joint(net, x, torch.full((6,), s)) for s in states]), dim=0)
    torch.testing.assert_close(log_marginal(net, full, 3, states), want.detach())
    torch.testing.assert_close(log_marginal(net, full, 3, states), log_joint_all(net, full, 3, states).logsumexp(0))


def test_density_model_log_likelihood_detects_shifted_data():
    """A real measurement: a uGMM density over 2-D blobs scores them above the same blobs shifted away."""
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-2.0, -2.0], [2.0, 2.0]])
    x = centres[torch.randint(2, (400,), generator=g)] + 0.5 * torch.randn(400, 2, generator=g)
    net = uGMMNet(2, 1, hidden=[8, 4])
    opt = torch.optim.Adam(net.parameters(), lr=2e-2)
    for _ in range(200):
        opt.zero_grad()
        (-net(x).mean()).backward()
        opt.step()
    with torch.no_grad():
        score_in, score_out = net.eval()(x)[:, 0], net(x + 6.0)[:, 0]  # every feature outside its range
    assert ood_auroc(score_in, score_out) > 0.95


def test_rotate_images():
    x = torch.rand(3, 1, 6, 6)
    torch.testing.assert_close(rotate_images(x, 90), torch.rot90(x, 1, (-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(rotate_images(x, 0), x)
    torch.testing.assert_close(rotate_images(x[:, 0], 180), torch.rot90(x[:, 0], 2, (-2, -1)), atol=1e-5, rtol=0)
    # 45 degrees: corners leave the frame and become background (0)
    r = rotate_images(torch.ones(1, 8, 8), 45)
    assert r.shape == (1, 8, 8) and r[0, 0, 0] == 0 and r[0, 4, 4] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="images"):
        rotate_images(torch.rand(8, 8), 10)


def test_noise_images_and_additive_noise():
    like = torch.zeros(50, 1, 28, 28)
    g = torch.Generator().manual_seed(0)
    for kind in ("uniform", "gaussian"):
        n = noise_images(like, kind, generator=g)
        assert n.shape == like.shape and n.min() >= 0 and n.max() <= 1 and n.std() > 0.1
    assert noise_images(like, "uniform", generator=g).mean().item() == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError, match="noise kind"):
        noise_images(like, "salt")
    with pytest.raises(ValueError, match="high > low"):
        noise_images(like, low=1.0, high=1.0)
    x = torch.rand(4, 784)
    torch.testing.assert_close(add_gaussian_noise(x, 0.0), x)
    noisy = add_gaussian_noise(x, 0.3, generator=g)
    assert noisy.min() >= 0 and noisy.max() <= 1 and (noisy - x).abs().mean() > 0.1


def test_ood_aupr_and_scores():
    from ugmm.nn import MLP, uGMMNet
    from ugmm.uncertainty import ood_aupr, ood_scores

    # perfect separation: 1; fully reversed: the precision of the worst ranking
    assert ood_aupr(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == pytest.approx(1.0)
    assert ood_aupr(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])) < 0.6
    assert ood_aupr(torch.tensor([float("inf")]), torch.tensor([float("-inf")])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="NaN"):
        ood_aupr(torch.tensor([float("nan")]), torch.tensor([0.0]))

    torch.manual_seed(0)
    x = torch.randn(6, 5)
    net = uGMMNet(5, 3, width=4, depth=1).eval()
    scores = ood_scores(net, x)
    assert sorted(scores) == sorted(
        ["max_softmax", "neg_entropy", "max_logit", "mean_logit", "ugmm0_max", "ugmm0_mean", "ugmm1_max", "ugmm1_mean"]
    )
    hidden = net.layers[0](x)
    torch.testing.assert_close(scores["ugmm0_max"], hidden.amax(1))
    torch.testing.assert_close(scores["ugmm1_max"], net(x).amax(1))
    torch.testing.assert_close(scores["max_logit"], scores["ugmm1_max"])
    torch.testing.assert_close(scores["mean_logit"], scores["ugmm1_mean"])
    assert all(s.shape == (6,) for s in scores.values())
    mlp_scores = ["max_logit", "max_softmax", "mean_logit", "neg_entropy"]
    assert sorted(ood_scores(MLP(5, 3, width=4, depth=1), x)) == mlp_scores
    # no hook is left behind
    assert not any(m._forward_hooks for m in net.modules())


def test_ood_scores_in_batches_and_ood_metrics():
    from ugmm.nn import uGMMNet
    from ugmm.uncertainty import ood_aupr, ood_metrics, ood_scores

    torch.manual_seed(0)
    net = uGMMNet(5, 3, width=4, depth=1).eval()
    x = torch.randn(7, 5)
    whole, batched = ood_scores(net, x), ood_scores(net, x, batch_size=3)
    assert list(batched) == list(whole)
    for key in whole:
        torch.testing.assert_close(batched[key], whole[key])
    with pytest.raises(ValueError, match="batch_size"):
        ood_scores(net, x, batch_size=0)

    shifted = ood_scores(net, x + 5.0)
    metrics = ood_metrics(whole, shifted)
    assert list(metrics) == list(whole)
    for key, m in metrics.items():
        assert m == {"auroc": ood_auroc(whole[key], shifted[key]), "aupr": ood_aupr(whole[key], shifted[key])}
    # only the scores both sides hold; none in common is an error
    assert list(ood_metrics(whole, {"max_logit": shifted["max_logit"]})) == ["max_logit"]
    with pytest.raises(ValueError, match="no score in common"):
        ood_metrics(whole, {"log_px": shifted["max_logit"]})


def test_typical_range_flags_outliers_on_both_sides():
    from ugmm.nn import MLP, uGMMNet
    from ugmm.uncertainty import fit_typical_range, ood_auroc, ood_scores

    torch.manual_seed(0)
    net = uGMMNet(8, 2, width=3, depth=1).eval()
    with torch.no_grad():  # every first-layer component centred on 0: rows near 0 are the densest
        net.layers[0].mean.zero_()
    reference, inside = torch.randn(400, 8), torch.randn(300, 8)
    typical = fit_typical_range(net, reference, batch_size=64)
    plain = ood_scores(net, reference)
    assert typical.mean["ugmm0_mean"] == pytest.approx(plain["ugmm0_mean"].double().mean().item(), rel=1e-5)
    assert typical.std["ugmm0_mean"] == pytest.approx(plain["ugmm0_mean"].double().std().item(), rel=1e-5)

    scores = ood_scores(net, inside, typical=typical)
    assert set(scores) == set(plain) | {f"{key}_typical" for key in plain}
    torch.testing.assert_close(
        scores["max_logit_typical"],
        -(scores["max_logit"] - typical.mean["max_logit"]).abs() / typical.std["max_logit"],
    )
    far, too_central = torch.randn(300, 8) + 6.0, torch.zeros(300, 8)  # less dense, and denser, than typical
    for outliers in (far, too_central):
        out = ood_scores(net, outliers, typical=typical, batch_size=128)
        assert ood_auroc(scores["ugmm0_mean_typical"], out["ugmm0_mean_typical"]) > 0.9
    # the one-sided score ranks the too-central rows as the most typical of all
    assert ood_auroc(scores["ugmm0_mean"], ood_scores(net, too_central)["ugmm0_mean"]) < 0.1

    mlp = MLP(8, 2, width=3, depth=1).eval()  # any network: its four scores get typical twins
    assert len(ood_scores(mlp, inside, typical=fit_typical_range(mlp, reference))) == 8
    with pytest.raises(ValueError, match="at least 2"):
        fit_typical_range(net, reference[:1])
