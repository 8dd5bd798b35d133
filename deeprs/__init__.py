"""DeepRS: joint deep registration and few-shot segmentation of 3D medical images."""

__version__ = "0.1.0"
