import numpy as np
import pytest
import torch

from contrastkit.knn import knn_accuracy, knn_predict


def reference_knn(bank, bank_labels, queries, k, temperature, num_classes):
    """Loop reference: cosine similarity, top-k, (weighted) vote per class."""
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    preds = []
    for q in queries:
        q = q / np.linalg.norm(q)
        sims = bank @ q
        nn_idx = np.argsort(-sims, kind="stable")[:k]
        votes = np.zeros(num_classes)
        for i in nn_idx:
            # majority vote; ties broken by the summed similarity of each class's neighbours
            votes[bank_labels[i]] += 1.0 + sims[i] / (2 * k + 1) if temperature is None else np.exp(sims[i] / temperature)
        preds.append(int(np.argmax(votes)))
    return np.array(preds)


@pytest.mark.parametrize("k, temperature", [(1, None), (5, None), (20, 0.07), (200, 0.07)])
def test_knn_matches_loop_reference(k, temperature):
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(150, 8)).astype(np.float32)
    labels = rng.integers(0, 4, size=150)
    queries = rng.normal(size=(40, 8)).astype(np.float32)
    got = knn_predict(torch.from_numpy(bank), torch.from_numpy(labels), torch.from_numpy(queries), k=k,
                      temperature=temperature, num_classes=4, chunk_size=7)
    want = reference_knn(bank, labels, queries, min(k, 150), temperature, 4)
    np.testing.assert_array_equal(got.numpy(), want)


def test_knn_on_separable_clusters_is_perfect_and_k_is_clipped():
    centers = torch.eye(3) * 10
    bank = torch.cat([centers[c] + 0.1 * torch.randn(10, 3) for c in range(3)])
    labels = torch.arange(3).repeat_interleave(10)
    queries = centers + 0.1 * torch.randn(3, 3)
    assert knn_accuracy(bank, labels, queries, torch.arange(3), k=5) == 1.0
    assert knn_predict(bank[:2], labels[:2], queries, k=50).shape == (3,)
