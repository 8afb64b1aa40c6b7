"""Connectivity checks of vessel masks: the check itself, metrics, masks, breaks, repair and overlays."""
