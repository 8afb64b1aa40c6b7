"""Vessel segmentation with connectivity guarantees, and connectivity checks of any vessel mask."""
