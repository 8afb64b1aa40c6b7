"""The data layer: readers, manifests, loaders and the embedded phantom data."""
