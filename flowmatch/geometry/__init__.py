"""Geometries: the spaces flows live on (points, tangent vectors, metrics, base distributions)."""

from flowmatch.geometry.base import Geometry
from flowmatch.geometry.discrete import Discrete
from flowmatch.geometry.euclidean import Euclidean
from flowmatch.geometry.geoopt_adapter import GeooptGeometry, as_geometry
from flowmatch.geometry.hyperbolic import Hyperbolic
from flowmatch.geometry.product import Product, ProductPoint
from flowmatch.geometry.segments import Segments
from flowmatch.geometry.so3 import SO3
from flowmatch.geometry.spd import SPD
from flowmatch.geometry.sphere import Sphere
from flowmatch.geometry.torus import FlatTorus

__all__ = [
    "Geometry", "Euclidean", "Sphere", "FlatTorus", "Hyperbolic", "SO3", "SPD", "Discrete",
    "Product", "ProductPoint", "Segments", "GeooptGeometry", "as_geometry",
]
