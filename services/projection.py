"""2-D principal-component projection of embeddings, for the dashboard's scatter plot."""

from __future__ import annotations

import torch


def pca_2d(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Project points on their first two principal components.

    Args:
        points: ``(n, channels)`` embeddings, ``n >= 1``.

    Returns:
        ``(coords, explained)``: ``(n, 2)`` float32 coordinates (zero-centred; a component that
        does not exist, e.g. for ``n = 1`` or ``channels = 1``, is all zeros) and ``(2,)`` the
        fraction of the total variance each component explains (0 for a constant set).

    Examples:
        >>> x = torch.tensor([[0.0, 0.0, 1.0], [2.0, 0.0, 1.0], [4.0, 0.1, 1.0]])
        >>> coords, explained = pca_2d(x)
        >>> coords.shape, round(float(explained[0]), 3)
        (torch.Size([3, 2]), 1.0)
    """
    if points.dim() != 2 or points.shape[0] < 1:
        raise ValueError(f"expected (n >= 1, channels) points, got shape {tuple(points.shape)}")
    x = points.double()
    x = x - x.mean(0, keepdim=True)
    coords = torch.zeros(x.shape[0], 2, dtype=torch.float64)
    explained = torch.zeros(2, dtype=torch.float64)
    total = float(x.square().sum())
    if total <= 1e-20:
        return coords.float(), explained.float()
    # SVD of the smaller Gram side: (n, c) with n, c up to a few hundred is milliseconds.
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    k = min(2, vh.shape[0])
    coords[:, :k] = x @ vh[:k].T
    explained[:k] = s[:k].square() / total
    # a deterministic sign: the largest-magnitude coordinate of each component is positive
    for j in range(k):
        column = coords[:, j]
        if column[column.abs().argmax()] < 0:
            coords[:, j] = -column
    return coords.float(), explained.float()
