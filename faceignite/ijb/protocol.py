"""The IJB 1:1 template verification protocol of insightface's ``eval_ijbc.py``, in NumPy.

Image feature ``f`` = raw ``embedding(image) + embedding(mirrored image)`` (computed elsewhere).
Then, by default (insightface's N1 D1 mode):

1. norm score: ``f`` keeps its norm (``norm_score=False``: ``f`` is L2-normalised first, which
   removes the quality information the norm carries);
2. detector score: ``f`` is multiplied by the face's detector score (``detector_score=False``: not);
3. the features of the faces of one media (one video, or one still) within a template are averaged;
4. the media features of a template are summed and the sum L2-normalised;
5. a pair's score is the dot product of its two template features (cosine similarity).

Computed in float64, a block of feature columns at a time (memory ≈ faces × block × 8 bytes), so
that IJB-C's 469,375 × 512 features can stay a memory-mapped ``.npy``.
"""
from __future__ import annotations

import numpy as np

BLOCK_BYTES = 256 * 2 ** 20  # float64 working set of one column block
PAIR_CHUNK = 100_000


def _row_norms(features: np.ndarray, rows: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """L2 norm (float64) of ``features[rows]``, read ``chunk`` rows at a time."""
    norms = np.empty(len(rows), dtype=np.float64)
    for start in range(0, len(rows), chunk):
        block = np.asarray(features[rows[start:start + chunk]], dtype=np.float64)
        norms[start:start + chunk] = np.linalg.norm(block, axis=1)
    return norms


def template_features(features: np.ndarray, rows: np.ndarray, templates: np.ndarray,
                      medias: np.ndarray, detector_scores: np.ndarray | None = None,
                      norm_score: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(template ids sorted, L2-normalised template features float64)``.

    ``features``: (images × D) array or memmap; face ``i`` (of ``templates``/``medias``) has
    feature row ``rows[i]``; ``detector_scores``: one per face, or None for no weighting.
    """
    rows = np.asarray(rows, dtype=np.int64)
    templates, medias = np.asarray(templates, np.int64), np.asarray(medias, np.int64)
    order = np.lexsort((medias, templates))  # by template, then media
    rows, templates, medias = rows[order], templates[order], medias[order]
    weight = np.ones(len(rows), dtype=np.float64)
    if detector_scores is not None:
        weight *= np.asarray(detector_scores, dtype=np.float64)[order]
    if not norm_score:
        norms = _row_norms(features, rows)
        weight /= np.where(norms > 0, norms, 1.0)
    new_media = np.ones(len(rows), dtype=bool)
    new_media[1:] = (templates[1:] != templates[:-1]) | (medias[1:] != medias[:-1])
    media_starts = np.flatnonzero(new_media)
    media_sizes = np.diff(np.append(media_starts, len(rows))).astype(np.float64)
    media_templates = templates[media_starts]
    new_template = np.ones(len(media_starts), dtype=bool)
    new_template[1:] = media_templates[1:] != media_templates[:-1]
    template_starts = np.flatnonzero(new_template)
    ids = media_templates[template_starts]

    dim = features.shape[1]
    width = int(max(1, min(dim, BLOCK_BYTES // (8 * max(len(rows), 1)))))
    pooled = np.empty((len(ids), dim), dtype=np.float64)
    for c in range(0, dim, width):
        block = np.asarray(features[rows, c:c + width], dtype=np.float64) * weight[:, None]
        media = np.add.reduceat(block, media_starts, axis=0) / media_sizes[:, None]
        pooled[:, c:c + width] = np.add.reduceat(media, template_starts, axis=0)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return ids, pooled / np.where(norms > 0, norms, 1.0)


def pair_scores(ids: np.ndarray, template_feats: np.ndarray, first: np.ndarray,
                second: np.ndarray, chunk: int = PAIR_CHUNK) -> np.ndarray:
    """Dot product (cosine similarity, float64) of each pair's template features.

    ``ids``: the sorted template ids of the rows of ``template_feats``; every template of the
    pairs must be among them."""
    a, b = np.searchsorted(ids, first), np.searchsorted(ids, second)
    scores = np.empty(len(a), dtype=np.float64)
    for s in range(0, len(a), chunk):
        scores[s:s + chunk] = np.einsum("ij,ij->i", template_feats[a[s:s + chunk]],
                                        template_feats[b[s:s + chunk]])
    return scores
