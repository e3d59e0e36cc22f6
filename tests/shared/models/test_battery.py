"""One battery every registered model must pass (LensKit-style conformance tests).

* it learns the planted structure of a small synthetic dataset and clearly beats a
  baseline that has no personal information (popularity / item means);
* its parameters split exactly into global and local ones, and only the local ones
  are per-user tables;
* Opacus's validator accepts it unchanged, and a ``GradSampleModule`` backward gives a
  per-example gradient for every parameter, summing to the ordinary gradient, for the
  losses of both tasks;
* a one-user model (a device) loads the global state of a many-user model and scores
  exactly like it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.validators import ModuleValidator

from pollinate.shared.data.splits import leave_last_out, rating_split
from pollinate.shared.data.types import Interactions, filter_min_interactions
from pollinate.shared.models import RecModel, available_models, build_model
from pollinate.shared.models.popularity import MostPopular
from pollinate.shared.training import (
    build_examples,
    evaluate_ranking,
    evaluate_rating,
    fit,
    get_loss,
    ranking_examples,
    take,
)

MODELS = ("mf", "interest")


def _build(name: str, data: Interactions, **kwargs: Any) -> RecModel:
    args: dict[str, Any] = {
        "n_users": data.n_users,
        "n_items": data.n_items,
        "item_genres": data.item_genres,
        "dim": 16,
        "generator": torch.Generator().manual_seed(0),
    }
    if name == "interest":
        args["history_len"] = 10
    return build_model(name, **(args | kwargs))


def test_builtin_models_are_registered() -> None:
    assert set(MODELS) <= set(available_models())


@pytest.mark.parametrize("name", MODELS)
def test_global_local_split_is_exact(name: str, synthetic: Interactions) -> None:
    model = _build(name, synthetic)
    names = {n for n, _ in model.named_parameters()}
    local = set(model.local_parameter_names())
    glob = set(model.global_parameter_names())
    assert local and glob
    assert local.isdisjoint(glob)
    assert local | glob == names
    params = dict(model.named_parameters())
    for n in local:  # private parameters are rows of per-user tables
        assert params[n].shape[0] == synthetic.n_users, n
    for n in glob:
        assert params[n].shape[0] != synthetic.n_users, n
    assert set(model.global_state()) == glob


@pytest.mark.parametrize("name", MODELS)
def test_opacus_validator_accepts_model_unchanged(name: str, synthetic: Interactions) -> None:
    ModuleValidator.validate(_build(name, synthetic), strict=True)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("loss", ["mse", "bpr", "sampled_softmax"])
def test_per_example_gradients_for_every_parameter(
    name: str, loss: str, synthetic: Interactions
) -> None:
    model = _build(name, synthetic)
    split = rating_split(synthetic, 0, 0)
    batch = build_examples(synthetic, split.train[:24], history_len=10)
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    try:
        fn = get_loss(loss, reg=0.01, n_negatives=7)
        fn(gsm, batch, torch.Generator().manual_seed(0)).sum().backward()
        for n, p in model.named_parameters():
            gs = getattr(p, "grad_sample", None)
            assert gs is not None, f"{n} has no per-example gradient under {loss}"
            assert gs.shape == (24, *p.shape), n
            assert torch.allclose(gs.sum(0), p.grad, atol=1e-5), n
    finally:
        gsm._close()


@pytest.mark.parametrize("name", MODELS)
def test_one_user_model_loads_global_state(name: str, synthetic: Interactions) -> None:
    big = _build(name, synthetic).eval()
    with torch.no_grad():  # make every parameter non-trivial
        for p in big.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    device = _build(name, synthetic, n_users=1).eval()
    device.load_global_state(big.global_state())
    user = 7
    big_params = dict(big.named_parameters())
    with torch.no_grad():
        for n, p in device.named_parameters():
            if n in device.local_parameter_names():
                p.copy_(big_params[n][user : user + 1])
    rows = np.flatnonzero(synthetic.users == user)
    batch = build_examples(synthetic, rows, history_len=10)
    on_device = dict(batch) | {"user": torch.zeros_like(batch["user"])}
    with torch.no_grad():
        assert torch.allclose(big.score_all(batch), device.score_all(on_device), atol=1e-5)
        items = batch["item"]
        assert torch.allclose(big.score(batch, items), device.score(on_device, items), atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_score_shapes_and_score_all_agree(name: str, synthetic: Interactions) -> None:
    model = _build(name, synthetic).eval()
    batch = build_examples(synthetic, np.arange(5), history_len=10)
    items = torch.arange(12).reshape(1, 12).expand(5, -1)
    with torch.no_grad():
        all_scores = model.score_all(batch)
        assert all_scores.shape == (5, synthetic.n_items)
        assert torch.allclose(model.score(batch, items), all_scores[:, :12], atol=1e-5)
        assert torch.allclose(
            model.score(batch, batch["item"]),
            all_scores.gather(1, batch["item"][:, None])[:, 0],
            atol=1e-5,
        )


def test_mf_scores_and_penalises_from_one_lookup_of_each_table(synthetic: Interactions) -> None:
    """``score_and_penalty`` gives exactly ``score`` and ``penalty`` (1-D and 2-D items),
    with each embedding module called once, so that the penalty's gradient joins the
    score's in one per-example gradient."""
    model = _build("mf", synthetic).eval()
    batch = build_examples(synthetic, np.arange(6), history_len=0)
    calls: dict[str, int] = {}
    for name, module in model.named_children():
        module.register_forward_hook(
            lambda m, a, o, name=name: calls.__setitem__(name, calls.get(name, 0) + 1)
        )
    for items in (batch["item"], torch.randint(0, synthetic.n_items, (6, 4))):
        calls.clear()
        with torch.no_grad():
            score, pen = model.score_and_penalty(batch, items)
        assert calls == {"user_factors": 1, "user_bias": 1, "global_bias": 1,
                         "item_factors": 1, "item_bias": 1}  # fmt: skip
        with torch.no_grad():
            assert torch.equal(score, model.score(batch, items))
            assert torch.equal(pen, model.penalty(batch, items))


@pytest.mark.parametrize("name", MODELS)
def test_learns_ranking_structure_beyond_popularity(name: str, synthetic: Interactions) -> None:
    data = filter_min_interactions(synthetic, 3)
    split = leave_last_out(data)
    model = _build(name, data, **({"dropout": 0.1} if name == "interest" else {}))
    train = build_examples(data, split.train, history_len=getattr(model, "history_len", 0))
    valid = ranking_examples(model, data, split, "valid")
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        fit(
            model,
            train,
            get_loss("softmax"),
            optimizer,
            torch.Generator().manual_seed(0),
            epochs=8,
            evaluate=lambda m: evaluate_ranking(m, data, split, "valid", examples=valid),
            monitor="ndcg@10",
            mode="max",
            patience=2,
            batch_size=256,
        )
    learned = evaluate_ranking(model, data, split, "test")["ndcg@10"]
    pop = np.bincount(
        data.items[np.concatenate([split.train, split.valid])], minlength=data.n_items
    )
    baseline = evaluate_ranking(MostPopular(pop), data, split, "test")["ndcg@10"]
    assert learned > 1.25 * baseline, (learned, baseline)


@pytest.mark.parametrize("name", MODELS)
def test_learns_rating_structure_beyond_item_means(name: str, synthetic: Interactions) -> None:
    split = rating_split(synthetic, 0, 0)
    assert synthetic.ratings is not None
    mean = float(synthetic.ratings[split.train].mean())
    model = _build(name, synthetic, global_mean=mean)
    hl = getattr(model, "history_len", 0)
    train = build_examples(synthetic, split.train, history_len=hl)
    valid = build_examples(synthetic, split.valid, context_rows=split.train, history_len=hl)
    test = build_examples(synthetic, split.test, context_rows=split.train, history_len=hl)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        fit(
            model,
            train,
            get_loss("mse", reg=0.02),
            optimizer,
            torch.Generator().manual_seed(0),
            epochs=15,
            evaluate=lambda m: evaluate_rating(m, valid, rating_scale=(1.0, 5.0)),
            monitor="rmse",
            mode="min",
            patience=2,
            batch_size=256,
        )
    rmse = evaluate_rating(model, test, rating_scale=(1.0, 5.0))["rmse"]
    # Baseline: the training mean of each item (the global mean for unseen items).
    sums = np.bincount(
        synthetic.items[split.train], synthetic.ratings[split.train], synthetic.n_items
    )
    counts = np.bincount(synthetic.items[split.train], minlength=synthetic.n_items)
    item_mean = np.where(counts > 0, sums / np.maximum(counts, 1), mean)
    target = synthetic.ratings[split.test]
    baseline = float(np.sqrt(np.mean((item_mean[synthetic.items[split.test]] - target) ** 2)))
    assert rmse < baseline - 0.03, (rmse, baseline)
    assert take(test, slice(0, 1))["rating"].shape == (1,)
