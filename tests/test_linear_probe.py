import torch

from contrastkit.linear_probe import fit_linear_probe


def test_probe_separates_gaussian_blobs():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=g) * 3
    y = torch.arange(4).repeat(100)
    x = centers[y] + torch.randn(400, 16, generator=g)
    yt = torch.arange(4).repeat(50)
    xt = centers[yt] + torch.randn(200, 16, generator=g)
    probe = fit_linear_probe(x, y)
    acc = (probe.logits(xt).argmax(1) == yt).float().mean()
    assert acc > 0.95
    assert torch.allclose(probe.predict_proba(xt).sum(1), torch.ones(200), atol=1e-5)


def test_probe_on_random_labels_is_near_chance_on_new_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 8, generator=g)
    y = torch.randint(0, 3, (300,), generator=g)
    probe = fit_linear_probe(x, y)
    xt = torch.randn(3000, 8, generator=g)
    yt = torch.randint(0, 3, (3000,), generator=g)
    acc = float((probe.logits(xt).argmax(1) == yt).float().mean())
    assert 0.25 < acc < 0.42


def test_penalty_is_chosen_on_held_out_data():
    g = torch.Generator().manual_seed(2)
    # 100 items in 400 dimensions, one informative: an almost unpenalised fit memorises the noise
    # dimensions, so the held-out tenth must choose the strong penalty from this grid
    x = torch.randn(100, 400, generator=g)
    y = (x[:, 0] > 0).long()
    x[:, 0] *= 0.3
    probe = fit_linear_probe(x, y, l2_grid=(1e-9, 1e-1))  # a tie would keep 1e-9
    assert probe.l2 == 1e-1
