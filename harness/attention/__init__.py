"""Attention maps, extracted once and reused: batched extraction (``extract``), the
on-disk cache and its per-view derivatives (``cache``), views (``views``), reducers
(``features``), features streamed from the cache to a trial (``stream``) and mean-pooled
sentence embeddings (``embeddings``).

The names below are the package's public API; its modules are private to it.
"""

from harness.core import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "cache": ["AttentionCache", "compact_view_w"],
        "embeddings": ["cached_embeddings", "mean_pooled"],
        "extract": ["cache_key", "extract_attention", "iter_attention"],
        "features": ["reduce_maps"],
        "stream": ["Features", "StreamedFeatures", "mean_over_tokens"],
        "views": ["token_features_from_attention"],
    },
)
