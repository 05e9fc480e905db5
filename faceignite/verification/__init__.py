"""Pair verification (LFW protocol): pairs files, the embedding evaluator, metrics, ROC plots.

    pairs = read_pairs("lfw/pairs.txt")                   # folds, labels, unique image keys
    evaluator = create_pairs_evaluator(model, "lfw-mtcnn-160", device, image_size=160)
    result = evaluator.run()                              # VerificationResult
    print(result.table()); save_roc_curve(result, "roc.png")
"""
from faceignite.verification.evaluator import (PairsEvaluator, PairVerification, create_embedding_engine,
                                      create_pairs_evaluator, image_loader)
from faceignite.verification.metrics import (DISTANCES, FAR_TARGETS, VerificationResult, best_threshold,
                                    equal_error_rate, evaluate_distances, evaluate_embeddings,
                                    far_label, pair_distances, threshold_at_far)
from faceignite.verification.pairs import (Pairs, find_pairs_file, match_names, read_pairs,
                                  resolve_images)
from faceignite.verification.roc import save_roc_curve

__all__ = [
    "DISTANCES", "FAR_TARGETS", "PairVerification", "Pairs", "PairsEvaluator",
    "VerificationResult", "best_threshold", "create_embedding_engine", "create_pairs_evaluator",
    "equal_error_rate", "evaluate_distances", "evaluate_embeddings", "far_label",
    "find_pairs_file", "image_loader", "match_names", "pair_distances", "read_pairs",
    "resolve_images", "save_roc_curve", "threshold_at_far",
]
