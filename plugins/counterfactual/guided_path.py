"""The guided counterfactual path (arXiv 2306.07306): a Kepler Mapper graph over reference class codes.

The class codes of a reference set (training images) are covered by Kepler Mapper (``kmapper``):
a 2-D PCA lens, overlapping cubes, DBSCAN clusters in each cube, and an edge between clusters that
share images. The path runs along the graph's shortest route (``networkx``) from the node nearest
the image's code to the nearest node where the target class is the majority, so each step is a
code that real images of the reference set have, rather than a point on a straight line that
may cross empty code space. The waypoints are the member-mean codes of the nodes on the route.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np

from workbench.errors import ConfigError


@dataclass
class CodeGraph:
    """A Kepler Mapper graph of class codes.

    Attributes:
        graph: the ``networkx`` graph (nodes are kmapper node ids; edges weighted by centroid distance).
        centroids: node -> mean code ``(D,)`` of its members.
        majority: node -> ``(class index, share of members)``.
        sizes: node -> member count.
    """

    graph: nx.Graph
    centroids: dict[str, np.ndarray]
    majority: dict[str, tuple[int, float]]
    sizes: dict[str, int]


def build_code_graph(codes: np.ndarray, labels: np.ndarray, n_cubes: int = 8, overlap: float = 0.4, seed: int = 0) -> CodeGraph:
    """Cover reference class codes ``(N, D)`` (labels ``(N,)``) with a Kepler Mapper graph.

    DBSCAN's radius is set from the data: three times the median distance to the fifth nearest
    neighbour, so the graph does not depend on the code space's scale.

    Returns:
        The :class:`CodeGraph`.

    Raises:
        ConfigError: fewer than 10 reference codes, or a graph without nodes.
    """
    import kmapper
    from sklearn.cluster import DBSCAN
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    codes, labels = np.asarray(codes, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if len(codes) < 10:
        raise ConfigError(f"the guided path needs at least 10 reference images, got {len(codes)}")
    distances, _ = NearestNeighbors(n_neighbors=min(6, len(codes))).fit(codes).kneighbors(codes)
    radius = max(3.0 * float(np.median(distances[:, -1])), 1e-6)
    mapper = kmapper.KeplerMapper(verbose=0)
    lens = mapper.fit_transform(codes, projection=PCA(n_components=min(2, codes.shape[1]), random_state=seed))
    found = mapper.map(lens, codes, cover=kmapper.Cover(n_cubes=n_cubes, perc_overlap=overlap), clusterer=DBSCAN(eps=radius, min_samples=2))
    members = {str(node): np.asarray(indices, dtype=np.int64) for node, indices in found["nodes"].items()}
    if not members:
        raise ConfigError("Kepler Mapper found no clusters among the reference codes; use the linear path")
    graph = nx.Graph()
    centroids = {node: codes[indices].mean(axis=0) for node, indices in members.items()}
    majority = {}
    for node, indices in members.items():
        counts = np.bincount(labels[indices])
        majority[node] = (int(counts.argmax()), float(counts.max() / counts.sum()))
        graph.add_node(node)
    for node, neighbours in found["links"].items():
        for other in neighbours:
            graph.add_edge(str(node), str(other), weight=float(np.linalg.norm(centroids[str(node)] - centroids[str(other)])))
    return CodeGraph(graph, centroids, majority, {node: len(indices) for node, indices in members.items()})


def guided_waypoints(code_graph: CodeGraph, start_code: np.ndarray, target: int) -> np.ndarray | None:
    """The member-mean codes along the shortest route from the image's node to a target-majority node.

    Args:
        code_graph: from :func:`build_code_graph`.
        start_code: the image's class code ``(D,)``.
        target: the target class index.

    Returns:
        ``(M, D)`` waypoints (the start node itself left out, the target node last), or ``None``
        when no target-majority node is reachable from the image's node.
    """
    start_code = np.asarray(start_code, dtype=np.float64)
    nodes = list(code_graph.centroids)
    start = min(nodes, key=lambda node: float(np.linalg.norm(code_graph.centroids[node] - start_code)))
    reachable = nx.single_source_dijkstra_path(code_graph.graph, start, weight="weight")
    goals = [node for node in reachable if code_graph.majority[node][0] == target and node != start]
    if not goals:
        return None
    # Prefer the purest target node; among equally pure ones, the nearest along the graph.
    lengths = nx.single_source_dijkstra_path_length(code_graph.graph, start, weight="weight")
    goal = min(goals, key=lambda node: (-round(code_graph.majority[node][1], 6), lengths[node]))
    route = reachable[goal][1:]
    return np.stack([code_graph.centroids[node] for node in route])
