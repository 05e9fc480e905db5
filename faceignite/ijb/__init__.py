"""IJB-B / IJB-C 1:1 template verification (insightface ``eval_ijbc.py`` protocol).

``meta`` reads the release's meta files, ``protocol`` pools image features into template
features and scores pairs, ``images`` embeds the loose crops, ``report`` reads TAR at FAR and
writes the ROC, ``cli`` is ``python -m faceignite.ijb``.
"""
from faceignite.ijb.meta import (TARGETS, Landmarks, MetaFiles, TemplateMedia, TemplatePairs,
                                 meta_files, read_landmarks, read_template_media,
                                 read_template_pairs)
from faceignite.ijb.protocol import pair_scores, template_features
from faceignite.ijb.report import (FAR_TARGETS, IJBResult, nearest_far_point, roc_report,
                                   save_results, save_roc_png)

__all__ = [
    "FAR_TARGETS", "IJBResult", "Landmarks", "MetaFiles", "TARGETS", "TemplateMedia",
    "TemplatePairs", "meta_files", "nearest_far_point", "pair_scores", "read_landmarks",
    "read_template_media", "read_template_pairs", "roc_report", "save_results", "save_roc_png",
    "template_features",
]
