"""Networks, checkpoints, the estimator API and the R^2 metric, without Ray."""

import json

import numpy as np
import pytest
import torch

import mechinfer
from mechinfer.data.samples import TEST_SEED
from mechinfer.learn import checkpoint, networks
from mechinfer.learn import losses as training
from mechinfer.models import likelihood as metrics


@pytest.fixture
def ecoli():
    return mechinfer.get_model("ecoli")


def _sets(b=3, n=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, n, generator=g) * 6, torch.randint(0, 4, (b, n), generator=g), torch.randn(b, n, generator=g)


@pytest.mark.parametrize("pooling", ["mean", "max", "meanmax"])
def test_deep_set_is_permutation_invariant_and_ignores_padding(ecoli, pooling):
    net = networks.build(networks.default_config(ecoli, "inference", width=32, depth=2, pooling=pooling))
    t, ch, v = _sets()
    z = net(t, ch, v)
    assert z.shape == (3, 20)
    perm = torch.randperm(30)
    torch.testing.assert_close(net(t[:, perm], ch[:, perm], v[:, perm]), z, rtol=1e-5, atol=1e-5)
    pad = torch.full((3, 7), float("nan"))
    torch.testing.assert_close(
        net(torch.cat([t, pad], 1), torch.cat([ch, torch.zeros(3, 7, dtype=torch.long)], 1), torch.cat([v, pad], 1)), z
    )


def test_random_subsets_keep_between_min_and_all():
    t, _, v = _sets(b=500)
    ts, vs = training.random_subsets(t, v, 5, torch.Generator().manual_seed(1))
    kept = torch.isfinite(ts).sum(1)
    assert kept.min() >= 5 and kept.max() == 30 and torch.equal(torch.isfinite(ts), torch.isfinite(vs))


def test_checkpoint_round_trip_and_refusals(ecoli, tmp_path):
    net = networks.build(networks.default_config(ecoli, "inference", width=16, depth=1))
    meta = checkpoint.save(
        str(tmp_path / "ck"), net, model="ecoli", dataset_manifest={"model": "ecoli"}, metrics={"val_loss": 1.0}
    )
    assert meta["checkpoint_id"].startswith("ecoli-inference-")
    loaded, meta2 = checkpoint.load(str(tmp_path / "ck"), model="ecoli", kind="inference")
    t, ch, v = _sets()
    torch.testing.assert_close(loaded(t, ch, v), net(t, ch, v))
    assert meta2["metrics"] == {"val_loss": 1.0} and meta2["spec_version"] == 1
    with pytest.raises(ValueError, match="is for model 'ecoli', not 'mmk'"):
        checkpoint.load(str(tmp_path / "ck"), model="mmk")
    with pytest.raises(ValueError, match="holds a inference network, not a proxy network"):
        checkpoint.load(str(tmp_path / "ck"), kind="proxy")
    meta_file = tmp_path / "ck" / checkpoint.META
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "spec_version": 0}))
    with pytest.raises(ValueError, match="spec version 0"):
        checkpoint.load(str(tmp_path / "ck"))
    with pytest.raises(ValueError, match="has no checkpoint.json"):
        checkpoint.load(str(tmp_path))
    with torch.no_grad():
        net.rho[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite weights"):
        checkpoint.save(str(tmp_path / "bad"), net, model="ecoli", dataset_manifest=None)
    assert not (tmp_path / "bad" / checkpoint.META).exists()


def test_estimator_api_and_input_checks(tmp_path):
    m = mechinfer.get_model("mmk")
    net = networks.build(networks.default_config(m, "inference", width=16, depth=1))
    checkpoint.save(str(tmp_path / "ck"), net, model="mmk", dataset_manifest=None)
    est = mechinfer.load_estimator(str(tmp_path / "ck"))
    t = np.array([[0.1, 0.5, 1.0, np.nan], [0.2, 0.4, 1.5, 1.9]])
    ch = np.array([[0, 1, 0, 0], [1, 1, 0, 1]])
    v = np.array([[5.0, 1.0, 4.0, np.nan], [1.0, 2.0, 3.0, 3.5]])
    theta = est.estimate(t, ch, v)
    assert theta.shape == (2, 4)
    m.check_theta(torch.from_numpy(theta))  # inside the prior
    with pytest.raises(ValueError, match=r"in \[0, 2\] h"):
        est.estimate(t + 5, ch, v)
    with pytest.raises(ValueError, match="integer indices into"):
        est.estimate(t, ch + 2, v)
    with pytest.raises(ValueError, match="same \\(B, N\\) shape"):
        est.estimate(t, ch[:, :2], v)
    with pytest.raises(ValueError, match="row 0 has no observations"):
        est.estimate(np.full((1, 3), np.nan), np.zeros((1, 3), int), np.full((1, 3), np.nan))
    with pytest.raises(ValueError, match="spec version|not a mechinfer checkpoint"):
        mechinfer.load_estimator(str(tmp_path))


def test_r2_metric():
    m = mechinfer.get_model("mmk")
    rng = np.random.default_rng(0)
    clean = rng.uniform(0, 10, (200, 14))
    ch = rng.integers(0, 2, (200, 14))
    x = clean + 0.5 * rng.standard_normal((200, 14))
    perfect = metrics.r2(m, x, ch, x)
    assert perfect.value == 1.0 and perfect.stderr == 0.0
    truth = metrics.r2(m, clean, ch, x)
    expected = 1 - ((x - clean) ** 2).sum() / sum(((x[ch == c] - x[ch == c].mean()) ** 2).sum() for c in (0, 1))
    assert truth.value == pytest.approx(expected)
    assert 0 < truth.stderr < 0.01
    x_pad = x.copy()
    x_pad[:, -2:] = np.nan  # padded entries carry no weight
    assert metrics.r2(m, clean, ch, x_pad).value == pytest.approx(
        metrics.r2(m, clean[:, :-2], ch[:, :-2], x[:, :-2]).value
    )


@pytest.mark.parametrize("name, slack", [("mmk", 0.01), ("ecoli", 0.02)])
def test_shipped_estimators_reach_the_true_parameters_r2(name, slack):
    """The shipped checkpoints load by model name and, on the first 256 samples of the SPEC
    test set, reach the R^2 of the true parameters minus the issue's slack."""
    est = mechinfer.load_estimator(name)
    m = mechinfer.get_model(name)
    assert est.model is m and est.meta["spec_version"] == 1 and est.checkpoint_id.startswith(f"{name}-inference-")
    assert est.meta["dataset"]["seed"] != TEST_SEED
    from mechinfer.data.samples import simulate_chunk

    test = simulate_chunk(m, TEST_SEED, 0, 256, compile=False)
    theta = est.estimate(test["t"], test["channel"], test["value"])
    y = m.simulate(theta, test["t"], compile=False)
    mu = np.take_along_axis(y, test["channel"][..., None].astype(int), 2)[..., 0]
    net = metrics.r2(m, mu, test["channel"], test["value"]).value
    truth = metrics.r2(m, test["clean"], test["channel"], test["value"]).value
    assert net >= truth - slack, (net, truth)


def test_unknown_model_name_for_estimator():
    with pytest.raises(ValueError, match="not a mechinfer checkpoint|no pretrained"):
        mechinfer.load_estimator("yeast")


def test_checkpoint_is_written_whole_and_uri_loads_clean_up(tmp_path):
    """A save replaces a checkpoint whole or leaves it as it was; a load from a URI
    deletes its download."""
    import glob
    import shutil
    import tempfile

    m = mechinfer.get_model("mmk")
    first = networks.build(networks.default_config(m, "inference", width=16, depth=1))
    second = networks.build(networks.default_config(m, "inference", width=16, depth=1))
    meta1 = checkpoint.save(str(tmp_path / "ck"), first, model="mmk", dataset_manifest=None)
    meta2 = checkpoint.save(str(tmp_path / "ck"), second, model="mmk", dataset_manifest=None)
    assert meta1["checkpoint_id"] != meta2["checkpoint_id"]
    assert checkpoint.load(str(tmp_path / "ck"))[1]["checkpoint_id"] == meta2["checkpoint_id"]

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot be saved")

    with pytest.raises(RuntimeError, match="cannot be saved"):  # fails after the weights are written
        checkpoint.save(
            str(tmp_path / "ck"), first, model="mmk", dataset_manifest=None, extra_files={"x.pt": Unpicklable()}
        )
    kept, kept_meta = checkpoint.load(str(tmp_path / "ck"))
    assert kept_meta["checkpoint_id"] == meta2["checkpoint_id"], "the old checkpoint is intact"
    for name, value in kept.state_dict().items():
        torch.testing.assert_close(value, second.state_dict()[name])  # its weights too, not the new ones
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"], "no temporary directory left"

    # a checkpoint saved over the directory that holds the one it was trained from
    # (train-inference: through-proxy/, then the fine-tuned one around it) keeps it
    nested = checkpoint.save(str(tmp_path / "ft" / "through-proxy"), first, model="mmk", dataset_manifest=None)
    for _ in range(2):
        checkpoint.save(str(tmp_path / "ft"), second, model="mmk", dataset_manifest=None)
        assert checkpoint.load(str(tmp_path / "ft" / "through-proxy"))[1]["checkpoint_id"] == nested["checkpoint_id"]
        assert checkpoint.load(str(tmp_path / "ft"))[1]["checkpoint_id"] == meta2["checkpoint_id"]
    shutil.rmtree(tmp_path / "ft")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds files and is not a checkpoint"):
        checkpoint.save(str(tmp_path / "mine"), first, model="mmk", dataset_manifest=None)
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "mine"], "no temporary directory left"

    downloads = set(glob.glob(f"{tempfile.gettempdir()}/mechinfer-*"))
    _, meta = checkpoint.load(f"file://{tmp_path / 'ck'}")
    assert meta["checkpoint_id"] == meta2["checkpoint_id"]
    assert set(glob.glob(f"{tempfile.gettempdir()}/mechinfer-*")) == downloads


def test_the_training_through_the_proxy_is_kept_only_where_it_beats_the_warmup():
    """``keep_the_better`` (the end of the training through the proxy after a warm-up):
    the network with the higher R2 on the validation rows goes on, whichever phase made it."""
    from mechinfer.data.samples import simulate_chunk
    from mechinfer.estimate.estimator import shipped_checkpoint
    from mechinfer.learn.trainer import keep_the_better

    m = mechinfer.get_model("mmk")
    good, _ = checkpoint.load(shipped_checkpoint("mmk"), model="mmk", kind="inference")
    bad = networks.build(good.config).eval()
    bad.load_state_dict(good.state_dict())
    with torch.no_grad():  # every estimate at z = 3: far from most draws
        last = bad.rho[-1]
        last.weight.zero_()
        last.bias.fill_(3.0)
    rows = {k: v for k, v in simulate_chunk(m, 7, 0, 64).items() if k in ("t", "channel", "value", "theta")}
    good_weights = {k: v.clone() for k, v in good.state_dict().items()}
    bad_weights = {k: v.clone() for k, v in bad.state_dict().items()}

    def same(net, weights):
        return all(torch.equal(v, weights[k]) for k, v in net.state_dict().items())

    chosen = keep_the_better(m, good, bad_weights, rows)  # the proxy's training beat the warm-up
    assert chosen["kept"] == "inference" and chosen["validation_r2"] > chosen["validation_r2_warmup"]
    assert same(good, good_weights) and chosen["validation_rows"] == 64

    chosen = keep_the_better(m, bad, good_weights, rows)  # it did worse: the warm-up's weights go on
    assert chosen["kept"] == "warmup" and chosen["validation_r2_warmup"] > chosen["validation_r2"]
    assert same(bad, good_weights)
    r2_now = training.evaluate(m, bad, rows)[1.0].value
    assert r2_now == pytest.approx(chosen["validation_r2_warmup"]) and r2_now > 0.9


def test_warmup_loss_regresses_the_draws_z():
    m = mechinfer.get_model("mmk")
    net = networks.build(networks.default_config(m, "inference"))
    t, ch, v = _sets(b=4, n=10)
    ch = ch % len(m.channels)
    z = torch.randn(4, m.n_parameters)
    loss = training.warmup_loss(net, {"t": t, "channel": ch, "value": v, "z": z})
    assert float(loss.detach()) == pytest.approx(float((net(t, ch, v) - z).square().mean().detach()))
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
