"""Datasets, image index, splits, augmentation pipelines and loaders."""
from faceignite.data.dataset import FaceImageDataset, collate_skip_bad
from faceignite.data.index import ImageIndex, scan_identity_folders, load_or_build_index
from faceignite.data.loaders import DataOptions, FaceData, build_face_data
from faceignite.data.split import stratified_split
from faceignite.data.transforms import eval_transform, train_transform

__all__ = [
    "DataOptions", "FaceData", "FaceImageDataset", "ImageIndex", "build_face_data", "collate_skip_bad",
    "eval_transform", "load_or_build_index", "scan_identity_folders", "stratified_split",
    "train_transform",
]
