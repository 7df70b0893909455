"""mae-transfer: MAE pretraining of ViTs and transfer to detectron2 and MMSegmentation."""
__version__ = "0.1.0"
