"""Moved to tinygen.recipes.clip_pictures; this module keeps old imports working."""

from tinygen.recipes.clip_pictures import (  # noqa: F401
    plot_retrieval_grid,
    plot_similarity_matrix,
    top_matches,
)

__all__ = ["plot_retrieval_grid", "plot_similarity_matrix", "top_matches"]
