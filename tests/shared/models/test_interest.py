"""Behaviour specific to the interest model: cold users, cold items, history masking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pollinate.shared.errors import ModelError
from pollinate.shared.models import InterestModel

N_ITEMS, N_GENRES, L = 12, 4, 6


def _model(n_layers: int = 2) -> InterestModel:
    genres = np.eye(N_GENRES, dtype=np.float32)[np.arange(N_ITEMS) % N_GENRES]
    model = InterestModel(
        n_users=3,
        n_items=N_ITEMS,
        item_genres=genres,
        dim=8,
        history_len=L,
        n_layers=n_layers,
        n_heads=2,
        generator=torch.Generator().manual_seed(0),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    return model.eval()


def _batch(hist: list[list[int]], gaps: list[list[int]] | None = None) -> dict[str, torch.Tensor]:
    h = torch.tensor(hist)
    g = torch.tensor(gaps) if gaps is not None else (h != N_ITEMS).long() * 3
    return {
        "user": torch.zeros(len(hist), dtype=torch.long),
        "item": torch.zeros(len(hist), dtype=torch.long),
        "hist": h,
        "hist_gap": g,
    }


def test_padding_content_is_ignored() -> None:
    model = _model()
    pad = N_ITEMS
    a = _batch([[pad, pad, pad, 1, 2, 3]], [[0, 0, 0, 5, 4, 3]])
    b = _batch([[pad, pad, pad, 1, 2, 3]], [[7, 1, 9, 5, 4, 3]])  # junk gaps on padding
    with torch.no_grad():
        assert torch.allclose(model.score_all(a), model.score_all(b), atol=1e-6)


def test_history_changes_the_scores() -> None:
    model = _model()
    with torch.no_grad():
        a = model.score_all(_batch([[N_ITEMS, 1, 2, 3, 4, 5]]))
        b = model.score_all(_batch([[N_ITEMS, 6, 7, 8, 9, 10]]))
    assert not torch.allclose(a, b)


def test_new_user_with_no_history_gets_finite_non_constant_scores() -> None:
    model = _model()
    with torch.no_grad():
        model.user_interest.weight.zero_()
        model.user_bias.weight.zero_()
        empty = model.score_all(_batch([[N_ITEMS] * L]))
        no_hist = model.score_all({"user": torch.tensor([0]), "item": torch.tensor([0])})
    assert torch.isfinite(empty).all() and torch.isfinite(no_hist).all()
    assert empty.std() > 0  # ranks items (a learned default), not a constant


def test_new_item_is_scored_through_its_genres() -> None:
    model = _model()
    cold = 5
    batch = _batch([[N_ITEMS, N_ITEMS, 1, 2, 3, 4]])
    with torch.no_grad():
        model.item_emb.weight[cold].zero_()
        model.item_bias.weight[cold].zero_()
        u, offset = model._user_terms(batch)
        g = model.genre_proj(model.item_genres[cold])  # type: ignore[misc]
        expected = (u[0] * g[:-1]).sum() + g[-1] + offset[0]
        got = model.score(batch, torch.tensor([cold]))[0]
        assert torch.allclose(got, expected, atol=1e-5)
        assert torch.allclose(model.score_all(batch)[0, cold], expected, atol=1e-5)
        model.item_genres[cold] = 0.0  # no genres: nothing but the user offset is left
        assert torch.allclose(model.score(batch, torch.tensor([cold]))[0], offset[0], atol=1e-5)


def test_history_longer_than_the_encoder_is_refused() -> None:
    with pytest.raises(ModelError, match="history_len"):
        _model().score_all(_batch([[1] * (L + 1)]))
    with pytest.raises(ModelError, match="item_genres"):
        InterestModel(n_users=1, n_items=3, item_genres=np.zeros((4, 2)))
